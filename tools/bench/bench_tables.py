"""Table topics (issue 10): writes/s at the gateway against SQLite upserts, and bytes per
update and merges/s against the pycrdt package's Map.

    python tools/bench/bench_tables.py [--writes N] [--keys N] [--concurrency N ...] [--reps R] [--json]

(a) writes/s at the gateway with conflict detection: a real ``Gateway`` (SQLite store,
    WAL, synchronous=FULL, group commit) with one table topic (register,
    last_write_wins) in this process; C writers -- coroutines, each what one PUT request
    of the table API costs past HTTP -- call ``Gateway.table_write`` with one write each
    and wait for it to be durable before the next: each write is formed from the
    replica's context (C1), stored in the topic's cloud stream and applied to the replica
    (siblings, conflict detection, the conflict log). The gateway's committer groups
    what arrives during a commit; the figure of commits is counted. Baseline in the same
    run, interleaved in blocks (``harness.interleave``-style, the order rotating):
    sqlite3 WAL synchronous=FULL, one ``INSERT ... ON CONFLICT(key) DO UPDATE`` per
    write, one transaction per *as many writes as the gateway committed together in the
    same block* -- the same durability per write. Target (issue 10): >= 0.5x.
(b) bytes per update and merges/s: two writers (the cloud and one edge, with its
    incarnation in its writer id, as in a real deployment) update --keys keys with small
    integers, exchanging what they wrote every 100 updates (so contexts name both
    writers and some writes are concurrent). edgeline: each update a table record as it
    travels -- sent alone (a BATCH of one record, the message's framing included) and
    batched (BATCHes of 1000); pycrdt: each update is one transaction's update (what
    ``Doc.observe`` hands a provider to send), and batched as 1000 of them merged
    (``merge_updates``). Target (issue 10): fewer bytes per update than pycrdt. Merges/s: a
    fresh replica applying every update of both writers in the exchange order
    (``Replica.apply_record``: CBOR decode, context, siblings) against a fresh pycrdt
    ``Doc.apply_update`` of every update. Both end with the same visible values
    (checked).
"""
import argparse
import asyncio
import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_core()
sys.path.insert(0, os.path.join(harness.ROOT, "host"))

from edgeline import codec, sync  # noqa: E402
from edgeline.log import Record  # noqa: E402
from edgeline_host import tables  # noqa: E402
from edgeline_host.gateway.gateway import Gateway  # noqa: E402
from edgeline_host.gateway.topics import parse_topics  # noqa: E402

KEY = bytes(range(32))
NODES = {"store-1": KEY}
EDGE_WRITER = tables.writer_id("store-1", "00000000000000a1")


def sku(i, keys):
    return "sku-%05d" % (i % keys)


# ---------------------------------------------------------------- (a) writes/s


class GatewayContender:
    """A gateway with one table topic, on its own event loop, kept across blocks."""

    def __init__(self, path, concurrency, keys):
        self.loop = asyncio.new_event_loop()
        tops = parse_topics({"inv": {"direction": "bidirectional", "kind": "table"}}, NODES, "topics.yaml")
        self.gw = Gateway(path, NODES, topics=tops)
        self.loop.run_until_complete(self.gw.start())
        self.concurrency = concurrency
        self.keys = keys
        self.n = 0
        self.last_group = 1.0

    def run(self, k):
        gw = self.gw
        per = [k // self.concurrency + (1 if c < k % self.concurrency else 0) for c in range(self.concurrency)]
        base = self.n

        async def writer(c, count):
            for j in range(count):
                i = base + c + j * self.concurrency
                await gw.table_write("inv", [(sku(i, self.keys), {"qty": i % 1000, "loc": "A3"}, False)])

        async def all_writers():
            await asyncio.gather(*(writer(c, n) for c, n in enumerate(per) if n))

        commits = gw.committer.commits
        t0 = harness.now()
        self.loop.run_until_complete(all_writers())
        dt = harness.now() - t0
        self.n += k
        self.last_group = k / max(1, gw.committer.commits - commits)
        return dt

    def close(self):
        self.loop.run_until_complete(self.gw.close())
        self.loop.close()


class SqliteContender:
    """sqlite3 WAL synchronous=FULL: a key-value table, upserts, transactions of the
    size ``group`` says (the gateway's, block by block)."""

    def __init__(self, path, keys, group):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, ts INTEGER NOT NULL)")
        self.keys = keys
        self.group = group  # a callable: writes per transaction now
        self.n = 0

    def run(self, k):
        g = max(1, int(round(self.group())))
        sql = ("INSERT INTO kv (key, value, ts) VALUES (?, ?, ?) "
               "ON CONFLICT(key) DO UPDATE SET value = excluded.value, ts = excluded.ts")
        t0 = harness.now()
        done = 0
        while done < k:
            m = min(g, k - done)
            self.db.execute("BEGIN")
            for j in range(m):
                i = self.n + done + j
                self.db.execute(sql, (sku(i, self.keys), codec.dumps({"qty": i % 1000, "loc": "A3"}), i))
            self.db.execute("COMMIT")
            done += m
        dt = harness.now() - t0
        self.n += k
        return dt

    def close(self):
        self.db.close()


