"""CPython fast paths of the ring log: the same bytes as log.py writes, fewer operations.

Theory of operation
-------------------
On CPython the cost of an append is the count of Python operations, so these paths pack
the frame header straight into the write buffer and compute the CRC over one memoryview
slice (which allocates: fine here, forbidden on a microcontroller's hot path).
``fill_buffer`` frames a whole batch in one loop with its state in local variables.
Microcontrollers never import this module; log.py's ``_append_small`` is their path and
the fallback for frames larger than the write buffer. Both are methods of RingLog,
installed by log.py; tests check the bytes are identical
(tests/core/test_log.py::test_append_many_matches_single_appends).
"""
import struct
from binascii import crc32

from .errors import ConfigError

_FRAME_HDR = 22
_OVERHEAD = 26
_NO_KEY = 0xFFFF
_pack_frame_hdr = struct.Struct("<IQQH").pack_into
_pack_u32 = struct.Struct("<I").pack_into


def append_cpython(self, value, ts=0, key=None, now_ms=None):
    # CPython: pack straight into the write buffer and CRC one memoryview slice.
    if key is None:
        klen = 0
        kfield = _NO_KEY
    else:
        klen = len(key)
        kfield = klen
        if klen >= _NO_KEY:
            raise ConfigError("key of %d bytes is too long (at most 65534)" % klen)
    vlen = len(value)
    flen = _OVERHEAD + klen + vlen
    pos = self._wpos
    end = pos + flen
    if end > self._wlimit:
        if flen > self._wcap:
            return self._append_small(value, ts, key, now_ms)
        if not self._make_space(flen, ts):
            self.dropped += 1
            return 0
        pos = self._wpos
        end = pos + flen
    seq = self._next_seq
    buf = self._wbuf
    try:
        if ts < 0:
            raise ValueError
        _pack_frame_hdr(buf, pos, flen, seq, ts, kfield)
    except (struct.error, TypeError, ValueError):
        raise ConfigError("ts must be an int in 0..2**64-1, not %r" % (ts,))
    p = pos + _FRAME_HDR
    if klen:
        buf[p:p + klen] = key
        p += klen
    q = p + vlen
    buf[p:q] = value
    _pack_u32(buf, q, crc32(self._wmv[pos:q]))
    self._wpos = end
    self._next_seq = seq + 1
    self.last_ts = ts
    c = self._commit_seq
    if c:
        if seq >= c:
            self.flush(now_ms)
        elif now_ms is not None:
            cm = self._commit_ms
            if cm is None:
                self._commit_ms = now_ms
            elif now_ms - cm >= self.group_ms:
                self.flush(now_ms)
    return seq


def fill_buffer(self, values, ts, one_ts, keys, i, n):
    # CPython: frame values[i:] into the write buffer while they fit under _wlimit
    # and before the next group commit is due; return the index of the first left.
    buf = self._wbuf
    mv = self._wmv
    pos = self._wpos
    limit = self._wlimit
    seq = self._next_seq
    stop = self._commit_seq
    if stop:
        stop = stop - seq + 1 + i  # values index at which a commit is due
        if stop > n:
            stop = n
    else:
        stop = n
    t = ts
    k = None
    kfield = _NO_KEY
    klen = 0
    last = i
    if keys is None and one_ts and t >= 0:
        # The common case (no keys, one timestamp) gets the leanest loop.
        try:
            while last < stop:
                v = values[last]
                end = pos + _OVERHEAD + len(v)
                if end > limit:
                    break
                _pack_frame_hdr(buf, pos, end - pos, seq, t, _NO_KEY)
                q = end - 4
                buf[pos + _FRAME_HDR:q] = v
                _pack_u32(buf, q, crc32(mv[pos:q]))
                pos = end
                seq += 1
                last += 1
        except (struct.error, TypeError):
            pass
        stop = last  # skip the general loop
    try:
        while last < stop:
            v = values[last]
            if keys is not None:
                k = keys[last]
                if k is None:
                    kfield = _NO_KEY
                    klen = 0
                else:
                    klen = len(k)
                    if klen >= _NO_KEY:
                        break  # append() raises the error
                    kfield = klen
            if not one_ts:
                t = ts[last]
            vlen = len(v)
            end = pos + _OVERHEAD + klen + vlen
            if end > limit or t < 0:
                break
            _pack_frame_hdr(buf, pos, end - pos, seq, t, kfield)
            p = pos + _FRAME_HDR
            if klen:
                buf[p:p + klen] = k
                p += klen
            q = p + vlen
            buf[p:q] = v
            _pack_u32(buf, q, crc32(mv[pos:q]))
            pos = end
            seq += 1
            last += 1
    except (struct.error, TypeError):
        pass  # leave the bad record to append(), which raises the clear error
    if last > i:
        self._wpos = pos
        self._next_seq = seq
        self.last_ts = t
    return last
