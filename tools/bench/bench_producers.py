"""Waiting producers over HTTP: what a producer sees from the agent, ``sync: every``
against group commit (leader/follower).

    python tools/bench/bench_producers.py [--seconds S] [--slice S] [--producers 1 10 100] [--per-request 1 10] [--reps R] [--json]

Two ``edgeline agent`` subprocesses on free loopback ports, data under one fresh /tmp
dir, one local topic each: ``sync: every`` (an fsync per record, before the answer) and
``sync: group`` with its defaults (1000 records / 1 s: the bounds for records nobody
waits for; a waiting producer starts a commit at once and writers arriving during its
fsync share the next one). Producers live in this process (``_Producer``: one keep-alive
HTTP/1.1 connection each, the closed loop run in protocol callbacks, the least CPU a
Python client can spend per request): each posts a request of --per-request records
(JSON values of about 20 bytes), waits for the answer (``"durable": true``), and posts
the next -- closed loop, as a producer that needs the answer does.

For each repetition and each count of producers and records per request, the two agents
take turns in slices of about --slice seconds (every, group, group, every, ...) until
each had --seconds: the fsync's cost on a shared disk and the CPU other jobs leave drift
over seconds, and fine turns put the same drift on both sides of a ratio. In each slice
the requests begun in its first tenth are warm-up and not counted. --reps repetitions
(default 5); each figure is the median over them, and each ratio the median of the
per-repetition ratios, so one disturbed repetition does not decide it. Nothing is
asserted on time.

Reported per case: producer-observed latency p50 and p99 (from sending the request to
reading the answer), throughput in records/s, the agent's CPU per request (Linux) and,
for group commit, the client's. Ratios: group commit's latency against ``every``'s
(lower is better) and its throughput against ``every``'s.

Targets (issue 9): one waiting producer sees group-commit latency <= 2x that of
``every``; with 100 producers group commit gives >= 10x the throughput of ``every``.
What bounds them on a given machine is the fsync's cost against the HTTP round trip's:
``every`` costs one fsync per record (plus one request's CPU), group commit one per
commit shared by every producer waiting, so with many producers its throughput is the
agent's loop thread over its CPU per request (the agent CPU rows), and the ratio grows
with the fsync's cost (an SD card's several ms) -- on a fast local disk and one-record
requests it is the fsync's cost over one request's CPU.
"""
import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from bench_sync import Procs, free_port  # noqa: E402

AGENT_CONFIG = """\
edge:
  node_id: bench-%(sync)s
  data_dir: ./data
  sync: {enabled: false}
  local_topics:
    - {topic: t, sync: %(sync)s, segment_size: 4MiB, budget: 1GiB}
  resources:
    max_storage: 2GiB
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
"""


def start_agent(procs, d, sync):
    os.makedirs(d, exist_ok=True)
    port = free_port()
    cfg = os.path.join(d, "edge.yaml")
    with open(cfg, "w") as f:
        f.write(AGENT_CONFIG % {"sync": sync, "port": port})
    p = procs.spawn([sys.executable, "-m", "edgeline_host.cli", "agent", "--config", cfg], d, "agent.log")
    deadline = time.monotonic() + 30
    while True:
        if p.poll() is not None:
            raise RuntimeError("the %s agent exited; log in %s" % (sync, d))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/v1/health" % port, timeout=5):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the %s agent did not start; log in %s" % (sync, d))
        time.sleep(0.05)
    return "http://127.0.0.1:%d/v1/topics/t/records" % port, p.pid


def percentile(xs, p):
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(p * len(s)))]


class _Producer(asyncio.Protocol):
    """One waiting producer on one keep-alive HTTP/1.1 connection, as lean as a load
    generator can be in Python: the closed loop runs in the protocol's callbacks (the
    next request is written from ``data_received`` of the answer), with no task, future
    or stream per request. The client shares the machine's cores with the agent, so
    every microsecond it spends per request is one the agent does not get (asyncio
    streams cost about half as much again per request, aiohttp's client several times).
    Answers are JSON with a Content-Length, as the agent's are; each is checked."""

    def __init__(self, run, request):
        self.run = run
        self.request = request
        self.transport = None
        self.buf = b""
        self.t0 = 0.0
        self.finished = False

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        run = self.run
        t0 = harness.now()
        if t0 >= run.end:
            self.finish()
            return
        self.t0 = t0
        self.transport.write(self.request)

    def data_received(self, data):
        buf = self.buf + data
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            self.buf = buf
            return
        head = buf[:head_end].lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            return self.fail("an answer without Content-Length: %r" % head)
        j = head.find(b"\r\n", i + 2)
        need = head_end + 4 + int(head[i + 17:j if j > 0 else len(head)])
        if len(buf) < need:
            self.buf = buf
            return
        t1 = harness.now()
        body = buf[head_end + 4:need]
        self.buf = buf[need:]
        if head[9:12] != b"200" or json.loads(body).get("durable") is not True:
            return self.fail("answer %r %r" % (buf[:12], body))
        self.run.answered(self.t0, t1)
        self.send()

    def fail(self, why):
        self.run.fail(RuntimeError(why))
        self.finish()

    def finish(self):
        if not self.finished:
            self.finished = True
            self.transport.close()
            self.run.producer_done()

    def connection_lost(self, exc):
        if not self.finished:
            self.fail("the agent closed the connection: %s" % exc)


