# Columnar batch encoding, format version 1 (docs/spec/columnar.md); dependency-free.
#
# Theory of operation
# -------------------
# A batch is records (seq, ts, key, value): key bytes or None, value bytes (usually one
# CBOR item, as codec.dumps wrote it). encode() turns the records inside out: one stream
# per field instead of one record after another, so that what repeats from record to
# record (the seq step, the clock's step, a sensor name, a map's keys, a counter) costs
# next to nothing. decode() rebuilds the records byte for byte.
#
# * seqs: the first, then only the places where the step is not 1;
# * ts (hybrid clock, ms << 16 | logical): the ms part as delta-of-delta, the logical
#   counter as it is; both through the run-length int stream ("ints");
# * every byte string (keys, text, bytes, map keys) goes into one per-batch dictionary,
#   in the order of first use, each entry perhaps sharing a prefix with a recent one; a
#   column refers to a string by a code: 0 for its first use, else 1 + its index;
# * each value is read as CBOR *without* decoding strings: an item whose bytes the
#   decoder can rebuild exactly (shortest heads, definite lengths, float64) goes into a
#   typed column -- ints as zigzag deltas, float64 as scaled decimals when every value
#   is one, else XOR'd Gorilla-style, arrays by position, maps by field under a shape
#   table -- and anything else (tags, half floats, non-shortest heads, bytes that are
#   not one CBOR item) is kept verbatim. So decode(encode(x)) == x holds for any bytes.
#
# The encoder reads strings as raw bytes and never builds Python values of the records,
# so map order, int widths, float bit patterns (-0.0, NaN payloads) and str-vs-bytes
# survive on every runtime. The decoder is bounded: every count is checked against the
# input left or against budgets (records, items, output bytes) before anything is
# allocated for it, and every failure is a ColumnarError.
import struct

from edgeline.errors import EdgelineError

try:
    from micropython import const
except ImportError:
    const = lambda x: x  # noqa: E731

VERSION = const(1)
MAX_RECORDS = const(65536)
MAX_ITEMS = const(262144)
MAX_BYTES = const(8388608)
NEST = const(8)  # structured levels; deeper items are kept verbatim
POSITIONS = const(8)  # array positions with a column of their own; the rest share one
_MAX_VARINT = const(10)
_CBOR_DEPTH = const(32)
_CHUNK = const(128)  # floats are kept in pieces: no large block of a board's heap
_WINDOW = const(32)  # dictionary entries a new one may share a prefix with

# type codes of a column (spec: "Columns")
_T_NULL = const(0)
_T_FALSE = const(1)
_T_TRUE = const(2)
_T_UNDEF = const(3)
_T_INT = const(4)
_T_FLOAT = const(5)
_T_TEXT = const(6)
_T_BYTES = const(7)
_T_ARRAY = const(8)
_T_MAP = const(9)
_T_VERBATIM = const(10)
_N_TYPES = const(11)

_SIMPLE = b"\xf6\xf4\xf5\xf7"  # _T_NULL.._T_UNDEF
_LIMIT64 = 1 << 64
_DOUBLE = (1.0 + 2.0 ** -40) != 1.0
_POW10 = (1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1e6, 1e7, 1e8, 1e9)
_MANT_LIMIT = 1 << 53


class ColumnarError(EdgelineError):
    """A columnar batch is malformed, over a limit, or records cannot be encoded."""


