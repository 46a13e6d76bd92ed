# CBOR (RFC 8949) codec for edgeline records and wire messages; dependency-free.
#
# Theory of operation
# -------------------
# Encoding walks the value recursively and appends to one bytearray. For the supported
# types the bytes are exactly what cbor2.dumps() produces with its defaults: shortest
# integer heads, definite lengths, maps in iteration order, every finite float as a
# float64 (0xfb), NaN as f97e00 and +-inf as f97c00/f9fc00, integers beyond 64 bits as
# bignum tags 2/3 with the shortest big-endian magnitude. The one deliberate exception
# is memoryview, which we encode as a byte string (cbor2 6.x emits an array of ints).
#
# Decoding is one recursive-descent pass over a memoryview of the input (no copy of the
# input; each decoded bytes/str is one copy of its payload). Every read is bounds-checked
# *before* anything is allocated: a declared length that runs past the end of the input
# raises NeedData, never IndexError or MemoryError. An array or map declaring n items
# grows only as its items actually decode, and each item consumes at least one byte, so
# a bogus count cannot make us allocate or spin either. Nesting of arrays, maps and tags
# is limited to MAX_DEPTH levels on both encode and decode, so we never write what we
# refuse to read.
#
# decode_prefix() is the streaming entry point (sans-IO, like h11): it decodes one item
# at an offset and raises NeedData when the input ends mid-item, i.e. when more bytes
# could still complete it. loads() wants exactly one complete item and turns truncation
# into a plain CodecError. Everything malformed raises CodecError.
#
# MicroPython's str() accepts some ill-formed UTF-8 (surrogates, overlong forms, code
# points above U+10FFFF); where the runtime is that lax we validate non-ASCII text by
# hand, on decode and on encode.
import struct

from edgeline.errors import CodecError

try:
    from micropython import const
except ImportError:
    const = lambda x: x  # noqa: E731

MAX_DEPTH = const(32)

_M_BYTES = const(0x40)
_M_TEXT = const(0x60)
_M_ARRAY = const(0x80)
_M_MAP = const(0xA0)
_M_TAG = const(0xC0)

_UINT64_LIMIT = 1 << 64
_ARG_FORMATS = (">B", ">H", ">I", ">Q")  # additional information 24..27
_INF = float("inf")


class NeedData(CodecError):
    """The input ends inside an item: more bytes could complete it."""


class CBORTag:
    """A tagged value whose tag this codec does not interpret (anything but 2 and 3)."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, CBORTag) and self.tag == other.tag and self.value == other.value

    def __hash__(self):
        return hash((self.tag, self.value))

    def __repr__(self):
        return "CBORTag(%r, %r)" % (self.tag, self.value)


class _UndefinedType:
    def __repr__(self):
        return "Undefined"


# The CBOR simple value "undefined" (0xf7) decodes to and encodes from this singleton.
Undefined = _UndefinedType()
_SIMPLE_VALUES = (False, True, None, Undefined)  # simple values 20..23


def _runtime_utf8_is_strict():
    for bad in (b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80"):
        try:
            str(bad, "utf-8")
            return False
        except UnicodeError:
            pass
    return True


_STRICT_UTF8 = _runtime_utf8_is_strict()


def _utf8_valid(b):
    """RFC 3629 check: no overlong forms, no surrogates, nothing past U+10FFFF."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        i += 1
        if c < 0x80:
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        k = 1 if c < 0xE0 else 2 if c < 0xF0 else 3  # continuation bytes to follow
        lo = 0xA0 if c == 0xE0 else 0x90 if c == 0xF0 else 0x80
        hi = 0x9F if c == 0xED else 0x8F if c == 0xF4 else 0xBF
        if i + k > n or not lo <= b[i] <= hi:
            return False
        for j in range(i + 1, i + k):
            if b[j] & 0xC0 != 0x80:
                return False
        i += k
    return True


def _utf8_ok(raw):
    # Called after the runtime's own encode/decode accepted raw; only a lax runtime
    # needs the second look, and only at non-ASCII text.
    return _STRICT_UTF8 or len(raw) == 0 or max(raw) < 0x80 or _utf8_valid(raw)


def _check_depth(depth):
    if depth >= MAX_DEPTH:
        raise CodecError("CBOR nesting deeper than %d levels" % MAX_DEPTH)


# ---------------------------------------------------------------------------------------
# Encoding


def dumps(obj) -> bytes:
    """Encode obj as CBOR; raise CodecError for a value CBOR (or this codec) cannot carry."""
    buf = bytearray()
    _encode(buf, obj, 0)
    return bytes(buf)


