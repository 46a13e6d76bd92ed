"""Columnar batches (docs/spec/columnar.md) under hypothesis, on CPython: any records round
trip byte for byte (K1), and random or damaged input raises ColumnarError and nothing
else (K3). The MicroPython lanes run tests/core/test_columnar.py's fixed cases."""
import struct

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeline import codec
from edgeline.columnar import ColumnarError, decode, encode

U64 = 1 << 64

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-U64, U64 - 1), st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.binary(max_size=12),
    st.sampled_from(["temp-1", "temp-2", "C", "ok"]),
    st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False).map(float),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=12),
        st.dictionaries(st.one_of(st.sampled_from(["a", "b", "c", "value"]), st.integers(0, 3)), inner,
                        max_size=5),
        st.builds(lambda t, v: cbor2.CBORTag(t, v), st.integers(6, 300), inner),
    ),
    max_leaves=20,
)
# Value bytes: CBOR as cbor2 writes it (sometimes other float widths), raw float64 bit
# patterns (NaN payloads), and arbitrary bytes.
float_bits = st.integers(0, U64 - 1).map(lambda b: b"\xfb" + struct.pack(">Q", b))
value_bytes = st.one_of(
    values.map(cbor2.dumps), values.map(lambda v: cbor2.dumps(v, canonical=True)),
    float_bits, st.binary(max_size=30), st.lists(float_bits, max_size=4).map(lambda xs: b"\x84" + b"".join(xs)
                                                                         if len(xs) == 4 else b"\x80"),
)


@st.composite
def batches(draw):
    n = draw(st.integers(0, 40))
    seq = draw(st.integers(1, 1 << 40))
    ts = draw(st.integers(0, U64 - 1))
    out = []
    for _ in range(n):
        key = draw(st.one_of(st.none(), st.sampled_from([b"", b"k1", b"k2"]), st.binary(max_size=8)))
        out.append((seq, ts, key, draw(value_bytes)))
        seq += draw(st.sampled_from([1, 1, 1, 2, 1000]))
        ts = draw(st.one_of(st.just(min(ts + (1000 << 16), U64 - 1)), st.integers(0, U64 - 1),
                            st.just(min(ts + 1, U64 - 1))))
        if seq >= U64:
            break
    return out


@settings(max_examples=150, deadline=None)
@given(batches())
def test_round_trip_of_any_records(recs):
    data = encode(recs)
    assert decode(data) == recs
    assert encode(decode(data)) == data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6).map(lambda f: round(f, 3)), min_size=1, max_size=60))
def test_decimal_floats_round_trip_to_the_bit(xs):
    recs = [(i + 1, i << 16, None, codec.dumps(x)) for i, x in enumerate(xs)]
    assert decode(encode(recs)) == recs


def _only_columnar_error(data):
    try:
        decode(data, max_items=20000, max_bytes=1 << 20)
    except ColumnarError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_and_mutated_input_only_raises_columnar_error(raw):
    _only_columnar_error(raw)
    _only_columnar_error(b"\x01" + raw)


@settings(max_examples=150, deadline=None)
@given(batches(), st.data())
def test_damaged_batches_only_raise_columnar_error(recs, data):
    enc = bytearray(encode(recs))
    for _ in range(data.draw(st.integers(1, 4))):
        if not enc:
            break
        i = data.draw(st.integers(0, len(enc) - 1))
        op = data.draw(st.integers(0, 2))
        if op == 0:
            enc[i] = data.draw(st.integers(0, 255))
        elif op == 1:
            del enc[i]
        else:
            enc.insert(i, data.draw(st.integers(0, 255)))
    _only_columnar_error(bytes(enc))
