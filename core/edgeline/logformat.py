"""The ring log's bytes on disk: constants, segment names and headers, frames, the scanner.

Theory of operation
-------------------
docs/spec/log.md specifies these bytes; this module is its only implementation, and the
log (log.py) and its CPython fast paths (fastpath.py) both take everything format-related
from here. A log directory holds segment files named by the seq of their first record
(``segment_name``). A segment is a 32-byte header (``pack_segment_header`` /
``parse_segment_header``) followed by frames: a 22-byte frame header (frame_len, seq, ts,
key_len: ``pack_frame_header`` / ``unpack_frame_header``), the key, the value and a
CRC32 of everything before it (``pack_frame_crc``, ``frame_crc_into``; read back by
``frame_crc_check``).
``encode_frame`` builds one whole frame for tools and golden files; the log itself
packs frames straight into its write buffer with the same functions.

Reading is the ``FrameScanner``'s job: it validates one frame at a file offset through one
reusable chunk buffer (length bounds, key length, CRC), finds the run of consecutive
valid frames recovery keeps, and after a rotted frame finds the next valid one.

The frame-header and CRC packers are ``struct.Struct`` methods on CPython (faster on the
append path) and plain functions over ``struct.pack_into`` where there is no
``struct.Struct`` (MicroPython); neither allocates when packing into a buffer.
"""
import struct
import sys
from binascii import crc32

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from .errors import CorruptRecord

_MAGIC = b"ELOG"
_VERSION = const(1)
SEGMENT_HEADER_BYTES = const(32)
FRAME_HEADER_BYTES = const(22)  # frame_len, seq, ts, key_len
FRAME_CRC_BYTES = const(4)
FRAME_OVERHEAD_BYTES = const(26)  # header and CRC: a frame with an empty value and no key
NO_KEY = const(0xFFFF)  # key_len of a record without a key; keys are at most NO_KEY - 1 bytes
_SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME_DIGITS = const(20)

try:
    # CPython: precompiled formats are measurably faster on the append path.
    pack_frame_header = struct.Struct("<IQQH").pack_into
    unpack_frame_header = struct.Struct("<IQQH").unpack_from
    pack_frame_crc = struct.Struct("<I").pack_into
except AttributeError:  # MicroPython has no struct.Struct

    def pack_frame_header(buf, off, flen, seq, ts, kfield):
        struct.pack_into("<IQQH", buf, off, flen, seq, ts, kfield)

    def unpack_frame_header(buf, off):
        return struct.unpack_from("<IQQH", buf, off)

    def pack_frame_crc(buf, off, v):
        struct.pack_into("<I", buf, off, v)


def pack_frame_header_split(buf, flen, seq_lo, seq_hi, ts, kfield):
    """pack_frame_header at buf[0:22] for seq (seq_hi << 24) | seq_lo, seq_lo < 2**24:
    the same bytes, from two parts that are small ints on a 32-bit port however large
    the seq (seq_hi < 2**30 up to seq 2**54), so the seq is never made as an int. The
    append path of every runtime but CPython's fast one (log.py, _append_portable)."""
    struct.pack_into("<IHBHHBQH", buf, 0, flen, seq_lo & 0xFFFF, seq_lo >> 16, seq_hi & 0xFFFF, (seq_hi >> 16) & 0xFFFF, seq_hi >> 32, ts, kfield)


# frame_crc_into(out, off, hdr, key, value) writes CRC-32(hdr + key + value) little-endian
# at out[off:off + 4] (key may be None), allocating nothing. Chosen at import:
# * 64-bit words (CPython, the 64-bit unix port): binascii, whose results are small ints
#   there; fastest (0.5 us a 90-byte frame on the unix port, the viper one 1.0 us).
# * 32-bit words: crc32 results >= 2**30 are heap objects. crcnative's viper version where
#   the port has a native emitter and the firmware build compiled it for the board's
#   architecture (ESP32, RP2040); else crc.py's portable one (16-bit halves).
if sys.maxsize > 0x7FFFFFFF:

    def frame_crc_into(out, off, hdr, key, value):
        crc = crc32(hdr)
        if key:
            crc = crc32(key, crc)
        pack_frame_crc(out, off, crc32(value, crc))

    def frame_crc_check(mv, start, end):
        # The slice allocates (a memoryview object), the CRC does not: a small int here.
        return crc32(mv[start:end]) == mv[end] | (mv[end + 1] << 8) | (mv[end + 2] << 16) | (mv[end + 3] << 24)

else:
    try:
        from .crcnative import frame_crc_check, frame_crc_into
    except (ImportError, SyntaxError, ValueError):  # no emitter, or built for another arch
        from .crc import frame_crc_check, frame_crc_into


# frame_crc_check(mv, start, end), chosen with it, is the read side's: True if the CRC-32
# of mv[start:end] (a memoryview, or any buffer on 32-bit ports) equals the four bytes
# little-endian at mv[end:end + 4]. On 32-bit ports it never makes the CRC as an int nor
# slices (both allocate there): the frame is checked where it lies in the read buffer.

# pack_frame_header(buf, off, frame_len, seq, ts, key_field) and pack_frame_crc(buf, off,
# crc) write into buf at off; unpack_frame_header(buf, off) gives (frame_len, seq, ts,
# key_field); key_field is the key's length, or NO_KEY. (No unpack_frame_crc: the
# readers check a CRC with frame_crc_check, and every name here costs a board RAM.)


def segment_name(base_seq):
    """The file name of the segment whose first record has seq ``base_seq``."""
    s = str(base_seq)
    return "0" * (_SEGMENT_NAME_DIGITS - len(s)) + s + _SEGMENT_SUFFIX


