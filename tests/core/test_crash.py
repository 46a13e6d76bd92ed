"""Crash tests of the ring log and outbox: cut the power at every write point, reopen,
check the invariants of docs/spec/log.md. Plain functions; CPython and MicroPython.

How each test works
-------------------
A scenario is a list of steps (open, append, flush, tick, ack, retention, close) with
the log options it runs under; `_play` performs it. It is first run uncut on a
`FaultStorage` to count its write points W. Then for every N in 1..W it runs on a fresh
storage with ``cut_at = N``; the `PowerCut` propagates out of the log (core code catches
OSError only). While running, the observer `_Obs` notes after each call that *returned*:
``log.durable_seq``, ``log.first_seq``, the last ``ack`` that returned and the largest
seq ever passed to ``ack``. The cut state is then crashed each way (torn with several
prefix lengths, lost) and reopened, and `_check` asserts, in the spec's terms:

* G1 — every durable record not evicted is present and intact: the log holds exactly the
  seqs first_seq..last_seq, and first_seq <= durable + 1 (I2: the tail, which starts at
  most one past the durable end, is never removed);
* G3 — last_seq >= the highest seq ever durable, so no seq is reused; appending
  continues at last_seq + 1 and reads back, also after one more reopen (I5); the cursor
  is never beyond last_seq;
* G2 — every record read has the value, ts and key derived from its seq; no corruption
  is reported and nothing warned (a sealed segment with a bad tail would be: I3, I4);
* G4 — the cursor is >= the last acknowledgement that returned (I7) and <= the largest
  seq ever passed to ack; G5 — records evicted unacknowledged show as the outbox's gap.

tests/mp/test_lfs_crash.py plays some of these scenarios on littlefs2.

Heap: the module is written compactly (scenarios as data, one interpreter). Under
MicroPython the in-memory file system holds the whole "disk" and its crash snapshots in
the heap, which a board keeps in flash, so tests/mp/micropython_test.py gives this file
96 KB of heap (it needs about 72 KB) where every other core test gets 64 KB.
"""
from emulator.faultfs import FaultStorage, PowerCut
from edgeline.log import RingLog
from edgeline.outbox import Outbox

_DIR = "/data/topic"

# (mode, torn_bytes): the cut write lands half, not at all, all but its last byte,
# or only its first byte; "lost" drops every unsynced write.
CRASHES = (("torn", None), ("torn", 0), ("torn", -1), ("torn", 1), ("lost", None))
# Tests that multiply cut points use the two extreme ways.
CRASHES_SHORT = (("torn", None), ("lost", None))

# How many cut points each scenario exercised (filled in as the tests run).
CUT_POINTS = {}


