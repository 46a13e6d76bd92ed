"""Table topics (issue 10): what an edge back after many writes receives, with and without
compaction of the table's cloud stream.

    python tools/bench/bench_table_catchup.py [--writes N] [--keys N] [--edge-share F] [--reps R] [--json]

A real ``Gateway`` (SQLite store, WAL, synchronous=FULL) in this process with one table
topic (register, last_write_wins). While edge ``store-1`` is away, ``--writes`` writes are
made to ``--keys`` keys (``{"qty": int, "loc": "A3"}``): the cloud's through
``Gateway.table_write`` (100 per request), and a share ``--edge-share`` by edge
``store-2`` as BATCHes of 100 through ``Gateway.process`` (the real sync path), which
the gateway relays into the cloud stream. store-2 is online: it pulls (compacted) before
each of its batches, so its writes have seen the cloud's and no key is in conflict --
one live version per key, as in the issue's figure. Then store-1 catches up: HELLO, AUTH, PULLs of
10,000 records through ``Gateway.process`` until an empty DATA, each DATA stored in a
``RingLog`` (``edgeline.inbox.append_data``) and applied to a table replica -- the
agent's whole downlink work but HTTP. Twice, in alternating order per repetition:

* **before** -- the HELLO without the ``compaction`` capability (an agent from before):
  every record of the stream;
* **after** -- with it: the live records only (docs/spec/wire.md, "Compacted DATA").

Reported: bytes of the gateway's answers to the PULLs (DATA messages as sent), records
received, and the catch-up time (gateway and edge in one process, the median of the
repetitions). Target (issue 10): the edge receives at most 1,000 records' worth of bytes
-- one record's worth being the *before* run's bytes per record, so the ratio row is
(after bytes) / (1,000 x before bytes per record), <= 1. Both edges end with the
gateway's table (checked).
"""
import argparse
import asyncio
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_core()
sys.path.insert(0, os.path.join(harness.ROOT, "host"))

from edgeline import codec, sync  # noqa: E402
from edgeline import table as T  # noqa: E402
from edgeline.inbox import append_data  # noqa: E402
from edgeline.log import Record, RingLog  # noqa: E402
from edgeline_host import tables  # noqa: E402
from edgeline_host.gateway.gateway import Gateway  # noqa: E402
from edgeline_host.gateway.topics import parse_topics  # noqa: E402

KEY1 = bytes(range(32))
KEY2 = bytes(range(32, 64))
NODES = {"store-1": KEY1, "store-2": KEY2}
TOPIC = "inventory.updates"
INC = bytes.fromhex("00000000000000a2")


def sku(i):
    return "sku-%05d" % i


async def handshake(gw, node, key, caps):
    edge = sync.EdgeConnection(node, key, os.urandom)
    conn = gw.new_connection()
    out, _ = await gw.process(conn, edge.send(sync.Hello(capabilities=caps, incarnations={TOPIC: INC})))
    edge.receive_data(out)
    edge.next_event()
    out, _ = await gw.process(conn, edge.send(sync.Auth()))
    edge.receive_data(out)
    edge.next_event()
    return edge, conn


async def pull_into(gw, edge, conn, lg, rep, compacted=True):
    """PULL until an empty DATA, storing each DATA in ``lg`` and applying it to ``rep``;
    returns (bytes of the gateway's answers, DATA entries)."""
    nbytes = 0
    records = 0
    skip_bytes = 0
    while True:
        out, _ = await gw.process(conn, edge.send(sync.Pull(TOPIC, lg.last_seq, 10000)))
        nbytes += len(out)
        edge.receive_data(out)
        data = edge.next_event()
        assert type(data) is sync.Data, data
        if not data.entries:
            return nbytes, records, skip_bytes
        records += len(data.entries)
        skip_bytes += sum(len(codec.dumps(e)) - len(codec.dumps(e[:3])) for e in data.entries if len(e) > 3)
        before = lg.last_seq
        assert append_data(lg, data)
        seq = before + 1
        while seq <= lg.last_seq:
            got = lg.read(seq, 10000, 1 << 26)
            for r in got:
                rep.apply_record(T.CLOUD, r.seq, r.ts, r.key, r.value)
            seq = got[-1].seq + 1


async def make_writes(gw, base, writes, keys, edge_share, seed=7):
    # store-2 is an agent that is online: before each batch of its writes it pulls what
    # is new (compacted), so its writes have seen the cloud's (no conflicts: 1,000 keys,
    # one live version each)
    rnd = random.Random(seed)
    edge, conn = await handshake(gw, "store-2", KEY2, {"pull": True, "compaction": True})
    mine = tables.Replica(TOPIC, gw.tables[TOPIC].settings)  # store-2's replica: its writes and the cloud's
    lg = RingLog(harness.fresh_subdir(base, "store-2"), segment_bytes=4 << 20, budget_bytes=1 << 30, sync="none")
    writer = tables.writer_id("store-2", INC.hex())
    seq = 0
    done = 0
    while done < writes:
        n = min(100, writes - done)
        if rnd.random() < edge_share:
            await pull_into(gw, edge, conn, lg, mine)
            recs = []
            for _ in range(n):
                k = sku(rnd.randrange(keys))
                seq += 1
                v = mine.form_write(k, writer, {"qty": rnd.randrange(100), "loc": "A3"})
                mine.apply_record(writer, seq, seq, k.encode(), v)
                recs.append(Record(seq, seq, k.encode(), v))
            out, _ = await gw.process(conn, edge.send(sync.batch_from_records(TOPIC, recs)))
            edge.receive_data(out)
            ack = edge.next_event()
            assert type(ack) is sync.Ack and ack.seq == seq, ack
        else:
            await gw.table_write(TOPIC, [(sku(rnd.randrange(keys)), {"qty": rnd.randrange(100), "loc": "A3"}, False)
                                         for _ in range(n)])
        done += n
    for _ in range(1000):  # the relays of store-2's writes
        if not gw._relay_pending:
            break
        await asyncio.sleep(0.01)
    lg.close()


