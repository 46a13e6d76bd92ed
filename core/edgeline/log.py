"""The ring log: one bounded, crash-proof, append-only log per topic.

Theory of operation
-------------------
A log is a directory of segment files named by the seq of their first record
(docs/spec/log.md has the bytes; logformat.py packs, parses and scans them). Records are
framed — length, seq, ts, key, value, CRC32 — into one preallocated write buffer and
reach the tail segment's file when the buffer fills or at a commit point. ``flush()`` is
the commit point: it writes the buffer and syncs the file; only then is a record
*durable* (``durable_seq``). The sync policy decides how often appends commit on their
own: every append, every N records or T ms (group commit; the time comes from the
caller), or never (the caller flushes).

A full segment is synced and sealed, and the next append begins a new one. Sealed
segments are immutable, so opening a log after a power cut reads only the tail segment:
it keeps the longest prefix of valid frames and truncates the rest. Frames carry their
seq, so a reader that meets a rotted frame in an old segment skips to the next valid
frame, counts the loss and warns, and the rest of the log stays readable.

The log is bounded by ``budget_bytes`` and, through a ``Store``, by a device-wide budget
shared by priority. Space is reclaimed first from segments every consumer (outbox) has
acknowledged; then the full policy decides: ``drop_oldest`` evicts the oldest segment,
``reject`` raises LogFull, ``drop_newest`` refuses the new record. Records removed before
a consumer acknowledged them surface as gaps in its outbox; every drop is counted.
The store and the outboxes reach the log only through its public API (``consumers``,
``claimed_bytes``, ``remove_oldest``: docs/core.md).

The append path allocates nothing per record on MicroPython after warm-up: the frame
header is packed into a fixed bytearray, the CRC is written into the buffer over whole
objects (a memoryview slice would allocate; on 32-bit ports the CRC never becomes an int,
see logformat.frame_crc_into), and bytes are copied into the write buffer by slice
assignment. A clock passed as ``ts`` stamps the timestamp into the header itself, so a
32-bit board never makes it as an int (docs/design-alloc-free-32bit.md).
"""
import struct
from binascii import crc32  # the incarnation file's CRC (once per log open: may allocate)
import sys

try:
    from collections import namedtuple
except ImportError:  # very old MicroPython ports
    from ucollections import namedtuple

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from .errors import ConfigError, CorruptRecord, LogFull, StorageError
from .logformat import (
    FRAME_CRC_BYTES,
    FRAME_HEADER_BYTES,
    FRAME_OVERHEAD_BYTES,
    NO_KEY,
    SEGMENT_HEADER_BYTES,
    FrameScanner,
    frame_crc_into,
    pack_frame_header_split,
    pack_segment_header,
    parse_segment_header,
    parse_segment_name,
    segment_name,
)

SYNC_EVERY = "every"
SYNC_GROUP = "group"
SYNC_NONE = "none"
DROP_OLDEST = "drop_oldest"
REJECT = "reject"
DROP_NEWEST = "drop_newest"

_SYNC_POLICIES = (SYNC_NONE, SYNC_GROUP, SYNC_EVERY)  # index = the policy's code
_FULL_POLICIES = (DROP_OLDEST, REJECT, DROP_NEWEST)

# On microcontrollers buffers stay small; the write buffer can be raised per log.
_SMALL = sys.implementation.name in ("micropython", "circuitpython")

# Segment table entry fields: a tuple per sealed segment, a list for the tail (the one
# that changes).
_S_BASE = const(0)  # base seq
_S_SIZE = const(1)  # bytes in the file (tail: written bytes; buffered bytes are extra)
_S_TS = const(2)  # first_ts from the header
_S_CAP = const(3)  # capacity from the header
_S_BAD = const(4)  # header unreadable: the whole segment counts as corrupt


def _warn(msg):
    print("edgeline warning: " + msg)


# One record read back from a log: seq, ts, key (bytes or None), value (bytes).
# A namedtuple, not a class: on MicroPython an instance of a plain class carries its own
# attribute dict, several times the size of a tuple, and a batch holds many records.
Record = namedtuple("Record", ("seq", "ts", "key", "value"))