def _value(seq):
    # Lengths vary with the seq (3..25 bytes, and 63..85 for every fifth record) so
    # frames straddle buffer and segment boundaries in different places.
    n = 3 + (seq * 7) % 23 + (60 if seq % 5 == 0 else 0)
    s = "v%d." % seq
    return (s * (n // len(s) + 1))[:n].encode()


def _key(seq):
    return ("k%d" % seq).encode() if seq % 3 == 0 else None


def _ts(seq):
    return (1000 + seq) << 16  # physical ms 1000 + seq


class _Obs:
    """What a scenario saw returned (a copy of src if given)."""

    def __init__(self, src=None):
        self.durable = src.durable if src else 0  # highest log.durable_seq seen
        self.first = src.first if src else 1  # highest log.first_seq seen
        self.acked = src.acked if src else 0  # highest ack that returned
        self.max_ack = src.max_ack if src else 0  # highest seq passed to ack
        self.max_seq = src.max_seq if src else 0  # highest seq appended
        self.stop = src.stop if src else None  # called after each call (littlefs)
        self.warnings = []


def _note(o, log):
    if o.stop is not None:
        o.stop()
    if log.durable_seq > o.durable:
        o.durable = log.durable_seq
    if log.first_seq > o.first:
        o.first = log.first_seq


def _append(o, log, now_ms=None):
    seq = log.last_seq + 1
    o.max_seq = max(o.max_seq, seq)
    got = log.append(_value(seq), ts=_ts(seq), key=_key(seq), now_ms=now_ms)
    assert got == seq, (got, seq)
    _note(o, log)


def _play(fs, sc, o, path=_DIR):
    """Perform scenario sc = (name, options, has_outbox, steps) on storage fs.

    Steps: ("open",) opens the log (and the outbox); ("append", n, dt) appends n
    records, with now_ms advancing by dt per record if dt; ("flush",); ("tick", dt);
    ("retain",) applies retention at now_ms = 1000 + last_seq; ("ack", k) acks the last
    of ``peek(k)``, k = 0 acks last_seq, k = -1 acks the end of the gap; ("close",).
    """
    log = ob = None
    now = 0
    for step in sc[3]:
        op = step[0]
        if op == "append":
            for _ in range(step[1]):
                now += step[2]
                _append(o, log, now if step[2] else None)
            continue
        if op == "open":
            log = RingLog(path, storage=fs, warn=o.warnings.append, **sc[1])
            if sc[2]:
                ob = Outbox(log, "uplink")
                o.acked = max(o.acked, ob.acked)
        elif op == "flush":
            log.flush()
        elif op == "tick":
            now += step[1]
            log.tick(now)
        elif op == "retain":
            log.apply_retention(1000 + log.last_seq)
        elif op == "ack":
            k = step[1]
            if k > 0:
                recs = ob.peek(k)
                _note(o, log)  # peek commits the log first: what it returns is durable
                assert recs and recs[-1].seq <= log.durable_seq, recs
                seq = recs[-1].seq
            elif k == 0:
                seq = log.last_seq
            else:
                seq = ob.gap()[1]
            o.max_ack = max(o.max_ack, seq)
            ob.ack(seq)
            o.acked = max(o.acked, seq)
        elif op == "close":
            if ob is not None:
                ob.close()
                ob = None
            log.close()
        _note(o, log)


def _check_records(log, o, where):
    first = log.first_seq
    last = log.last_seq
    assert last >= o.durable, "%s: durable seq %d lost, last_seq %d (seqs would be reused)" % (
        where, o.durable, last)
    assert o.first <= first <= max(o.durable + 1, o.first), "%s: first_seq %d, seen %d, durable %d" % (
        where, first, o.first, o.durable)
    seq = first
    while True:
        recs = log.read(seq, 7, 1 << 16)
        if not recs:
            break
        for r in recs:
            assert r.seq == seq, "%s: read seq %d, expected %d" % (where, r.seq, seq)
            assert (r.value, r.ts, r.key) == (_value(seq), _ts(seq), _key(seq)), (
                "%s: bad record %r" % (where, r))
            seq += 1
    assert seq == last + 1, "%s: read up to %d, last_seq %d" % (where, seq - 1, last)
    assert log.corrupt == 0 and not o.warnings, "%s: corrupt %d, warnings %r" % (
        where, log.corrupt, o.warnings)


def _check(fs, sc, o, where, path=_DIR):
    """Reopen the crashed state in fs and assert the invariants (module docstring)."""
    o.warnings = []
    opts = sc[1]
    log = RingLog(path, storage=fs, warn=o.warnings.append, **opts)
    _check_records(log, o, where)
    last = log.last_seq
    ob = None
    if sc[2]:
        ob = Outbox(log, "uplink")
        acked = ob.acked
        assert o.acked <= acked <= o.max_ack and acked <= last, (
            "%s: cursor %d; acks returned %d, attempted %d; last_seq %d" % (
                where, acked, o.acked, o.max_ack, last))
        first = log.first_seq
        if acked + 1 < first:
            assert ob.gap() == (acked + 1, first - 1), "%s: gap %r" % (where, ob.gap())
        elif acked < last:
            recs = ob.peek(2)
            assert recs and recs[0].seq == acked + 1, "%s: peek %r after %d" % (where, recs, acked)
        assert not o.warnings, "%s: warnings %r" % (where, o.warnings)
    # I5 / G3: appending continues right after the recovered end, and reads back.
    o.stop = None
    _append(o, log)
    log.flush()
    recs = log.read(last + 1, 1)
    assert recs and recs[0].value == _value(last + 1), "%s: new record unreadable" % where
    if ob is not None:
        ob.close()
    log.close()
    log = RingLog(path, storage=fs, warn=o.warnings.append, **opts)
    o.durable = last + 1
    _check_records(log, o, where + " (reopened)")
    log.close()


def _run(fs, sc, o):
    """Play sc on fs; True if the power was cut."""
    try:
        _play(fs, sc, o)
    except PowerCut:
        return True
    return False


def _uncut(sc):
    fs = FaultStorage()
    o = _Obs()
    assert not _run(fs, sc, o), sc[0]
    return fs, o


def _explore(sc, crashes=CRASHES):
    """Cut sc at every write point, crash each way, check; return the point count."""
    fs, o = _uncut(sc)
    total = fs.write_points
    # A clean end: everything the scenario ended with is durable.
    assert total > 3 and o.durable == o.max_seq, (sc[0], total, o.durable, o.max_seq)
    _check(fs.crash("lost"), sc, o, sc[0] + " uncut")
    for n in range(1, total + 1):
        fs = FaultStorage(cut_at=n)
        o = _Obs()
        assert _run(fs, sc, o), "%s: point %d was not cut" % (sc[0], n)
        for mode, torn in crashes:
            where = "%s, %s, %s/%s" % (sc[0], fs.cut, mode, torn)
            _check(fs.crash(mode, torn_bytes=torn), sc, _Obs(o), where)
    CUT_POINTS[sc[0]] = total
    return total


# -- scenarios --------------------------------------------------------------------------

_OPEN = ("open",)
_CLOSE = ("close",)

SYNC_EVERY = ("sync_every", {"segment_bytes": 256, "budget_bytes": 4096, "sync": "every"},
              False, [_OPEN, ("append", 7, 0), _CLOSE])

# Commits by count (every 3 records) and by time (50 ms, also by tick alone).
_GROUP = {"segment_bytes": 256, "budget_bytes": 4096, "sync": "group",
          "group_records": 3, "group_ms": 50}
GROUP_COMMIT = ("group_commit", _GROUP, False,
                [_OPEN, ("append", 8, 20), ("tick", 60), ("append", 1, 1), _CLOSE])

# buffer_bytes 64: the records of 63+ bytes are written straight to the file in pieces.
SYNC_NONE = ("sync_none", {"segment_bytes": 256, "budget_bytes": 4096, "sync": "none",
                           "buffer_bytes": 64},
             False, [_OPEN, ("append", 3, 0), ("flush",), ("append", 4, 0), ("flush",),
                     ("append", 1, 0), _CLOSE])

# Segments of 160 bytes hold one to three records: nearly every commit rotates.
ROTATION = ("rotation", {"segment_bytes": 160, "budget_bytes": 4096, "sync": "group",
                         "group_records": 2, "group_ms": 1000},
            False, [_OPEN, ("append", 10, 0), _CLOSE])

# Two segments' budget under drop_oldest: appends keep evicting the oldest segment.
EVICTION = ("eviction", {"segment_bytes": 160, "budget_bytes": 320, "sync": "group",
                         "group_records": 2, "group_ms": 1000, "full_policy": "drop_oldest"},
            False, [_OPEN, ("append", 10, 0), _CLOSE])

# Record seq s has physical time 1000 + s ms; at now = 1000 + last_seq the segments
# whose successor began more than 1 ms earlier expire.
RETENTION = ("retention", {"segment_bytes": 160, "budget_bytes": 4096, "sync": "group",
                           "group_records": 5, "group_ms": 1000, "retention_ms": 1},
             False, [_OPEN] + [("append", 1, 0), ("retain",)] * 10 + [_CLOSE])

# Acks move the cursor slot by slot; peek commits the log; acked segments are reclaimed
# before anything is evicted; the last ack is of a record not yet durable.
CURSOR = ("cursor", {"segment_bytes": 160, "budget_bytes": 480, "sync": "none",
                     "full_policy": "drop_oldest"},
          True, [_OPEN, ("append", 3, 0), ("ack", 2), ("append", 3, 0), ("ack", 3),
                 ("append", 4, 0), ("ack", 4), ("append", 1, 0), ("ack", 0), _CLOSE])

# A consumer falls behind under sync every: evicted records become a gap, acked.
GAP = ("gap", {"segment_bytes": 160, "budget_bytes": 320, "sync": "every",
               "full_policy": "drop_oldest"},
       True, [_OPEN, ("append", 6, 0), ("ack", -1), ("ack", 2), ("append", 3, 0), _CLOSE])

# Close and reopen between batches: recovery runs on a clean log mid-scenario.
REOPEN = ("reopen", _GROUP, True,
          [_OPEN, ("append", 3, 0), ("ack", 2), _CLOSE, _OPEN, ("append", 3, 0), ("ack", 5),
           _CLOSE, _OPEN, ("append", 1, 0), _CLOSE])

# What a device does after power returns: open, resume sending, append on.
RECOVERY = ("recovery", CURSOR[1], True,
            [_OPEN, ("append", 2, 0), ("ack", 2), ("append", 1, 0), _CLOSE])


def test_crash_sync_every():
    _explore(SYNC_EVERY)


def test_crash_group_commit():
    _explore(GROUP_COMMIT)


def test_crash_sync_none():
    _explore(SYNC_NONE)


def test_crash_rotation():
    # I4: a sealed segment is synced before the next begins; under "lost" a sealed
    # segment without its tail would show as missing seqs or a corrupt frame.
    _explore(ROTATION)


def test_crash_eviction():
    _explore(EVICTION)


def test_crash_retention():
    _explore(RETENTION)


def test_crash_cursor():
    # I7: a torn cursor update leaves the previous value; G4 both ways.
    _explore(CURSOR)


def test_crash_gap():
    _explore(GAP)


def test_crash_reopen():
    _explore(REOPEN)


def test_crash_during_recovery():
    # For every cut point of the cursor scenario and each way of crashing it, cut the
    # recovery itself at every one of its write points, crash again, recover, check.
    total = _uncut(CURSOR)[0].write_points
    runs = 0
    for n in range(1, total + 1):
        fs = FaultStorage(cut_at=n)
        o = _Obs()
        assert _run(fs, CURSOR, o)
        for mode, torn in CRASHES_SHORT:
            first = fs.crash(mode, torn_bytes=torn)
            probe = first.snapshot()
            assert not _run(probe, RECOVERY, _Obs(o))
            assert probe.write_points > 3
            for m in range(1, probe.write_points + 1):
                again = first.snapshot()
                again.cut_at = m
                o2 = _Obs(o)
                assert _run(again, RECOVERY, o2)
                for mode2, torn2 in CRASHES_SHORT:
                    where = "cursor %s %s/%s, recovery %s, %s/%s" % (
                        fs.cut, mode, torn, again.cut, mode2, torn2)
                    _check(again.crash(mode2, torn_bytes=torn2), RECOVERY, _Obs(o2), where)
                    runs += 1
    CUT_POINTS["recovery"] = runs


def test_crash_reorder():
    # Unsynced writes persist as a random subset, holes read as zeros; synced data and
    # metadata stand. Every invariant still holds.
    for sc in (GROUP_COMMIT, CURSOR):
        for n in range(1, _uncut(sc)[0].write_points + 1):
            fs = FaultStorage(cut_at=n)
            o = _Obs()
            assert _run(fs, sc, o)
            for seed in range(3):
                where = "%s, %s, reorder seed %d" % (sc[0], fs.cut, seed)
                _check(fs.crash("reorder", seed=seed), sc, _Obs(o), where)


def test_crash_store_budget():
    # Two logs under one Store budget: the high-priority log's appends evict the
    # low-priority log's oldest segments. Cut everywhere; both logs keep their invariants.
    from edgeline.store import Store

    sc = ("store", {"segment_bytes": 160, "budget_bytes": 1280, "sync": "every"}, False)
    total = 0
    n = 0
    while n <= total:
        fs = FaultStorage(cut_at=n or None)
        obs = (_Obs(), _Obs())
        try:
            st = Store("/data/store", budget_bytes=560, storage=fs)
            logs = (st.log("lo", priority=0, **sc[1]), st.log("hi", priority=1, **sc[1]))
            for i in (0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1):
                _append(obs[i], logs[i])
            assert logs[0].evicted > 0
            st.close()
            assert not n, "point %d was not cut" % n
            total = fs.write_points
        except PowerCut:
            pass
        for mode, torn in CRASHES_SHORT if n else ():
            after = fs.crash(mode, torn_bytes=torn)
            for i in (0, 1):
                path = "/data/store/" + ("lo", "hi")[i]
                if after.exists(path):
                    where = "store %s, %s, %s/%s" % (path, fs.cut, mode, torn)
                    _check(after, sc, _Obs(obs[i]), where, path)
        n += 1
    CUT_POINTS["store_budget"] = total
