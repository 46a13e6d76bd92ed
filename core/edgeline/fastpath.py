"""CPython fast paths of the ring log: the same bytes as log.py writes, fewer operations.

Theory of operation
-------------------
On CPython the cost of an append is the count of Python operations, so these paths pack
the frame header straight into the write buffer and compute the CRC over one memoryview
slice (which allocates: fine here, forbidden on a microcontroller's hot path).
``fill_buffer`` frames a whole batch in one loop with its state in local variables;
``read_segment`` reads in 64 KB chunks and parses valid frames inline, handing anything
unusual (a bad frame, a frame larger than a chunk) to log.py's general reader.
Microcontrollers never import this module; log.py's ``_append_portable`` is their path
and the fallback for frames larger than the write buffer. These functions are methods of
RingLog, installed by log.py; the bytes they write are logformat's, and tests check they
are identical (tests/core/test_log.py::test_append_many_matches_single_appends).
"""
import errno
import struct
from binascii import crc32

from .errors import ConfigError, StorageError
from .logformat import (
    FRAME_CRC_BYTES,
    FRAME_HEADER_BYTES,
    FRAME_OVERHEAD_BYTES,
    NO_KEY,
    SEGMENT_HEADER_BYTES,
    pack_frame_crc,
    pack_frame_header,
    unpack_frame_header,
)

_READ_CHUNK = 65536
unpack_frame_crc = struct.Struct("<I").unpack_from
_tuple_new = tuple.__new__


def append_cpython(self, value, ts=0, key=None, now_ms=None, seq=True):
    """Append one record; return its seq, or 0 if ``drop_newest`` refused it (with
    ``seq=False``: True instead of the seq, which a 32-bit board past 2**30 records
    would have to make as a heap object; nothing else differs).

    ``value`` and ``key`` are bytes-like (``key`` None for none); ``ts`` is the
    record's HLC timestamp (an int, 0..2**64-1), or a ``HybridClock``, which stamps
    its next timestamp into the frame (``stamp_into``: no int is made, the way a
    32-bit board appends without allocating; ``last_ts`` is then not updated, read
    the clock's ``last``). The record is durable when this
    returns under sync ``every``; otherwise at the next commit (see the class doc).
    """
    # CPython: pack straight into the write buffer and CRC one memoryview slice.
    if key is None:
        klen = 0
        kfield = NO_KEY
    else:
        klen = len(key)
        kfield = klen
        if klen >= NO_KEY:
            raise ConfigError("key of %d bytes is too long (at most 65534)" % klen)
    vlen = len(value)
    flen = FRAME_OVERHEAD_BYTES + klen + vlen
    pos = self._wpos
    end = pos + flen
    if end > self._wlimit:
        if flen > self._wcap or type(ts) is not int:
            return self._append_portable(value, ts, key, now_ms, seq)
        if not self._make_space(flen, ts):
            self.dropped += 1
            return 0
        pos = self._wpos
        end = pos + flen
    off = self._next_off
    buf = self._wbuf
    try:
        if ts < 0:
            raise ValueError
        pack_frame_header(buf, pos, flen, self._seq0 + off, ts, kfield)
    except (struct.error, TypeError, ValueError):
        if type(ts) is not int and hasattr(ts, "stamp_into"):
            return self._append_portable(value, ts, key, now_ms, seq)  # a clock stamps it
        raise ConfigError("ts must be an int in 0..2**64-1, not %r" % (ts,))
    p = pos + FRAME_HEADER_BYTES
    if klen:
        buf[p:p + klen] = key
        p += klen
    q = p + vlen
    buf[p:q] = value
    pack_frame_crc(buf, q, crc32(self._wmv[pos:q]))
    self._wpos = end
    self._next_off = off + 1
    self.last_ts = ts
    if off >= self._commit_off:
        self.flush(now_ms)
    elif now_ms is not None and self._sync_code == 1:
        cm = self._commit_ms
        if cm is None:
            self._commit_ms = now_ms
        elif now_ms - cm >= self.group_ms:
            self.flush(now_ms)
    return self._seq0 + off if seq else True


