"""Gateway-to-edge sync (cloud-to-edge topics): publish rate at the gateway and the drain
of a published backlog to an edge agent that was offline, against the same backlog
drained the other way (agent -> gateway) in the same run.

    python tools/bench/bench_downlink.py [--backlog N] [--reps R] [--json]

Real processes, as deployed: an ``edgeline gateway`` subprocess (SQLite synchronous=FULL)
with a topics file declaring ``setpoints`` cloud_to_edge, and an ``edgeline agent``
subprocess on free loopback ports with fresh node keys (``interval_secs: 0``,
``batch_size: 5000``: a DATA carries up to 5000 records, and the agent pulls again at
once while records come).

(1) publish: --backlog records (default 200,000; the values of bench_sync.py) are
    published while the agent is not running, in requests of 5000 (2 in flight) to
    ``POST /v1/topics/setpoints/publish``, each answered once committed: records/s.
(2) downlink drain: the agent is started; the time from its /v1/health answering until
    its ``GET /v1/queue`` says ``received_seq`` = --backlog (every record appended to its
    log and committed; polled every 5 ms), and from its process start. Afterwards the
    agent's read API is checked to hold seqs 1..N.
(3) baseline, the other way (bench_sync.py's backlog measurement): the same number of
    records ingested at an agent whose gateway is down, then the time from the gateway
    answering /healthz until the agent's queue is empty (every record stored at the
    gateway). Ratio = downlink drain time / uplink drain time (below 1: faster).

Every process is started here and ended by its PID; files go to a fresh /tmp dir.
Target: the downlink drain is no slower than the uplink's (ratio <= 1.5; both do one
fsync per batch on each side).
"""
import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sync  # noqa: E402
import harness  # noqa: E402

AGENT_CONFIG = """\
edge:
  node_id: edge-1
  data_dir: ./data
  key_file: ./node.key
  cloud_endpoint: http://127.0.0.1:%(gw_port)d
  sync:
    interval_secs: 0
    batch_size: 5000
    retry: {initial_ms: 50, max_ms: 200, multiplier: 2, jitter: 0.2}
    circuit_breaker: {failures: 1000, open_secs: 1}
  resources:
    max_storage: 2GiB
  sync_topics:
    - {topic: setpoints, direction: cloud_to_edge, segment_size: 1MiB}
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
"""


class DownFleet(bench_sync.Fleet):
    """bench_sync's gateway + agent, the agent pulling a cloud_to_edge topic."""

    def __init__(self, procs, d):
        bench_sync.Fleet.__init__(self, procs, d)
        with open(os.path.join(d, "edge.yaml"), "w") as f:
            f.write(AGENT_CONFIG % {"gw_port": self.gw_port, "port": self.port})
        with open(os.path.join(d, "topics.yaml"), "w") as f:
            f.write("setpoints: cloud_to_edge\n")

    async def start_gateway(self, http):
        self.gateway = self.procs.spawn(self.exe + ["gateway", "--keys", "keys.yaml", "--db", "gateway.db",
                                                    "--listen", "127.0.0.1:%d" % self.gw_port, "--topics",
                                                    "topics.yaml"], self.d, "gateway.log")
        await self.wait_up(http, self.gw_url + "/healthz", self.gateway, "the gateway")

    async def publish(self, http, values):
        async with http.post(self.gw_url + "/v1/topics/setpoints/publish", json=values) as r:
            a = await r.json(content_type=None)
            if r.status != 200 or a["last_seq"] - a["first_seq"] + 1 != len(values):
                raise RuntimeError("publish answered %d %r" % (r.status, a))
            return a["first_seq"]

    async def received(self, http):
        return (await self.get(http, self.url + "/v1/queue"))["topics"]["setpoints"]["received_seq"]


