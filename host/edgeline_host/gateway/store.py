"""The gateway's record store: idempotent by identity, durable before acknowledged.

Theory of operation
-------------------
Every record the gateway accepts is identified by ``(origin, topic, incarnation, seq)``:
the incarnation is the id of the edge log that gave the seqs (docs/spec/log.md), so a
wiped or replaced log, whose seqs begin again at 1, is a new stream, never duplicates of
the old one. Per ``(origin, topic, incarnation)`` — a *stream* — the store keeps a
high-water mark: every seq at or below it is held, either as a record or inside a gap
the edge reported. The receiver
rules of docs/spec/wire.md (W1–W3) follow from that one number:

* entries at or below the mark are duplicates and change nothing;
* a batch or gap starting beyond ``mark + 1`` would leave a hole: nothing is stored, and
  the caller answers ``ACK(mark)`` so the edge resends from there;
* otherwise the new entries are inserted and the mark moves to the last of them.

The rules themselves are ``edgeline.sync.batch_window``/``apply_gap``, the same code
every receiver runs. ``commit`` applies any number of batches and gaps — BATCH and GAP
events of the sync protocol, each with its origin — from many edges in one SQLite
transaction, so a busy gateway pays one fsync per group, not per batch (group commit).
The marks it returns are durable when it returns: an ACK may be sent. SQLite runs in WAL
mode with ``synchronous=FULL`` (the embedded default: no set-up, one file).

Incarnations are kept as 16 hex digits; ``LEGACY`` (all zeros) is that of every record
of a version-1 edge, of every stream of a store from before schema 3 (the migration gives
it to them, so no identity changes), and of what the gateway publishes. Streams get a
small integer id (table ``streams``), increasing: of two incarnations of one (origin,
topic), the one first seen has the lower id, and queries list them in that order. Records are stored as *chunks*: the
new part of each accepted batch is one row holding its entries CBOR-encoded exactly as the
BATCH carried them, keyed by ``(stream, first seq)``. Dedupe is the mark, never a
per-record lookup, so a row per record would only cost B-tree work (the bulk of ingest
time); a query by seq range finds the chunk holding its first seq and decodes forward.
The schema, with its versions and the in-place migration from version 1, is
docs/spec/gateway-store.md. Marks are cached in memory; the database is the truth at
start-up.

Cloud-to-edge topics live in the same tables: records published at the gateway are the
stream ``(cloud, topic)`` (``edgeline.sync.CLOUD_ORIGIN``), and a ``Publish`` item in a
commit gives them the next seqs of that stream, so they are stored, numbered and made
durable exactly like an edge's batch (one chunk per publish). ``pull`` reads them back
for DATA. A ``Delivered`` item records how far a node has acknowledged a topic (its
PULL's ``after_seq``), for ``/v1/status``; it is bookkeeping, not part of any guarantee
(the edge's log is the truth of what it holds, and its next PULL says so again).
"""
import os
import sqlite3
import threading

import cbor2

from edgeline.errors import EdgelineError
from edgeline.log import Record
from edgeline.sync import CLOUD_ORIGIN, Batch, Gap, apply_gap, batch_window