def fill_buffer(self, values, ts, one_ts, keys, i, n):
    # CPython: frame values[i:] into the write buffer while they fit under _wlimit
    # and before the next group commit is due; return the index of the first left.
    buf = self._wbuf
    mv = self._wmv
    pos = self._wpos
    limit = self._wlimit
    seq = self._seq0 + self._next_off
    stop = self._commit_off - self._next_off + 1 + i  # values index at which a commit is due
    if stop > n:
        stop = n
    t = ts
    k = None
    kfield = NO_KEY
    klen = 0
    last = i
    if keys is None and one_ts and t >= 0:
        # The common case (no keys, one timestamp) gets the leanest loop.
        try:
            while last < stop:
                v = values[last]
                end = pos + FRAME_OVERHEAD_BYTES + len(v)
                if end > limit:
                    break
                pack_frame_header(buf, pos, end - pos, seq, t, NO_KEY)
                q = end - FRAME_CRC_BYTES
                buf[pos + FRAME_HEADER_BYTES:q] = v
                pack_frame_crc(buf, q, crc32(mv[pos:q]))
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
                    kfield = NO_KEY
                    klen = 0
                else:
                    klen = len(k)
                    if klen >= NO_KEY:
                        break  # append() raises the error
                    kfield = klen
            if not one_ts:
                t = ts[last]
            vlen = len(v)
            end = pos + FRAME_OVERHEAD_BYTES + klen + vlen
            if end > limit or t < 0:
                break
            pack_frame_header(buf, pos, end - pos, seq, t, kfield)
            p = pos + FRAME_HEADER_BYTES
            if klen:
                buf[p:p + klen] = k
                p += klen
            q = p + vlen
            buf[p:q] = v
            pack_frame_crc(buf, q, crc32(mv[pos:q]))
            pos = end
            seq += 1
            last += 1
    except (struct.error, TypeError):
        pass  # leave the bad record to append(), which raises the clear error
    if last > i:
        self._wpos = pos
        self._next_off += last - i
        self.last_ts = t
    return last


def read_segment(self, base, end, max_frame, nxt, from_seq, max_records, max_bytes, out, nbytes):
    # The happy path of RingLog._read_segment (same arguments): valid, consecutive
    # frames. At the first frame that is not, it leaves the read cache where it stopped
    # and lets the general reader (which resyncs, counts and warns) go on from there.
    if self._cache_seg == base and self._cache_seq <= from_seq:
        off = self._cache_off
        expect = self._cache_seq
    else:
        off = SEGMENT_HEADER_BYTES
        expect = base
    Record = self._record_type
    general = False
    h = self.storage.open_read(self._seg_path(base))
    try:
        buf = self._fast_buf
        if buf is None:
            buf = self._fast_buf = bytearray(_READ_CHUNK)
        while off < end and len(out) < max_records and nbytes < max_bytes:
            h.seek(off)
            n = h.readinto(memoryview(buf)[:min(end - off, _READ_CHUNK)])
            data = bytes(buf[:n])
            mv = memoryview(data)
            rel = 0
            while rel + FRAME_OVERHEAD_BYTES <= n:
                flen, seq, ts, kfield = unpack_frame_header(data, rel)
                if rel + flen > n and FRAME_OVERHEAD_BYTES <= flen <= max_frame:
                    break  # continues in the next chunk
                q = rel + flen - FRAME_CRC_BYTES
                if (
                    seq != expect
                    or flen < FRAME_OVERHEAD_BYTES
                    or flen > max_frame
                    or (kfield != NO_KEY and kfield > flen - FRAME_OVERHEAD_BYTES)
                    or unpack_frame_crc(data, q)[0] != crc32(mv[rel:q])
                ):
                    general = True
                    break
                rel += flen
                expect = seq + 1
                if seq >= from_seq:
                    p = rel - flen + FRAME_HEADER_BYTES
                    if kfield == NO_KEY:
                        key = None
                    else:
                        key = data[p:p + kfield]
                        p += kfield
                    out.append(_tuple_new(Record, (seq, ts, key, data[p:q])))
                    nbytes += q - p
                    if len(out) >= max_records or nbytes >= max_bytes:
                        break
            mv.release()
            off += rel
            if general or rel == 0:
                general = off < end
                break
    finally:
        h.close()
    self._cache_seg = base
    self._cache_off = off
    self._cache_seq = expect
    if general and len(out) < max_records and nbytes < max_bytes:
        return self._read_segment(base, end, max_frame, nxt, expect, max_records, max_bytes, out, nbytes)
    return nbytes