class _Run:
    """The shared state of one closed-loop run: clock bounds, what was answered."""

    def __init__(self, producers, per_request, seconds, loop):
        self.per_request = per_request
        self.t_start = harness.now()
        self.warm = self.t_start + seconds * 0.1
        self.end = self.t_start + seconds
        self.lat = []
        self.counted = 0  # records answered for requests begun after the warm-up
        self.last = self.warm  # the last such answer's time
        self.every = []  # (t0, t1) of every request, for runs whose requests outlast the warm-up
        self.left = producers
        self.done = loop.create_future()

    def answered(self, t0, t1):
        self.every.append((t0, t1))
        if t0 >= self.warm:
            self.lat.append(t1 - t0)
            self.counted += self.per_request
            if t1 > self.last:
                self.last = t1

    def fail(self, error):
        if not self.done.done():
            self.done.set_exception(error)

    def producer_done(self):
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)


async def closed_loop(url, producers, per_request, seconds):
    """Run ``producers`` waiting producers for ``seconds``: (latencies s, records, span s,
    requests). records / span is the throughput: what was answered for requests begun
    after the warm-up, over the time from the warm-up's end to the last such answer.
    requests counts every request, warm-up too (for CPU per request)."""
    hostport, path = url.split("//", 1)[1].split("/", 1)
    host, port = hostport.split(":")
    if per_request == 1:
        body = json.dumps({"t": 21.5, "n": 1}).encode()
    else:
        body = json.dumps([{"t": 21.5, "n": i} for i in range(per_request)]).encode()
    request = (b"POST /%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
               % (path.encode(), hostport.encode(), len(body))) + body
    loop = asyncio.get_running_loop()
    run = _Run(producers, per_request, seconds, loop)
    conns = []
    try:
        for _ in range(producers):
            conns.append(await loop.create_connection(lambda: _Producer(run, request), host, int(port)))
        await run.done
    finally:
        for transport, _ in conns:
            transport.close()
    if not run.lat:  # each request took longer than the warm-up (sync every, big requests): count them all
        lat = [t1 - t0 for t0, t1 in run.every]
        return lat, len(run.every) * per_request, max(t1 for _, t1 in run.every) - run.t_start, len(run.every)
    return run.lat, run.counted, max(0.0, run.last - run.warm), len(run.every)