def dump_into(buf, obj):
    """Encode obj as CBOR into the bytearray buf, replacing what it held: its memory is
    reused, so encoding into the same buffer again allocates nothing per item once it
    has grown to the size (bytes, ints and lists of them; a big int's head excepted)."""
    buf[:] = b""
    _encode(buf, obj, 0)


def _head(buf, major, n):
    # Arguments of up to 2 bytes byte by byte: struct.pack makes a bytes object.
    if n < 24:
        buf.append(major | n)
    elif n < 0x100:
        buf.append(major | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.append(major | 25)
        buf.append(n >> 8)
        buf.append(n & 0xFF)
    else:
        k = 2 if n < 0x100000000 else 3
        buf.append(major | (24 + k))
        buf.extend(struct.pack(_ARG_FORMATS[k], n))


def _encode(buf, obj, depth):
    # isinstance, not type(): subclasses (IntEnum, OrderedDict, ...) encode as their
    # base. None and the bools come first because bool is an int subclass on CPython.
    if obj is None or obj is False or obj is True or obj is Undefined:
        buf.append(0xF4 + _SIMPLE_VALUES.index(obj))
    elif isinstance(obj, int):
        major, mag = 0x00, obj
        if obj < 0:
            major, mag = 0x20, -1 - obj
        if mag < _UINT64_LIMIT:
            _head(buf, major, mag)
            return
        # Bignum tag 2 or 3. int.bit_length() is missing on MicroPython: count hex digits.
        size = (len("%x" % mag) + 1) >> 1
        _head(buf, _M_TAG, 2 if major == 0 else 3)
        _head(buf, _M_BYTES, size)
        buf.extend(mag.to_bytes(size, "big"))
    elif isinstance(obj, str):
        try:
            raw = obj.encode("utf-8")
        except UnicodeError:
            raw = None
        if raw is None or not _utf8_ok(raw):
            raise CodecError("text is not valid UTF-8 (lone surrogate?)")
        _head(buf, _M_TEXT, len(raw))
        buf.extend(raw)
    elif isinstance(obj, float):
        # cbor2's default: NaN and the infinities as half floats, everything else float64.
        if obj != obj:
            buf.extend(b"\xf9\x7e\x00")
        elif obj == _INF or obj == -_INF:
            buf.extend(b"\xf9\x7c\x00" if obj > 0 else b"\xf9\xfc\x00")
        else:
            buf.append(0xFB)
            buf.extend(struct.pack(">d", obj))
    # One type per isinstance: a tuple of types written in the call is made per call.
    elif isinstance(obj, bytes) or isinstance(obj, bytearray) or isinstance(obj, memoryview):
        if isinstance(obj, memoryview):
            obj = bytes(obj)
        _head(buf, _M_BYTES, len(obj))
        buf.extend(obj)
    elif isinstance(obj, list) or isinstance(obj, tuple):
        _check_depth(depth)
        _head(buf, _M_ARRAY, len(obj))
        for item in obj:
            _encode(buf, item, depth + 1)
    elif isinstance(obj, dict):
        _check_depth(depth)
        _head(buf, _M_MAP, len(obj))
        for key in obj:
            _encode(buf, key, depth + 1)
            _encode(buf, obj[key], depth + 1)
    elif isinstance(obj, CBORTag):
        tag = obj.tag
        if type(tag) is not int or tag < 0 or tag >= _UINT64_LIMIT:
            raise CodecError("CBOR tag number must be an int in [0, 2**64), got %r" % (tag,))
        _check_depth(depth)
        _head(buf, _M_TAG, tag)
        _encode(buf, obj.value, depth + 1)
    else:
        raise CodecError("cannot encode a value of type %s as CBOR" % type(obj).__name__)


# ---------------------------------------------------------------------------------------
# Decoding


def loads(data):
    """Decode exactly one CBOR item that fills all of data (bytes, bytearray, memoryview)."""
    dec = _Decoder(data, 0)
    try:
        obj = dec.run()
    except NeedData:
        raise CodecError("truncated CBOR: input ends inside an item")
    if dec.pos != dec.end:
        raise CodecError("%d trailing bytes after the CBOR item" % (dec.end - dec.pos))
    return obj


def decode_prefix(data, offset=0):
    """Decode the one item starting at data[offset]; return (obj, end_offset).

    Raises NeedData if data ends inside the item (call again from the same offset when
    more bytes have arrived) and CodecError if the bytes are malformed.
    """
    dec = _Decoder(data, offset)
    obj = dec.run()
    return obj, dec.pos


def _half_to_float(h):
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 31:
        v = _INF if mant == 0 else float("nan")
    elif exp == 0:
        v = mant * 5.960464477539063e-08  # subnormal: mant * 2**-24
    else:
        v = (mant + 1024) * 2.0 ** (exp - 25)
    return -v if h & 0x8000 else v


class _Decoder:
    def __init__(self, data, pos):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError("CBOR input must be bytes-like, got %s" % type(data).__name__)
        self.mv = memoryview(data)
        self.end = len(self.mv)
        if getattr(self.mv, "itemsize", 1) != 1:
            raise CodecError("CBOR input memoryview must have 1-byte items")
        if type(pos) is not int or pos < 0 or pos > self.end:
            raise CodecError("offset %r outside the input (length %d)" % (pos, self.end))
        self.pos = pos

    def run(self):
        try:
            return self.item(0)
        except RuntimeError:
            # MicroPython raises RuntimeError when the C stack runs out, which a board
            # with a small stack may do before MAX_DEPTH (~350 bytes per level here).
            raise CodecError("CBOR nesting too deep for this runtime's stack")

    def _take(self, n):
        # Claim the next n bytes; return where they start. The check comes before any
        # slice or allocation, so a bogus length costs nothing.
        start = self.pos
        if n > self.end - start:
            raise NeedData("CBOR input truncated: need %d bytes, %d left" % (n, self.end - start))
        self.pos = start + n
        return start

    def _unpack(self, fmt, size):
        return struct.unpack_from(fmt, self.mv, self._take(size))[0]

    def _arg(self, ai):
        # The argument of a head; -1 stands for indefinite length.
        if ai < 24:
            return ai
        if ai < 28:
            return self._unpack(_ARG_FORMATS[ai - 24], 1 << (ai - 24))
        if ai == 31:
            return -1
        raise CodecError("reserved additional information %d" % ai)

    def _more(self, n):
        # Does another element follow? n counts down from a definite length; a negative
        # n means indefinite length, ended by a break byte.
        if n >= 0:
            return n > 0
        if self.mv[self._take(1)] == 0xFF:
            return False
        self.pos -= 1
        return True

    def item(self, depth):
        ib = self.mv[self._take(1)]
        major = ib >> 5
        if major == 7:
            return self._simple(ib & 0x1F)
        n = self._arg(ib & 0x1F)
        if n < 0 and (major < 2 or major == 6):
            raise CodecError("major type %d cannot have indefinite length" % major)
        if major < 2:
            return n if major == 0 else -1 - n
        if major < 4:
            return self._string(major, n)
        _check_depth(depth)
        depth += 1
        # A bogus count cannot make us allocate or spin: every element consumes at
        # least one byte, so the loop ends in NeedData once the input runs out, and
        # the containers grow only as elements actually decode.
        if major == 4:
            out = []
            while self._more(n):
                out.append(self.item(depth))
                n -= 1
            return out
        if major == 5:
            out = {}
            while self._more(n):
                key = self.item(depth)
                try:
                    hash(key)
                except TypeError:
                    raise CodecError("map key of type %s is not hashable" % type(key).__name__)
                out[key] = self.item(depth)
                n -= 1
            return out
        value = self.item(depth)
        if n == 2 or n == 3:
            if type(value) is not bytes:
                raise CodecError("bignum tag %d must wrap a byte string" % n)
            mag = int.from_bytes(value, "big")
            return mag if n == 2 else -1 - mag
        return CBORTag(n, value)

    def _string(self, major, n):
        if n >= 0:
            return self._chunk(major, n)
        parts = []
        while self._more(-1):
            ib = self.mv[self._take(1)]
            if ib >> 5 != major or ib & 0x1F == 31:
                raise CodecError("chunk 0x%02x not allowed in an indefinite-length string" % ib)
            parts.append(self._chunk(major, self._arg(ib & 0x1F)))
        return (b"" if major == 2 else "").join(parts)

    def _chunk(self, major, n):
        start = self._take(n)
        raw = self.mv[start:start + n]
        if major == 2:
            return bytes(raw)
        try:
            text = str(raw, "utf-8")
        except UnicodeError:
            text = None
        if text is None or not _utf8_ok(raw):
            raise CodecError("text string is not valid UTF-8")
        return text

    def _simple(self, ai):
        if 20 <= ai <= 23:
            return _SIMPLE_VALUES[ai - 20]
        if ai == 25:
            return _half_to_float(self._unpack(">H", 2))
        if ai == 26:
            return self._unpack(">f", 4)
        if ai == 27:
            return self._unpack(">d", 8)
        if ai == 31:
            raise CodecError("break (0xff) outside an indefinite-length item")
        if ai == 24:
            ai = self.mv[self._take(1)]
            if ai < 32:
                raise CodecError("simple value %d must not use the two-byte form" % ai)
        elif ai > 24:
            raise CodecError("reserved additional information %d" % ai)
        raise CodecError("unsupported simple value %d" % ai)
