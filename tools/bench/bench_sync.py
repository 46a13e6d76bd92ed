"""Edge-to-gateway sync: end-to-end latency at a fixed load, backlog drain, and
throughput against paho-mqtt + Mosquitto (QoS 1).

    python tools/bench/bench_sync.py [--seconds S] [--rate R] [--backlog N] [--records N] [--reps R] [--json]

Real processes, as deployed: an ``edgeline gateway`` subprocess (SQLite synchronous=FULL)
and an ``edgeline agent`` subprocess on free loopback ports, with fresh node keys. The
agent's topics use group commit (``sync: group, group_ms: 5, group_records: 1000``) and
its uplink sends as soon as records are durable (``interval_secs: 0``, ``batch_size:
5000``). Producers in this process post JSON records to the agent's ingest API; the
agent answers only once they are durable on its disk.

(1) latency: a load generator posts --per-post records every --tick-ms (default 100 every
    10 ms = 10,000 records/s) for --seconds, recording when each post's answer came
    (``"durable": true``). Afterwards every record is read back from the gateway's
    ``GET /v1/records``; latency = the gateway's ``stored_ms`` - the ingest answer time
    (same machine, same wall clock). p50/p99/max. Target: p99 < 25 ms. Baseline in the
    same run: the ingest round trip itself (post -> durable answer at the agent).
(2) backlog drain: the agent's gateway is down (its port is not listening); --backlog
    records (default 200,000) are ingested in posts of 5000; then the gateway is started
    and the time until the agent's ``GET /v1/queue`` says 0 pending is measured, from
    the gateway answering /healthz (the agent is nudged with POST /v1/sync/now, ending
    its retry backoff) and from the gateway's process start. Target: < 5 s. Baseline:
    how long the agent took to ingest the same records (durable locally).
(3) throughput: --records records (default 50,000) through paho-mqtt (one JSON message
    per record, QoS 1, defaults: 20 messages in flight) to a private Mosquitto (free port,
    ``persistence false``, ``max_queued_messages 0``) with a QoS 1 subscriber counting arrivals: records/s from
    the first publish to the last arrival. Against it, in the same rep: the same records
    posted to the agent (4 posts of 1000 in flight) until the gateway has stored them
    all (the gateway's /v1/status): records/s. Durability: edgeline's answer waits for
    the agent's fsync and the gateway stores with SQLite FULL; Mosquitto here keeps
    nothing on disk, so the comparison favours paho. Target: >= 5x paho.

Mosquitto missing (or paho-mqtt not installed) skips (3) with a note. Every process is
started here and ended by its PID (SIGTERM, then SIGKILL); files go to a fresh /tmp dir.
"""
import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

HOST = os.path.join(harness.ROOT, "host")

AGENT_CONFIG = """\
edge:
  node_id: %(node)s
  data_dir: ./data
  key_file: ./node.key
  cloud_endpoint: http://127.0.0.1:%(gw_port)d
  sync:
    interval_secs: 0
    batch_size: %(batch_size)d
    compression: %(compression)s
    retry: {initial_ms: 50, max_ms: 200, multiplier: 2, jitter: 0.2}
    circuit_breaker: {failures: 1000, open_secs: 1}
  resources:
    max_storage: 2GiB
  sync_topics:
    - {topic: telemetry, direction: edge_to_cloud, sync: group, group_records: 1000, group_ms: 5, segment_size: 1MiB}
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
"""
GROUP = "sync: group, group_ms=5, group_records=1000; uplink interval_secs=0, batch_size=%d"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_ms():
    return time.time() * 1000.0


def value(i):
    return {"sensor": "temp-%d" % (i % 4), "value": round(20 + (i % 97) * 0.11, 2), "unit": "C", "n": i}


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


