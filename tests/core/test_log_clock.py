"""Appends stamped by a HybridClock (ts=clock): the timestamp is written into the frame
from small ints, the way a 32-bit board appends without allocating. Same file under
CPython and MicroPython (a file of its own: test_log.py fills the 64 KB heap lane)."""
from edgeline.clock import HybridClock
from edgeline.errors import ConfigError
from edgeline.log import RingLog
from support import raises, rmtree, tempdir


def test_append_stamped_by_a_clock():
    # A HybridClock given as ts stamps its next timestamp into the frame (the
    # allocation-free way on 32-bit boards): the same bytes as its now() would give,
    # first_ts of each segment included, and last_ts exact again after reopening.

    d = tempdir("stamp")
    ms = 1765000000000
    clock = HybridClock()
    clock.now(ms)
    log = RingLog(d, segment_bytes=4096, budget_bytes=65536, sync="none")
    issued = []
    for i in range(150):  # 90-byte frames: several segments
        if i % 4 == 0:
            clock.tick(1)
        seq = log.append(b"v" * 64, clock, b"k" if i % 2 else None)
        issued.append(clock.last)
        assert seq == i + 1
    raises(ConfigError, log.append, b"x", "not a clock")
    log.close()
    log = RingLog(d, segment_bytes=4096, budget_bytes=65536, sync="none")
    assert log.last_ts == issued[-1]
    got = []
    seq = 1
    while seq <= 150:
        recs = log.read(seq, 20)
        got += [r.ts for r in recs]
        seq = recs[-1].seq + 1
    assert got == issued
    assert log.segment_count > 2
    for s in log._segs:
        assert s[2] == issued[s[0] - 1]  # first_ts is its first record's ts
    log.close()
    rmtree(d)


def test_append_many_stamped_by_a_clock():
    d = tempdir("stampmany")
    clock = HybridClock()
    clock.now(1765000000000)
    log = RingLog(d, segment_bytes=4096, budget_bytes=65536, sync="group", group_records=7)
    assert log.append_many([b"a" * 10, b"b" * 20, b"c"], clock) == 1
    last = clock.last
    assert log.append_many([b"d"] * 30, clock, [b"k"] * 30) == 4
    assert log.last_seq == 33 and log.durable_seq >= 28
    log.flush()
    recs = log.read(1, 40)
    assert [r.ts for r in recs[:3]] == [last - 2, last - 1, last]
    for i in range(1, len(recs)):
        assert recs[i].ts == recs[i - 1].ts + 1  # the wall clock stood still: the counter ran
    assert recs[-1].ts == clock.last and recs[-1].key == b"k"
    log.close()
    rmtree(d)
