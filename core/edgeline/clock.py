# Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
#
# Theory of operation
# -------------------
# A timestamp is one non-negative int, (physical_ms << 16) | logical: a wall-clock
# millisecond part and a 16-bit counter that orders events within the same millisecond.
# Packed this way, comparing two timestamps as ints compares (physical, logical) pairs.
#
# The clock keeps the last timestamp it issued. Every new timestamp is the larger of
#   * (now_ms, 0)                 - physical time, when it is ahead of everything seen,
#   * max(last, remote) + 1       - one logical tick past everything seen,
# so it is strictly greater than the last one issued and than any remote one observed,
# even if the wall clock stands still or jumps backwards (time in timestamps never goes
# backwards; it just runs on the counter until the wall clock catches up). The "+ 1" on
# the packed int also handles counter overflow: logical 0xFFFF + 1 carries into the
# physical part, i.e. the clock borrows one millisecond from the future and resets the
# counter.
#
# Failure modes and defences:
#   * a board without an RTC restarts its ms count at 0 after reboot: seed the clock
#     with the newest timestamp found in the log (last_ts) and it stays monotonic;
#   * a peer with a wildly wrong clock would drag ours into the future for good: with
#     max_drift_ms set, a remote timestamp more than that far ahead of now_ms raises
#     ClockError and leaves the clock unchanged.
#
# Sans-IO: the clock never reads time itself; callers pass now_ms.
#
# Without big ints (32-bit boards): epoch milliseconds (about 1.7e12) and every timestamp
# are heap objects where small ints stop at 2**30 - 1, so a clock that made its
# timestamp as an int would allocate per record. The clock therefore can keep the last
# timestamp and its physical time as small ints: the ms split in two (ms >> 24 and
# ms & 0xFFFFFF) and the 16-bit counter. It keeps each in the form its last user made
# (ints after ``now``/``observe``, split after ``stamp_into``/``tick``) and converts only
# when the other kind of call comes, so neither way of using it pays for the other. ``now`` and ``observe`` also set
# the physical time (at boot or a time sync: ints, allowed to allocate), ``tick`` moves
# it on by a small delta (say, time.ticks_diff of two ticks_ms), and ``stamp_into``
# issues the next timestamp by ``now``'s rule straight into a buffer as the 8
# little-endian bytes of the log's and the wire's ts field; a log's append does that
# when given the clock as ts. (Few new names: each costs a board RAM at rest.)
from struct import pack_into

from edgeline.errors import ClockError, ConfigError

try:
    from micropython import const
except ImportError:
    const = lambda x: x  # noqa: E731

_LOGICAL_BITS = const(16)
_LOGICAL_MASK = const(0xFFFF)
_LO_BITS = const(24)
_LO_MASK = const(0xFFFFFF)


def _check(value, name, error):
    # type() rather than isinstance(): bool is an int subclass on CPython.
    if type(value) is not int or value < 0:
        raise error("%s must be a non-negative int, got %r" % (name, value))


def make_ts(ms, logical):
    """Pack a physical time in ms and a logical counter (0..0xFFFF) into a timestamp."""
    _check(ms, "ms", ClockError)
    _check(logical, "logical", ClockError)
    if logical > _LOGICAL_MASK:
        raise ClockError("logical counter %d does not fit in 16 bits" % logical)
    return (ms << _LOGICAL_BITS) | logical


def ts_physical_ms(ts):
    """The physical (wall-clock ms) part of a timestamp."""
    _check(ts, "timestamp", ClockError)
    return ts >> _LOGICAL_BITS


def ts_logical(ts):
    """The logical counter part of a timestamp."""
    _check(ts, "timestamp", ClockError)
    return ts & _LOGICAL_MASK


def _as_int(s):
    # The last timestamp as an int (made from the split form if that is the valid one).
    t = s[5]
    if t is None:
        t = s[5] = (((s[0] << _LO_BITS) | s[1]) << _LOGICAL_BITS) | s[2]
    return t