class Procs:
    """Every child process, ended by PID."""

    def __init__(self):
        self.items = []

    def spawn(self, args, cwd, log_name):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([harness.CORE, HOST, harness.ROOT]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.pop("EDGELINE_AGENT", None)
        with open(os.path.join(cwd, log_name), "ab") as log:
            p = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self.items.append(p)
        return p

    def stop(self, p, grace=10):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass
        p.wait()

    def stop_all(self):
        for p in self.items:
            self.stop(p)
        self.items = []


class Fleet:
    """One gateway (maybe not started yet) and one agent, in dir d."""

    def __init__(self, procs, d, batch_size=5000, compression="zstd"):
        self.procs = procs
        self.d = d
        os.makedirs(d, exist_ok=True)
        key = secrets.token_hex(32)
        with open(os.path.join(d, "node.key"), "w") as f:
            f.write(key + "\n")
        os.chmod(os.path.join(d, "node.key"), 0o600)
        with open(os.path.join(d, "keys.yaml"), "w") as f:
            f.write("edge-1: %s\n" % key)
        self.gw_port = free_port()
        self.port = free_port()
        self.gw_url = "http://127.0.0.1:%d" % self.gw_port
        self.url = "http://127.0.0.1:%d" % self.port
        with open(os.path.join(d, "edge.yaml"), "w") as f:
            f.write(AGENT_CONFIG % {"node": "edge-1", "gw_port": self.gw_port, "port": self.port,
                                    "batch_size": batch_size, "compression": compression})
        self.gateway = self.agent = None
        self.exe = [sys.executable, "-m", "edgeline_host.cli"]

    async def wait_up(self, http, url, proc, what, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                with open(os.path.join(self.d, "gateway.log" if proc is self.gateway else "agent.log"), "rb") as f:
                    tail = f.read()[-1500:].decode(errors="replace")
                raise RuntimeError("%s exited (status %s) at start: %s" % (what, proc.returncode, tail))
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not start within %d s" % (what, timeout))
            await asyncio.sleep(0.01)

    async def start_gateway(self, http):
        self.gateway = self.procs.spawn(self.exe + ["gateway", "--keys", "keys.yaml", "--db", "gateway.db",
                                                    "--listen", "127.0.0.1:%d" % self.gw_port], self.d, "gateway.log")
        await self.wait_up(http, self.gw_url + "/healthz", self.gateway, "the gateway")

    async def start_agent(self, http):
        self.agent = self.procs.spawn(self.exe + ["agent", "--config", "edge.yaml"], self.d, "agent.log")
        await self.wait_up(http, self.url + "/v1/health", self.agent, "the agent")

    async def post(self, http, values):
        async with http.post(self.url + "/v1/topics/telemetry/records", json=values) as r:
            a = await r.json(content_type=None)
            t = now_ms()
            if r.status != 200 or a.get("durable") is not True or a["last_seq"] - a["first_seq"] + 1 != len(values):
                raise RuntimeError("ingest answered %d %r" % (r.status, a))
            return a, t

    async def get(self, http, url):
        async with http.get(url) as r:
            return await r.json(content_type=None)

    async def pending(self, http):
        return (await self.get(http, self.url + "/v1/queue"))["pending"]

    async def stored(self, http):
        st = await self.get(http, self.gw_url + "/v1/status?origin=edge-1")
        return sum(s["records"] for s in st["streams"])

    async def read_back(self, http, first, last):
        rows = {}
        nxt = first
        while nxt <= last:
            page = await self.get(http, "%s/v1/records?topic=telemetry&origin=edge-1&from=%d&to=%d&limit=50000"
                                  % (self.gw_url, nxt, last))
            recs = page["records"]
            if not recs:
                break
            for r in recs:
                rows[r["seq"]] = r["stored_ms"]
            nxt = recs[-1]["seq"] + 1
        return rows

    async def wait_drained(self, http, timeout=120, poll=0.01):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.pending(http) == 0:
                return True
            await asyncio.sleep(poll)
        return False


# --------------------------------------------------------------------------- (1) latency


async def latency(fleet, http, seconds, per_post, tick_ms):
    loop = asyncio.get_running_loop()
    answers = []  # (first_seq, last_seq, answer_ms, round_trip_ms)
    inflight = set()
    n = [0]
    late = [0]

    async def one(values):
        t0 = now_ms()
        a, t = await fleet.post(http, values)
        answers.append((a["first_seq"], a["last_seq"], t, t - t0))

    interval = tick_ms / 1000.0
    nxt = loop.time()
    end = nxt + seconds
    while loop.time() < end:
        values = [value(n[0] + i) for i in range(per_post)]
        n[0] += per_post
        task = asyncio.ensure_future(one(values))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        nxt += interval
        delay = nxt - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late[0] += 1
            await asyncio.sleep(0)
    if inflight:
        await asyncio.gather(*inflight)
    offered = n[0] / seconds
    if not await fleet.wait_drained(http, 60):
        raise RuntimeError("the agent did not drain after the latency run")
    first = min(a[0] for a in answers)
    last = max(a[1] for a in answers)
    stored = await fleet.read_back(http, first, last)
    lags = []
    for f, l, t, _rt in answers:
        for s in range(f, l + 1):
            if s not in stored:
                raise RuntimeError("seq %d not at the gateway" % s)
            lags.append(stored[s] - t)
    rts = [a[3] for a in answers]
    return {"lags": lags, "rts": rts, "offered": offered, "records": n[0], "late_ticks": late[0]}


# --------------------------------------------------------------------------- (2) backlog


async def backlog(fleet, http, records, per_post=5000):
    t0 = harness.now()
    sem = asyncio.Semaphore(2)

    async def one(i):
        async with sem:
            await fleet.post(http, [value(j) for j in range(i, min(records, i + per_post))])

    await asyncio.gather(*(one(i) for i in range(0, records, per_post)))
    ingest_s = harness.now() - t0
    if await fleet.pending(http) != records:
        raise RuntimeError("expected %d pending before the gateway starts" % records)
    t_spawn = harness.now()
    await fleet.start_gateway(http)
    t_up = harness.now()
    async with http.post(fleet.url + "/v1/sync/now") as r:
        await r.read()
    if not await fleet.wait_drained(http, 120, poll=0.005):
        raise RuntimeError("the backlog did not drain in 120 s")
    t_end = harness.now()
    if await fleet.stored(http) != records:
        raise RuntimeError("the gateway does not hold %d records" % records)
    return {"ingest_s": ingest_s, "drain_s": t_end - t_up, "drain_from_spawn_s": t_end - t_spawn,
            "gateway_start_s": t_up - t_spawn}


# --------------------------------------------------------------------------- (3) throughput


async def edgeline_throughput(fleet, http, records, per_post=1000, inflight=4):
    base = await fleet.stored(http)
    sem = asyncio.Semaphore(inflight)

    async def one(i):
        async with sem:
            await fleet.post(http, [value(j) for j in range(i, min(records, i + per_post))])

    t0 = harness.now()
    await asyncio.gather(*(one(i) for i in range(0, records, per_post)))
    t_ingest = harness.now() - t0
    while await fleet.stored(http) < base + records:
        await asyncio.sleep(0.005)
    return records / (harness.now() - t0), records / t_ingest


def mosquitto_binary():
    path = shutil.which("mosquitto")
    for c in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if path is None and os.access(c, os.X_OK):
            path = c
    return path


def start_mosquitto(procs, d):
    os.makedirs(d, exist_ok=True)
    port = free_port()
    conf = os.path.join(d, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                "max_queued_messages 0\n" % port)  # unlimited: the default 1000 drops QoS 1 messages
    p = procs.spawn([mosquitto_binary(), "-c", conf], d, "mosquitto.log")
    deadline = time.monotonic() + 10
    while True:
        if p.poll() is not None:
            raise RuntimeError("mosquitto exited at start; log in %s" % d)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto not accepting on %d" % port)
            time.sleep(0.02)


def paho_throughput(port, records):
    import paho.mqtt.client as mqtt

    def client(cid):
        try:
            return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
        except AttributeError:  # paho-mqtt 1.x
            return mqtt.Client(client_id=cid)

    got = [0]
    done = threading.Event()
    subscribed = threading.Event()
    sub = client("bench-sub")

    def on_message(_c, _u, _m):
        got[0] += 1
        if got[0] >= records:
            done.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/edge-1/telemetry", qos=1)
    sub.loop_start()
    pub = client("bench-pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("paho subscriber: no SUBACK")
        t0 = harness.now()
        infos = []
        for i in range(records):
            doc = {"node": "edge-1", "topic": "telemetry", "seq": i + 1, "ts": int(now_ms())}
            doc.update(value(i))
            infos.append(pub.publish("bench/edge-1/telemetry", json.dumps(doc, separators=(",", ":")), qos=1))
        if not done.wait(120):
            raise RuntimeError("paho: %d of %d arrived" % (got[0], records))
        dt = harness.now() - t0
        for info in infos[-10:]:
            info.wait_for_publish(10)
        return records / dt
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()


# --------------------------------------------------------------------------- main


async def one_rep(base, rep, a, out, mqtt_ok):
    import aiohttp

    procs = Procs()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                 timeout=aiohttp.ClientTimeout(total=120))
    try:
        # (1) + (3, edgeline side): one gateway, one agent
        fl = Fleet(procs, harness.fresh_subdir(base, "live-%d" % rep), compression=a.compression)
        await fl.start_gateway(http)
        await fl.start_agent(http)
        await fl.post(http, [value(0)])  # warm up: handshake with the gateway
        await fl.wait_drained(http, 30)
        harness.progress("rep %d: latency, %d records/s offered for %g s" % (rep + 1, a.rate, a.seconds))
        out["latency"].append(await latency(fl, http, a.seconds, a.per_post, 1000.0 * a.per_post / a.rate))
        harness.progress("rep %d: edgeline throughput, %d records" % (rep + 1, a.records))
        out["edgeline"].append(await edgeline_throughput(fl, http, a.records))
        procs.stop_all()
        if mqtt_ok:
            harness.progress("rep %d: paho-mqtt QoS 1 via mosquitto, %d records" % (rep + 1, a.records))
            p, port = start_mosquitto(procs, harness.fresh_subdir(base, "mq-%d" % rep))
            loop = asyncio.get_running_loop()
            out["paho"].append(await loop.run_in_executor(None, paho_throughput, port, a.records))
            procs.stop_all()
        # (2) backlog with the gateway down
        harness.progress("rep %d: backlog of %d records, gateway down" % (rep + 1, a.backlog))
        fb = Fleet(procs, harness.fresh_subdir(base, "backlog-%d" % rep), compression=a.compression)
        await fb.start_agent(http)
        out["backlog"].append(await backlog(fb, http, a.backlog))
    finally:
        procs.stop_all()
        await http.close()


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--seconds", type=float, default=10.0, help="latency run length (default 10)")
    ap.add_argument("--rate", type=int, default=10000, help="offered load, records/s (default 10000)")
    ap.add_argument("--per-post", type=int, default=100, help="records per ingest post in the latency run")
    ap.add_argument("--backlog", type=int, default=200000, help="records queued while the gateway is down")
    ap.add_argument("--records", type=int, default=50000, help="records for the throughput comparison")
    ap.add_argument("--compression", choices=("none", "columnar", "zstd"), default="zstd",
                    help="the agent's sync.compression (default zstd, the agent's default)")
    ap.set_defaults(reps=1)
    a = ap.parse_args(argv)
    mqtt_note = None
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        mqtt_note = "paho-mqtt not installed (pip install paho-mqtt): the MQTT baseline was skipped"
    if mqtt_note is None and mosquitto_binary() is None:
        mqtt_note = "mosquitto not found (apt-get install mosquitto): the MQTT baseline was skipped"
    res = harness.Result(
        "bench_sync",
        "edge agent -> gateway sync, real processes on loopback: latency, backlog drain, throughput vs paho-mqtt",
        {"reps": a.reps, "offered": "%d rec/s (%d per post every %g ms)" % (a.rate, a.per_post,
                                                                        1000.0 * a.per_post / a.rate),
         "seconds": a.seconds, "backlog": a.backlog, "records": a.records, "agent": GROUP % 5000,
         "compression": a.compression},
    )
    out = {"latency": [], "edgeline": [], "paho": [], "backlog": []}
    with harness.scratch_dir() as base:
        for rep in range(a.reps):
            asyncio.run(one_rep(base, rep, a, out, mqtt_note is None))
    lat = out["latency"]
    rt = [pct(x["rts"], 0.99) for x in lat]
    p50 = [pct(x["lags"], 0.5) for x in lat]
    p99 = [pct(x["lags"], 0.99) for x in lat]
    mx = [max(x["lags"]) for x in lat]
    res.add("ingest round trip p99 (post -> durable answer)", harness.median(rt), "ms", rt,
            note="p50 %.1f ms; offered %.0f rec/s, %s late ticks" % (
                harness.median([pct(x["rts"], 0.5) for x in lat]), harness.median([x["offered"] for x in lat]),
                [x["late_ticks"] for x in lat]))
    res.add("latency p50 (answer -> stored at gateway)", harness.median(p50), "ms", p50)
    res.add("latency p99 (answer -> stored at gateway)", harness.median(p99), "ms", p99,
            baseline="ingest round trip p99 (post -> durable answer)", target=("value", "<", 25),
            note="%d records per rep; stored_ms is taken when the gateway's commit begins" % lat[0]["records"])
    res.add("latency max (answer -> stored at gateway)", harness.median(mx), "ms", mx)
    bl = out["backlog"]
    ing = [x["ingest_s"] for x in bl]
    res.add("backlog ingest at the agent (gateway down)", harness.median(ing), "s", ing,
            note="%.0f rec/s" % (a.backlog / harness.median(ing)))
    dr = [x["drain_s"] for x in bl]
    res.add("backlog drain (gateway up -> 0 pending)", harness.median(dr), "s", dr,
            baseline="backlog ingest at the agent (gateway down)", target=("value", "<", 5),
            note="%.0f rec/s; from the gateway's process start: %s s (start %s s)" % (
                a.backlog / harness.median(dr), [round(x["drain_from_spawn_s"], 2) for x in bl],
                [round(x["gateway_start_s"], 2) for x in bl]))
    e2e = [x[0] for x in out["edgeline"]]
    if out["paho"]:
        res.add("paho-mqtt QoS 1 via mosquitto, 1 msg/record", harness.median(out["paho"]), "rec/s", out["paho"])
        res.add("edgeline agent ingest -> gateway stored", harness.median(e2e), "rec/s", e2e,
                baseline="paho-mqtt QoS 1 via mosquitto, 1 msg/record", target=("ratio", ">=", 5),
                note="agent ingest alone: %.0f rec/s" % harness.median([x[1] for x in out["edgeline"]]))
    else:
        res.add("edgeline agent ingest -> gateway stored", harness.median(e2e), "rec/s", e2e)
        res.note(mqtt_note)
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
