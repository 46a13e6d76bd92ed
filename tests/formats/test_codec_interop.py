"""edgeline's CBOR codec against cbor2 (CPython only): same bytes, same values, both ways.

Property tests: every value our strategies generate encodes to exactly cbor2.dumps()'s
bytes, and each library decodes the other's output to an equal value. Fuzz tests: random
and mutated input makes core.loads raise CodecError and nothing else; streams split at
random points decode through decode_prefix as a streaming parser would use it.
"""
import math
import os
import struct
import sys
from collections.abc import Mapping

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "core"))
from edgeline import codec  # noqa: E402
from edgeline.errors import CodecError  # noqa: E402

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Tags cbor2 does not interpret (it turns e.g. 0, 1, 100, 258 or 55799 into other
# objects); ours never interprets anything but 2 and 3.
TAG_NUMBERS = st.integers(min_value=1 << 20, max_value=(1 << 64) - 1)

INTEGERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(1 << 300), max_value=1 << 300),
    st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32,
                     (1 << 64) - 1, 1 << 64, (1 << 64) + 1]).flatmap(
        lambda n: st.sampled_from([n, -n, -n - 1])),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), INTEGERS, st.floats(), st.text(), st.binary(),
    st.just(codec.Undefined),
)
KEYS = st.one_of(
    st.none(), st.booleans(), INTEGERS, st.floats(allow_nan=False), st.text(), st.binary(),
)


def _containers(children):
    return st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(KEYS, children, max_size=6),
        st.builds(codec.CBORTag, TAG_NUMBERS, children),
    )


VALUES = st.recursive(SCALARS, _containers, max_leaves=40)


def to_cbor2(x):
    """The same value with cbor2's tag class and undefined, for handing to cbor2."""
    if x is codec.Undefined:
        return cbor2.undefined
    if isinstance(x, codec.CBORTag):
        return cbor2.CBORTag(x.tag, to_cbor2(x.value))
    if isinstance(x, list):
        return [to_cbor2(v) for v in x]
    if isinstance(x, dict):
        return {k: to_cbor2(v) for k, v in x.items()}
    return x


