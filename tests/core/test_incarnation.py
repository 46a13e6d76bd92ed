"""The log's incarnation (docs/spec/log.md, "Incarnation"): made with the log, kept across
reopens and crashes, never lost once a record is durable; a log from before version 2
becomes the legacy incarnation. Power cuts at every write point of a log's first open,
first append and flush. Plain functions; CPython and MicroPython."""
from edgeline.errors import CorruptRecord
from edgeline.log import RingLog
import struct
from binascii import crc32

INCARNATION_FILE = "incarnation"
LEGACY_INCARNATION = bytes(8)


def pack_incarnation(inc):
    # docs/spec/log.md, "Incarnation file"
    head = b"EINC" + struct.pack("<BBH", 1, 0, 0) + inc
    return head + struct.pack("<I", crc32(head))

from emulator.faultfs import FaultStorage, PowerCut
from support import raises

_DIR = "/data/t"
_OPTS = {"segment_bytes": 256, "budget_bytes": 4096, "sync": "every"}


def _first_use(fs):
    """Open a new log, append and commit two records; what returned before a cut."""
    seen = {"inc": None, "durable": 0}
    try:
        log = RingLog(_DIR, storage=fs, **_OPTS)
        seen["inc"] = log.incarnation
        for i in range(2):
            log.append(b"r%d" % i, ts=i)
            seen["durable"] = log.durable_seq
        log.close()
    except PowerCut:
        pass
    return seen


def test_new_logs_get_distinct_random_incarnations_kept_across_reopen():
    fs = FaultStorage()
    a = RingLog("/a", storage=fs, **_OPTS)
    b = RingLog("/b", storage=fs, **_OPTS)
    assert len(a.incarnation) == 8 and a.incarnation != b.incarnation
    assert a.incarnation != LEGACY_INCARNATION
    a.append(b"x", ts=1)
    inc = a.incarnation
    a.close()
    assert RingLog("/a", storage=fs, **_OPTS).incarnation == inc


def test_power_cut_at_every_write_point_of_the_incarnation():
    points = FaultStorage()
    _first_use(points)
    total = points.write_points
    assert total >= 5  # mkdir, tmp create, tmp write, rename, segment ...
    for n in range(1, total + 1):
        for mode in ("torn", "lost"):
            fs = FaultStorage(cut_at=n)
            seen = _first_use(fs)
            fs = fs.crash(mode)
            log = RingLog(_DIR, storage=fs, **_OPTS)  # never CorruptRecord, never a leftover
            assert log.incarnation != LEGACY_INCARNATION, (n, mode)
            assert log.last_seq >= seen["durable"], (n, mode)
            if seen["inc"] is not None:
                # once the open returned, the id is the one on disk for good
                assert log.incarnation == seen["inc"], (n, mode)
            assert INCARNATION_FILE + ".tmp" not in fs.listdir(_DIR)
            inc = log.incarnation
            log.append(b"after", ts=9)
            log.close()
            assert RingLog(_DIR, storage=fs, **_OPTS).incarnation == inc


def test_legacy_log_is_upgraded_at_every_write_point():
    # A log with segments and no incarnation file was written before version 2.
    base = FaultStorage()
    log = RingLog(_DIR, storage=base, **_OPTS)
    log.append(b"old", ts=1)
    log.close()
    base.remove(_DIR + "/" + INCARNATION_FILE)
    probe = base.snapshot()
    RingLog(_DIR, storage=probe, **_OPTS).close()
    for n in range(1, probe.write_points + 1):
        fs = base.snapshot()
        fs.write_points = 0
        fs.cut_at = n
        try:
            RingLog(_DIR, storage=fs, **_OPTS)
        except PowerCut:
            pass
        fs = fs.crash("torn")
        log = RingLog(_DIR, storage=fs, **_OPTS)
        assert log.incarnation == LEGACY_INCARNATION and log.last_seq == 1
        log.close()
    assert fs.contents(_DIR + "/" + INCARNATION_FILE) == bytes(pack_incarnation(LEGACY_INCARNATION))


def test_corrupt_incarnation_of_a_log_with_records_is_one_clear_error():
    fs = FaultStorage()
    log = RingLog(_DIR, storage=fs, **_OPTS)
    log.append(b"x", ts=1)
    log.close()
    h = fs.open_update(_DIR + "/" + INCARNATION_FILE)
    h.write(bytearray(b"\xff" * 20), 20)
    h.sync()
    h.close()
    e = raises(CorruptRecord, RingLog, _DIR, storage=fs, **_OPTS)
    assert "incarnation" in str(e) and "\n" not in str(e)


def test_power_cut_during_the_reopen_after_a_cut_creation():
    # faults during recovery: the first open was cut at write point n, the reopen that
    # cleans up and creates the file again is cut at its write point k; a third open
    # always ends with one incarnation that then stays
    points = FaultStorage()
    try:
        RingLog(_DIR, storage=points, **_OPTS)
    except PowerCut:
        pass
    for n in range(1, points.write_points + 1):
        first = FaultStorage(cut_at=n)
        _first_use(first)
        first = first.crash("torn")
        probe = first.snapshot()
        RingLog(_DIR, storage=probe, **_OPTS).close()
        for k in range(1, probe.write_points + 1):
            fs = first.snapshot()
            fs.write_points = 0
            fs.cut_at = k
            try:
                RingLog(_DIR, storage=fs, **_OPTS)
            except PowerCut:
                pass
            fs = fs.crash("lost")
            log = RingLog(_DIR, storage=fs, **_OPTS)
            inc = log.incarnation
            assert inc != LEGACY_INCARNATION and log.last_seq == 0, (n, k)
            log.append(b"x", ts=1)
            log.close()
            assert RingLog(_DIR, storage=fs, **_OPTS).incarnation == inc