async def downlink(fleet, http, records, per_post=5000):
    await fleet.start_gateway(http)
    sem = asyncio.Semaphore(2)
    first_n = {}  # first seq of each publish -> the n of its first value

    async def one(i):
        # Two publishes are in flight: either may commit first, so the seqs of a request's
        # records are known from its answer, not from the order the requests were sent.
        async with sem:
            first_n[await fleet.publish(http, [bench_sync.value(j) for j in range(i, min(records, i + per_post))])] = i

    t0 = harness.now()
    await asyncio.gather(*(one(i) for i in range(0, records, per_post)))
    publish_s = harness.now() - t0
    t_spawn = harness.now()
    await fleet.start_agent(http)
    t_up = harness.now()
    deadline = time.monotonic() + 120
    while await fleet.received(http) < records:
        if time.monotonic() > deadline:
            raise RuntimeError("the backlog did not come down in 120 s")
        await asyncio.sleep(0.005)
    t_end = harness.now()
    expect_n = {}  # seq -> the n of the value published under it
    for first, n in first_n.items():
        for k in range(min(per_post, records - n)):
            expect_n[first + k] = n + k
    seq = 0
    while seq < records:  # every record once, in order, under the seq its publish was answered with
        page = await fleet.get(http, fleet.url + "/v1/topics/setpoints/records?after=%d&limit=10000" % seq)
        for r in page["records"]:
            if r["seq"] != seq + 1 or r["value"]["n"] != expect_n.get(seq + 1):
                raise RuntimeError("record %d of the agent is %r" % (seq + 1, r))
            seq += 1
        if not page["records"]:
            raise RuntimeError("the agent holds %d records, not %d" % (seq, records))
    return {"publish_s": publish_s, "drain_s": t_end - t_up, "drain_from_spawn_s": t_end - t_spawn,
            "agent_start_s": t_up - t_spawn}


async def one_rep(base, rep, a, out):
    import aiohttp

    procs = bench_sync.Procs()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                 timeout=aiohttp.ClientTimeout(total=120))
    try:
        harness.progress("rep %d: downlink backlog of %d records, agent down" % (rep + 1, a.backlog))
        out["down"].append(await downlink(DownFleet(procs, harness.fresh_subdir(base, "down-%d" % rep)), http,
                                          a.backlog))
        procs.stop_all()
        harness.progress("rep %d: uplink backlog of %d records, gateway down" % (rep + 1, a.backlog))
        fb = bench_sync.Fleet(procs, harness.fresh_subdir(base, "up-%d" % rep))
        await fb.start_agent(http)
        out["up"].append(await bench_sync.backlog(fb, http, a.backlog))
    finally:
        procs.stop_all()
        await http.close()


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--backlog", type=int, default=200000, help="records published while the agent is down")
    ap.set_defaults(reps=1)
    a = ap.parse_args(argv)
    res = harness.Result(
        "bench_downlink",
        "gateway -> edge agent (cloud-to-edge topic), real processes on loopback: publish, backlog drain vs uplink",
        {"reps": a.reps, "backlog": a.backlog, "agent": "interval_secs=0, batch_size=5000 (records per DATA)"},
    )
    out = {"down": [], "up": []}
    with harness.scratch_dir() as base:
        for rep in range(a.reps):
            asyncio.run(one_rep(base, rep, a, out))
    pub = [a.backlog / x["publish_s"] for x in out["down"]]
    res.add("publish at the gateway (5000 per request, 2 in flight)", harness.median(pub), "rec/s", pub,
            note="each request answered once committed (SQLite FULL)")
    up = [x["drain_s"] for x in out["up"]]
    res.add("uplink backlog drain (gateway up -> 0 pending)", harness.median(up), "s", up,
            note="%.0f rec/s" % (a.backlog / harness.median(up)))
    down = [x["drain_s"] for x in out["down"]]
    res.add("downlink backlog drain (agent up -> all received)", harness.median(down), "s", down,
            baseline="uplink backlog drain (gateway up -> 0 pending)", target=("ratio", "<=", 1.5),
            note="%.0f rec/s; from the agent's process start: %s s (start %s s)" % (
                a.backlog / harness.median(down), [round(x["drain_from_spawn_s"], 2) for x in out["down"]],
                [round(x["agent_start_s"], 2) for x in out["down"]]))
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
