"""Hybrid logical clock tests; plain functions, same file under CPython and MicroPython."""
from edgeline.clock import HybridClock, make_ts, ts_logical, ts_physical_ms
from edgeline.errors import ClockError, ConfigError
from support import raises

EPOCH_MS = 1700000000000  # a realistic wall-clock ms value (beyond 32 bits)


def parts(ts):
    return ts_physical_ms(ts), ts_logical(ts)


def test_packing_helpers():
    assert make_ts(0, 0) == 0
    assert make_ts(1, 0) == 0x10000
    assert make_ts(EPOCH_MS, 0xFFFF) == (EPOCH_MS << 16) | 0xFFFF
    for ms, logical in ((0, 0), (0, 0xFFFF), (1, 2), (EPOCH_MS, 7), (1 << 60, 0x1234)):
        assert parts(make_ts(ms, logical)) == (ms, logical)
    # Packed timestamps compare like (physical, logical) pairs.
    assert make_ts(5, 0xFFFF) < make_ts(6, 0) < make_ts(6, 1)


def test_packing_rejects_bad_values():
    for ms, logical in ((-1, 0), (0, -1), (0, 0x10000), (1.5, 0), (0, "1"), (True, 0)):
        e = raises(ClockError, make_ts, ms, logical)
        assert str(e)
    for bad in (-1, None, 2.0, "5"):
        raises(ClockError, ts_physical_ms, bad)
        raises(ClockError, ts_logical, bad)


def test_now_follows_the_wall_clock_when_it_advances():
    c = HybridClock()
    assert parts(c.now(100)) == (100, 0)
    assert parts(c.now(101)) == (101, 0)
    assert parts(c.now(EPOCH_MS)) == (EPOCH_MS, 0)
    assert c.last == make_ts(EPOCH_MS, 0)


def test_now_counts_when_the_wall_clock_stands_still():
    c = HybridClock()
    assert [parts(c.now(50)) for _ in range(4)] == [(50, 0), (50, 1), (50, 2), (50, 3)]


def test_time_never_goes_backwards_when_the_wall_clock_does():
    c = HybridClock()
    seen = []
    for now_ms in (1000, 1005, 400, 0, 999, 1005, 1006, 1007, 3, 2000, 1999):
        seen.append(c.now(now_ms))
    for a, b in zip(seen, seen[1:]):
        assert b > a
    assert parts(seen[2]) == (1005, 1)   # jumped back to 400: stay on 1005, count
    assert parts(seen[6]) == (1006, 0)   # wall clock caught up: counter resets
    assert parts(seen[10]) == (2000, 1)


def test_observe_remote_ahead_takes_its_time():
    c = HybridClock()
    c.now(100)
    remote = make_ts(500, 7)
    ts = c.observe(remote, 120)
    assert ts > remote and parts(ts) == (500, 8)
    assert parts(c.now(130)) == (500, 9)      # local wall clock still behind
    assert parts(c.now(501)) == (501, 0)


def test_observe_remote_behind_keeps_ours():
    c = HybridClock()
    c.now(1000)
    c.now(1000)
    ts = c.observe(make_ts(200, 50), 1000)
    assert parts(ts) == (1000, 2)
    assert parts(c.observe(make_ts(200, 50), 1500)) == (1500, 0)


def test_observe_same_millisecond_takes_the_larger_counter_plus_one():
    c = HybridClock(last_ts=make_ts(700, 3))
    assert parts(c.observe(make_ts(700, 9), 650)) == (700, 10)
    assert parts(c.observe(make_ts(700, 2), 700)) == (700, 11)
    assert parts(c.observe(make_ts(700, 11), 700)) == (700, 12)


def test_result_is_greater_than_last_and_remote_for_a_grid_of_cases():
    for last in (0, make_ts(10, 0), make_ts(10, 5), make_ts(10, 0xFFFF), make_ts(12, 1)):
        for remote in (0, make_ts(9, 9), make_ts(10, 5), make_ts(10, 0xFFFF), make_ts(11, 0)):
            for now_ms in (0, 9, 10, 11, 12, 13):
                c = HybridClock(last_ts=last)
                ts = c.observe(remote, now_ms)
                assert ts > last and ts > remote and c.last == ts
                assert ts_physical_ms(ts) >= now_ms


def test_logical_counter_overflow_borrows_a_millisecond():
    c = HybridClock(last_ts=make_ts(42, 0xFFFE))
    assert parts(c.now(42)) == (42, 0xFFFF)
    assert parts(c.now(42)) == (43, 0)
    assert parts(c.now(42)) == (43, 1)
    assert parts(c.now(43)) == (43, 2)
    c = HybridClock()
    assert parts(c.observe(make_ts(9, 0xFFFF), 5)) == (10, 0)


