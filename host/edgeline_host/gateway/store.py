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
"""
import os
import sqlite3
import threading

from edgeline.sync import Batch, apply_batch, apply_gap

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
"""


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

    def _stream(self, origin, topic):
        s = self._streams.get((origin, topic))
        if s is None:
            cur = self._db.execute("INSERT INTO streams (origin, topic) VALUES (?, ?)", (origin, topic))
            s = self._streams[(origin, topic)] = [cur.lastrowid, 0]
        return s

    # ------------------------------------------------------------------ writes

    def commit(self, items, now_ms):
        """Apply ``(origin, event)`` pairs — sync ``Batch`` or ``Gap`` events — in order,
        in one durable transaction.

        Returns one mark per item: the stream's mark after it was applied, which the
        caller sends back as ACK. Raises sqlite3.Error if the database cannot store
        (nothing of the group is then stored, and marks are unchanged).
        """
        with self._lock:
            saved = {}
            out = []
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for origin, ev in items:
                    s = self._stream(origin, ev.topic)
                    if s[0] not in saved:
                        saved[s[0]] = (s, s[1])
                    if isinstance(ev, Batch):
                        self._apply_batch(s, ev, now_ms)
                    else:
                        self._apply_gap(s, ev, now_ms)
                    out.append(s[1])
                for s, old in saved.values():
                    if s[1] != old:
                        db.execute("UPDATE streams SET mark = ?, updated_ms = ? WHERE id = ?", (s[1], now_ms, s[0]))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                for s, old in saved.values():
                    s[1] = old
                raise
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
