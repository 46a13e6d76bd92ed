"""RingLog + Outbox against what users would pick instead, at equal durability.

    python tools/bench/bench_peers.py [--records N] [--every-records N] [--reps R] [--json]

Peers (all on the same /tmp file system, 64-byte values, CPython):

* persist-queue ``SQLiteAckQueue`` with its defaults: auto_commit=True (the ack queue
  forces it), journal_mode=WAL, SQLite's default synchronous (FULL here; the value in
  effect is read back and printed). Every put() is one committed transaction: one
  WAL fsync per record. Every get() and every ack() is a commit as well. Values are
  pickled (its default serializer).
* sqlite3 in WAL mode, table (id INTEGER PRIMARY KEY, ts INTEGER, data BLOB):
  - synchronous=FULL, one row per transaction (fsync per record);
  - synchronous=FULL, 1000-row transactions, one execute() per row (the same call
    pattern as append()), and with executemany() (the best case, the app batching);
  - synchronous=NORMAL, 1000-row transactions: weaker — in WAL mode NORMAL syncs only
    at checkpoints, so a committed transaction can be lost at power-off. Not equal
    durability; reported for reference.

Equal durability pairs: RingLog sync="every" ~ persist-queue ~ sqlite FULL per-row
commit (one fsync per record); RingLog sync="group" (1000) ~ sqlite FULL 1000-row
transactions (one fsync per 1000 records).

Drain (read + acknowledge): Outbox.peek(1000) + ack(last) per batch (one cursor fsync
per batch), vs sqlite SELECT ... LIMIT 1000 then DELETE (queue semantics) or UPDATE of a
cursor row (outbox semantics) in one FULL transaction per batch. persist-queue has
only a per-item API: get() + ack(item), each a commit; it is compared with
Outbox.peek(1) + ack() per record (one fsync per record).

Contenders of one comparison run interleaved in blocks (10,000 records for the batched
cases, 25 for the per-record ones), so disk noise from other processes hits all alike.

Targets: RingLog ahead of every peer at equal durability; >= 5x persist-queue.
"""
import argparse
import os
import sqlite3
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_core()
from edgeline.log import RingLog  # noqa: E402
from edgeline.outbox import Outbox  # noqa: E402

VALUE = bytes(range(64))
GROUP = 1000
SEGMENT = 1 << 20
BUDGET = 1 << 40
BLOCK_GROUP = 10000
BLOCK_EVERY = 25

try:
    import persistqueue
except ImportError:  # reported, not fatal
    persistqueue = None


# Each contender is an object: built (and preloaded) untimed, called with k to do k
# records of work and return the seconds that took, closed at the end.

# ---------------------------------------------------------------- RingLog


def open_log(path, sync):
    return RingLog(path, segment_bytes=SEGMENT, budget_bytes=BUDGET, sync=sync, group_records=GROUP)


class LogAppend:
    def __init__(self, path, sync):
        self.lg = open_log(path, sync)

    def __call__(self, k):
        append = self.lg.append
        v = VALUE
        t0 = harness.now()
        for _ in range(k):
            append(v)
        return harness.now() - t0

    def close(self):
        self.lg.close()


class LogDrain:
    """Outbox.peek(batch) + ack(last seq) until k records are acknowledged."""

    def __init__(self, path, n, batch):
        self.lg = open_log(path, "group")
        for _ in range(n):
            self.lg.append(VALUE)
        self.lg.flush()
        self.ob = Outbox(self.lg, "bench")
        self.batch = batch

    def __call__(self, k):
        peek = self.ob.peek
        ack = self.ob.ack
        batch = self.batch
        got = 0
        t0 = harness.now()
        while got < k:
            recs = peek(batch, 1 << 20)
            got += len(recs)
            ack(recs[-1].seq)
        dt = harness.now() - t0
        assert got == k, (got, k)
        return dt

    def close(self):
        self.ob.close()
        self.lg.close()


# ---------------------------------------------------------------- sqlite3


def sq_open(path, synchronous):
    os.makedirs(path, exist_ok=True)
    db = sqlite3.connect(path + "/q.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=" + synchronous)
    db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, ts INTEGER, data BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, acked INTEGER)")
    return db


_INSERT = "INSERT INTO q (ts, data) VALUES (?, ?)"


