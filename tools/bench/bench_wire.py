"""Bytes on the wire per record through the agent's uplink over HTTP, with each
edge.sync.compression: none (plain BATCH), columnar, zstd -- headers and handshakes
included -- and the uplink's records/s with each.

    python tools/bench/bench_wire.py [--records N] [--reps R] [--json]

The demo's sensor records (tools/datasets/sensors.py, ``agent`` shape: {"sensor", "value",
"unit", "n"} maps, four sensors per 200 ms tick) and the POS transactions
(tools/datasets/pos.py) are appended to an edge log; the agent's ``Uplink`` sends them to
a ``Gateway`` (SQLite store, its HTTP API on aiohttp) in this process, through a
``FaultLink`` (edgeline_host.faultlink, no faults) that counts every byte of the TCP
connections both ways: HTTP request and status lines, headers, bodies, the HELLO/AUTH
handshake. Batches of 1, 10, 100 and 1000 records (``sync.batch_size``); one request
carries one batch (one topic).

* ``JSON``: the records as a JSON array of {"seq", "ts", "key", "value"} objects, compact,
  per batch -- what a REST ingest of the same records would carry in its bodies alone
  (no headers): the baseline of the ratios, as in bench_columnar.
* ``none`` / ``columnar`` / ``zstd``: bytes up (edge to gateway) per record, and up plus
  down (the answers) per record.

records/s: the time from starting the uplink to the last ACK, for --records records at
batch 1000, the median of --reps; ratio against ``none`` in the same rep (the CPU the
encoder costs shows here: on loopback the link is never the bottleneck). With --records
5000 or more, once more with the uplink's bandwidth_limit at 1 Mbit/s (a slow link; up to
10,000 records), none against zstd.
"""
import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_core()
sys.path.insert(0, os.path.join(harness.ROOT, "host"))
sys.path.insert(0, os.path.join(harness.ROOT, "tools", "datasets"))
import pos  # noqa: E402
import sensors  # noqa: E402

from aiohttp.test_utils import TestServer  # noqa: E402

from edgeline import codec  # noqa: E402
from edgeline.log import RingLog  # noqa: E402
from edgeline.outbox import Outbox  # noqa: E402
from edgeline_host.agent.config import CircuitBreaker, RetryPolicy  # noqa: E402
from edgeline_host.agent.uplink import Uplink  # noqa: E402
from edgeline_host.faultlink import FaultLink  # noqa: E402
from edgeline_host.gateway.api import GatewayApi  # noqa: E402
from edgeline_host.gateway.gateway import Gateway  # noqa: E402

KEY = bytes(range(32))
NODE = "bench-edge"
SETTINGS = ("none", "columnar", "zstd")
BATCHES = (1, 10, 100, 1000)


def json_bytes(recs, size):
    total = 0
    for i in range(0, len(recs), size):
        docs = [{"seq": s, "ts": ts, "key": None if k is None else k.decode("utf-8"), "value": codec.loads(v)}
                for s, ts, k, v in recs[i:i + size]]
        total += len(json.dumps(docs, separators=(",", ":")).encode())
    return total