def cpu_seconds(pid):
    """User + system CPU seconds process ``pid`` has used (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def measure(agents, cases, seconds, reps, slice_s):
    """Every case, every repetition: both agents in slices of about ``slice_s`` seconds,
    alternating every, group, group, every, ... until each had ``seconds``; the figures
    of one repetition pool its slices. Returns {(sync, producers, per_request): {"p50":
    [], "p99": [], "rate": [], "agent_us": [], "client_us": []}}, one entry per
    repetition."""
    out = {}
    for url, _ in agents.values():  # warm both agents (first segment, imports)
        await closed_loop(url, 4, 1, 0.3)
    for rep in range(reps):
        for n, k in cases:
            slices = max(1, int(round(seconds / slice_s)))
            first = ["every", "group"] if (rep + n + k) % 2 == 0 else ["group", "every"]
            acc = dict((sync, {"lat": [], "records": 0, "span": 0.0, "requests": 0, "agent": 0.0, "client": 0.0})
                       for sync in first)
            harness.progress("rep %d: %d producer(s), %d record(s) per request, %d slice(s) each" % (rep + 1, n, k,
                                                                                                  slices))
            for i in range(slices):
                for sync in (first if i % 2 == 0 else first[::-1]):
                    url, pid = agents[sync]
                    a0, c0 = cpu_seconds(pid), time.process_time()
                    lat, records, span, requests = await closed_loop(url, n, k, seconds / slices)
                    a1, c1 = cpu_seconds(pid), time.process_time()
                    s = acc[sync]
                    s["lat"] += lat
                    s["records"] += records
                    s["span"] += span
                    s["requests"] += requests
                    s["client"] += c1 - c0
                    s["agent"] = None if a0 is None or a1 is None or s["agent"] is None else s["agent"] + a1 - a0
            for sync, s in acc.items():
                o = out.setdefault((sync, n, k), {"p50": [], "p99": [], "rate": [], "agent_us": [], "client_us": []})
                o["p50"].append(percentile(s["lat"], 0.5) * 1000)
                o["p99"].append(percentile(s["lat"], 0.99) * 1000)
                o["rate"].append(s["records"] / s["span"] if s["span"] > 0 else float("nan"))
                if s["agent"] is not None and s["requests"]:
                    o["agent_us"].append(s["agent"] / s["requests"] * 1e6)
                o["client_us"].append(s["client"] / max(1, s["requests"]) * 1e6)
    return out


def fsync_ms(d, n=200):
    """The cost of one small write + fsync in this file system, for the notes."""
    p = os.path.join(d, "fsync-probe")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        t0 = harness.now()
        for _ in range(n):
            os.write(fd, b"x" * 90)
            os.fsync(fd)
        return (harness.now() - t0) / n * 1000
    finally:
        os.close(fd)
        os.remove(p)


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.set_defaults(reps=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per case, sync mode and repetition (default 3)")
    ap.add_argument("--slice", type=float, default=1.0, help="the two agents take turns every this many seconds "
                    "(default 1; at least one turn each)")
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 10, 100], help="concurrent producers (default 1 10 100)")
    ap.add_argument("--per-request", type=int, nargs="+", default=[1, 10], help="records per request (default 1 10)")
    a = ap.parse_args(argv)
    res = harness.Result("bench_producers", "waiting producers over HTTP: sync every vs group commit",
                         {"reps": a.reps, "seconds": a.seconds, "slice": a.slice, "producers": a.producers,
                          "per_request": a.per_request})
    cases = [(n, k) for k in a.per_request for n in a.producers]
    with harness.scratch_dir() as base:
        probe = fsync_ms(base)
        procs = Procs()
        try:
            agents = {sync: start_agent(procs, os.path.join(base, sync), sync) for sync in ("every", "group")}
            out = asyncio.run(measure(agents, cases, a.seconds, a.reps, a.slice))
        finally:
            procs.stop_all()
        probe_after = fsync_ms(base)
    for n, k in cases:
        tag = "%d producer%s, %d rec/req" % (n, "" if n == 1 else "s", k)
        e, g = out[("every", n, k)], out[("group", n, k)]
        le, lg = "every, %s: latency p50" % tag, "group, %s: latency p50" % tag
        res.add(le, harness.median(e["p50"]), "ms", e["p50"])
        res.add(lg, harness.median(g["p50"]), "ms", g["p50"], baseline=le,
                target=("ratio", "<=", 2.0) if n == 1 else None)
        pe, pg = "every, %s: latency p99" % tag, "group, %s: latency p99" % tag
        res.add(pe, harness.median(e["p99"]), "ms", e["p99"])
        res.add(pg, harness.median(g["p99"]), "ms", g["p99"], baseline=pe)
        te, tg = "every, %s: throughput" % tag, "group, %s: throughput" % tag
        res.add(te, harness.median(e["rate"]), "rec/s", e["rate"])
        res.add(tg, harness.median(g["rate"]), "rec/s", g["rate"], baseline=te,
                target=("ratio", ">=", 10.0) if n == 100 else None)
        for sync, o in (("every", e), ("group", g)):
            if o["agent_us"]:
                res.add("%s, %s: agent CPU per request" % (sync, tag), harness.median(o["agent_us"]), "us",
                        o["agent_us"])
        res.add("group, %s: client CPU per request" % tag, harness.median(g["client_us"]), "us", g["client_us"])
    res.note("one 90-byte write + fsync costs %.3f ms before the run, %.3f ms after, on this file system (the cost "
             "every pays per record)" % (probe, probe_after))
    res.note("ratios: group / every, the median of the per-repetition ratios (latency: lower is better; "
             "throughput: higher is better); each repetition interleaves the two agents in slices")
    res.note("CPU per request: user + system time of the agent process (fsync's kernel time included), and of this "
             "process (the producers, connection set-up included), over the requests answered; with many producers "
             "group commit's throughput is bounded by the agent's one loop thread over its CPU per request")
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
