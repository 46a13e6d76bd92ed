"""Idempotent ingest: the agent's ingest rate with a key per request against the same
requests without one, in the same run.

    python tools/bench/bench_idempotency.py [--requests N] [--reps R] [--json]

Each contender is an ``Agent`` (service.py) in this process on a fresh data dir, fed on
one asyncio loop through what an HTTP request costs past the socket: the body parsed
(``jsonrecords.parse_records``), the idempotency headers read and the body digested
(``Agent._idempotency``: BLAKE2b-16), then ``Agent.ingest`` -- the check, the append, and
the wait for the commit the answer waits for. HTTP itself is left out: it costs the same
with and without a key and would only hide the difference.

* baseline: no key (the headers absent).
* ``Idempotency-Key``: a fresh key per request; each adds an entry to the topic's dedupe
  window (one small write) and the window is synced before each fsync of the log.
* ``Edgeline-Producer-Id`` + ``Edgeline-Request-Seq``: the same, keyed by producer.

Two scenarios: ``sync: group`` (1000 records / 5 ms) with 32 producers in flight posting
10 records per request (the window's fsync rides along each group commit: two fsyncs per
commit instead of one), and ``sync: every`` with one producer posting one record per
request (two fsyncs per request instead of one: the worst case). Contenders run
interleaved in blocks (``harness.interleave``). Target: keyed ingest at >= 0.5 of the
unkeyed rate under ``group`` -- the window's fsync must come before the log's (records
durable implies their entries durable), so a commit that is all fsync takes two instead
of one; anything above 0.5 is the share of the commit that is not the fsync. Reported,
never asserted.
"""
import argparse
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_core()
sys.path.insert(0, os.path.join(harness.ROOT, "host"))

from edgeline_host.agent.config import parse_config  # noqa: E402
from edgeline_host.agent.service import Agent  # noqa: E402
from edgeline_host.jsonrecords import parse_records  # noqa: E402

SCENARIOS = {
    "group": {"sync": "group", "group_records": 1000, "group_ms": 5, "producers": 32, "records": 10},
    "every": {"sync": "every", "producers": 1, "records": 1},
}
KINDS = ("none", "key", "producer")


class Contender:
    def __init__(self, loop, base, scenario, kind):
        sc = SCENARIOS[scenario]
        topic = {"topic": "t", "sync": sc["sync"], "budget": "1GiB", "segment_size": "4MiB"}
        if sc["sync"] == "group":
            topic.update(group_records=sc["group_records"], group_ms=sc["group_ms"])
        edge = {"node_id": "bench", "data_dir": harness.fresh_subdir(base, "%s-%s" % (scenario, kind)),
                "sync": {"enabled": False}, "resources": {"max_storage": "2GiB"},
                "local_topics": [topic], "ingest": {"http": {}}}
        self.agent = Agent(parse_config({"edge": edge}, "bench.yaml"), print_fn=lambda *_: None)
        self.loop = loop
        self.kind = kind
        self.producers = sc["producers"]
        self.body = json.dumps([{"t": 21.5, "n": i, "pad": "x" * 30} for i in range(sc["records"])]).encode()
        self.n = 0

    def headers(self, p):
        self.n += 1
        if self.kind == "key":
            return {"Idempotency-Key": "req-%d-%d" % (p, self.n)}
        if self.kind == "producer":
            return {"Edgeline-Producer-Id": "producer-%d" % p, "Edgeline-Request-Seq": str(self.n)}
        return {}

    async def _producer(self, p, k):
        agent = self.agent
        for _ in range(k):
            idem = agent._idempotency(self.headers(p), self.body)
            keys, values = parse_records(self.body)
            a = await agent.ingest("t", keys, values, idem)
            assert a["durable"] and not a.get("duplicate"), a

    async def _all(self, per):
        await asyncio.gather(*[self._producer(p, per) for p in range(self.producers)])

    def run(self, k):
        """k requests, spread over the producers; seconds spent."""
        per = max(1, k // self.producers)
        t0 = harness.now()
        self.loop.run_until_complete(self._all(per))
        return (harness.now() - t0) * k / (per * self.producers)

    def close(self):
        self.agent.store.close()
        self.agent._close_windows()


def measure(base, scenario, requests, block):
    loop = asyncio.new_event_loop()
    cs = [Contender(loop, base, scenario, kind) for kind in KINDS]
    try:
        return harness.interleave([(c.kind, c.run) for c in cs], requests, block)
    finally:
        for c in cs:
            c.close()
        loop.close()


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--requests", type=int, default=6400, help="requests per contender under group (default 6400)")
    ap.add_argument("--every-requests", type=int, default=1000, help="requests per contender under every")
    a = ap.parse_args(argv)
    res = harness.Result("bench_idempotency", "idempotent ingest: requests/s with a key against without",
                         {"requests": a.requests, "every_requests": a.every_requests, "reps": a.reps})
    out = {(s, k): [] for s in SCENARIOS for k in KINDS}
    with harness.scratch_dir() as base:
        for rep in range(a.reps):
            for scenario, n, block in (("group", a.requests, 640), ("every", a.every_requests, 100)):
                harness.progress("bench_idempotency: %s, rep %d" % (scenario, rep + 1))
                rates = measure(base, scenario, n, block)
                for k in KINDS:
                    out[(scenario, k)].append(rates[k])
    for scenario, label in (("group", "sync: group, 32 producers x 10 records"),
                            ("every", "sync: every, 1 producer x 1 record")):
        recs = SCENARIOS[scenario]["records"]
        base_case = "%s, no key" % label
        res.add(base_case, harness.median(out[(scenario, "none")]) * recs, "rec/s",
                [x * recs for x in out[(scenario, "none")]])
        for k, name in (("key", "Idempotency-Key"), ("producer", "producer id + request seq")):
            target = ("ratio", ">=", 0.5) if scenario == "group" else None
            res.add("%s, %s" % (label, name), harness.median(out[(scenario, k)]) * recs, "rec/s",
                    [x * recs for x in out[(scenario, k)]], baseline=base_case, target=target)
    res.note("every contender computes the same per-request work (body parsed; headers read); keyed ones "
             "also digest the body and write a window entry; under sync: every each request costs the "
             "window's fsync besides the log's")
    res.emit(a.json)


if __name__ == "__main__":
    main()
