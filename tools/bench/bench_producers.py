"""Waiting producers over HTTP: what a producer sees from the agent, ``sync: every``
against group commit (leader/follower).

    python tools/bench/bench_producers.py [--seconds S] [--producers 1 10 100] [--per-request 1 10] [--reps R] [--json]

Two ``edgeline agent`` subprocesses on free loopback ports, data under one fresh /tmp
dir, one local topic each: ``sync: every`` (an fsync per record, before the answer) and
``sync: group`` with its defaults (1000 records / 1 s: the bounds for records nobody
waits for; a waiting producer starts a commit at once and writers arriving during its
fsync share the next one). Producers are coroutines in this process (a minimal HTTP/1.1
client, one keep-alive connection each): each posts a request of --per-request records (JSON values of
about 20 bytes), waits for the answer (``"durable": true``), and posts the next --
closed loop, as a producer that needs the answer does. For each count of producers and
records per request, the two agents run in turn for --seconds each, the order rotating
with the repetition (noise from other jobs falls on both). Requests that began in the
first tenth of a run are warm-up and not counted.

Reported per case: producer-observed latency p50 and p99 (from sending the request to
reading the answer) and throughput in records/s. Ratios: group commit's latency against
``every``'s (lower is better) and its throughput against ``every``'s.

Targets (issue 9): one waiting producer sees group-commit latency <= 2x that of
``every``; with 100 producers group commit gives >= 10x the throughput of ``every``.
What bounds them on a given machine is the fsync's cost against the HTTP round trip's:
``every`` costs one fsync per record, group commit one per commit shared by every
producer waiting, so the throughput ratio grows with the fsync's cost (an SD card's
several ms) and is capped by what the client and server can do over HTTP on these cores.
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
    return "http://127.0.0.1:%d/v1/topics/t/records" % port


def percentile(xs, p):
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(p * len(s)))]


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time: the least a client can
    do per request (aiohttp's client costs several times more CPU per request, and on two
    shared cores the client's CPU would be what is measured). Answers are JSON with a
    Content-Length, as the agent's are."""

    def __init__(self, host, port, path):
        self.host, self.port, self.path = host, port, path
        self.reader = self.writer = None

    async def post(self, body):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (self.path, self.host, self.port, len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, json.loads(await self.reader.readexactly(length))

    def close(self):
        if self.writer is not None:
            self.writer.close()


async def closed_loop(url, producers, per_request, seconds):
    """Run ``producers`` waiting producers for ``seconds``; (latencies s, records/s)."""
    hostport, path = url.split("//", 1)[1].split("/", 1)
    host, port = hostport.split(":")
    if per_request == 1:
        body = json.dumps({"t": 21.5, "n": 1}).encode()
    else:
        body = json.dumps([{"t": 21.5, "n": i} for i in range(per_request)]).encode()
    conns = [Connection(host.encode(), int(port), b"/" + path.encode()) for _ in range(producers)]
    t_start = harness.now()
    warm = t_start + seconds * 0.1
    end = t_start + seconds
    lat = []
    done = [0, warm]  # records counted, last answer time
    every = []  # (t0, t1) of every request, for runs whose requests outlast the warm-up

    async def producer(c):
        while True:
            t0 = harness.now()
            if t0 >= end:
                return
            status, a = await c.post(body)
            t1 = harness.now()
            if status != 200 or a.get("durable") is not True:
                raise RuntimeError("answer %d %r" % (status, a))
            every.append((t0, t1))
            if t0 >= warm:
                lat.append(t1 - t0)
                done[0] += per_request
                done[1] = max(done[1], t1)

    try:
        await asyncio.gather(*[producer(c) for c in conns])
    finally:
        for c in conns:
            c.close()
    if not lat:  # each request took longer than the warm-up (sync every, big requests): count them all
        lat = [t1 - t0 for t0, t1 in every]
        return lat, len(every) * per_request / (max(t1 for _, t1 in every) - t_start)
    return lat, done[0] / (done[1] - warm) if done[1] > warm else float("nan")


async def measure(urls, cases, seconds, reps):
    out = {}  # (sync, producers, per_request) -> {"p50": [], "p99": [], "rate": []}
    for url in urls.values():  # warm both agents (first segment, imports)
        await closed_loop(url, 4, 1, 0.3)
    for rep in range(reps):
        for n, k in cases:
            order = ["every", "group"] if (rep + n + k) % 2 == 0 else ["group", "every"]
            for sync in order:
                harness.progress("rep %d: %s, %d producer(s), %d record(s) per request" % (rep + 1, sync, n, k))
                lat, rate = await closed_loop(urls[sync], n, k, seconds)
                o = out.setdefault((sync, n, k), {"p50": [], "p99": [], "rate": []})
                o["p50"].append(percentile(lat, 0.5) * 1000)
                o["p99"].append(percentile(lat, 0.99) * 1000)
                o["rate"].append(rate)
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
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per case and sync mode (default 3)")
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 10, 100], help="concurrent producers (default 1 10 100)")
    ap.add_argument("--per-request", type=int, nargs="+", default=[1, 10], help="records per request (default 1 10)")
    a = ap.parse_args(argv)
    res = harness.Result("bench_producers", "waiting producers over HTTP: sync every vs group commit",
                         {"reps": a.reps, "seconds": a.seconds, "producers": a.producers, "per_request": a.per_request})
    cases = [(n, k) for k in a.per_request for n in a.producers]
    with harness.scratch_dir() as base:
        probe = fsync_ms(base)
        procs = Procs()
        try:
            urls = {sync: start_agent(procs, os.path.join(base, sync), sync) for sync in ("every", "group")}
            out = asyncio.run(measure(urls, cases, a.seconds, a.reps))
        finally:
            procs.stop_all()
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
    res.note("one 90-byte write + fsync costs %.3f ms on this file system (the cost every pays per record)" % probe)
    res.note("ratios: group / every, per repetition (latency: lower is better; throughput: higher is better)")
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
