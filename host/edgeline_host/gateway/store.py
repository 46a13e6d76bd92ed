"""The gateway's record store: idempotent by identity, durable before acknowledged.

Theory of operation
-------------------
Every record the gateway accepts is identified by ``(origin, topic, seq)``. Per
``(origin, topic)`` — a *stream* — the store keeps a high-water mark: every seq at or
below it is held, either as a record or inside a gap the edge reported. The receiver
rules of docs/spec/wire.md (W1–W3) follow from that one number:

* entries at or below the mark are duplicates and change nothing;
* a batch or gap starting beyond ``mark + 1`` would leave a hole: nothing is stored, and
  the caller answers ``ACK(mark)`` so the edge resends from there;
* otherwise the new entries are inserted and the mark moves to the last of them.

The rules themselves are ``edgeline.sync.apply_batch``/``apply_gap``, the same code
every receiver runs. ``commit`` applies any number of batches and gaps — BATCH and GAP
events of the sync protocol, each with its origin — from many edges in one SQLite
transaction, so a busy gateway pays one fsync per group, not per batch (group commit).
The marks it returns are durable when it returns: an ACK may be sent. SQLite runs in WAL
mode with ``synchronous=FULL`` (the embedded default: no set-up, one file).

Streams get a small integer id (table ``streams``) so the records table is keyed by
``(stream, seq)`` — compact, and inserts stay fast. Marks are cached in memory; the
database is the truth at start-up.

Cloud-to-edge topics live in the same tables: records published at the gateway are the
stream ``(cloud, topic)`` (``edgeline.sync.CLOUD_ORIGIN``), and a ``Publish`` item in a
commit gives them the next seqs of that stream, so they are stored, numbered and made
durable exactly like an edge's batch. ``pull`` reads them back for DATA. A ``Delivered``
item records how far a node has acknowledged a topic (its PULL's ``after_seq``), for
``/v1/status``; it is bookkeeping, not part of any guarantee (the edge's log is the truth
of what it holds, and its next PULL says so again).
"""
import os
import sqlite3
import threading