def _as_split(s):
    # Make the split forms of the last timestamp and of the physical time valid.
    if s[0] is None:
        t = s[5]
        ms = t >> _LOGICAL_BITS
        s[0] = ms >> _LO_BITS
        s[1] = ms & _LO_MASK
        s[2] = t & _LOGICAL_MASK
    if s[3] is None:
        m = s[6]
        s[3] = m >> _LO_BITS
        s[4] = m & _LO_MASK


class HybridClock:
    """Issues strictly increasing timestamps; see the module comment for the rules."""

    def __init__(self, last_ts=0, max_drift_ms=None):
        _check(last_ts, "last_ts", ConfigError)
        if max_drift_ms is not None:
            _check(max_drift_ms, "max_drift_ms", ConfigError)
        self._max_drift_ms = max_drift_ms
        # The last timestamp split (ms >> 24, ms & 0xFFFFFF, logical; None: see slot 5),
        # the physical time split (None: see slot 6), the last timestamp as an int (None:
        # see slots 0-2), the physical time in ms as an int (valid when slot 3 is None).
        self._last = [None, None, None, None, None, last_ts, 0]

    @property
    def last(self):
        """The last timestamp issued (or the seed, before the first one)."""
        return _as_int(self._last)

    def _issue(self, ts, now_ms):
        s = self._last
        s[5] = ts
        s[0] = None
        s[6] = now_ms
        s[3] = None
        return ts

    def now(self, now_ms):
        """Timestamp for a local event or a send."""
        _check(now_ms, "now_ms", ClockError)
        ts = now_ms << _LOGICAL_BITS
        last = _as_int(self._last)
        if ts <= last:
            ts = last + 1
        return self._issue(ts, now_ms)

    def observe(self, remote_ts, now_ms):
        """Timestamp for receiving a message stamped remote_ts; greater than both."""
        _check(remote_ts, "remote_ts", ClockError)
        _check(now_ms, "now_ms", ClockError)
        if self._max_drift_ms is not None:
            ahead_ms = (remote_ts >> _LOGICAL_BITS) - now_ms
            if ahead_ms > self._max_drift_ms:
                raise ClockError(
                    "remote clock is %d ms ahead of ours (allowed %d ms)"
                    % (ahead_ms, self._max_drift_ms)
                )
        last = _as_int(self._last)
        seen = remote_ts if remote_ts > last else last
        ts = now_ms << _LOGICAL_BITS
        if ts <= seen:
            ts = seen + 1
        return self._issue(ts, now_ms)

    def tick(self, delta_ms):
        """Move the physical time (the last ``now``/``observe``'s now_ms) on by
        delta_ms, a small int >= 0, for ``stamp_into``."""
        s = self._last
        if s[3] is None:
            _as_split(s)
        lo = s[4] + delta_ms
        if lo > _LO_MASK:
            s[3] += lo >> _LO_BITS
            lo &= _LO_MASK
        s[4] = lo

    def stamp_into(self, buf, off):
        """Issue the next timestamp (``now``'s rule at the physical time of ``tick``)
        into buf[off:off + 8], little-endian; allocates nothing (once in split form)."""
        s = self._last
        if s[0] is None or s[3] is None:
            _as_split(s)
        hi = s[3]
        lo = s[4]
        if hi > s[0] or (hi == s[0] and lo > s[1]):
            lg = 0
        else:
            hi = s[0]
            lo = s[1]
            lg = s[2] + 1
            if lg > _LOGICAL_MASK:  # the counter carries into the physical part
                lg = 0
                lo += 1
                if lo > _LO_MASK:
                    lo = 0
                    hi += 1
        s[0] = hi
        s[1] = lo
        s[2] = lg
        s[5] = None
        pack_into("<HHBHB", buf, off, lg, lo & 0xFFFF, lo >> 16, hi & 0xFFFF, hi >> 16)