def open_incarnation(st, path, has_segments):
    """The log's incarnation id (8 bytes) from ``<path>/incarnation`` (docs/spec/log.md,
    "Incarnation file": magic, version 1, flags 0, 2 reserved bytes, the id, CRC32 of the
    16 bytes before it). A log with no segment and no valid file is new: a random id is
    written to a temporary file, synced and renamed into place -- before any segment can
    exist, so a segment never exists without its log's id (I10). A log with segments and
    no file was made before version 2: it is upgraded to the legacy id (all zeros), the
    identity its records already have at the gateway. One module-level function with
    the bytes inline, no new names: on a board, every new name (a qstr) costs RAM at rest,
    and so would a method of RingLog."""
    p = path + "/incarnation"
    tmp = p + ".tmp"
    if st.exists(tmp):  # a creation cut short: never renamed, so never the log's id
        st.remove(tmp)
    if st.exists(p):
        h = st.open_read(p)
        try:
            buf = bytearray(24)
            n = h.readinto(buf)
        finally:
            h.close()
        if (n == 20 and buf[0:6] == b"EINC\x01\x00"
                and struct.unpack_from("<I", buf, 16)[0] == crc32(memoryview(buf)[:16])):
            return bytes(buf[8:16])
        if has_segments:
            raise CorruptRecord("%s: %s" % (p, "corrupt"))
        st.remove(p)
    inc = bytes(8)  # the legacy incarnation
    if not has_segments:
        try:
            from os import urandom
        except ImportError:  # a port without it (MicroPython's WebAssembly port, the 32-bit test lane)
            import random

            def urandom(n):
                return bytes(random.getrandbits(8) for _ in range(n))

        while inc == bytes(8):
            inc = bytes(urandom(8))
    buf = bytearray(20)
    buf[0:5] = b"EINC\x01"
    buf[8:16] = inc
    struct.pack_into("<I", buf, 16, crc32(memoryview(buf)[:16]))
    try:
        h = st.open_append(tmp)
        try:
            h.write(buf, 20)
            h.sync()
        finally:
            h.close()
        st.rename(tmp, p)
    except OSError as e:
        raise StorageError("log %s: write failed (%s); records not yet flushed were not stored" % (path, e))
    return inc


if not _SMALL:
    # CPython-only fast paths live apart so a microcontroller never loads their code.
    from .fastpath import append_cpython, fill_buffer, read_segment