def writes_per_s(base, writes, keys, concurrency, block):
    d = harness.fresh_subdir(base, "run")
    os.makedirs(d)
    gw = GatewayContender(os.path.join(d, "gw.db"), concurrency, keys)
    sq = None
    groups = []
    try:
        sq = SqliteContender(os.path.join(d, "sq.db"), keys, lambda: gw.last_group)
        spent = {"gw": 0.0, "sq": 0.0}
        done = turn = 0
        while done < writes:
            k = min(block, writes - done)
            # the gateway first in every block: SQLite's transactions take the size of the
            # gateway's groups in the same block
            spent["gw"] += gw.run(k)
            groups.append(gw.last_group)
            spent["sq"] += sq.run(k)
            done += k
            turn += 1
        rep = gw.gw.tables["inv"]
        if len(rep.state_json()["keys"]) != min(keys, writes) or rep.applied != writes:
            raise RuntimeError("the gateway's table holds %r" % (rep.describe(),))
        return writes / spent["gw"], writes / spent["sq"], harness.median(groups)
    finally:
        gw.close()
        if sq is not None:
            sq.close()


# ---------------------------------------------------------------- (b) bytes and merges


def ready_edge_connection():
    """An edge's sync connection in READY state (a real handshake, in memory)."""
    e = sync.EdgeConnection("store-1", KEY, os.urandom)
    g = sync.GatewayConnection(NODES.get, os.urandom)
    g.receive_data(e.send(sync.Hello()))
    g.next_event()
    e.receive_data(g.send(sync.Challenge()))
    e.next_event()
    g.receive_data(e.send(sync.Auth()))
    g.next_event()
    e.receive_data(g.send(sync.Welcome(marks={})))
    e.next_event()
    return e