class _Bad(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Integers: LEB128 varints, zigzag, and the run-length int stream


def _uvarint(buf, n):
    while n > 0x7F:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def _zig(v):
    return v << 1 if v >= 0 else ((-v) << 1) - 1


class _Runs:
    # The run-length int stream, written as values come (no list of them is kept):
    # header h = (length - 1) << 1 | repeat; a repeat run is one zigzag value, a
    # literal run its values one after the other. Three or more equal values in a row
    # make a repeat run.

    def __init__(self):
        self.out = bytearray()
        self.lit = bytearray()
        self.nlit = 0
        self.v = 0
        self.rep = 0
        self.prev = 0  # for delta columns

    def add(self, v):
        if self.rep and v == self.v:
            self.rep += 1
            return
        self._settle()
        self.v = v
        self.rep = 1

    def delta(self, v):
        self.add(v - self.prev)
        self.prev = v

    def _settle(self):
        rep = self.rep
        if rep >= 3:
            self._flush()
            _uvarint(self.out, ((rep - 1) << 1) | 1)
            _uvarint(self.out, _zig(self.v))
        else:
            for _ in range(rep):
                _uvarint(self.lit, _zig(self.v))
            self.nlit += rep
        self.rep = 0

    def _flush(self):
        if self.nlit:
            _uvarint(self.out, (self.nlit - 1) << 1)
            self.out.extend(self.lit)
            self.lit = bytearray()
            self.nlit = 0

    def finish(self, buf):
        self._settle()
        self._flush()
        buf.extend(self.out)


# ---------------------------------------------------------------------------------------
# Encoding


class _Col:
    # One column being built: the type code of each item and a part per type.
    def __init__(self):
        self.types = _Runs()
        self.ints = None  # _Runs of deltas
        self.floats = None  # 8-byte patterns, in bytearrays of up to _CHUNK bytes
        self.texts = None  # _Runs of dictionary indexes
        self.bytes = None
        self.arrays = None  # [_Runs of lengths, [position columns], tail column]
        self.maps = None  # [_Runs of shape indexes, {shape: index}, [shapes], {key: column}]
        self.verbatim = None  # bytearray: (length, bytes) each


class _Encoder:
    def __init__(self):
        self.words = {}
        self.order = []

    def ref(self, raw):
        # the dictionary index of raw; self.fresh: raw was not in it (its first use)
        i = self.words.get(raw)
        self.fresh = i is None
        if i is None:
            i = len(self.order)
            self.words[raw] = i
            self.order.append(raw)
        return i

    def code(self, raw):
        # how a string column refers to raw: 0 its first use, else 1 + its index
        i = self.ref(raw)
        return 0 if self.fresh else i + 1

    # -- reading CBOR without decoding it

    def head(self, mv, pos, end):
        # (major, argument, position after the head, shortest?); raises _Bad
        if pos >= end:
            raise _Bad()
        ib = mv[pos]
        major = ib >> 5
        ai = ib & 0x1F
        pos += 1
        if ai < 24:
            return major, ai, pos, True
        if ai > 27:
            raise _Bad()  # reserved, or indefinite length
        size = 1 << (ai - 24)
        if pos + size > end:
            raise _Bad()
        n = 0
        for k in range(pos, pos + size):
            n = (n << 8) | mv[k]
        if major == 7:
            return major, n, pos + size, True
        short = n >= 24 if size == 1 else n >= (1 << (size << 2))
        return major, n, pos + size, short

    def skip(self, mv, pos, end, depth):
        # The end of the well-formed item at pos (definite lengths only).
        if depth > _CBOR_DEPTH:
            raise _Bad()
        major, n, pos, _ = self.head(mv, pos, end)
        if major == 2 or major == 3:
            if n > end - pos:
                raise _Bad()
            return pos + n
        if major == 4 or major == 5:
            if major == 5:
                n *= 2
            for _ in range(n):
                if pos >= end:
                    raise _Bad()
                pos = self.skip(mv, pos, end, depth + 1)
            return pos
        if major == 6:
            return self.skip(mv, pos, end, depth + 1)
        return pos

    def push(self, col, mv, pos, end, depth):
        # Put the item at pos into col; return the position after it.
        major, n, after, short = self.head(mv, pos, end)
        t = _T_VERBATIM
        if not short or depth >= NEST:
            pass
        elif major < 2:
            t = _T_INT
            if col.ints is None:
                col.ints = _Runs()
            col.ints.delta(n if major == 0 else -1 - n)
        elif major < 4:
            if n > end - after:
                raise _Bad()
            r = self.code(bytes(mv[after:after + n]))
            if major == 3:
                t = _T_TEXT
                if col.texts is None:
                    col.texts = _Runs()
                col.texts.add(r)
            else:
                t = _T_BYTES
                if col.bytes is None:
                    col.bytes = _Runs()
                col.bytes.add(r)
            after += n
        elif major == 4:
            t = _T_ARRAY
            a = col.arrays
            if a is None:
                a = col.arrays = [_Runs(), [], None]
            a[0].add(n)
            cols = a[1]
            for k in range(n):
                if k < POSITIONS:
                    if k == len(cols):
                        cols.append(_Col())
                    c = cols[k]
                else:
                    if a[2] is None:
                        a[2] = _Col()
                    c = a[2]
                after = self.push(c, mv, after, end, depth + 1)
        elif major == 5:
            t = _T_MAP
            m = col.maps
            if m is None:
                m = col.maps = [_Runs(), {}, [], {}]
            keys = []
            for _ in range(n):
                kend = self.skip(mv, after, end, depth + 1)
                kr = self.ref(bytes(mv[after:kend]))
                keys.append(kr)
                c = m[3].get(kr)
                if c is None:
                    c = m[3][kr] = _Col()
                after = self.push(c, mv, kend, end, depth + 1)
            keys = tuple(keys)
            s = m[1].get(keys)
            if s is None:
                s = m[1][keys] = len(m[2])
                m[2].append(keys)
            m[0].add(s)
        elif major == 7:
            if after == pos + 1 and 20 <= n <= 23:
                t = (_T_FALSE, _T_TRUE, _T_NULL, _T_UNDEF)[n - 20]
            elif mv[pos] == 0xFB:
                t = _T_FLOAT
                chunks = col.floats
                if chunks is None:
                    chunks = col.floats = [bytearray()]
                if len(chunks[-1]) >= _CHUNK:
                    chunks.append(bytearray())
                chunks[-1].extend(mv[pos + 1:after])
        if t == _T_VERBATIM:
            after = self.skip(mv, pos, end, depth)
            _verbatim(col, mv[pos:after])
        col.types.add(t)
        return after

    def value(self, col, raw):
        mv = memoryview(raw)
        end = len(mv)
        try:
            if self.skip(mv, 0, end, 0) != end:
                raise _Bad()
        except _Bad:
            col.types.add(_T_VERBATIM)
            _verbatim(col, raw)
            return
        self.push(col, mv, 0, end, 0)

    # -- writing columns

    def column(self, buf, col):
        col.types.finish(buf)
        if col.ints is not None:
            col.ints.finish(buf)
        if col.floats is not None:
            _floats(buf, col.floats)
        if col.texts is not None:
            col.texts.finish(buf)
        if col.bytes is not None:
            col.bytes.finish(buf)
        a = col.arrays
        if a is not None:
            a[0].finish(buf)
            for c in a[1]:
                self.column(buf, c)
            if a[2] is not None:
                self.column(buf, a[2])
        m = col.maps
        if m is not None:
            shapes = m[2]
            _uvarint(buf, len(shapes))
            for s in shapes:
                _uvarint(buf, len(s))
                for kr in s:
                    _uvarint(buf, kr)
            if len(shapes) > 1:
                m[0].finish(buf)
            done = {}
            for s in shapes:
                for kr in s:
                    if kr not in done:
                        done[kr] = 1
                        self.column(buf, m[3][kr])
        if col.verbatim is not None:
            buf.extend(col.verbatim)


def _verbatim(col, raw):
    if col.verbatim is None:
        col.verbatim = bytearray()
    _uvarint(col.verbatim, len(raw))
    col.verbatim.extend(raw)


def _patterns(chunks):
    for ch in chunks:
        for i in range(0, len(ch), 8):
            yield ch[i:i + 8]


def _decimal_scale(chunks):
    # The least k with every value == m / 10**k (m an int below 2**53), or -1.
    if not _DOUBLE:
        return -1
    scale = 0
    for raw in _patterns(chunks):
        v = struct.unpack(">d", raw)[0]
        if v != v or v - v != 0.0:
            return -1
        k = scale
        while k < len(_POW10):
            m = v * _POW10[k]
            if -_MANT_LIMIT < m < _MANT_LIMIT and struct.pack(">d", round(m) / _POW10[k]) == raw:
                break
            k += 1
        if k == len(_POW10):
            return -1
        scale = k
    return scale


def _floats(buf, chunks):
    k = _decimal_scale(chunks)
    if k >= 0:
        p = _POW10[k]
        ms = _Runs()
        for raw in _patterns(chunks):
            m = int(round(struct.unpack(">d", raw)[0] * p))
            if struct.pack(">d", m / p) != raw:
                break
            ms.delta(m)
        else:
            buf.append(1)
            buf.append(k)
            ms.finish(buf)
            return
    buf.append(0)
    _gorilla(buf, chunks)


_NIBBLE_BITS = b"\x00\x01\x02\x02\x03\x03\x03\x03\x04\x04\x04\x04\x04\x04\x04\x04"


def _bitlen(x):
    # int.bit_length() is missing on MicroPython
    if x == 0:
        return 0
    h = "%x" % x
    return ((len(h) - 1) << 2) + _NIBBLE_BITS[int(h[0], 16)]


def _gorilla(buf, chunks):
    # Pelkonen et al., "Gorilla", VLDB 2015, section 4.1.2: the first value in full, then
    # each XOR with the one before: 0 (same), 10 + the bits in the previous window,
    # or 11 + 5 bits of leading zeros + 6 bits of length (64 as 0) + the bits.
    acc = 0
    nbits = 0
    prev = -1
    lead = -1
    trail = 0
    for raw in _patterns(chunks):
        cur = int.from_bytes(raw, "big")
        if prev < 0:
            buf.extend(raw)
            prev = cur
            continue
        x = cur ^ prev
        prev = cur
        if x == 0:
            bits, width = 0, 1
        else:
            bl = _bitlen(x)
            lz = 64 - bl
            tz = _bitlen(x & -x) - 1
            if lead >= 0 and lz >= lead and tz >= trail:
                w = 64 - lead - trail
                bits, width = (2 << w) | (x >> trail), w + 2
            else:
                if lz > 31:
                    lz = 31
                w = 64 - lz - tz
                lead, trail = lz, tz
                bits = (((3 << 5) | lz) << 6 | (w & 63)) << w | (x >> tz)
                width = 13 + w
        acc = (acc << width) | bits
        nbits += width
        while nbits >= 8:
            nbits -= 8
            buf.append((acc >> nbits) & 0xFF)
        acc &= (1 << nbits) - 1
    if nbits:
        buf.append((acc << (8 - nbits)) & 0xFF)


def encode(records) -> bytes:
    """Records (seq, ts, key, value) -> one columnar batch (bytes). Seqs must rise."""
    n = len(records)
    if n > MAX_RECORDS:
        raise ColumnarError("a batch holds at most %d records, not %d" % (MAX_RECORDS, n))
    out = bytearray()
    out.append(VERSION)
    _uvarint(out, n)
    if n == 0:
        return bytes(out)
    enc = _Encoder()
    gaps = bytearray()  # (index, skipped) where the seq step is not 1
    ngaps = 0
    dod = _Runs()
    logical = _Runs()
    keys = _Runs()
    col = _Col()
    first = prev = ms0 = ms = d = 0
    i = 0
    for r in records:
        seq, ts, key, value = r[0], r[1], r[2], r[3]
        if type(seq) is not int or seq < 1 or seq >= _LIMIT64 or (i and seq <= prev):
            raise ColumnarError("seq %r: seqs must be rising ints in [1, 2**64)" % (seq,))
        if type(ts) is not int or ts < 0 or ts >= _LIMIT64:
            raise ColumnarError("ts %r is not an int in [0, 2**64)" % (ts,))
        if key is None:
            k = 0
        elif isinstance(key, (bytes, bytearray, memoryview)):
            k = enc.code(bytes(key)) + 1
        else:
            raise ColumnarError("a key is bytes or None, not %s" % type(key).__name__)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ColumnarError("a value is bytes, not %s" % type(value).__name__)
        if i == 0:
            first = seq
            ms0 = ts >> 16
        else:
            if seq != prev + 1:
                _uvarint(gaps, i)
                _uvarint(gaps, seq - prev - 1)
                ngaps += 1
            dt = (ts >> 16) - ms
            dod.add(dt - d)
            d = dt
        prev = seq
        ms = ts >> 16
        logical.add(ts & 0xFFFF)
        keys.add(k)
        enc.value(col, value)
        i += 1
    _uvarint(out, first)
    _uvarint(out, ngaps)
    out.extend(gaps)
    _uvarint(out, ms0)
    _uvarint(out, len(enc.order))
    order = enc.order
    for i in range(len(order)):
        raw = order[i]
        # the longest prefix shared with one of the _WINDOW entries before it
        shared = back = 0
        if raw:
            for j in range(i - 1, i - 1 - _WINDOW if i > _WINDOW else -1, -1):
                prev = order[j]
                if not prev or prev[0] != raw[0]:
                    continue
                top = min(len(prev), len(raw))
                k = 0
                while k < top and prev[k] == raw[k]:
                    k += 1
                if k > shared:
                    shared, back = k, i - j
        if shared >= 3:  # worth its two bytes: how far back, and how much
            _uvarint(out, ((len(raw) - shared) << 1) | 1)
            _uvarint(out, back)
            _uvarint(out, shared)
            out.extend(raw[shared:])
        else:
            _uvarint(out, len(raw) << 1)
            out.extend(raw)
    dod.finish(out)
    logical.finish(out)
    keys.finish(out)
    enc.column(out, col)
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Decoding


def _put_head(buf, major, n):
    if n < 24:
        buf.append(major | n)
        return
    k = 0 if n < 0x100 else 1 if n < 0x10000 else 2 if n < 0x100000000 else 3
    buf.append(major | (24 + k))
    buf.extend(n.to_bytes(1 << k, "big"))


class _Ints:
    # A cursor over a run-length int stream the scan has checked: where its next run
    # header is, what is left of the current run, and the running sum of a delta stream.
    def __init__(self, pos, delta):
        self.pos = pos
        self.left = 0
        self.rep = 0
        self.v = 0
        self.sum = 0
        self.delta = delta


class _Bits:
    # A cursor over a Gorilla bit stream.
    def __init__(self, pos):
        self.pos = pos
        self.acc = 0
        self.nbits = 0
        self.prev = -1  # -1: the first value is next
        self.lead = -1
        self.trail = 0


class _Column:
    # A column the scan has checked: a cursor per part; no list of its items is built.
    def __init__(self, types):
        self.types = types
        self.parts = [None] * _N_TYPES
        self.scale = -1  # floats: the decimal scale, or -1 for Gorilla


class _Decoder:
    # Two passes over the input. scan: every count, index and range is checked and the
    # start of each stream noted, nothing the size of a column is allocated. Then each
    # record is rebuilt by pulling its items from the cursors (put). So decoding a batch
    # needs memory for the records it returns and a few objects per column.
    def __init__(self, data, max_items, max_bytes):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ColumnarError("columnar input must be bytes-like, got %s" % type(data).__name__)
        self.mv = memoryview(data)
        self.end = len(self.mv)
        self.pos = 0
        self.items = max_items
        self.out_bytes = max_bytes
        self.words = []
        self.fresh = 0  # the lowest dictionary entry no string has used yet

    def fail(self, what):
        raise ColumnarError("malformed columnar batch: %s at byte %d" % (what, self.pos))

    def byte(self):
        if self.pos >= self.end:
            self.fail("input ends")
        b = self.mv[self.pos]
        self.pos += 1
        return b

    def uvarint(self):
        n = 0
        shift = 0
        for _ in range(_MAX_VARINT):
            b = self.byte()
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7
        self.fail("varint longer than 10 bytes")

    def zig(self):
        z = self.uvarint()
        return z >> 1 if not z & 1 else -((z + 1) >> 1)

    def skip(self, n):
        # claim n bytes of input; return where they start
        if n > self.end - self.pos:
            self.fail("length %d past the end" % n)
        start = self.pos
        self.pos += n
        return start

    def spend(self, n):
        self.items -= n
        if self.items < 0:
            raise ColumnarError("columnar batch holds more items than the limit")

    def copy(self, buf, raw):
        self.out_bytes -= len(raw)
        if self.out_bytes < 0:
            raise ColumnarError("columnar batch decodes to more bytes than the limit")
        buf.extend(raw)

    # -- the scan

    def scan(self, count, lo, hi, delta=False, counts=None):
        # Check the int stream of count values at pos (each value, or each running sum
        # of a delta stream, in [lo, hi) when given); counts[v] += 1 per value if given.
        st = _Ints(self.pos, delta)
        i = 0
        acc = 0
        while i < count:
            h = self.uvarint()
            run = (h >> 1) + 1
            if run > count - i:
                self.fail("run of %d past the stream's %d values" % (run, count))
            if h & 1:
                v = self.zig()
                if delta:
                    self.check(acc + v, lo, hi)
                    acc += v * run  # a line: both ends in range, so is every point between
                else:
                    acc = v
                self.check(acc, lo, hi)
                if counts is not None:
                    counts[v] += run
                i += run
            else:
                for _ in range(run):
                    v = self.zig()
                    acc = acc + v if delta else v
                    self.check(acc, lo, hi)
                    if counts is not None:
                        counts[v] += 1
                i += run
        return st

    def check(self, v, lo, hi):
        if (lo is not None and v < lo) or (hi is not None and v >= hi):
            self.fail("value out of range")

    def next(self, st):
        # the next value of a scanned int stream
        if st.left == 0 or not st.rep:
            save = self.pos
            self.pos = st.pos
            if st.left == 0:
                h = self.uvarint()
                st.left = (h >> 1) + 1
                st.rep = h & 1
                if st.rep:
                    st.v = self.zig()
            if not st.rep:
                st.v = self.zig()
            st.pos = self.pos
            self.pos = save
        st.left -= 1
        if st.delta:
            st.sum += st.v
            return st.sum
        return st.v

    def column(self, count, depth):
        if depth > NEST:
            self.fail("columns nested deeper than %d" % NEST)
        self.spend(count)
        present = [0] * _N_TYPES
        col = _Column(self.scan(count, 0, _N_TYPES, False, present))
        parts = col.parts
        nw = len(self.words)
        c = present[_T_INT]
        if c:
            parts[_T_INT] = self.scan(c, -_LIMIT64, _LIMIT64, True)
        c = present[_T_FLOAT]
        if c:
            parts[_T_FLOAT] = self.floats(col, c)
        c = present[_T_TEXT]
        if c:
            parts[_T_TEXT] = self.scan(c, 0, nw + 1)
        c = present[_T_BYTES]
        if c:
            parts[_T_BYTES] = self.scan(c, 0, nw + 1)
        c = present[_T_ARRAY]
        if c:
            parts[_T_ARRAY] = self.arrays(c, depth)
        c = present[_T_MAP]
        if c:
            parts[_T_MAP] = self.maps(c, depth)
        c = present[_T_VERBATIM]
        if c:
            parts[_T_VERBATIM] = _Ints(self.pos, False)  # its pos walks the items
            for _ in range(c):
                self.skip(self.uvarint())
        return col

    def floats(self, col, count):
        mode = self.byte()
        if mode == 1:
            k = self.byte()
            if k >= len(_POW10):
                self.fail("decimal scale %d" % k)
            if not _DOUBLE:
                raise ColumnarError("decimal float columns need a double-precision runtime")
            col.scale = k
            return self.scan(count, 1 - _MANT_LIMIT, _MANT_LIMIT, True)
        if mode != 0:
            self.fail("float mode %d" % mode)
        start = self.pos
        g = _Bits(start)
        for _ in range(count):
            self.gorilla(g)
        self.pos = g.pos
        return _Bits(start)

    def gorilla(self, g):
        # the next 64-bit pattern of a Gorilla stream (the decoder's pos is g's)
        save = self.pos
        self.pos = g.pos
        if g.prev < 0:
            g.prev = int.from_bytes(self.mv[self.skip(8):self.pos], "big")
        elif self.bits(g, 1):
            if self.bits(g, 1):
                g.lead = self.bits(g, 5)
                w = self.bits(g, 6) or 64
                if g.lead + w > 64:
                    self.fail("Gorilla window of %d + %d bits" % (g.lead, w))
                g.trail = 64 - g.lead - w
            elif g.lead < 0:
                self.fail("Gorilla window reused before one was set")
            g.prev ^= self.bits(g, 64 - g.lead - g.trail) << g.trail
        g.pos = self.pos
        self.pos = save
        return g.prev

    def bits(self, g, n):
        # the next n bits, most significant first
        while g.nbits < n:
            g.acc = (g.acc << 8) | self.byte()
            g.nbits += 8
        g.nbits -= n
        v = g.acc >> g.nbits
        g.acc &= (1 << g.nbits) - 1
        return v

    def arrays(self, count, depth):
        # [lengths, position columns..., tail column]
        lengths = self.scan(count, 0, None)
        at = [0] * (POSITIONS + 1)  # arrays longer than k; items past the positions
        probe = _Ints(lengths.pos, False)
        total = 0
        for _ in range(count):
            n = self.next(probe)
            total += n
            if total > self.items:
                raise ColumnarError("columnar batch holds more items than the limit")
            for k in range(n if n < POSITIONS else POSITIONS):
                at[k] += 1
            if n > POSITIONS:
                at[POSITIONS] += n - POSITIONS
        cols = [lengths]
        for k in range(POSITIONS + 1):
            cols.append(self.column(at[k], depth + 1) if at[k] else None)
        return cols

    def maps(self, count, depth):
        # [shape indexes or None, shapes (lists of key indexes), {key index: column}]
        ns = self.uvarint()
        if ns < 1 or ns > count:
            self.fail("%d map shapes for %d maps" % (ns, count))
        nw = len(self.words)
        shapes = []
        fields = []
        seen = {}  # key index -> field
        for _ in range(ns):
            nk = self.uvarint()
            if nk > self.end - self.pos:
                self.fail("shape of %d keys past the end" % nk)
            s = []
            for _ in range(nk):
                r = self.uvarint()
                if r >= nw:
                    self.fail("key %d not in the dictionary" % r)
                s.append(r)
                if r not in seen:
                    seen[r] = len(fields)
                    fields.append(r)
            shapes.append(s)
        per_shape = [0] * ns
        idx = None
        if ns > 1:
            idx = self.scan(count, 0, ns, False, per_shape)
        else:
            per_shape[0] = count
        uses = [0] * len(fields)
        total = 0
        for i in range(ns):
            for r in shapes[i]:
                uses[seen[r]] += per_shape[i]
            total += len(shapes[i]) * per_shape[i]
            if total > self.items:
                raise ColumnarError("columnar batch holds more items than the limit")
        cols = {}
        for f in range(len(fields)):
            if uses[f]:
                cols[fields[f]] = self.column(uses[f], depth + 1)
        return [idx, shapes, cols]

    # -- rebuilding

    def put(self, buf, col):
        # write the next item of col into buf
        t = self.next(col.types)
        if t < _T_INT:
            buf.append(_SIMPLE[t])
            return
        part = col.parts[t]
        if t == _T_INT:
            v = self.next(part)
            if v >= 0:
                _put_head(buf, 0, v)
            else:
                _put_head(buf, 0x20, -1 - v)
        elif t == _T_FLOAT:
            buf.append(0xFB)
            if col.scale >= 0:
                buf.extend(struct.pack(">d", self.next(part) / _POW10[col.scale]))
            else:
                buf.extend(self.gorilla(part).to_bytes(8, "big"))
        elif t == _T_TEXT or t == _T_BYTES:
            w = self.words[self.word(self.next(part))]
            _put_head(buf, 0x60 if t == _T_TEXT else 0x40, len(w))
            self.copy(buf, w)
        elif t == _T_ARRAY:
            n = self.next(part[0])
            _put_head(buf, 0x80, n)
            for k in range(n):
                self.put(buf, part[k + 1] if k < POSITIONS else part[POSITIONS + 1])
        elif t == _T_MAP:
            s = part[1][self.next(part[0]) if part[0] is not None else 0]
            cols = part[2]
            _put_head(buf, 0xA0, len(s))
            for r in s:
                self.used(r)
                self.copy(buf, self.words[r])
                self.put(buf, cols[r])
        else:
            save = self.pos
            self.pos = part.pos
            n = self.uvarint()
            start = self.skip(n)
            part.pos = self.pos
            self.pos = save
            self.copy(buf, self.mv[start:start + n])

    def run(self, max_records):
        if self.byte() != VERSION:
            raise ColumnarError("columnar batch of version %d; this reader knows %d"
                                % (self.mv[0], VERSION))
        n = self.uvarint()
        if n > max_records:
            raise ColumnarError("columnar batch of %d records; the limit is %d" % (n, max_records))
        if n == 0:
            self.done()
            return []
        seq = self.uvarint()
        ngaps = self.uvarint()
        if ngaps >= n:
            self.fail("%d seq gaps in %d records" % (ngaps, n))
        gaps = _Ints(self.pos, False)  # (index, skipped) pairs, checked here
        last = 0
        for _ in range(ngaps):
            i = self.uvarint()
            if i <= last or i >= n or self.uvarint() < 1:
                self.fail("seq gap at %d" % i)
            last = i
        gaps_end = self.pos
        ms = self.uvarint()
        nw = self.uvarint()
        if nw > self.end - self.pos:
            self.fail("%d dictionary entries past the end" % nw)
        words = self.words
        for i in range(nw):
            h = self.uvarint()
            if h & 1:
                back = self.uvarint()
                shared = self.uvarint()
                if back < 1 or back > i or back > _WINDOW or shared < 3 or shared > len(words[i - back]):
                    self.fail("dictionary entry sharing %d bytes with entry -%d" % (shared, back))
                start = self.skip(h >> 1)
                w = words[i - back][:shared] + bytes(self.mv[start:start + (h >> 1)])
            else:
                start = self.skip(h >> 1)
                w = bytes(self.mv[start:start + (h >> 1)])
            self.out_bytes -= len(w)  # shared prefixes: a few input bytes, a long entry
            if self.out_bytes < 0:
                raise ColumnarError("columnar batch decodes to more bytes than the limit")
            words.append(w)
        dod = self.scan(n - 1, None, None)
        logical = self.scan(n, 0, 0x10000)
        keys = self.scan(n, 0, nw + 2)
        values = self.column(n, 0)
        self.done()
        out = [None] * n  # one allocation, not a list grown by steps
        d = 0
        self.pos = gaps.pos
        gap_at = self.uvarint() if ngaps else 0
        for i in range(n):
            if i:
                seq += 1
                if i == gap_at:
                    seq += self.uvarint()
                    gap_at = self.uvarint() if self.pos < gaps_end else 0
                d += self.next(dod)
                ms += d
            if seq >= _LIMIT64 or ms < 0 or ms >= 1 << 48:
                self.fail("seq or ts of record %d out of range" % i)
            k = self.next(keys)  # before the value: the order the writer first used strings in
            key = None if k == 0 else self.words[self.word(k - 1)]
            buf = bytearray()
            self.put(buf, values)
            out[i] = (seq, (ms << 16) | self.next(logical), key, bytes(buf))
        return out

    def word(self, code):
        # a string reference as a column holds it -> the dictionary index. The dictionary
        # is in the order of first use and records are rebuilt in the order they were
        # written, so "first use" (code 0) is the lowest entry not used yet.
        if code == 0:
            i = self.fresh
            if i >= len(self.words):
                self.fail("a new string past the dictionary's %d entries" % len(self.words))
        else:
            i = code - 1
        self.used(i)
        return i

    def used(self, i):
        if i == self.fresh:
            self.fresh += 1

    def done(self):
        if self.pos != self.end:
            self.fail("%d trailing bytes" % (self.end - self.pos))


def decode(data, max_records=MAX_RECORDS, max_items=MAX_ITEMS, max_bytes=MAX_BYTES):
    """One columnar batch -> its records, a list of (seq, ts, key, value) tuples.

    Raises ColumnarError, and nothing else, for input that is malformed, of another
    version, or over a limit: max_records records, max_items CBOR items in the values,
    max_bytes of strings, map keys and verbatim items copied into the values.
    """
    dec = _Decoder(data, max_items, max_bytes)
    try:
        return dec.run(max_records)
    except RuntimeError:
        raise ColumnarError("columnar batch nested too deep for this runtime's stack")