async def run_once(base, recs, compression, batch, tag, bandwidth=0):
    """(bytes up, bytes down, seconds) to send recs through the uplink."""
    d = harness.fresh_subdir(base, "%s-%s-%d" % (tag, compression, batch))
    gw = Gateway(os.path.join(d, "gw.db"), {NODE: KEY}, max_batch_records=10000)
    server = TestServer(GatewayApi(gw).app(), port=0)
    await server.start_server()
    link = FaultLink(0, "127.0.0.1", server.port)
    await link.start()
    lg = RingLog(os.path.join(d, "log"), sync="none", budget_bytes=1 << 30)
    for _seq, ts, key, value in recs:
        lg.append(value, key=key, ts=ts)
    lg.flush()
    ob = Outbox(lg)
    up = Uplink(NODE, KEY, "http://127.0.0.1:%d/v1/sync" % link.port, {"t": (lg, ob)},
                retry=RetryPolicy(initial_ms=20, max_ms=100, multiplier=2.0, jitter=0.2),
                breaker=CircuitBreaker(failures=0, open_ms=1000), batch_records=batch, interval_ms=60000,
                max_batch_bytes=1 << 20, compression=compression, bandwidth_bytes_per_sec=bandwidth)
    t0 = time.perf_counter()
    task = asyncio.create_task(up.run())
    try:
        while ob.acked < len(recs):
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        if up.status()["failures"] or up.total_failures:
            raise RuntimeError("the uplink failed: %s" % up.last_error)
        got = gw.store.records("t", origin=NODE, limit=10 ** 7)
        if [(r["seq"], r["ts"], r["key"], r["value"]) for r in got] != [tuple(r) for r in recs]:
            raise RuntimeError("the gateway's records differ from those sent (%s)" % compression)
        return link.bytes_up, link.bytes_down, elapsed
    finally:
        up.stop()
        await asyncio.wait_for(task, 10)
        lg.close()
        await link.stop()
        await server.close()  # the API's cleanup closes the gateway


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--records", type=int, default=2000, help="records per data set for the sizes (default 2000)")
    a = ap.parse_args(argv)
    n = a.records
    res = harness.Result("bench_wire", "bytes/record over HTTP (headers included) and records/s by sync.compression",
                         {"records": n, "reps": a.reps, "batches": list(BATCHES)})
    data = {"sensors": sensors.records(n, 1, "agent"), "pos": pos.records(n, 1)}

    async def go():
        with harness.scratch_dir() as base:
            for name, recs in data.items():
                for batch in BATCHES:
                    sub = recs if batch > 1 else recs[:min(n, 300)]  # batch 1: a request per record
                    js = "%s, batch %d: JSON bodies" % (name, batch)
                    res.add(js, json_bytes(sub, batch) / float(len(sub)), "B/rec")
                    for c in SETTINGS:
                        harness.progress("%s batch %d %s" % (name, batch, c))
                        up, down, _ = await run_once(base, sub, c, batch, name)
                        res.add("%s, batch %d: %s, up" % (name, batch, c), up / float(len(sub)), "B/rec", baseline=js,
                                note="up+down %.1f B/rec" % ((up + down) / float(len(sub))))
            rates = dict((c, []) for c in SETTINGS)
            recs = data["sensors"]
            for rep in range(a.reps):
                for c in SETTINGS[rep % 3:] + SETTINGS[:rep % 3]:  # the order rotates
                    harness.progress("records/s rep %d %s" % (rep, c))
                    _, _, t = await run_once(base, recs, c, 1000, "rate%d" % rep)
                    rates[c].append(len(recs) / t)
            res.add("sensors, batch 1000: none, records/s", harness.median(rates["none"]), "rec/s",
                    samples=rates["none"])
            for c in SETTINGS[1:]:
                res.add("sensors, batch 1000: %s, records/s" % c, harness.median(rates[c]), "rec/s", samples=rates[c],
                        baseline="sensors, batch 1000: none, records/s")
            # a slow link: the uplink's bandwidth_limit at 1 Mbit/s (125,000 B/s; its
            # bucket starts with one second's worth, so the run is made several seconds long)
            slow = data["sensors"][:min(len(data["sensors"]), 10000)]
            if len(slow) >= 5000:
                for c in ("none", "zstd"):
                    harness.progress("records/s at 1 Mbit/s, %s" % c)
                    _, _, t = await run_once(base, slow, c, 1000, "slow", bandwidth=125000)
                    case = "sensors, batch 1000, link 1 Mbit/s: %s, records/s" % c
                    res.add(case, len(slow) / t, "rec/s",
                            baseline=None if c == "none" else "sensors, batch 1000, link 1 Mbit/s: none, records/s")

    asyncio.run(go())
    res.note("B/rec: bytes on the TCP link (HTTP request lines, headers, bodies; handshakes included) / records; "
             "ratio = case / the JSON bodies of the same batches (no headers)")
    res.note("records/s: uplink start to last ACK, loopback, in-process gateway (SQLite FULL); ratio = / none")
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