def edgeline_updates(updates, keys, every=100):
    """Two writers' table records, in the order a third replica receives them:
    [(writer, Record)], and each writer's own records."""
    settings = tables.TableSettings()
    writers = [(sync.CLOUD_ORIGIN, tables.Replica("inv", settings)), (EDGE_WRITER, tables.Replica("inv", settings))]
    seqs = [0, 0]
    out = []
    own = ([], [])
    pending = ([], [])  # what each has written since the last exchange
    ts = 1763900000000 << 16
    for i in range(updates):
        w = i % 2
        name, rep = writers[w]
        key = sku(i // 2 if w == 0 else i // 2 + 7, keys)
        value = rep.form_write(key, name, i % 1000)
        seqs[w] += 1
        ts += 1 << 16
        rec = Record(seqs[w], ts, key.encode(), value)
        rep.apply_record(name, rec.seq, rec.ts, rec.key, rec.value)
        own[w].append(rec)
        pending[w].append(rec)
        out.append((name, rec))
        if (i + 1) % every == 0:
            for src in (0, 1):
                for r in pending[src]:
                    writers[1 - src][1].apply_record(writers[src][0], r.seq, r.ts, r.key, r.value)
                del pending[src][:]
    return out, own


def edgeline_bytes(own, batch):
    recs = own[1]  # the edge's records, sent as BATCHes
    conn = ready_edge_connection()
    total = 0
    for i in range(0, len(recs), batch):
        total += len(conn.send(sync.batch_from_records("inv", recs[i:i + batch])))
    return total / len(recs)


def edgeline_merges(stream):
    rep = tables.Replica("inv", tables.TableSettings())
    t0 = harness.now()
    for name, r in stream:
        rep.apply_record(name, r.seq, r.ts, r.key, r.value)
    dt = harness.now() - t0
    return len(stream) / dt, rep


def pycrdt_updates(updates, keys, every=100, batch=1000):
    """The same pattern with two pycrdt Docs: each update one transaction, its update
    what ``Doc.observe`` hands a provider to send for it (local transactions only).
    Returns the updates in the order a third replica receives them, and the sizes of
    each ``batch`` consecutive updates of the second writer merged into one
    (``pycrdt.merge_updates``: what it would send after ``batch`` transactions)."""
    from pycrdt import Doc, Map, merge_updates

    docs = [Doc(), Doc()]
    maps = [d.get("inv", type=Map) for d in docs]
    local = [False, False]
    got = ([], [])
    subs = [docs[w].observe(lambda e, w=w: got[w].append(e.update) if local[w] else None) for w in (0, 1)]
    pending = ([], [])
    out = []
    mine = []
    for i in range(updates):
        w = i % 2
        key = sku(i // 2 if w == 0 else i // 2 + 7, keys)
        local[w] = True
        maps[w][key] = i % 1000
        local[w] = False
        u = got[w].pop()
        out.append(u)
        pending[w].append(u)
        if w == 1:
            mine.append(u)
        if (i + 1) % every == 0:
            for src in (0, 1):
                for u in pending[src]:
                    docs[1 - src].apply_update(u)
                del pending[src][:]
    del subs
    batch_sizes = [len(merge_updates(*mine[i:i + batch])) for i in range(0, len(mine) - batch + 1, batch)]
    return out, batch_sizes


def pycrdt_merges(stream):
    from pycrdt import Doc, Map

    d = Doc()
    m = d.get("inv", type=Map)
    t0 = harness.now()
    for u in stream:
        d.apply_update(u)
    dt = harness.now() - t0
    return len(stream) / dt, dict(m)


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--writes", type=int, default=6000, help="table writes per contender and concurrency")
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 100], help="writers waiting for durability")
    ap.add_argument("--block", type=int, default=500, help="writes per interleaved block")
    ap.add_argument("--updates", type=int, default=20000, help="updates of (b), both writers together")
    a = ap.parse_args(argv)
    res = harness.Result(
        "bench_tables",
        "table writes at the gateway vs SQLite upserts (synchronous=FULL, same commits); bytes per update and "
        "merges/s vs pycrdt's Map",
        {"writes": a.writes, "keys": a.keys, "concurrency": a.concurrency, "updates": a.updates, "reps": a.reps,
         "value": "{qty: int, loc: 'A3'} (a); an int (b)"},
    )
    with harness.scratch_dir() as base:
        for c in a.concurrency:
            gws, sqs, groups = [], [], []
            writes = a.writes if c > 1 else max(1, a.writes // 10)  # one writer: fsync-bound, fewer
            for rep in range(a.reps):
                harness.progress("writes/s, %d writer(s), rep %d/%d" % (c, rep + 1, a.reps))
                g, s, grp = writes_per_s(base, writes, a.keys, c, min(a.block, writes))
                gws.append(g)
                sqs.append(s)
                groups.append(grp)
            base_case = "SQLite upsert, %d writer(s)' groups" % c
            res.add(base_case, harness.median(sqs), "writes/s", sqs)
            res.add("gateway table_write, %d writer(s)" % c, harness.median(gws), "writes/s", gws, baseline=base_case,
                    target=("ratio", ">=", 0.5), note="writes per commit (median of blocks): %s" %
                    ", ".join("%.1f" % x for x in groups))
    harness.progress("bytes per update and merges/s")
    stream, own = edgeline_updates(a.updates, a.keys)
    try:
        import pycrdt  # noqa: F401
        have_pycrdt = True
    except ImportError:
        have_pycrdt = False
        res.note("pycrdt is not installed (pip install pycrdt, or the dev extra): its rows are left out")
    one = edgeline_bytes(own, 1)
    many = edgeline_bytes(own, 1000)
    if have_pycrdt:
        ustream, bsizes = pycrdt_updates(a.updates, a.keys, batch=1000)
        y_one = sum(len(u) for u in ustream[1::2]) / len(ustream[1::2])
        y_many = sum(bsizes) / (1000.0 * len(bsizes)) if bsizes else float("nan")
        res.add("pycrdt Map, one update (one transaction)", y_one, "bytes")
        res.add("pycrdt Map, 1000 updates merged, per update", y_many, "bytes")
        res.add("edgeline BATCH of one table record", one, "bytes", baseline="pycrdt Map, one update (one transaction)",
                target=("ratio", "<", 1.0))
        res.add("edgeline BATCH of 1000 table records, per record", many, "bytes",
                baseline="pycrdt Map, 1000 updates merged, per update", target=("ratio", "<", 1.0))
    else:
        res.add("edgeline BATCH of one table record", one, "bytes")
        res.add("edgeline BATCH of 1000 table records, per record", many, "bytes")
    em, ey = [], []
    for rep in range(a.reps):
        harness.progress("merges/s, rep %d/%d" % (rep + 1, a.reps))
        rate, replica = edgeline_merges(stream)
        em.append(rate)
        if have_pycrdt:
            yrate, ymap = pycrdt_merges(ustream)
            ey.append(yrate)
            mine = dict((k["key"], k["value"]) for k in replica.state_json()["keys"])
            if sorted(mine) != sorted(ymap):
                raise RuntimeError("edgeline and pycrdt end with different keys")
    if have_pycrdt:
        res.add("pycrdt Doc.apply_update", harness.median(ey), "merges/s", ey)
        res.add("edgeline Replica.apply_record", harness.median(em), "merges/s", em,
                baseline="pycrdt Doc.apply_update")
    else:
        res.add("edgeline Replica.apply_record", harness.median(em), "merges/s", em)
    ctx = [len(codec.loads(r.value)) for _n, r in stream[-10:]]
    res.note("edgeline writer ids: 'cloud' and %r (node id with its log's incarnation); a record's value is "
             "[format, op, ctx, value], ctx naming both writers once they have exchanged (%d items)" %
             (EDGE_WRITER, max(ctx)))
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