from edgeline.log import Record
from edgeline.sync import CLOUD_ORIGIN, Batch, Gap, apply_batch, apply_gap

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    topic TEXT NOT NULL,
    mark INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL DEFAULT 0,
    UNIQUE (origin, topic)
);
CREATE TABLE IF NOT EXISTS records (
    stream INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    stored_ms INTEGER NOT NULL,
    PRIMARY KEY (stream, seq)
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
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._streams = {}  # (origin, topic) -> [id, mark]
        for sid, origin, topic, mark in self._db.execute("SELECT id, origin, topic, mark FROM streams"):
            self._streams[(origin, topic)] = [sid, mark]
        self._delivered = {}  # (node, topic) -> (seq, pulled_ms)
        for node, topic, seq, ms in self._db.execute("SELECT node, topic, seq, pulled_ms FROM deliveries"):
            self._delivered[(node, topic)] = (seq, ms)

    def close(self):
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ marks

    def mark(self, origin, topic):
        """Highest seq of (origin, topic) held as a record or a reported gap; 0 if none."""
        s = self._streams.get((origin, topic))
        return s[1] if s else 0

    def marks(self, origin):
        """{topic: mark} for every stream of this origin."""
        return {t: s[1] for (o, t), s in self._streams.items() if o == origin}

    def _stream(self, origin, topic, created=None):
        s = self._streams.get((origin, topic))
        if s is None:
            cur = self._db.execute("INSERT INTO streams (origin, topic) VALUES (?, ?)", (origin, topic))
            s = self._streams[(origin, topic)] = [cur.lastrowid, 0]
            if created is not None:
                created.append((origin, topic))
        return s

    # ------------------------------------------------------------------ writes

    def commit(self, items, now_ms):
        """Apply ``(origin, event)`` pairs — sync ``Batch`` or ``Gap`` events from edges,
        ``Publish`` from the gateway itself (origin ``cloud``), ``Delivered`` — in order,
        in one durable transaction.

        Returns one mark per item: the stream's mark after it was applied, which the
        caller sends back as ACK (for a Publish: the seq of its last record; for a
        Delivered: its seq). Raises sqlite3.Error if the database cannot store
        (nothing of the group is then stored, and marks are unchanged).
        """
        with self._lock:
            saved = {}
            created = []  # streams this transaction inserted: forgotten if it rolls back
            delivered = {}
            out = []
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for origin, ev in items:
                    if isinstance(ev, Delivered):
                        delivered[(origin, ev.topic)] = (ev.seq, now_ms)
                        out.append(ev.seq)
                        continue
                    if (origin == CLOUD_ORIGIN) != isinstance(ev, Publish):
                        raise ValueError("%s from origin %r: only the gateway publishes, as %r, and it sends no "
                                         "batches" % (type(ev).__name__, origin, CLOUD_ORIGIN))
                    s = self._stream(origin, ev.topic, created)
                    if s[0] not in saved:
                        saved[s[0]] = (s, s[1])
                    if isinstance(ev, Batch):
                        self._apply_batch(s, ev, now_ms)
                    elif isinstance(ev, Gap):
                        self._apply_gap(s, ev, now_ms)
                    else:
                        self._apply_publish(s, ev, now_ms)
                    out.append(s[1])
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
                raise
            self._delivered.update(delivered)
            return out

    def _apply_batch(self, s, ev, now_ms):
        records, mark = apply_batch(s[1], ev)
        if not records:
            return
        sid = s[0]
        self._db.executemany(
            "INSERT INTO records (stream, seq, ts, key, value, stored_ms) VALUES (?, ?, ?, ?, ?, ?)",
            [(sid, r.seq, r.ts, r.key, r.value, now_ms) for r in records],
        )
        self._db.execute("UPDATE streams SET records = records + ? WHERE id = ?", (len(records), sid))
        s[1] = mark

    def _apply_publish(self, s, ev, now_ms):
        first = s[1] + 1
        self._db.executemany(
            "INSERT INTO records (stream, seq, ts, key, value, stored_ms) VALUES (?, ?, ?, ?, ?, ?)",
            [(s[0], first + i, ts, key, value, now_ms) for i, (ts, key, value) in enumerate(ev.entries)],
        )
        self._db.execute("UPDATE streams SET records = records + ? WHERE id = ?", (len(ev.entries), s[0]))
        s[1] += len(ev.entries)

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
        s = self._streams.get((CLOUD_ORIGIN, topic))
        if s is None or after_seq >= s[1] or max_records < 1:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, ts, key, value FROM records WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                (s[0], after_seq, max_records)).fetchall()
        return [Record(q, ts, k, v) for q, ts, k, v in rows]

    def last_published_ts(self):
        """The newest timestamp of any published record (0 if none): seeds the
        gateway's clock so published timestamps keep increasing across restarts."""
        last = 0
        with self._lock:
            for (origin, _topic), (sid, mark) in self._streams.items():
                if origin == CLOUD_ORIGIN and mark:
                    row = self._db.execute("SELECT MAX(ts) FROM records WHERE stream = ?", (sid,)).fetchone()
                    if row and row[0] is not None and row[0] > last:
                        last = row[0]
        return last

    def delivered(self, node, topic):
        """(seq, pulled_ms) of the node's last PULL of topic, or None if it never pulled."""
        return self._delivered.get((node, topic))

    # ------------------------------------------------------------------ queries

    def records(self, topic, origin=None, from_seq=1, to_seq=None, limit=1000):
        """Records of a topic (of one origin, or all), in (origin, seq) order."""
        sql = (
            "SELECT s.origin, s.topic, r.seq, r.ts, r.key, r.value, r.stored_ms FROM records r "
            "JOIN streams s ON s.id = r.stream WHERE s.topic = ? AND r.seq >= ?"
        )
        args = [topic, from_seq]
        if origin is not None:
            sql += " AND s.origin = ?"
            args.append(origin)
        if to_seq is not None:
            sql += " AND r.seq <= ?"
            args.append(to_seq)
        sql += " ORDER BY s.origin, r.seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            {"origin": o, "topic": t, "seq": q, "ts": ts, "key": k, "value": v, "stored_ms": sm}
            for o, t, q, ts, k, v, sm in rows
        ]

    def gaps(self, origin=None, topic=None):
        """Reported gaps: [{origin, topic, first, last, reason, reported_ms}]."""
        sql = (
            "SELECT s.origin, s.topic, g.first, g.last, g.reason, g.reported_ms FROM gaps g "
            "JOIN streams s ON s.id = g.stream WHERE 1 = 1"
        )
        args = []
        if origin is not None:
            sql += " AND s.origin = ?"
            args.append(origin)
        if topic is not None:
            sql += " AND s.topic = ?"
            args.append(topic)
        sql += " ORDER BY s.origin, s.topic, g.first"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            {"origin": o, "topic": t, "first": f, "last": la, "reason": r, "reported_ms": ms}
            for o, t, f, la, r, ms in rows
        ]

    def status(self, origin=None):
        """Per stream: {origin, topic, mark, records, lost, updated_ms}."""
        sql = "SELECT origin, topic, mark, records, lost, updated_ms FROM streams"
        args = ()
        if origin is not None:
            sql += " WHERE origin = ?"
            args = (origin,)
        sql += " ORDER BY origin, topic"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            {"origin": o, "topic": t, "mark": m, "records": n, "lost": lost, "updated_ms": u}
            for o, t, m, n, lost, u in rows
        ]
