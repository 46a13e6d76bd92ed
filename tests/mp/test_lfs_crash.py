"""Crash tests of the ring log and outbox on real littlefs2: `FileStorage` over a
`FlashBlockDevice` whose power is cut at every block write.

MicroPython only (run by tests/mp/micropython_test.py through tools/mptest.py); pytest
does not collect tests/mp. Imported by CPython it defines nothing.

Each scenario runs first uncut on a freshly formatted chip to count its block writes W;
then for every k in 1..W on a fresh chip with ``cut_after = k``: the k-th block write
programs half its bytes and fails with EIO, later ones are dropped. A call running when
the power went does not count as returned (its OSError, or the StorageError the log
makes of it, ends the scenario; so does a call that swallowed the error). The chip is
powered on again and mounted, the log and outbox reopened, and the invariants of
tests/core/test_crash.py checked: every durable record present and intact, seqs
consecutive, no seq reused, the cursor between the last ack that returned and the
largest ack attempted, appending continues, nothing reported corrupt.

Self-contained rather than built on tests/core/test_crash.py: that module and faultfs
would not fit in the heap beside the log, littlefs and the 4 KB flash image. Even so,
under the 64-bit unix port this file needs about 70 KB of heap (``-X heapsize=80k``):
the log and outbox take 28 KB loaded, the image and this module 9 KB, littlefs and the
log 5-12 KB at run time, and the rest is lost to fragmentation.
"""
import sys

if sys.implementation.name == "micropython":
    import gc

    _BS = 128
    _BC = 32
    # The one 4 KB flash image all runs reuse, allocated before anything else: later
    # the heap is too fragmented to hold 4 KB in one piece.
    _IMG = bytearray(_BS * _BC)

    from edgeline.errors import EdgelineError
    from edgeline.log import RingLog
    from edgeline.outbox import Outbox
    from edgeline.storage import FileStorage
    from emulator.flash import FlashBlockDevice, mount, umount

    _MNT = "/flash"
    _DIR = "/flash/topic"
    _ERASED = b"\xff" * _BS

    # How many block writes (cut points) each scenario exercised.
    CUT_POINTS = {}

    def _value(seq):
        n = 3 + (seq * 7) % 23 + (40 if seq % 5 == 0 else 0)
        s = "v%d." % seq
        return (s * (n // len(s) + 1))[:n].encode()

    def _key(seq):
        return ("k%d" % seq).encode() if seq % 3 == 0 else None

    def _append(log):
        seq = log.last_seq + 1
        assert log.append(_value(seq), ts=seq, key=_key(seq)) == seq
        return seq

    def _play(dev, opts, steps, o):
        # o = [durable, first, acked, max_ack]: what returned while the chip had power.
        # A call during which the power went raises OSError(5) here if it did not fail.
        log = ob = None
        try:
            for op, arg in steps:
                for _ in range(arg if op == "append" else 1):
                    if op == "open":
                        log = RingLog(_DIR, storage=FileStorage(), warn=print, **opts)
                        if arg:
                            ob = Outbox(log, "uplink")
                    elif op == "append":
                        _append(log)
                    elif op == "ack":  # ack the last of peek(arg)
                        seq = ob.peek(arg)[-1].seq
                        o[3] = max(o[3], seq)
                        ob.ack(seq)
                        if not dev.cut:
                            o[2] = max(o[2], seq)
                    else:
                        ob.close() if ob else None
                        log.close()
                    if dev.cut:
                        raise OSError(5)
                    o[0] = max(o[0], log.durable_seq)
                    o[1] = max(o[1], log.first_seq)
        finally:
            # Close what a cut left open (writes to the dead chip are dropped) rather
            # than leave it to a finaliser, which would report littlefs's errors.
            for x in (ob, log):
                try:
                    x.close()
                except Exception:
                    pass

    def _check(opts, outbox, o, where):
        log = RingLog(_DIR, storage=FileStorage(), warn=print, **opts)
        first = log.first_seq
        last = log.last_seq
        assert last >= o[0] and o[1] <= first <= max(o[0] + 1, o[1]), (
            "%s: first %d last %d, seen durable %d first %d" % (where, first, last, o[0], o[1]))
        seq = first
        while True:
            recs = log.read(seq, 5, 4096)
            if not recs:
                break
            for r in recs:
                assert (r.seq, r.value, r.key) == (seq, _value(seq), _key(seq)), (where, r)
                seq += 1
        assert seq == last + 1 and log.corrupt == 0, (where, seq, last, log.corrupt)
        if outbox:
            ob = Outbox(log, "uplink")
            assert o[2] <= ob.acked <= o[3] and ob.acked <= last, (where, ob.acked, o)
            ob.close()
        assert _append(log) == last + 1
        log.close()
        log = RingLog(_DIR, storage=FileStorage(), warn=print, **opts)
        assert log.last_seq == last + 1 and log.read(last + 1, 1)[0].value == _value(last + 1), where
        log.close()

    def _explore(name, opts, outbox, steps):
        total = 0
        k = 0
        while k <= total:
            gc.collect()
            for b in range(_BC):
                _IMG[b * _BS:(b + 1) * _BS] = _ERASED
            dev = FlashBlockDevice(_BS, _BC, _IMG)
            umount(_MNT)  # a failed test may have left it mounted
            mount(dev, _MNT, mkfs=True)
            dev.writes = 0
            dev.cut_after = k or None
            o = [0, 1, 0, 0]
            if not k:
                _play(dev, opts, steps, o)  # uncut: counts the block writes
                total = dev.writes
                assert not dev.cut and total > 3 and o[0] > 3, (name, total, o)
            else:
                try:
                    _play(dev, opts, steps, o)
                except (OSError, EdgelineError):
                    pass
                assert dev.cut, "%s: block write %d was not cut" % (name, k)
            umount(_MNT)
            dev = dev.power_on() if k else dev
            gc.collect()
            mount(dev, _MNT)
            try:
                _check(opts, outbox, o, "%s (littlefs), cut at block write %d" % (name, k))
            finally:
                umount(_MNT)
            dev = None
            k += 1
        CUT_POINTS[name] = total

    _OPEN = ("open", False)
    _OPEN_OB = ("open", True)
    _CLOSE = ("close", 0)

    def test_lfs_crash_sync_every():
        _explore("sync_every", {"segment_bytes": 200, "budget_bytes": 4096, "sync": "every"},
                 False, [_OPEN, ("append", 5), _CLOSE])

    def test_lfs_crash_rotation():
        # Rotation under group commit: sealing a segment, creating the next one and
        # committing it are separate littlefs commits, cut between and inside each.
        _explore("rotation", {"segment_bytes": 140, "budget_bytes": 4096, "sync": "group",
                              "group_records": 2},
                 False, [_OPEN, ("append", 7), _CLOSE])

    def test_lfs_crash_cursor():
        _explore("cursor", {"segment_bytes": 140, "budget_bytes": 420, "sync": "none"},
                 True, [_OPEN_OB, ("append", 3), ("ack", 2), ("append", 3), ("ack", 3), _CLOSE])

    def test_lfs_crash_eviction():
        # Group commit with two segments' budget: appends keep evicting the oldest.
        _explore("eviction", {"segment_bytes": 140, "budget_bytes": 280, "sync": "group",
                              "group_records": 2, "full_policy": "drop_oldest"},
                 False, [_OPEN, ("append", 8), _CLOSE])