class RingLog:
    """A bounded, crash-proof append-only log of one topic in one directory.

    Opening recovers from any earlier crash (reads the tail segment only). Parameters:

    * ``segment_bytes`` — capacity of each segment file, header included.
    * ``budget_bytes`` — the most this log may occupy; at least 2 segments.
    * ``full_policy`` — ``drop_oldest`` | ``reject`` | ``drop_newest``.
    * ``sync`` — ``every`` (each append is durable when it returns), ``group`` (a commit
      every ``group_records`` appends or when ``group_ms`` has passed by the ``now_ms``
      the caller gives to ``append``/``tick``), ``none`` (durable only at ``flush()``).
    * ``retention_ms`` — sealed segments older than this are removed by
      ``apply_retention(now_ms)``; 0 keeps them until space is needed.
    * ``priority`` — used by a ``Store`` to share a device budget (higher keeps data).
    * ``buffer_bytes`` — size of the write buffer (default: 4 KB on MicroPython,
      64 KB elsewhere; never more than a segment).
    """

    def __init__(
        self,
        path,
        storage=None,
        segment_bytes=65536,
        budget_bytes=1048576,
        full_policy=DROP_OLDEST,
        sync=SYNC_GROUP,
        group_records=1000,
        group_ms=1000,
        retention_ms=0,
        priority=0,
        buffer_bytes=None,
        store=None,
        warn=None,
    ):
        if full_policy not in _FULL_POLICIES:
            raise ConfigError("full_policy must be one of drop_oldest, reject, drop_newest, not %r" % (full_policy,))
        if sync not in _SYNC_POLICIES:
            raise ConfigError("sync must be one of every, group, none, not %r" % (sync,))
        if segment_bytes < SEGMENT_HEADER_BYTES + FRAME_OVERHEAD_BYTES + 16:
            raise ConfigError("segment_bytes must be at least %d, not %d" % (SEGMENT_HEADER_BYTES + FRAME_OVERHEAD_BYTES + 16, segment_bytes))
        if segment_bytes > 0x7FFFFFFF:
            raise ConfigError("segment_bytes must be below 2 GiB")
        if budget_bytes < 2 * segment_bytes:
            raise ConfigError(
                "budget_bytes (%d) must hold at least 2 segments of segment_bytes (%d)" % (budget_bytes, segment_bytes)
            )
        if buffer_bytes is not None and buffer_bytes < SEGMENT_HEADER_BYTES + FRAME_OVERHEAD_BYTES:
            raise ConfigError("buffer_bytes must be at least %d, not %d" % (SEGMENT_HEADER_BYTES + FRAME_OVERHEAD_BYTES, buffer_bytes))
        if group_records < 1 or group_ms < 0 or retention_ms < 0:
            raise ConfigError("group_records must be >= 1, group_ms and retention_ms >= 0")
        self.path = path
        if storage is None:
            # Imported here: modules that need only Record (sync.py, a gateway's
            # side) do not load the file storage onto a small heap.
            from .storage import FileStorage

            storage = FileStorage()
        self.storage = storage
        self.segment_bytes = segment_bytes
        self.budget_bytes = budget_bytes
        self.full_policy = full_policy
        self.sync = sync
        self._sync_code = _SYNC_POLICIES.index(sync)
        self.group_records = group_records
        self.group_ms = group_ms
        self.retention_ms = retention_ms
        self.priority = priority
        self.store = store
        self.warn = warn if warn is not None else _warn
        if buffer_bytes is None:
            buffer_bytes = 1024 if _SMALL else 65536
        buffer_bytes = min(buffer_bytes, segment_bytes)
        self._sc = None
        self._wbuf = bytearray(buffer_bytes)
        if not _SMALL:
            # CPython's fast paths only: on a board every instance attribute is RAM (the
            # offsets of fix 3 took three more; these three make room for them).
            self._wmv = memoryview(self._wbuf)  # append_cpython CRCs its slices
            self._fast_buf = None  # fastpath.read_segment's read chunk
        self._wcap = buffer_bytes
        self._wpos = 0
        self._hdr = bytearray(FRAME_HEADER_BYTES)
        self._crcbuf = bytearray(4)
        # Counters: every record that leaves other than by acknowledgement is counted.
        self.evicted = 0  # removed by drop_oldest before being acknowledged by all consumers
        self.expired = 0  # removed by retention before being acknowledged
        self.reclaimed = 0  # removed after every consumer acknowledged them
        self.dropped = 0  # refused by drop_newest (never given a seq)
        self.corrupt = 0  # found rotted in a sealed segment and skipped
        # The registered consumers (outboxes): objects with ``acked``, the highest seq
        # they acknowledged, and ``close()``. An outbox adds itself and removes itself
        # when closed; segments are reclaimed without loss only once all acknowledged.
        self.consumers = []
        self._reported = {}  # (base, offset) of corruption already counted
        self._tail = None  # append handle of the tail segment
        self._tail_needs_header = False
        self._allowed_end = 0  # buffer position frames may reach unchecked (_set_room)
        self._wlimit = 0
        self._commit_ms = None
        self._failed = None
        self._closed = False
        self._cache_seq = 0  # read cache: seq expected at (_cache_seg, _cache_off)
        self._cache_seg = -1
        self._cache_off = 0
        self._recover()

    # ------------------------------------------------------------------ recovery

    def _scanner(self, h, end, max_frame):
        # One scanner per log, made on first use and kept (see FrameScanner).
        if self._sc is None:
            self._sc = FrameScanner(512 if _SMALL else 16384)
        return self._sc.reset(h, end, max_frame)

    def _seg_path(self, base):
        return self.path + "/" + segment_name(base)

    def _read_exact(self, path, off, n):
        h = self.storage.open_read(path)
        try:
            h.seek(off)
            buf = bytearray(n)
            got = 0
            mv = memoryview(buf)
            while got < n:
                k = h.readinto(mv[got:])
                if not k:
                    break
                got += k
        finally:
            h.close()
        return buf if got == n else buf[:got]

    def _recover(self):
        st = self.storage
        st.makedirs(self.path)
        # The lists here are allocated whole, before anything else: on a board each
        # file opened leaves ~1 KB of garbage between the entries of a table, so a list
        # grown entry by entry -- name after name, header after header here, rotation
        # after rotation later -- soon needs a contiguous block a fragmented heap no
        # longer has (the profile soak: 128 segments on an ESP32's 112 KB, 256 on 267 KB;
        # tests/mp/test_many_segments.py). Room for as many segments as the budget
        # allows -- unless that is over 512 (a budget of many small segments): then 64,
        # and they grow as they go. Names come one at a time.
        cap = self.budget_bytes // self.segment_bytes + 4
        if cap > 512:
            cap = 64
        bases = [0] * cap
        del bases[0:]
        segs = [None] * cap
        del segs[0:]
        names = st.iterdir(self.path) if hasattr(st, "iterdir") else st.listdir(self.path)
        leftovers = None
        for name in names:
            base = parse_segment_name(name)
            if base:
                bases.append(base)
            elif name.endswith(".seg.tmp"):  # an interrupted truncate-by-copy
                if leftovers is None:
                    leftovers = []
                leftovers.append(name)
        names = None
        if leftovers is not None:  # removed once the listing is over
            for name in leftovers:
                st.remove(self.path + "/" + name)
        bases.sort()
        self.incarnation = open_incarnation(st, self.path, len(bases) > 0)
        for base in bases:
            p = self._seg_path(base)
            size = st.size(p)
            hdr = self._read_exact(p, 0, SEGMENT_HEADER_BYTES) if size >= SEGMENT_HEADER_BYTES else b""
            parsed = parse_segment_header(hdr, segment_name(base)) if hdr else None
            if parsed is not None and parsed[0] != base:
                parsed = None
            if parsed is None:
                segs.append((base, size, 0, self.segment_bytes, True))
            else:
                segs.append((base, size, parsed[1], parsed[2], False))
        bases = None
        if segs:
            segs[-1] = list(segs[-1])  # the tail changes; sealed segments stay tuples
        self._segs = segs
        self._seq0 = 1  # the next seq, until the offsets below are set from it
        self.last_ts = 0
        if segs:
            tail = segs[-1]
            if tail[_S_BAD]:
                # No valid header: nothing in this segment was ever durable (the header
                # is written and synced with the first frame). Reset it to empty.
                if tail[_S_SIZE]:
                    st.truncate(self._seg_path(tail[_S_BASE]), 0)
                tail[_S_SIZE] = 0
                tail[_S_BAD] = False
                tail[_S_CAP] = self.segment_bytes
                self._tail_needs_header = True
                self._seq0 = tail[_S_BASE]
            else:
                self._scan_tail(tail)
            for s in segs:
                if s[_S_TS] > self.last_ts:
                    self.last_ts = s[_S_TS]
        # Seqs on the append path are offsets from _seq0 (an int made here and when a
        # segment begins, where allocating is allowed), and _seq0 is kept split as well:
        # past 2**30 records a seq is a heap object on a 32-bit board, and the offsets
        # (at most one segment's frames) never are (docs/design-alloc-free-32bit.md, fix 3).
        s0 = self._seq0
        self._seq0lo = s0 & 0xFFFFFF
        self._seq0hi = s0 >> 24
        self._next_off = 0  # next seq - _seq0
        self._durable_off = -1  # durable seq - _seq0
        self._renew_commit()
        self._size = 0  # bytes in segment files; buffered bytes (_wpos) come on top
        for s in segs:
            self._size += s[_S_SIZE]
        for i in range(len(segs) - 1):
            if segs[i][_S_BAD]:
                self.warn("log %s: segment %s has a corrupt header; its records are skipped" % (self.path, segment_name(segs[i][_S_BASE])))

    def _scan_tail(self, tail):
        base = tail[_S_BASE]
        p = self._seg_path(base)
        off = SEGMENT_HEADER_BYTES
        expect = base
        last_ts = tail[_S_TS]
        h = self.storage.open_read(p)
        try:
            sc = self._scanner(h, tail[_S_SIZE], tail[_S_CAP] - SEGMENT_HEADER_BYTES)
            while off < sc.end:
                f = sc.frame(off)
                if f is None or f[1] != expect:
                    break
                last_ts = f[2]
                off += f[0]
                expect += 1
        finally:
            h.close()
        self._seq0 = expect
        self.last_ts = last_ts
        st = self.storage
        if expect == base:
            # No frame survived: the header was written with a frame that did not, so the
            # segment is reset to empty and the header rewritten with the next first frame
            # (its first_ts stays truthful).
            if tail[_S_SIZE]:
                st.truncate(p, 0)
            tail[_S_SIZE] = 0
            tail[_S_CAP] = self.segment_bytes
            self._tail_needs_header = True
        elif off < tail[_S_SIZE]:
            st.truncate(p, off)  # I5: the torn or unsynced rest goes
            tail[_S_SIZE] = off

    # ------------------------------------------------------------------ properties

    @property
    def first_seq(self):
        """Seq of the oldest record still held (last_seq + 1 when the log is empty)."""
        if not self._segs:
            return self._seq0 + self._next_off
        return self._segs[0][_S_BASE]

    @property
    def last_seq(self):
        """Seq of the newest record appended (0 if none ever was)."""
        return self._seq0 + self._next_off - 1

    @property
    def next_seq(self):
        return self._seq0 + self._next_off

    @property
    def durable_seq(self):
        """Highest seq known to be on stable storage."""
        return self._seq0 + self._durable_off

    @property
    def size_bytes(self):
        """Bytes the log occupies, buffered bytes included."""
        return self._size + self._wpos

    @property
    def segment_count(self):
        return len(self._segs)

    @property
    def failure(self):
        """Why the log stopped taking writes (a write error: reopen it), else None."""
        return self._failed

    def stats(self):
        """A dict of the log's counters and positions."""
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "durable_seq": self.durable_seq,
            "size_bytes": self._size + self._wpos,
            "budget_bytes": self.budget_bytes,
            "segments": len(self._segs),
            "evicted": self.evicted,
            "expired": self.expired,
            "reclaimed": self.reclaimed,
            "dropped": self.dropped,
            "corrupt": self.corrupt,
        }

    # ------------------------------------------------------------------ append

    # The two append paths below share their shape on purpose: each is the hot path of
    # its runtime, and a shared helper call would cost more than the code it saves.
    # Both rely on _wlimit: frames may be placed in the write buffer up to it without
    # any check (see _prepare).

    def _append_portable(self, value, ts=0, key=None, now_ms=None, seq=True):
        # The append of every runtime: allocation-free (MicroPython's append, on 32-bit
        # ports too) and for frames of any size (CPython's append_cpython hands it frames
        # bigger than the write buffer, which go to the file in pieces). The header is
        # packed apart; the CRC is written into the buffer by frame_crc_into, over whole
        # objects, never as an int (a big int on 32-bit) nor over a memoryview slice.
        # ts is an int, or a clock (clock.py) that stamps the next timestamp into the
        # header: a 32-bit board then never makes the timestamp as an int. The seq is
        # packed from _seq0's parts and the offset, never made as an int either: it is
        # made only to be returned, and seq=False returns True instead (past 2**30 the
        # seq is a heap object on 32-bit: docs/design-alloc-free-32bit.md, fix 3).
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
        # This record's seq is _seq0 + off, as 24 low bits and the rest (making room may
        # begin a segment, which rebases the offset but never changes the seq).
        off = self._next_off
        lo = self._seq0lo + off
        hi = self._seq0hi
        if lo > 0xFFFFFF:
            hi += lo >> 24
            lo &= 0xFFFFFF
        hdr = self._hdr
        if type(ts) is int:
            try:
                if ts < 0:
                    raise ValueError
                pack_frame_header_split(hdr, flen, lo, hi, ts, kfield)
            except (OverflowError, ValueError, TypeError):
                raise ConfigError("ts must be an int in 0..2**64-1, not %r" % (ts,))
            self.last_ts = ts
        else:
            # A clock stamps the ts field now, before room is made: a segment begun for
            # this record takes its first_ts from the clock (clock.last in _prepare).
            pack_frame_header_split(hdr, flen, lo, hi, 0, kfield)
            try:
                ts.stamp_into(hdr, 12)
            except AttributeError:
                raise ConfigError("ts must be an int in 0..2**64-1 or a clock, not %r" % (ts,))
        pos = self._wpos
        end = pos + flen
        if end > self._wlimit:
            if not self._make_space(flen, ts):
                self.dropped += 1
                return 0
            pos = self._wpos
            end = pos + flen
        if flen > self._wcap:
            frame_crc_into(self._crcbuf, 0, hdr, key, value)
            self._write_direct(flen, key, value)
        else:
            buf = self._wbuf
            p = pos + FRAME_HEADER_BYTES
            buf[pos:p] = hdr
            if klen:
                buf[p:p + klen] = key
                p += klen
            buf[p:p + vlen] = value
            frame_crc_into(buf, p + vlen, hdr, key, value)
            self._wpos = end
        off = self._next_off
        self._next_off = off + 1
        if off >= self._commit_off:
            self.flush(now_ms)
        elif now_ms is not None and self._sync_code == 1:
            cm = self._commit_ms
            if cm is None:
                self._commit_ms = now_ms
            elif now_ms - cm >= self.group_ms:
                self.flush(now_ms)
        if seq:
            return self._seq0 + off  # not rebased since: flush never begins a segment
        return True

    if _SMALL:
        append = _append_portable
    else:
        append = append_cpython
        _fill_buffer = fill_buffer
        # append's documentation is append_cpython's docstring (docs/core.md too): kept
        # there, a board never loads its text.

    def append_many(self, values, ts=0, keys=None, now_ms=None):
        """Append records ``values[i]`` (keys ``keys[i]``, or none); return the seq of the
        first one appended, 0 if none was. They get consecutive seqs up to ``last_seq``.

        ``ts`` is one timestamp for all of them, a sequence of one per value, or a clock
        that stamps each (as ``append``'s; one record at a time). Commits
        by count fall where they would for the same appends one by one; a commit on time
        (``now_ms``) is checked once, after the batch. At a fraction of the per-record
        cost: the batch ingest path.
        """
        n = len(values)
        if keys is not None and len(keys) != n:
            raise ConfigError("append_many: %d values but %d keys" % (n, len(keys)))
        clock = not isinstance(ts, int) and hasattr(ts, "stamp_into")
        one_ts = clock or isinstance(ts, int)
        if not one_ts and len(ts) != n:
            raise ConfigError("append_many: %d values but %d timestamps" % (n, len(ts)))
        first = 0
        i = 0
        while i < n:
            if not _SMALL and not clock and self._sync_code != 2:
                j = self._fill_buffer(values, ts, one_ts, keys, i, n)
                if j > i:
                    if not first:
                        first = self._seq0 + self._next_off - (j - i)
                    i = j
                    if self._next_off - 1 >= self._commit_off:
                        self.flush(now_ms)
                    continue
            # The slow path (room, rotation, commit on time, MicroPython): one record
            # (its seq made only for the first: a big int on 32-bit past 2**30).
            seq = self.append(values[i], ts if one_ts else ts[i], None if keys is None else keys[i], now_ms, not first)
            if seq and not first:
                first = seq
            i += 1
        if now_ms is not None and self._sync_code == 1 and self._durable_off < self._next_off - 1:
            self.tick(now_ms)
        return first

    def _set_room(self, room):
        # The room is kept as the buffer position up to which frames may go unchecked.
        self._allowed_end = self._wpos + room
        self._wlimit = self._allowed_end if self._allowed_end < self._wcap else self._wcap

    def _make_space(self, flen, ts):
        """Slow path of append, when the frame would pass _wlimit. False: drop it."""
        if self._wpos + flen <= self._allowed_end:
            # The room is there; only the buffer is full (or the frame bigger than it).
            self._write_out()
            if flen <= self._wlimit or flen > self._wcap:
                return True
        return self._prepare(flen, ts)

    def _write_direct(self, flen, key, value):
        # A frame larger than the write buffer goes to the file in pieces (its CRC is
        # already in self._crcbuf).
        self._write_out()
        self._ensure_open()
        h = self._tail
        try:
            h.write(self._hdr, FRAME_HEADER_BYTES)
            if key is not None and len(key):
                h.write(key, len(key))
            h.write(value, len(value))
            h.write(self._crcbuf, 4)
        except OSError as e:
            self._fail(e)
        self._segs[-1][_S_SIZE] += flen
        self._size += flen
        self._set_room(self._allowed_end - flen)

    def _prepare(self, flen, ts):
        """Check state, rotate, make room, and renew the room. False: drop the record."""
        self._set_room(0)  # also returns this log's lease on the device budget
        if self._failed is not None:
            raise StorageError("log %s is unusable after a write error (%s); reopen it" % (self.path, self._failed))
        if self._closed:
            raise StorageError("log %s is closed" % self.path)
        if type(ts) is not int:
            ts = ts.last  # a clock: append stamped this record's ts already (an int here is fine)
        if not isinstance(ts, int) or ts < 0 or ts > 0xFFFFFFFFFFFFFFFF:
            raise ConfigError("ts must be an int in 0..2**64-1, not %r" % (ts,))
        if flen > self.segment_bytes - SEGMENT_HEADER_BYTES:
            raise ConfigError(
                "record of %d bytes does not fit in a segment of %d bytes" % (flen, self.segment_bytes)
            )
        tail = self._segs[-1] if self._segs else None
        rotate = (
            tail is None
            or (not self._tail_needs_header and tail[_S_SIZE] + self._wpos + flen > tail[_S_CAP])
        )
        need = flen + SEGMENT_HEADER_BYTES if (rotate or self._tail_needs_header) else flen
        if not self._make_room(need):
            return False
        if rotate:
            if tail is not None:
                self._seal()
            self._begin_segment(ts)
        elif self._tail_needs_header:
            self._write_header(ts)
        tail = self._segs[-1]
        room = tail[_S_CAP] - tail[_S_SIZE] - self._wpos
        left = self.budget_bytes - self._size - self._wpos
        if left < room:
            room = left
        if self.store is not None:
            left = self.store.budget_bytes - self.store.used_bytes()
            if left < room:
                room = left
        self._set_room(room)
        if self._wpos + flen > self._wcap and flen <= self._wcap:
            self._write_out()
        return True

    def _make_room(self, need):
        store = self.store
        while self._size + self._wpos + need > self.budget_bytes:
            if not self.remove_oldest() and not (self.full_policy == DROP_OLDEST and self.remove_oldest(True)):
                return self._refuse()
        if store is not None:
            while store.used_bytes() + need > store.budget_bytes:
                if not store.reclaim_for(self):
                    return self._refuse()
        return True

    def _refuse(self):
        if self.full_policy == REJECT:
            raise LogFull(
                "log %s is full (%d of %d bytes) and its policy is reject"
                % (self.path, self._size + self._wpos, self.budget_bytes)
            )
        return False

    def _min_acked(self):
        if not self.consumers:
            return 0
        m = self.consumers[0].acked
        for c in self.consumers:
            if c.acked < m:
                m = c.acked
        return m

    def _remove_oldest(self, why):
        seg = self._segs[0]
        nxt = self._segs[1][_S_BASE]
        count = nxt - seg[_S_BASE]
        acked = self._min_acked()
        if why == "reclaimed":
            self.reclaimed += count
        else:
            unacked = count if acked < seg[_S_BASE] else nxt - 1 - acked
            if unacked < 0:
                unacked = 0
            self.reclaimed += count - unacked
            if why == "expired":
                self.expired += unacked
            else:
                self.evicted += unacked
        self.storage.remove(self._seg_path(seg[_S_BASE]))
        self._segs.pop(0)
        self._size -= seg[_S_SIZE]
        if self._cache_seg == seg[_S_BASE]:
            self._cache_seg = -1

    def _seal(self):
        # I4: everything of a segment is durable before the next one is begun.
        self._write_out()
        if self._tail is not None:
            try:
                self._tail.sync()
                self._tail.close()
            except OSError as e:
                self._fail(e)
            self._tail = None
        # The count boundary stays where the last commit put it: moved here, a batch
        # straddling the seal would wait out group_ms instead of reaching it.
        self._durable_off = self._next_off - 1

    def _begin_segment(self, ts):
        # The offsets are rebased on the new segment's base: they stay below one
        # segment's frames (small ints on every port).
        n = self._next_off
        base = self._seq0 = self._seq0 + n
        self._seq0lo = base & 0xFFFFFF
        self._seq0hi = base >> 24
        self._next_off = 0
        self._durable_off -= n
        if self._sync_code == 1:
            self._commit_off -= n
        segs = self._segs
        if segs:
            # Sealed, the old tail never changes again: a tuple is one allocation, a
            # list two and half again the bytes (hundreds of segments on a board).
            segs[-1] = tuple(segs[-1])
        segs.append([base, 0, ts, self.segment_bytes, False])
        self._tail_needs_header = True
        # Create the file now, not at the first buffer write: its name carries the next
        # seq (I2). Otherwise eviction or retention could remove the last segment file on
        # disk while the new tail still sits in the buffer, and a crash would restart the
        # log at seq 1.
        self._ensure_open()
        self._write_header(ts)

    def _write_header(self, ts):
        tail = self._segs[-1]
        tail[_S_TS] = ts
        tail[_S_CAP] = self.segment_bytes
        hdr = pack_segment_header(tail[_S_BASE], ts, self.segment_bytes)
        self._wbuf[0:SEGMENT_HEADER_BYTES] = hdr
        self._wpos = SEGMENT_HEADER_BYTES
        self._tail_needs_header = False

    def _ensure_open(self):
        if self._tail is None:
            try:
                self._tail = self.storage.open_append(self._seg_path(self._segs[-1][_S_BASE]))
            except OSError as e:
                self._fail(e)

    def _write_out(self):
        """Write the buffer to the tail file (no sync)."""
        n = self._wpos
        if not n:
            return
        self._ensure_open()
        try:
            self._tail.write(self._wbuf, n)
        except OSError as e:
            self._fail(e)
        self._segs[-1][_S_SIZE] += n
        self._size += n
        self._wpos = 0
        self._set_room(self._allowed_end - n)

    def _fail(self, e):
        self._failed = "%s" % (e,)
        self._set_room(0)
        h = self._tail
        self._tail = None
        if h is not None:
            try:
                h.close()
            except OSError:
                pass
        raise StorageError("log %s: write failed (%s); records not yet flushed were not stored" % (self.path, e))

    def _renew_commit(self):
        # _commit_off: the offset (from _seq0) whose append triggers a commit; for sync
        # every, any; for none, one never reached (both small ints on every port).
        code = self._sync_code
        if code == 2:
            self._commit_off = -0x3FFFFFFF
        elif code == 1:
            c = self._durable_off + self.group_records
            self._commit_off = c if c < 0x3FFFFFFF else 0x3FFFFFFF
        else:
            self._commit_off = 0x3FFFFFFF

    def flush(self, now_ms=None):
        """Commit point: every record appended so far is durable when this returns."""
        if self._failed is not None:
            raise StorageError("log %s is unusable after a write error (%s); reopen it" % (self.path, self._failed))
        if now_ms is not None:
            self._commit_ms = now_ms
        if self._durable_off == self._next_off - 1 and not self._wpos:
            return
        self._write_out()
        if self._tail is not None:
            try:
                self._tail.sync()
            except OSError as e:
                self._fail(e)
        self._durable_off = self._next_off - 1
        self._renew_commit()

    def tick(self, now_ms):
        """Group commit on time: flush if records have waited ``group_ms`` or more.

        Does nothing under sync ``none`` (only ``flush()`` commits there)."""
        if self._sync_code == 0:
            return
        if self._commit_ms is None:
            self._commit_ms = now_ms
            return
        if self._durable_off < self._next_off - 1 and now_ms - self._commit_ms >= self.group_ms:
            self.flush(now_ms)

    def apply_retention(self, now_ms):
        """Remove sealed segments older than ``retention_ms``; return how many."""
        if not self.retention_ms:
            return 0
        limit = now_ms - self.retention_ms
        n = 0
        segs = self._segs
        while len(segs) >= 2 and (segs[1][_S_TS] >> 16) < limit:
            if len(segs) == 2 and self._tail_needs_header:
                break  # the tail is empty (reset by recovery): its first_ts is unknown
            self._remove_oldest("expired")
            n += 1
        return n

    def close(self):
        """Flush, close the consumers' cursor files and the tail file. The log object
        and its outboxes are unusable afterwards."""
        if self._closed:
            return
        for c in list(self.consumers):
            c.close()
        if self._failed is None:
            self.flush()
        if self._tail is not None:
            self._tail.close()
            self._tail = None
        self._closed = True
        self._set_room(0)
        if self.store is not None:
            self.store.forget(self)

    # ------------------------------------------------------------------ store and outboxes
    #
    # The contract between a log, the Store that shares a device budget among logs, and
    # the outboxes that consume it (docs/core.md, "How the log, its outboxes and the
    # store work together"). They use these and the public properties, nothing else.

    @property
    def claimed_bytes(self):
        """What the log counts against a device budget: ``size_bytes`` (buffered bytes
        included) plus its lease, the room it may still fill without asking the store.
        An append that needs more asks (``Store.reclaim_for``) and renews the lease."""
        return self._size + self._allowed_end

    def remove_oldest(self, evict=False):
        """Remove the oldest sealed segment. Without ``evict``, only if every consumer
        acknowledged all of it (nothing is lost: counted as reclaimed); with ``evict``,
        whatever they acknowledged (records not acknowledged by all are counted as
        evicted and become gaps in the outboxes behind). True if a segment was removed;
        the tail never is (I2)."""
        segs = self._segs
        if len(segs) < 2:
            return False
        if not evict and (not self.consumers or self._min_acked() < segs[1][_S_BASE] - 1):
            return False
        self._remove_oldest("evicted" if evict else "reclaimed")
        return True

    # ------------------------------------------------------------------ read

    def _find_segment(self, seq):
        segs = self._segs
        lo = 0
        hi = len(segs) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if segs[mid][_S_BASE] <= seq:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def read(self, from_seq, max_records=100, max_bytes=65536):
        """Records with seq >= from_seq, in order, at most max_records of them and about
        max_bytes of values (always at least one record if any is there).

        Records evicted or rotted away are simply absent: the caller sees the jump in
        seq (the outbox turns it into a gap).

        On a microcontroller, reading records not yet committed commits them first:
        through MicroPython's VFS (littlefs, FAT) a file's bytes reach another handle
        only once synced, and the read handle would find the unsynced tail missing --
        and report it corrupt (found by tests/mp/soak.py: a GAP for intact records).
        """
        out = []
        if from_seq < 1:
            from_seq = 1
        next_seq = self._seq0 + self._next_off
        if from_seq >= next_seq or not self._segs or max_records < 1:
            return out
        if from_seq < self.first_seq:
            from_seq = self.first_seq
        if _SMALL and self._failed is None and self._durable_off < self._next_off - 1:
            # MicroPython's littlefs (like FAT) shows another handle only the bytes that
            # were synced: reading records not yet committed means committing them, or
            # the reader would take their place for rot (and a board's uplink report a gap).
            self.flush()
        else:
            self._write_out()
        i = self._find_segment(from_seq)
        nbytes = 0
        segs = self._segs
        while i < len(segs) and len(out) < max_records and nbytes < max_bytes:
            seg = segs[i]
            nxt = segs[i + 1][_S_BASE] if i + 1 < len(segs) else next_seq
            if seg[_S_BAD]:
                self._report_corrupt(seg[_S_BASE], 0, seg[_S_BASE], nxt - 1)
            elif from_seq < nxt:
                nbytes = self._read_seg(
                    seg[_S_BASE], seg[_S_SIZE], seg[_S_CAP] - SEGMENT_HEADER_BYTES, nxt,
                    from_seq, max_records, max_bytes, out, nbytes,
                )
            from_seq = nxt
            i += 1
        return out

    def _read_segment(self, base, end, max_frame, nxt, from_seq, max_records, max_bytes, out, nbytes):
        """Append to ``out`` the records of segment ``base`` (``end`` bytes long, frames of
        at most ``max_frame`` bytes; the next segment begins at seq ``nxt``) from seq
        ``from_seq`` on, within the limits; return ``nbytes`` plus the value bytes read.
        Skips, counts and reports rotted frames (I8). The general reader: every runtime's,
        and where CPython's fast reader (fastpath.read_segment) meets anything unusual."""
        if self._cache_seg == base and self._cache_seq <= from_seq:
            off = self._cache_off
            expect = self._cache_seq
        else:
            off = SEGMENT_HEADER_BYTES
            expect = base
        h = self.storage.open_read(self._seg_path(base))
        try:
            sc = self._scanner(h, end, max_frame)
            while off < end and len(out) < max_records and nbytes < max_bytes:
                f = sc.frame(off)
                if f is None or f[1] < expect or f[1] >= nxt:
                    # I8: a rotted frame. Scan forward for the next valid one.
                    found = sc.next_valid(off, expect, nxt)
                    if found is None:
                        self._report_corrupt(base, off, expect, nxt - 1)
                        off = end
                        expect = nxt
                        break
                    self._report_corrupt(base, off, expect, found[1] - 1)
                    off = found[0]
                    expect = found[1]
                    continue
                flen, seq, ts, klen = f
                if seq >= from_seq:
                    rel = sc.rel
                    mv = sc.mv
                    p = rel + FRAME_HEADER_BYTES
                    if klen == NO_KEY:
                        key = None
                    else:
                        key = bytes(mv[p:p + klen])
                        p += klen
                    value = bytes(mv[p:rel + flen - FRAME_CRC_BYTES])
                    out.append(Record(seq, ts, key, value))
                    nbytes += len(value)
                off += flen
                expect = seq + 1
        finally:
            h.close()
        self._cache_seg = base
        self._cache_off = off
        self._cache_seq = expect
        return nbytes

    _record_type = Record
    if _SMALL:
        _read_seg = _read_segment
    else:
        _read_seg = read_segment

    def _report_corrupt(self, base, off, first, last):
        k = (base, off)
        if k in self._reported or last < first:
            return
        self._reported[k] = True
        self.corrupt += last - first + 1
        self.warn(
            "log %s: corrupt data in segment %s at byte %d; records %d..%d are lost"
            % (self.path, segment_name(base), off, first, last)
        )