class SqAppend:
    """per_txn 1: autocommit, one transaction per row; else per_txn-row transactions
    with one execute() per row, or one executemany() per transaction."""

    def __init__(self, path, synchronous, per_txn, many=False):
        self.db = sq_open(path, synchronous)
        self.per_txn = per_txn
        self.many = many
        self.rows = [(0, VALUE)] * per_txn
        self.n = 0

    def __call__(self, k):
        ex = self.db.execute
        v = VALUE
        per = self.per_txn
        t0 = harness.now()
        if per == 1:
            for _ in range(k):
                ex(_INSERT, (0, v))
        else:
            for _ in range(k // per):
                ex("BEGIN")
                if self.many:
                    self.db.executemany(_INSERT, self.rows)
                else:
                    for _ in range(per):
                        ex(_INSERT, (0, v))
                ex("COMMIT")
        dt = harness.now() - t0
        self.n += k
        return dt

    def close(self):
        assert self.db.execute("SELECT count(*) FROM q").fetchone()[0] == self.n
        self.db.close()


class SqDrain:
    """SELECT the next `batch` rows, then DELETE them (queue) or UPDATE a cursor row
    (outbox), in one FULL transaction per batch."""

    def __init__(self, path, n, batch, mode):
        db = self.db = sq_open(path, "FULL")
        db.execute("BEGIN")
        db.executemany(_INSERT, [(0, VALUE)] * n)
        db.execute("INSERT OR REPLACE INTO cursor VALUES ('bench', 0)")
        db.execute("COMMIT")
        self.batch = batch
        self.mode = mode
        self.acked = 0

    def __call__(self, k):
        ex = self.db.execute
        batch = self.batch
        acked = self.acked
        got = 0
        t0 = harness.now()
        while got < k:
            ex("BEGIN")
            rows = ex("SELECT id, ts, data FROM q WHERE id > ? ORDER BY id LIMIT ?", (acked, batch)).fetchall()
            got += len(rows)
            acked = rows[-1][0]
            if self.mode == "delete":
                ex("DELETE FROM q WHERE id <= ?", (acked,))
            else:
                ex("UPDATE cursor SET acked = ? WHERE name = 'bench'", (acked,))
            ex("COMMIT")
        dt = harness.now() - t0
        assert got == k, (got, k)
        self.acked = acked
        return dt

    def close(self):
        self.db.close()


# ---------------------------------------------------------------- persist-queue


def pq_open(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return persistqueue.SQLiteAckQueue(path)


def pq_settings(base):
    q = pq_open(harness.fresh_subdir(base, "pq-probe"))
    mode = q._putter.execute("PRAGMA journal_mode").fetchone()[0]
    sync = q._putter.execute("PRAGMA synchronous").fetchone()[0]
    q.close()
    harness.fresh_subdir(base, "pq-probe")
    return mode, {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, str(sync))


class PqAppend:
    def __init__(self, path):
        self.q = pq_open(path)

    def __call__(self, k):
        put = self.q.put
        v = VALUE
        t0 = harness.now()
        for _ in range(k):
            put(v)
        return harness.now() - t0

    def close(self):
        self.q.close()


class PqDrain:
    """get() + ack(item) per record (its only API)."""

    def __init__(self, path, n):
        self.q = pq_open(path)
        for _ in range(n):
            self.q.put(VALUE)

    def __call__(self, k):
        get = self.q.get
        ack = self.q.ack
        t0 = harness.now()
        for _ in range(k):
            ack(get(block=False))
        return harness.now() - t0

    def close(self):
        self.q.close()


class LogDrainPerRecord(LogDrain):
    """Outbox.peek(1) + ack per record: per-record acknowledgement, like persist-queue."""

    def __call__(self, k):
        peek = self.ob.peek
        ack = self.ob.ack
        t0 = harness.now()
        for _ in range(k):
            ack(peek(1)[0].seq)
        return harness.now() - t0


def run_round(base, specs, n, block):
    objs = [(key, make(harness.fresh_subdir(base, key))) for key, make in specs]
    rates = harness.interleave(objs, n, block)
    for key, o in objs:
        o.close()
        harness.fresh_subdir(base, key)
    return rates


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--records", type=int, default=100000,
                    help="records for the group-commit and batched-drain cases (default 100000)")
    ap.add_argument("--every-records", type=int, default=1000,
                    help="records for the fsync-per-record cases (default 1000)")
    a = ap.parse_args(argv)
    n = a.records - a.records % GROUP or GROUP
    ne = a.every_records
    res = harness.Result(
        "bench_peers",
        "RingLog/Outbox vs persist-queue and sqlite3 at equal durability, 64-byte values",
        {"records_group": n, "records_per_fsync_cases": ne, "group_records": GROUP, "segment_bytes": SEGMENT,
         "sqlite": sqlite3.sqlite_version, "persist-queue": getattr(persistqueue, "__version__", "missing"),
         "reps": a.reps},
    )
    rounds = [
        ("fsync per record, append", ne, BLOCK_EVERY, [
            ("log_every", lambda p: LogAppend(p, "every")),
            ("sq_full_row", lambda p: SqAppend(p, "FULL", 1)),
        ] + ([("pq_put", lambda p: PqAppend(p))] if persistqueue else [])),
        ("group commit, append", n, BLOCK_GROUP, [
            ("log_group", lambda p: LogAppend(p, "group")),
            ("sq_full_txn", lambda p: SqAppend(p, "FULL", GROUP)),
            ("sq_full_many", lambda p: SqAppend(p, "FULL", GROUP, many=True)),
            ("sq_normal_txn", lambda p: SqAppend(p, "NORMAL", GROUP)),
        ]),
        ("batched drain", n, BLOCK_GROUP, [
            ("drain_log", lambda p: LogDrain(p, n, GROUP)),
            ("drain_sq_delete", lambda p: SqDrain(p, n, GROUP, "delete")),
            ("drain_sq_cursor", lambda p: SqDrain(p, n, GROUP, "cursor")),
        ]),
        ("per-record drain", ne, BLOCK_EVERY, [
            ("drain_log_1", lambda p: LogDrainPerRecord(p, ne, 1)),
        ] + ([("drain_pq", lambda p: PqDrain(p, ne))] if persistqueue else [])),
    ]
    samples = {}
    with harness.scratch_dir() as base:
        if persistqueue is not None:
            jm, syn = pq_settings(base)
            res.params["persist-queue settings"] = (
                "SQLiteAckQueue defaults: auto_commit=True, journal_mode=%s, synchronous=%s" % (jm, syn))
        for rep in range(a.reps):
            for title, total, block, specs in rounds:
                harness.progress("%s, rep %d/%d" % (title, rep + 1, a.reps))
                for k, v in run_round(base, specs, total, block).items():
                    samples.setdefault(k, []).append(v)
    m = {k: harness.median(v) for k, v in samples.items()}

    def add(case, key, **kw):
        res.add(case, m[key], "rec/s", samples[key], **kw)

    has_pq = "pq_put" in m
    ge1 = ("ratio", ">=", 1.0)
    ge5 = ("ratio", ">=", 5.0)
    # Append, one fsync per record.
    sq_row = "append  sqlite WAL FULL, commit per row"
    pq_put = "append  persist-queue put (commit per put)"
    add(sq_row, "sq_full_row")
    if has_pq:
        add(pq_put, "pq_put")
    add("append  RingLog sync=every", "log_every", baseline=sq_row, target=ge1, note="equal durability: one fsync per record")
    if has_pq:
        add("append  RingLog sync=every vs persist-queue", "log_every", baseline=pq_put, target=ge5,
            note="equal durability (one fsync per record): both are fsync-bound")
    # Append, one fsync per 1000 records.
    sq_txn = "append  sqlite WAL FULL, 1000-row txn, execute/row"
    sq_many = "append  sqlite WAL FULL, 1000-row txn, executemany"
    sq_normal = "append  sqlite WAL NORMAL, 1000-row txn (weaker)"
    add(sq_txn, "sq_full_txn")
    add(sq_many, "sq_full_many")
    add(sq_normal, "sq_normal_txn")
    add("append  RingLog sync=group (1000)", "log_group", baseline=sq_txn, target=ge1,
        note="equal durability: one fsync per 1000 records, one call per record")
    add("append  RingLog group vs sqlite executemany", "log_group", baseline=sq_many, target=ge1)
    add("append  RingLog group vs sqlite NORMAL", "log_group", baseline=sq_normal)
    if has_pq:
        add("append  RingLog group vs persist-queue", "log_group", baseline=pq_put, target=ge5,
            note="what each gives by default (persist-queue's ack queue cannot group commits)")
    # Drain.
    sq_del = "drain   sqlite SELECT 1000 + DELETE, FULL"
    sq_cur = "drain   sqlite SELECT 1000 + UPDATE cursor, FULL"
    pq_get = "drain   persist-queue get + ack per item"
    add(sq_del, "drain_sq_delete")
    add(sq_cur, "drain_sq_cursor")
    add("drain   Outbox peek(1000) + ack", "drain_log", baseline=sq_cur, target=ge1,
        note="one cursor write + fsync per 1000 records; the log is in the page cache")
    add("drain   Outbox peek(1000) vs sqlite DELETE", "drain_log", baseline=sq_del, target=ge1)
    if has_pq:
        add(pq_get, "drain_pq", note="two commits per record (get marks unack, ack marks acked)")
        add("drain   Outbox peek(1) + ack per record", "drain_log_1", baseline=pq_get, target=ge1,
            note="per-record acknowledgement: one cursor fsync per record")
        add("drain   Outbox peek(1000) vs persist-queue", "drain_log", baseline=pq_get, target=ge5)
    else:
        res.note("persist-queue is not installed: its rows are missing (pip install persist-queue)")
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