# ---------------------------------------------------------------------- split commit
#
# The agent's group commit runs the fsync in a worker thread while the loop keeps
# appending (edgeline_host.agent.service). The log is not thread-safe, so the commit is
# split in three: ``begin_commit`` on the loop thread writes the buffer to the tail file
# and records what that file then holds; ``sync_commit`` in the worker only syncs that
# handle; ``end_commit`` back on the loop thread publishes ``durable_seq`` -- never
# beyond what the synced file held when the commit began. Module functions, not methods:
# a board never loads them (RingLog's class body is a board's RAM). Their first
# argument is the RingLog, named ``self`` as in the fast paths above.


def begin_commit(self, now_ms=None):
    """On the thread that appends: write out the buffer; return a token
    ``(handle, last_seq)`` for ``sync_commit``, or None if nothing awaits a commit.
    StorageError if the log failed (as ``flush``)."""
    if self._failed is not None:
        raise StorageError("log %s is unusable after a write error (%s); reopen it" % (self.path, self._failed))
    if now_ms is not None:
        self._commit_ms = now_ms
    if self._durable_off >= self._next_off - 1 and not self._wpos:
        return None
    last = self._seq0 + self._next_off - 1  # a seq, not an offset: a segment may begin before end_commit
    self._write_out()
    if self._tail is None:  # nothing left to sync apart (cannot happen: defensive)
        self.flush()
        return None
    if self._sync_code == 1:
        # The count bound runs from what this commit covers: records appended during
        # its fsync count towards the next one.
        self._commit_off = self._next_off - 1 + self.group_records
    return (self._tail, last)


def sync_commit(token):
    """In any thread: make durable what the token's handle held at ``begin_commit``."""
    if token[0] is not None:
        token[0].sync()


def end_commit(self, token, error=None):
    """On the thread that appends, after ``sync_commit`` returned (``error``: the
    exception it raised, if any): publish ``durable_seq``; StorageError if the sync failed
    and nothing else made the records durable (the log is then failed, as ``flush``)."""
    last = token[1]
    if error is not None:
        closed = isinstance(error, ValueError) or (isinstance(error, OSError) and error.errno == errno.EBADF)
        if closed and self._seq0 + self._durable_off >= last and self._tail is not token[0]:
            # The handle was sealed (synced, then closed) under the worker: the seal
            # made these records durable. Only a closed handle's error is taken so: a
            # real one (EIO) fails the log even if the seal's fsync then returned 0 --
            # Linux reports a writeback error once, to the first fsync that sees it.
            return
        if self._failed is None:
            self._fail(error)  # the log takes no more writes; raises StorageError
        raise StorageError("log %s: commit failed (%s); records not yet durable were not stored" % (self.path, error))
    if last - self._seq0 > self._durable_off:
        if self._failed is not None:
            # A write failed during the fsync and closed the handle: its descriptor may
            # have been reused under the worker, so what it synced is not known.
            raise StorageError("log %s is unusable after a write error (%s); reopen it" % (self.path, self._failed))
        self._durable_off = last - self._seq0


def sync_from(self, seq):
    """fsync every segment file of the log that holds seqs ``seq`` and above (and its
    directory): a log reopened after a write error keeps what recovery found whole,
    written but perhaps never synced; this makes it durable before it is counted so.
    OSError if an fsync fails."""
    segs = self._segs
    for i, s in enumerate(segs):
        nxt = segs[i + 1][0] if i + 1 < len(segs) else self._seq0 + self._next_off
        if nxt <= seq:
            continue
        h = self.storage.open_append(self._seg_path(s[0]))
        try:
            h.sync()
        finally:
            h.close()
    sync_dir = getattr(self.storage, "sync_dir", None)
    if sync_dir is not None:
        sync_dir(self.path)