async def catch_up(gw, where, compacted):
    caps = {"pull": True, "compaction": True} if compacted else {"pull": True}
    t0 = harness.now()
    edge, conn = await handshake(gw, "store-1", KEY1, caps)
    lg = RingLog(where, segment_bytes=4 << 20, budget_bytes=1 << 30, sync="none")
    rep = tables.Replica(TOPIC, gw.tables[TOPIC].settings)
    nbytes, records, skip_bytes = await pull_into(gw, edge, conn, lg, rep)
    dt = harness.now() - t0
    state = rep.state_json()["keys"]
    lg.close()
    return nbytes, records, dt, state, skip_bytes


def run(base, writes, keys, edge_share, reps):
    d = harness.fresh_subdir(base, "gw")

    async def go():
        tops = parse_topics({TOPIC: {"direction": "bidirectional", "kind": "table"}}, NODES, "topics.yaml")
        gw = Gateway(os.path.join(d, "gw.db"), NODES, topics=tops)
        await gw.start()
        try:
            harness.progress("%d writes to %d keys while store-1 is away" % (writes, keys))
            t0 = harness.now()
            await make_writes(gw, base, writes, keys, edge_share)
            write_s = harness.now() - t0
            want = gw.tables[TOPIC].state_json()["keys"]
            out = {"before": [], "after": []}
            for rep in range(reps):
                order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
                for which in order:
                    harness.progress("catch-up %s compaction, rep %d/%d" % (which, rep + 1, reps))
                    got = await catch_up(gw, harness.fresh_subdir(base, "edge"), which == "after")
                    if got[3] != want:
                        raise RuntimeError("the edge's table (%s compaction) differs from the gateway's" % which)
                    out[which].append(got[:3] + got[4:])
            return out, write_s, gw.store.published(TOPIC), gw.relayed
        finally:
            await gw.close()

    return asyncio.run(go())


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--writes", type=int, default=100000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--edge-share", type=float, default=0.2, help="share of the writes made by edge store-2")
    a = ap.parse_args(argv)
    res = harness.Result(
        "bench_table_catchup",
        "an edge back after %d writes to %d keys: bytes and time of its catch-up, without and with compaction"
        % (a.writes, a.keys),
        {"writes": a.writes, "keys": a.keys, "edge_share": a.edge_share, "reps": a.reps,
         "value": "{qty: int, loc: 'A3'}"},
    )
    with harness.scratch_dir() as base:
        out, write_s, published, relayed = run(base, a.writes, a.keys, a.edge_share, a.reps)
    b_bytes, b_recs = out["before"][0][:2]
    a_bytes, a_recs, _t, a_skip = out["after"][0]
    per_record = b_bytes / float(b_recs)
    want = min(a.keys, a.writes)
    res.add("catch-up without compaction (every record)", b_bytes, "bytes")
    res.add("catch-up with compaction (live records)", a_bytes, "bytes", baseline="catch-up without compaction "
            "(every record)")
    res.add("with compaction, in the stream's average records' worth", a_bytes / per_record, "records",
            ratio=a_bytes / (per_record * want), target=("ratio", "<=", 1.0),
            note="ratio: against %d records' worth, %.1f bytes each (the stream's average, as sent without "
                 "compaction)" % (want, per_record))
    res.add("records received without compaction", b_recs, "records")
    res.add("records received with compaction", a_recs, "records", target=("value", "<=", want),
            note="at most one per key (no key is in conflict here)")
    res.add("bytes of the skip elements (what compaction adds)", a_skip, "bytes", ratio=a_skip / float(a_bytes),
            note="ratio: share of the compacted catch-up's bytes")
    res.add("with compaction, against the records received sent without skips", a_bytes / float(a_bytes - a_skip)
            * a_recs, "records", ratio=a_bytes / float(a_bytes - a_skip) * a_recs / want,
            note="ratio: against %d of the records received (the latest version of each key: their contexts name "
                 "the largest seqs, so they are larger than the stream's average)" % want)
    bt = [x[2] for x in out["before"]]
    at = [x[2] for x in out["after"]]
    res.add("catch-up time without compaction", harness.median(bt), "s", bt)
    res.add("catch-up time with compaction", harness.median(at), "s", at, baseline="catch-up time without compaction")
    res.note("stream: %d records in the cloud stream (%d relays of store-2's writes); writing them took %.1f s"
             % (published, relayed, write_s))
    res.note("with compaction the edge's log also holds one placeholder frame (26 bytes) per seq left out")
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
