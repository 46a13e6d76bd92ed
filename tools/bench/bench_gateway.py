"""Gateway ingest: records/s into SQLite with dedupe from concurrent edges over HTTP, and
wire bytes per record against the same records as JSON.

    python tools/bench/bench_gateway.py [--edges N] [--records N] [--batch N] [--reps R] [--json]

(a) ingest: a real gateway (aiohttp app on a loopback port, SQLite store, synchronous=FULL,
    group commit) in this process, and N concurrent edges in a second process (as edges
    are other machines), each with its own EdgeConnection over HTTP (its own session,
    handshake and key), sending BATCHes of --batch records and waiting for each ACK
    (durable at the gateway) before the next. The edge process times from its first
    BATCH to its last ACK. Baseline in the same run: the store alone (GatewayStore.commit
    of the same batches, no HTTP, no protocol), so the ratio is what the protocol and
    transport cost. Target (issue 3): >= 200,000 records/s. ``--edges-in-process`` runs
    the edges in the gateway's process and event loop instead (the previous set-up: the
    edges then take CPU from the gateway).
(b) wire bytes per record: a typical sensor record (sensor name, value, unit; ts; seq) as
    the BATCH bytes edgeline sends, against the same record as one JSON object (what a
    plain MQTT/HTTP pipeline publishes, with its node, seq and ts fields). Target:
    <= 60 % of JSON, before any compression.

Both processes share this machine's 2 cores, so the figure is a floor for a gateway on its
own machine.
"""
import argparse
import asyncio
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_core()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "host"))
import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from edgeline import codec, sync  # noqa: E402
from edgeline.log import Record  # noqa: E402
from edgeline_host import fastcbor  # noqa: E402
from edgeline_host.gateway.api import GatewayApi  # noqa: E402
from edgeline_host.gateway.gateway import Gateway  # noqa: E402
from edgeline_host.transports.http import HttpEdgeClient  # noqa: E402
from edgeline_host.gateway.store import GatewayStore  # noqa: E402

KEY = bytes(range(32))
BASE_TS = 1763900000000 << 16


def sensor_value(i):
    return {"sensor": "temp-%d" % (i % 4), "value": round(20 + (i % 97) * 0.11, 2), "unit": "C"}