def test_drift_limit_rejects_a_remote_too_far_ahead_and_leaves_state_alone():
    c = HybridClock(max_drift_ms=1000)
    before = c.now(5000)
    e = raises(ClockError, c.observe, make_ts(6001, 0), 5000)
    assert "ahead" in str(e)
    assert c.last == before
    assert parts(c.observe(make_ts(6000, 3), 5000)) == (6000, 4)   # exactly at the limit
    assert c.observe(make_ts(10, 0), 5000) > make_ts(6000, 4)     # far behind is fine
    unlimited = HybridClock()
    assert parts(unlimited.observe(make_ts(EPOCH_MS, 0), 0)) == (EPOCH_MS, 1)


def test_seeding_keeps_timestamps_monotonic_across_a_reboot():
    # Before the reboot the board's ms counter had reached 90000.
    c = HybridClock()
    for now_ms in range(89990, 90001):
        newest = c.now(now_ms)
    # After the reboot ms restarts at 0; the newest ts in the log seeds the new clock.
    c = HybridClock(last_ts=newest)
    assert c.last == newest
    first = c.now(0)
    assert first > newest and parts(first) == (90000, 1)
    later = [c.now(ms) for ms in (1, 2, 90000, 90001)]
    assert later == sorted(later) and later[0] > first
    assert parts(later[-1]) == (90001, 0)


def test_constructor_and_argument_validation():
    for bad in (-1, 1.0, "0", None, True):
        raises(ConfigError, HybridClock, bad)
    for bad in (-1, 2.5, "10", True):
        raises(ConfigError, HybridClock, 0, bad)
    c = HybridClock(max_drift_ms=0)
    for bad in (-1, 1.5, None, "1", False):
        e = raises(ClockError, c.now, bad)
        assert "now_ms" in str(e)
        raises(ClockError, c.observe, 0, bad)
        e = raises(ClockError, c.observe, bad, 0)
        assert "remote_ts" in str(e)
    assert c.last == 0


# stamp_into: the same timestamps as now(), made from small ints (32-bit boards).

def _stamped(clock):
    buf = bytearray(10)
    clock.stamp_into(buf, 1)
    import struct
    return struct.unpack_from("<Q", buf, 1)[0]


def test_stamp_into_follows_now():
    # Physical times that stand still, advance, cross the 24-bit split of the ms and
    # let the counter run; a reference clock given the same ms by now() agrees.
    for seed in (0, make_ts(EPOCH_MS, 5), make_ts(EPOCH_MS + 3, 0xFFFE), make_ts((7 << 24) - 2, 0)):
        a = HybridClock(last_ts=seed)
        b = HybridClock(last_ts=seed)
        ms = (7 << 24) - 4 if seed >> 16 == (7 << 24) - 2 else EPOCH_MS
        assert a.now(ms) == b.now(ms)
        for d in (0, 0, 1, 0, 2, 0, 0, 5, 1, 0, 1000, 0):
            a.tick(d)
            ms += d
            got = _stamped(a)
            assert got == b.now(ms), (seed, d, got)
            assert a.last == got


def test_stamp_into_counter_carries():
    a = HybridClock(last_ts=make_ts(EPOCH_MS, 0xFFFE))
    assert parts(a.now(EPOCH_MS - 10)) == (EPOCH_MS, 0xFFFF)  # the wall clock is behind
    ts = [_stamped(a) for _ in range(3)]
    assert [parts(t) for t in ts] == [(EPOCH_MS + 1, 0), (EPOCH_MS + 1, 1), (EPOCH_MS + 1, 2)]
    # and the 24-bit low half of the ms carries into the high one
    c = HybridClock(last_ts=make_ts((9 << 24) | 0xFFFFFF, 0xFFFF))
    assert parts(_stamped(c)) == ((10 << 24), 0)


def test_now_and_observe_after_stamps():
    a = HybridClock()
    a.now(EPOCH_MS)
    a.tick(10)
    s = _stamped(a)
    assert parts(s) == (EPOCH_MS + 10, 0)
    assert a.now(EPOCH_MS) == s + 1  # the wall clock went back: the counter runs on
    r = a.observe(make_ts(EPOCH_MS + 50, 3), EPOCH_MS + 20)
    assert parts(r) == (EPOCH_MS + 50, 4)
    a.tick(40)  # physical EPOCH_MS + 60 now
    assert parts(_stamped(a)) == (EPOCH_MS + 60, 0)