SCHEMA_VERSION = 3
LEGACY = "0" * 16  # the legacy incarnation (all-zero bytes; docs/spec/log.md)
_MIGRATE_CHUNK_RECORDS = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    topic TEXT NOT NULL,
    incarnation TEXT NOT NULL DEFAULT '0000000000000000',
    mark INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL DEFAULT 0,
    UNIQUE (origin, topic, incarnation)
);
CREATE TABLE IF NOT EXISTS chunks (
    stream INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    base_ts INTEGER NOT NULL,
    entries BLOB NOT NULL,
    stored_ms INTEGER NOT NULL,
    PRIMARY KEY (stream, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    stream INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    reason TEXT NOT NULL,
    reported_ms INTEGER NOT NULL,
    PRIMARY KEY (stream, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    node TEXT NOT NULL,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    pulled_ms INTEGER NOT NULL,
    PRIMARY KEY (node, topic)
) WITHOUT ROWID;
"""


class Publish:
    """Records published at the gateway to a cloud-to-edge topic, for ``commit``:
    ``entries`` is a list of ``(ts, key, value)``; the store gives them the next seqs of
    the stream ``(cloud, topic)``. Committed as ``(CLOUD_ORIGIN, Publish(...))``."""

    __slots__ = ("topic", "entries")

    def __init__(self, topic, entries):
        self.topic = topic
        self.entries = entries


class Delivered:
    """A node's PULL acknowledged everything up to ``seq`` of ``topic``, for ``commit``
    as ``(node_id, Delivered(topic, seq))``."""

    __slots__ = ("topic", "seq")

    def __init__(self, topic, seq):
        self.topic = topic
        self.seq = seq


class GatewayStore:
    """SQLite-backed store of records, marks and gaps. Thread-safe (one writer lock)."""

    def __init__(self, path):
        if path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._upgrade()
        self._lock = threading.Lock()
        self._streams = {}  # (origin, topic, incarnation) -> [id, mark]
        self._incs = {}  # (origin, topic) -> [incarnation, ...] in the order first seen
        for sid, origin, topic, inc, mark in self._db.execute(
                "SELECT id, origin, topic, incarnation, mark FROM streams ORDER BY id"):
            self._streams[(origin, topic, inc)] = [sid, mark]
            self._incs.setdefault((origin, topic), []).append(inc)
        self._delivered = {}  # (node, topic) -> (seq, pulled_ms)
        for node, topic, seq, ms in self._db.execute("SELECT node, topic, seq, pulled_ms FROM deliveries"):
            self._delivered[(node, topic)] = (seq, ms)

    def close(self):
        with self._lock:
            self._db.close()

    def _upgrade(self):
        # Create the schema, or migrate a version-1 file (a row per record) or a version-2
        # one (streams without incarnations) in place, in one transaction
        # (docs/spec/gateway-store.md, "Versions").
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreVersionError("gateway store %s has schema version %d; this gateway knows up to %d"
                                    % (self.path, version, SCHEMA_VERSION))
        if version == SCHEMA_VERSION:
            db.executescript(_SCHEMA)  # every table IF NOT EXISTS: nothing changes when all are there
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'").fetchone()
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            if old:
                self._migrate_v1()
            cols = [r[1] for r in db.execute("PRAGMA table_info(streams)")]
            if "incarnation" not in cols:
                self._migrate_v2()
            db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _migrate_v1(self):
        db = self._db
        chunk = []

        def flush():
            if chunk:
                base = chunk[0][1]
                db.execute("INSERT INTO chunks (stream, first, last, base_ts, entries, stored_ms) VALUES (?, ?, ?, ?, ?, ?)",
                           (chunk[0][4], chunk[0][0], chunk[-1][0], base,
                            cbor2.dumps([[r[1] - base, r[2], r[3]] for r in chunk]), max(c[5] for c in chunk)))
                del chunk[:]

        rows = db.execute("SELECT seq, ts, key, value, stream, stored_ms FROM records ORDER BY stream, seq")
        for row in rows.fetchall():
            if chunk and (row[4] != chunk[-1][4] or row[0] != chunk[-1][0] + 1 or len(chunk) >= _MIGRATE_CHUNK_RECORDS
                          or row[1] < chunk[0][1]):
                flush()
            chunk.append(row)
        flush()
        db.execute("DROP TABLE records")

    def _migrate_v2(self):
        # Streams get their incarnation: every one held so far is the legacy incarnation
        # (a version-1 edge's, and a version-2 edge's pre-upgrade log's), so no record's
        # identity changes. The UNIQUE constraint changes, so the table is rebuilt; ids are
        # kept (chunks and gaps refer to them).
        db = self._db
        db.execute("ALTER TABLE streams RENAME TO streams_v2")
        db.execute(_SCHEMA.split(";")[0])
        db.execute("INSERT INTO streams (id, origin, topic, incarnation, mark, records, lost, updated_ms, created_ms) "
                   "SELECT id, origin, topic, ?, mark, records, lost, updated_ms, 0 FROM streams_v2", (LEGACY,))
        db.execute("DROP TABLE streams_v2")

    # ------------------------------------------------------------------ marks

    def mark(self, origin, topic, incarnation=LEGACY):
        """Highest seq of the stream held as a record or a reported gap; 0 if none."""
        s = self._streams.get((origin, topic, incarnation))
        return s[1] if s else 0

    def marks(self, origin, incarnations=None):
        """{topic: mark} for every stream of this origin in the incarnation the edge
        named (``incarnations``: topic -> hex id; a topic not in it: legacy)."""
        incarnations = incarnations or {}
        return {t: s[1] for (o, t, i), s in self._streams.items()
                if o == origin and i == incarnations.get(t, LEGACY)}

    def incarnations_of(self, origin, topic):
        """The incarnations of (origin, topic) held, in the order first seen."""
        return list(self._incs.get((origin, topic), ()))

    def _stream(self, origin, topic, inc, now_ms, created=None):
        key = (origin, topic, inc)
        s = self._streams.get(key)
        if s is None:
            cur = self._db.execute("INSERT INTO streams (origin, topic, incarnation, created_ms) VALUES (?, ?, ?, ?)",
                                   (origin, topic, inc, now_ms))
            s = self._streams[key] = [cur.lastrowid, 0]
            self._incs.setdefault((origin, topic), []).append(inc)
            if created is not None:
                created.append(key)
        return s

    # ------------------------------------------------------------------ writes

    def commit(self, items, now_ms):
        """Apply ``(origin, event)`` or ``(origin, event, incarnation)`` items — sync
        ``Batch`` or ``Gap`` events from edges (incarnation: the hex id of the edge's log
        for that topic; legacy when not given), ``Publish`` from the gateway itself
        (origin ``cloud``), ``Delivered`` — in order, in one durable transaction.

        Returns one mark per item: the stream's mark after it was applied, which the
        caller sends back as ACK (for a Publish: the seq of its last record; for a
        Delivered: its seq). Raises sqlite3.Error if the database cannot store
        (nothing of the group is then stored, and marks are unchanged).
        """
        with self._lock:
            saved = {}
            out = []
            created = []  # streams this transaction inserted: forgotten if it rolls back
            delivered = {}
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                run = None  # [stream, entries]: consecutive publishes to one topic, stored as one chunk
                for item in items:
                    origin, ev = item[0], item[1]
                    if run is not None and not (isinstance(ev, Publish) and ev.topic == run[2] and (
                            not ev.entries or not run[1] or ev.entries[0][0] >= run[1][-1][0]) and
                            len(run[1]) + len(ev.entries) <= _MAX_RUN_RECORDS):
                        self._apply_publish(run[0], run[1], now_ms)
                        run = None
                    if isinstance(ev, Delivered):
                        delivered[(origin, ev.topic)] = (ev.seq, now_ms)
                        out.append(ev.seq)
                        continue
                    if (origin == CLOUD_ORIGIN) != isinstance(ev, Publish):
                        raise ValueError("%s from origin %r: only the gateway publishes, as %r, and it sends no "
                                         "batches" % (type(ev).__name__, origin, CLOUD_ORIGIN))
                    s = self._stream(origin, ev.topic, item[2] if len(item) > 2 else LEGACY, now_ms, created)
                    if s[0] not in saved:
                        saved[s[0]] = (s, s[1])
                    if isinstance(ev, Batch):
                        self._apply_batch(s, ev, now_ms)
                    elif isinstance(ev, Gap):
                        self._apply_gap(s, ev, now_ms)
                    else:
                        # Concurrent publishers (table writes) commit together: their records
                        # go in as one chunk, one statement for the run instead of two each.
                        if run is None:
                            run = [s, [], ev.topic, s[1]]
                        run[1].extend(ev.entries)
                        out.append(run[3] + len(run[1]))
                        continue
                    out.append(s[1])
                if run is not None:
                    self._apply_publish(run[0], run[1], now_ms)
                for s, old in saved.values():
                    if s[1] != old:
                        db.execute("UPDATE streams SET mark = ?, updated_ms = ? WHERE id = ?", (s[1], now_ms, s[0]))
                if delivered:
                    db.executemany(
                        "INSERT OR REPLACE INTO deliveries (node, topic, seq, pulled_ms) VALUES (?, ?, ?, ?)",
                        [(n, t, v[0], v[1]) for (n, t), v in delivered.items()])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                for s, old in saved.values():
                    s[1] = old
                for k in created:
                    del self._streams[k]
                    self._incs[k[:2]].remove(k[2])
                    if not self._incs[k[:2]]:
                        del self._incs[k[:2]]
                raise
            self._delivered.update(delivered)
            return out

    def _apply_batch(self, s, ev, now_ms):
        skip, mark = batch_window(s[1], ev)
        if mark == s[1]:
            return
        entries = ev.entries
        if skip:
            entries = entries[skip:]
        sid = s[0]
        self._db.execute(
            "INSERT INTO chunks (stream, first, last, base_ts, entries, stored_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (sid, s[1] + 1, mark, ev.base_ts, _encode_entries(entries), now_ms),
        )
        self._db.execute("UPDATE streams SET records = records + ? WHERE id = ?", (mark - s[1], sid))
        s[1] = mark

    def _apply_publish(self, s, entries, now_ms):
        # One chunk per run of publishes: entries as in a BATCH, relative to the first
        # record's ts (the gateway's hybrid clock: later records never have smaller ts).
        if not entries:
            return
        first = s[1] + 1
        base = entries[0][0]
        n = len(entries)
        self._db.execute(
            "INSERT INTO chunks (stream, first, last, base_ts, entries, stored_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (s[0], first, first + n - 1, base,
             _encode_entries([[ts - base, key, value] for ts, key, value in entries]), now_ms),
        )
        self._db.execute("UPDATE streams SET records = records + ? WHERE id = ?", (n, s[0]))
        s[1] += n

    def _apply_gap(self, s, ev, now_ms):
        lost, mark = apply_gap(s[1], ev)
        if lost is None:
            return
        sid = s[0]
        self._db.execute(
            "INSERT INTO gaps (stream, first, last, reason, reported_ms) VALUES (?, ?, ?, ?, ?)",
            (sid, lost[0], lost[1], ev.reason, now_ms),
        )
        self._db.execute("UPDATE streams SET lost = lost + ? WHERE id = ?", (lost[1] - lost[0] + 1, sid))
        s[1] = mark

    # ------------------------------------------------------------------ cloud-to-edge

    def published(self, topic):
        """The last seq published to topic (0 if none)."""
        return self.mark(CLOUD_ORIGIN, topic)

    def pull(self, topic, after_seq, max_records):
        """Up to max_records published Records of topic after after_seq, in seq order."""
        s = self._streams.get((CLOUD_ORIGIN, topic, LEGACY))
        if s is None or after_seq >= s[1] or max_records < 1:
            return []
        return [Record(r["seq"], r["ts"], r["key"], r["value"])
                for r in self.records(topic, CLOUD_ORIGIN, from_seq=after_seq + 1, limit=max_records)]

    def pull_seqs(self, topic, seqs):
        """The published Records of topic at ``seqs`` (ascending), for a compacted DATA
        (gateway/compaction.py): only the chunks holding one of them are decoded."""
        s = self._streams.get((CLOUD_ORIGIN, topic, LEGACY))
        if s is None or not seqs:
            return []
        out = []
        want = iter(seqs)
        nxt = next(want)
        with self._lock:
            start = self._db.execute("SELECT max(first) FROM chunks WHERE stream = ? AND first <= ?",
                                     (s[0], nxt)).fetchone()[0]
            cur = self._db.execute("SELECT first, last, base_ts, entries FROM chunks WHERE stream = ? AND first >= ? "
                                   "AND first <= ? ORDER BY first", (s[0], start if start is not None else nxt,
                                                                     seqs[-1]))
            for first, last, base, blob in cur:
                if nxt is None:
                    break
                if nxt > last:
                    continue
                ents = cbor2.loads(blob)
                while nxt is not None and nxt <= last:
                    if nxt >= first:
                        e = ents[nxt - first]
                        out.append(Record(nxt, base + e[0], e[1], e[2]))
                    nxt = next(want, None)
        return out

    def last_published_ts(self):
        """The newest timestamp of any published record (0 if none): seeds the
        gateway's clock so published timestamps keep increasing across restarts."""
        last = 0
        with self._lock:
            for (origin, _topic, _inc), (sid, mark) in self._streams.items():
                if origin == CLOUD_ORIGIN and mark:
                    row = self._db.execute("SELECT base_ts, entries FROM chunks WHERE stream = ? ORDER BY first DESC "
                                           "LIMIT 1", (sid,)).fetchone()
                    if row:
                        last = max([last] + [row[0] + e[0] for e in cbor2.loads(row[1])])
        return last

    def delivered(self, node, topic):
        """(seq, pulled_ms) of the node's last PULL of topic, or None if it never pulled."""
        return self._delivered.get((node, topic))

    # ------------------------------------------------------------------ queries

    def records(self, topic, origin=None, from_seq=1, to_seq=None, limit=1000, incarnation=None):
        """Records of a topic (of one origin, or all; of one incarnation, or all), in
        (origin, incarnation first seen, seq) order: [{origin, topic, seq, ts, key, value,
        stored_ms}], at most limit of them. Where an (origin, topic) has more than one
        incarnation, its records also carry ``incarnation`` (hex): their seqs repeat, so
        the seq alone no longer names one; from_seq and to_seq apply in each."""
        out = []
        if limit <= 0:
            return out
        sql = "SELECT id, origin, incarnation FROM streams WHERE topic = ?"
        args = [topic]
        if origin is not None:
            sql += " AND origin = ?"
            args.append(origin)
        if incarnation is not None:
            sql += " AND incarnation = ?"
            args.append(incarnation)
        with self._lock:
            streams = self._db.execute(sql + " ORDER BY origin, id", args).fetchall()
            for sid, o, inc in streams:
                several = len(self._incs.get((o, topic), ())) > 1
                # the chunk holding from_seq (if any) begins at or before it
                start = self._db.execute("SELECT max(first) FROM chunks WHERE stream = ? AND first <= ?",
                                         (sid, from_seq)).fetchone()[0]
                rows = self._db.execute(
                    "SELECT first, base_ts, entries, stored_ms FROM chunks WHERE stream = ? AND first >= ?"
                    + (" AND first <= ?" if to_seq is not None else "") + " ORDER BY first",
                    (sid, start if start is not None else from_seq) + ((to_seq,) if to_seq is not None else ()))
                for first, base, blob, stored in rows:
                    ents = cbor2.loads(blob)
                    lo = max(0, from_seq - first)
                    hi = len(ents) if to_seq is None else min(len(ents), to_seq - first + 1)
                    for i in range(lo, hi):
                        e = ents[i]
                        row = {"origin": o, "topic": topic, "seq": first + i, "ts": base + e[0], "key": e[1],
                               "value": e[2], "stored_ms": stored}
                        if several:
                            row["incarnation"] = inc
                        out.append(row)
                        if len(out) >= limit:
                            return out
        return out

    def stream_records(self, topic):
        """Every stored record of a topic, of every origin and incarnation, as tuples
        ``(origin, incarnation hex, seq, ts, key, value)``, stream by stream in seq order
        (a table replica is rebuilt from them at start). Reads one stream's chunks at a
        time."""
        with self._lock:
            streams = self._db.execute(
                "SELECT id, origin, incarnation FROM streams WHERE topic = ? ORDER BY origin, id", (topic,)).fetchall()
        for sid, o, inc in streams:
            with self._lock:
                rows = self._db.execute("SELECT first, base_ts, entries FROM chunks WHERE stream = ? ORDER BY first",
                                        (sid,)).fetchall()
            for first, base, blob in rows:
                for i, e in enumerate(cbor2.loads(blob)):
                    yield o, inc, first + i, base + e[0], e[1], e[2]

    def gap_counts(self):
        """{(origin, topic, reason): number of gaps}, every incarnation (for /metrics:
        one grouped query, however many gaps there are)."""
        with self._lock:
            rows = self._db.execute("SELECT s.origin, s.topic, g.reason, count(*) FROM gaps g JOIN streams s ON "
                                    "s.id = g.stream GROUP BY s.origin, s.topic, g.reason").fetchall()
        return {(o, t, r): n for o, t, r, n in rows}

    def gaps(self, origin=None, topic=None):
        """Reported gaps: [{origin, topic, first, last, reason, reported_ms}]."""
        sql = (
            "SELECT s.origin, s.topic, g.first, g.last, g.reason, g.reported_ms, s.incarnation FROM gaps g "
            "JOIN streams s ON s.id = g.stream WHERE 1 = 1"
        )
        args = []
        if origin is not None:
            sql += " AND s.origin = ?"
            args.append(origin)
        if topic is not None:
            sql += " AND s.topic = ?"
            args.append(topic)
        sql += " ORDER BY s.origin, s.topic, s.id, g.first"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for o, t, f, la, r, ms, inc in rows:
            g = {"origin": o, "topic": t, "first": f, "last": la, "reason": r, "reported_ms": ms}
            if len(self._incs.get((o, t), ())) > 1:
                g["incarnation"] = inc
            out.append(g)
        return out

    def status(self, origin=None):
        """Per stream: {origin, topic, incarnation, current, mark, records, lost,
        updated_ms}; ``current`` is False for an incarnation a newer one replaced."""
        sql = "SELECT origin, topic, incarnation, mark, records, lost, updated_ms FROM streams"
        args = ()
        if origin is not None:
            sql += " WHERE origin = ?"
            args = (origin,)
        sql += " ORDER BY origin, topic, id"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            {"origin": o, "topic": t, "incarnation": inc, "current": self._incs.get((o, t), [inc])[-1] == inc,
             "mark": m, "records": n, "lost": lost, "updated_ms": u}
            for o, t, inc, m, n, lost, u in rows
        ]

    def incarnation_report(self, origin=None):
        """Per (origin, topic) with more than one incarnation: its incarnations in the
        order first seen, each with what the gateway knows of the seqs that never
        arrived. A replaced incarnation's log is gone from the edge, so every seq above
        its mark (``last_seq_seen``) is lost too, how many the gateway cannot know:
        [{origin, topic, incarnations: [{incarnation, current, first_seen_ms,
        last_seq_seen, records, lost, gaps: [[first, last, reason]], unknown_after}]}]
        (``unknown_after``: for a replaced incarnation, its mark -- seqs above it, if the
        old log held any, never arrived; None for the current one)."""
        out = []
        with self._lock:
            for (o, t), incs in sorted(self._incs.items()):
                if len(incs) < 2 or (origin is not None and o != origin):
                    continue
                rows = []
                for inc in incs:
                    sid = self._streams[(o, t, inc)][0]
                    mark, records, lost, created = self._db.execute(
                        "SELECT mark, records, lost, created_ms FROM streams WHERE id = ?", (sid,)).fetchone()
                    gaps = [list(g) for g in self._db.execute(
                        "SELECT first, last, reason FROM gaps WHERE stream = ? ORDER BY first", (sid,))]
                    current = inc == incs[-1]
                    rows.append({"incarnation": inc, "current": current, "first_seen_ms": created or None,
                                 "last_seq_seen": mark, "records": records, "lost": lost, "gaps": gaps,
                                 "unknown_after": None if current else mark})
                out.append({"origin": o, "topic": t, "incarnations": rows})
        return out


class StoreVersionError(EdgelineError):
    """The store file was written by a newer gateway (one line names both versions)."""


_MAX_RUN_RECORDS = 10000  # records of publishes one chunk takes together (a chunk is read whole)


def _encode_entries(entries):
    # Entries as the BATCH carried them: [ts_delta, key, value], CBOR-encoded (bytes-like
    # values other than bytes, e.g. from in-process callers, are stored as byte strings).
    try:
        return cbor2.dumps(entries)
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        return cbor2.dumps([[e[0], None if e[1] is None else bytes(e[1]), bytes(e[2])] for e in entries])