def same(a, b):
    """Deep equality: NaN equals NaN, 0.0 differs from -0.0, the two tag classes agree.

    cbor2 decodes arrays and maps inside a tag as tuples and frozendicts, so any
    sequence equals the list and any mapping the dict with the same items."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    undefined = (codec.Undefined, cbor2.undefined)
    if a in undefined or b in undefined:
        return a in undefined and b in undefined
    tags = (codec.CBORTag, cbor2.CBORTag)
    if isinstance(a, tags) and isinstance(b, tags):
        return a.tag == b.tag and same(a.value, b.value)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and a == b


@PROPS
@given(VALUES)
def test_core_dumps_is_byte_identical_to_cbor2(x):
    assert codec.dumps(x) == cbor2.dumps(to_cbor2(x))


@PROPS
@given(VALUES)
def test_cbor2_loads_what_core_dumps(x):
    assert same(cbor2.loads(codec.dumps(x)), x)


@PROPS
@given(VALUES)
def test_core_loads_what_cbor2_dumps(x):
    assert same(codec.loads(cbor2.dumps(to_cbor2(x))), x)


@PROPS
@given(VALUES)
def test_core_round_trip_and_every_truncation(x):
    data = codec.dumps(x)
    assert same(codec.loads(data), x)
    for n in range(len(data)):
        with pytest.raises(codec.NeedData):
            codec.decode_prefix(data[:n])
        with pytest.raises(CodecError, match="truncated"):
            codec.loads(data[:n])


@PROPS
@given(st.lists(VALUES, max_size=8), st.data())
def test_decode_prefix_as_a_streaming_parser(values, data):
    """Feed the concatenated encodings in random chunks; every item comes out once."""
    stream = b"".join(codec.dumps(v) for v in values)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    received = bytearray()
    out = []
    offset = 0
    for end in cuts + [len(stream)]:
        received += stream[len(received):end]
        while True:
            try:
                obj, offset = codec.decode_prefix(bytes(received), offset)
            except codec.NeedData:
                break
            out.append(obj)
    assert offset == len(stream)
    assert same(out, values)


def test_tuples_bytearrays_and_memoryviews_encode_like_their_plain_forms():
    assert codec.dumps((1, (2, "x"))) == cbor2.dumps((1, (2, "x")))
    assert codec.dumps(bytearray(b"abc")) == cbor2.dumps(bytearray(b"abc"))
    # Deliberate difference: cbor2 6.x encodes a memoryview as an array of ints; we
    # encode it as the byte string it views.
    assert codec.dumps(memoryview(b"abc")) == cbor2.dumps(b"abc")


def test_subclasses_encode_like_their_base_as_in_cbor2():
    import collections
    import enum

    class Colour(enum.IntEnum):
        RED = 300

    class Name(str):
        pass

    value = collections.OrderedDict([(Name("k"), [Colour.RED, 1.5])])
    assert codec.dumps(value) == cbor2.dumps(value)


def test_float_encoding_matches_cbor2_for_special_values():
    odd_nans = [struct.unpack(">d", bytes.fromhex(h))[0]
                for h in ("7ff8000000000001", "fff8000000000000", "7ff0000000000001")]
    for f in [0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308, math.inf, -math.inf,
              math.nan, 65504.0, 1.5, 1e-7] + odd_nans:
        assert codec.dumps(f) == cbor2.dumps(f), f


def test_every_half_float_decodes_like_struct_e():
    for h in range(1 << 16):
        raw = struct.pack(">H", h)
        expected = struct.unpack(">e", raw)[0]
        assert same(codec.loads(b"\xf9" + raw), expected), hex(h)


@FUZZ
@given(st.binary(min_size=4, max_size=4))
def test_single_floats_decode_like_struct_f(raw):
    assert same(codec.loads(b"\xfa" + raw), struct.unpack(">f", raw)[0])


def _has_tag(x):
    if isinstance(x, codec.CBORTag):
        return True
    if isinstance(x, list):
        return any(_has_tag(v) for v in x)
    if isinstance(x, dict):
        return any(_has_tag(k) or _has_tag(v) for k, v in x.items())
    return False


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_codec_error(data):
    try:
        _, end = codec.decode_prefix(data)
    except CodecError:
        end = None
    try:
        obj = codec.loads(data)
    except CodecError:
        return
    assert end == len(data)  # loads accepted it, so decode_prefix consumed all of it
    if not _has_tag(obj):  # cbor2 gives meaning to some tags; without any, it must agree
        assert same(cbor2.loads(data), obj)


@FUZZ
@given(VALUES, st.data())
def test_mutated_encodings_raise_only_codec_error(x, data):
    buf = bytearray(codec.dumps(x))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(buf)))
        if op == "insert":
            buf[pos:pos] = bytes([data.draw(st.integers(0, 255))])
        elif pos < len(buf):
            if op == "flip":
                buf[pos] ^= 1 << data.draw(st.integers(0, 7))
            else:
                del buf[pos]
    try:
        codec.loads(bytes(buf))
    except CodecError:
        pass


@FUZZ
@given(st.binary(max_size=16))
def test_manual_utf8_check_agrees_with_cpython(raw):
    try:
        raw.decode("utf-8")
        strict = True
    except UnicodeDecodeError:
        strict = False
    assert codec._utf8_valid(raw) is strict


@FUZZ
@given(st.lists(st.integers(0, 0x10FFFF), max_size=6), st.data())
def test_manual_utf8_check_on_near_valid_text(codepoints, data):
    raw = bytearray("".join(map(chr, codepoints)).encode("utf-8", "surrogatepass"))
    if raw and data.draw(st.booleans()):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0x80, 0xFF))
    raw = bytes(raw)
    try:
        raw.decode("utf-8")
        strict = True
    except UnicodeDecodeError:
        strict = False
    assert codec._utf8_valid(raw) is strict


@PROPS
@given(st.text())
def test_lax_runtime_path_accepts_all_valid_text(text):
    # Exercise the MicroPython path (manual validation after a lax str()) on CPython.
    saved = codec._STRICT_UTF8
    codec._STRICT_UTF8 = False
    try:
        assert codec.loads(codec.dumps(text)) == text
    finally:
        codec._STRICT_UTF8 = saved


def test_stack_exhaustion_becomes_codec_error():
    # Stands in for a board whose C stack runs out before MAX_DEPTH (MicroPython raises
    # RuntimeError there, CPython RecursionError, a RuntimeError subclass).
    import inspect

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 12)
    try:
        codec.loads(b"\x81" * 31 + b"\x00")
        raised = None
    except CodecError as e:
        raised = e
    finally:
        sys.setrecursionlimit(old)
    assert raised is not None and "stack" in str(raised)


def test_encode_errors_name_the_type():
    with pytest.raises(CodecError, match="set"):
        codec.dumps({1, 2})
    with pytest.raises(CodecError, match="complex"):
        codec.dumps([1j])
    with pytest.raises(CodecError, match="UTF-8"):
        codec.dumps("\ud800")