def parse_segment_name(name):
    """The base seq a segment file name carries, or 0 if ``name`` is not a segment's."""
    if len(name) != _SEGMENT_NAME_DIGITS + len(_SEGMENT_SUFFIX) or not name.endswith(_SEGMENT_SUFFIX):
        return 0
    digits = name[:_SEGMENT_NAME_DIGITS]
    for c in digits:
        if c < "0" or c > "9":
            return 0
    return int(digits)


def pack_segment_header(base_seq, first_ts, capacity):
    """The 32 header bytes of a segment (docs/spec/log.md, "Segment header")."""
    hdr = bytearray(SEGMENT_HEADER_BYTES)
    hdr[0:4] = _MAGIC
    struct.pack_into("<BBHQQI", hdr, 4, _VERSION, 0, SEGMENT_HEADER_BYTES, base_seq, first_ts, capacity)
    struct.pack_into("<I", hdr, 28, crc32(memoryview(hdr)[:28]))
    return hdr


def parse_segment_header(hdr, name=""):
    """(base_seq, first_ts, capacity) of a 32-byte header, or None if it is not valid.

    Raises CorruptRecord for a valid header of an unknown version or flags (I9).
    """
    if len(hdr) < SEGMENT_HEADER_BYTES or bytes(hdr[0:4]) != _MAGIC:
        return None
    if struct.unpack_from("<I", hdr, 28)[0] != crc32(memoryview(hdr)[:28]):
        return None
    version, flags, hlen, base, first_ts, cap = struct.unpack_from("<BBHQQI", hdr, 4)
    if version != _VERSION or flags != 0 or hlen != SEGMENT_HEADER_BYTES:
        raise CorruptRecord(
            "segment %s: format version %d flags %d is not supported (this is version 1)"
            % (name, version, flags)
        )
    return base, first_ts, cap


def encode_frame(seq, ts, key, value):
    """One frame as bytes (for tools and golden files; the log itself uses its buffer)."""
    klen = 0 if key is None else len(key)
    flen = FRAME_OVERHEAD_BYTES + klen + len(value)
    out = bytearray(flen)
    pack_frame_header(out, 0, flen, seq, ts, NO_KEY if key is None else klen)
    if key is not None:
        out[FRAME_HEADER_BYTES:FRAME_HEADER_BYTES + klen] = key
    out[FRAME_HEADER_BYTES + klen:flen - FRAME_CRC_BYTES] = value
    pack_frame_crc(out, flen - FRAME_CRC_BYTES, crc32(memoryview(out)[:flen - FRAME_CRC_BYTES]))
    return bytes(out)


class FrameScanner:
    """Reads and validates the frames of one segment file through one reusable buffer.

    A log keeps one scanner for all its reads (``reset`` per file): on a small heap, a
    fresh object and buffer per read would fragment it. After ``frame(off)`` returned a
    header, the frame's bytes are ``mv[rel:rel + frame_len]``.
    """

    def __init__(self, chunk):
        self.chunk = chunk
        self.buf = bytearray(chunk)
        self.mv = memoryview(self.buf)
        self.reset(None, 0, 0)

    def reset(self, h, end, max_frame):
        """Scan the file open as ``h`` up to byte ``end``; frames longer than
        ``max_frame`` (the segment's capacity less its header) are invalid."""
        self.h = h
        self.end = end
        self.max_frame = max_frame
        if len(self.buf) > self.chunk:  # grown for one big frame: give it back
            self.buf = bytearray(self.chunk)
            self.mv = memoryview(self.buf)
        self.start = 0  # file offset of buf[0]
        self.have = 0  # valid bytes in buf
        self.rel = 0  # offset in buf of the frame frame() last returned
        return self

    def _fill(self, off):
        h = self.h
        h.seek(off)
        lim = self.end - off
        if lim > len(self.buf):
            lim = len(self.buf)
        mv = self.mv
        have = 0
        while have < lim:
            k = h.readinto(mv[have:lim])
            if not k:
                break
            have += k
        self.start = off
        self.have = have

    def frame(self, off):
        """The header (frame_len, seq, ts, key_field) of a valid frame at file offset off,
        its offset in self.buf left in self.rel; None if the bytes there are not a
        complete valid frame. One unpack and one CRC per frame: this is the read hot path."""
        rel = off - self.start
        if rel < 0 or rel + FRAME_OVERHEAD_BYTES > self.have:
            self._fill(off)
            rel = 0
            if self.have < FRAME_OVERHEAD_BYTES:
                return None
        buf = self.buf
        h = unpack_frame_header(buf, rel)
        flen = h[0]
        if flen < FRAME_OVERHEAD_BYTES or flen > self.max_frame:
            return None
        if rel + flen > self.have:
            if off + flen > self.end:
                return None
            if flen > len(buf):
                buf = self.buf = bytearray(flen)
                self.mv = memoryview(buf)
            self._fill(off)
            rel = 0
        kfield = h[3]
        if kfield != NO_KEY and FRAME_OVERHEAD_BYTES + kfield > flen:
            return None
        q = rel + flen - FRAME_CRC_BYTES
        if not frame_crc_check(self.mv, rel, q):
            return None
        self.rel = rel
        return h

    def next_valid(self, off, seq, next_seq):
        """(offset, seq) of the first valid frame past a bad one at ``off`` whose seq lies
        strictly between ``seq`` (the one expected at ``off``) and ``next_seq`` (the next
        segment's base), or None.

        Only runs when corruption was found, so it may be slow: it tries every offset.
        """
        pos = off + 1
        while pos + FRAME_OVERHEAD_BYTES <= self.end:
            f = self.frame(pos)
            if f is not None and seq < f[1] < next_seq:
                return pos, f[1]
            pos += 1
        return None