def make_records(first, n):
    return [Record(s, BASE_TS + (s << 16) * 10, None, codec.dumps(sensor_value(s))) for s in range(first, first + n)]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def _run_edges(url, edges, per_edge, batch, codec=None):
    # N edges, each its own HTTP session with the gateway: connect all, then time from the
    # first BATCH to the last ACK.
    batches = [sync.batch_from_records("telemetry", make_records(1 + i * batch, batch)) for i in range(per_edge // batch)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=edges * 2)) as http:
        clients = [HttpEdgeClient(http, url, "edge-%d" % e, KEY, codec=codec) for e in range(edges)]
        for c in clients:
            await c.connect()

        async def run(c):
            for b in batches:
                evs = await c.exchange(b)
                if not evs or type(evs[-1]) is not sync.Ack or evs[-1].seq != b.first_seq + len(b.entries) - 1:
                    raise RuntimeError("unexpected answer %r" % (evs,))

        t0 = harness.now()
        await asyncio.gather(*(run(c) for c in clients))
        return harness.now() - t0


def edge_worker(url, edges, per_edge, batch):
    """The edges' process: prints {"seconds": ...} when every batch was acknowledged."""
    # the C-accelerated CBOR, as an agent on a host uses
    dt = asyncio.run(_run_edges(url, edges, per_edge, batch, codec=fastcbor.CODEC))
    print(json.dumps({"seconds": dt}), flush=True)


async def ingest_http(db, edges, records, batch, in_process=False):
    keys = {"edge-%d" % e: KEY for e in range(edges)}
    gw = Gateway(db, keys, max_batch_records=max(batch, 1000))
    runner = web.AppRunner(GatewayApi(gw).app())
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    url = "http://127.0.0.1:%d/v1/sync" % port
    per_edge = records // edges
    try:
        if in_process:
            dt = await _run_edges(url, edges, per_edge, batch, codec=fastcbor.CODEC)
        else:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, os.path.abspath(__file__), "--edge-worker", url, str(edges), str(per_edge), str(batch),
                stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            if proc.returncode:
                raise RuntimeError("edge process failed (exit %d)" % proc.returncode)
            dt = harness.last_json_line(out.decode())["seconds"]
        stored = sum(s["records"] for s in gw.store.status())
        if stored != per_edge // batch * batch * edges:
            raise RuntimeError("stored %d records" % stored)
        return stored / dt, gw.committer.commits
    finally:
        await runner.cleanup()


def ingest_store(db, edges, records, batch):
    st = GatewayStore(db)
    per_edge = records // edges
    groups = []
    for i in range(per_edge // batch):
        b = sync.batch_from_records("telemetry", make_records(1 + i * batch, batch))
        groups.append([("edge-%d" % e, b) for e in range(edges)])
    t0 = harness.now()
    for g in groups:
        st.commit(g, 1)
    dt = harness.now() - t0
    st.close()
    return per_edge // batch * batch * edges / dt


def wire_bytes(n=1000):
    recs = make_records(1, n)
    # Encode through a connection in READY state: a real handshake, in memory.
    e = sync.EdgeConnection("edge-1", KEY, os.urandom)
    g = sync.GatewayConnection({"edge-1": KEY}.get, os.urandom)
    g.receive_data(e.send(sync.Hello()))
    g.next_event()
    e.receive_data(g.send(sync.Challenge()))
    e.next_event()
    g.receive_data(e.send(sync.Auth()))
    g.next_event()
    e.receive_data(g.send(sync.Welcome(marks={})))
    e.next_event()
    batch_bytes = len(e.send(sync.batch_from_records("telemetry", recs)))
    js = 0
    for r in recs:
        doc = {"node": "edge-1", "topic": "telemetry", "seq": r.seq, "ts": r.ts >> 16}
        doc.update(sensor_value(r.seq))
        js += len(json.dumps(doc, separators=(",", ":")))
    return batch_bytes / n, js / n


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--edges", type=int, default=10)
    ap.add_argument("--records", type=int, default=200000, help="records in all, split over the edges")
    ap.add_argument("--batch", type=int, default=1000, help="records per BATCH")
    ap.add_argument("--edges-in-process", action="store_true",
                    help="run the edges in the gateway's process (they then share its CPU)")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--edge-worker"]:
        url, edges, per_edge, batch = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        edge_worker(url, edges, per_edge, batch)
        return 0
    a = ap.parse_args(argv)
    res = harness.Result(
        "bench_gateway",
        "gateway ingest over HTTP from %d concurrent edges, SQLite synchronous=FULL, dedupe by identity" % a.edges,
        {"edges": a.edges, "records": a.records, "batch": a.batch, "reps": a.reps, "value": "CBOR sensor reading (~40 B)"},
    )
    samples = {"http": [], "store": []}
    commits = []
    with harness.scratch_dir() as base:
        for rep in range(a.reps):
            harness.progress("store alone, rep %d/%d" % (rep + 1, a.reps))
            samples["store"].append(ingest_store(harness.fresh_subdir(base, "s") + "/gw.db", a.edges, a.records, a.batch))
            harness.progress("HTTP, rep %d/%d" % (rep + 1, a.reps))
            rate, n = asyncio.run(ingest_http(harness.fresh_subdir(base, "h") + "/gw.db", a.edges, a.records, a.batch,
                                              a.edges_in_process))
            samples["http"].append(rate)
            commits.append(n)
    res.add("store alone (GatewayStore.commit, groups of %d batches)" % a.edges, harness.median(samples["store"]),
            "rec/s", samples["store"])
    res.add("gateway over HTTP, %d edges%s" % (a.edges, " (same process)" if a.edges_in_process else ""), harness.median(samples["http"]), "rec/s", samples["http"],
            baseline="store alone (GatewayStore.commit, groups of %d batches)" % a.edges,
            target=("value", ">=", 200000), note="group commits per run: %s" % commits)
    per_rec, per_json = wire_bytes()
    res.add("JSON per record", per_json, "bytes")
    res.add("edgeline BATCH per record", per_rec, "bytes", baseline="JSON per record", ratio=per_rec / per_json,
            target=("ratio", "<=", 0.6))
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
