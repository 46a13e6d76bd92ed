"""Columnar batch encoding (docs/spec/columnar.md); plain functions, the same file under
CPython (pytest) and MicroPython (tests/firmware: the smallest profile heap, 32-bit lane)."""
import struct

from edgeline import codec
from edgeline.columnar import MAX_RECORDS, ColumnarError, decode, encode
from edgeline.errors import EdgelineError
from support import raises

TS0 = 1700000000000 << 16


def h(s):
    return bytes.fromhex(s.replace(" ", ""))


def cmap(pairs):
    """A CBOR map with its keys in the order given (a dict's order differs on MicroPython)."""
    out = bytearray(codec.dumps(len(pairs)))
    out[0] |= 0xA0  # the head of an unsigned int, made a map's
    for k, v in pairs:
        out += codec.dumps(k) + codec.dumps(v)
    return bytes(out)


def sensor(n, value):
    return cmap([("sensor", "temp-%d" % (n % 4)), ("value", value), ("unit", "C"), ("n", n)])


def records(values, first=1, step_ms=1000, keys=None):
    out = [None] * len(values)  # one allocation: a grown list needs more of a board's heap
    ts = TS0
    for i in range(len(values)):
        out[i] = (first + i, ts, None if keys is None else keys[i], values[i])
        ts += (step_ms << 16) + (i % 3)
    return out


def roundtrip(recs):
    data = encode(recs)
    back = decode(data)
    assert len(back) == len(recs)
    for i in range(len(recs)):
        assert back[i] == tuple(recs[i]), (recs[i], back[i])
    return data


def f64(hexbits):
    return b"\xfb" + h(hexbits)


def edge_values():
    """Values the codec writes, values it does not, and bytes that are not CBOR at all."""
    big = codec.dumps
    return [
        b"", b"\xff", b"not cbor", h("0000"),  # empty, a break, text, trailing bytes
        big(0), big(23), big(24), big(255), big(256), big(65535), big(65536), big(2 ** 32 - 1),
        big(2 ** 32), big(2 ** 64 - 1), big(-1), big(-24), big(-25), big(-2 ** 64), big(2 ** 64),
        big(-2 ** 64 - 1), big(10 ** 30), h("1800"), h("190001"), h("3b0000000000000000"),
        big(0.0), big(-0.0), big(1.5), big(-1e300), big(5e-324), big(float("nan")), big(float("inf")),
        big(-float("inf")), f64("7ff8000000000001"), f64("fff8000000000000"), f64("7ff0000000000001"),
        h("f93c00"), h("fa3fc00000"), big(0.1), big(22.37), big(1 / 3),
        big(""), big("x"), big(b""), big(b"x"), big("\u00e9\u6f22\U0001f600"), h("61ff"), h("4161"),
        big(None), big(True), big(False), big(codec.Undefined), h("f0"), h("f820"),
        big(codec.CBORTag(1, 1700000000)), big(codec.CBORTag(32, "http://x")), h("c1c1c101"),
        big([]), big([1, 2, 3]), big(list(range(20))), big([[1, [2, [3]]], "a", b"b"]), h("9f01ff"),
        h("bf6161 01ff"), h("7f616161ff"), h("5f4161ff"), h("9900 01"), h("a0"), h("a2616101616102"),
        cmap([(1, "int key"), (b"k", "bytes key"), ("k", "text key"), (1.5, 2)]),
        cmap([("a", 1), ("b", 2)]), cmap([("b", 2), ("a", 1)]), cmap([("a", None)]),
        big([[[[[[[[[[[[1]]]]]]]]]]]]), big({"deep": [[{"x": [[[[[[0]]]]]]}]]}),
        big([1, "mixed", 2.5, None, [b"x"], {"k": 3}, True] * 3),
    ]


def test_round_trip_edge_cases():
    vals = edge_values()
    keys = []
    for i in range(len(vals)):
        keys.append((None, b"", b"k", b"\x00" * (i % 5), b"key-%d" % (i % 3))[i % 5])
    step = 4  # small batches: with the test module, a few values fill much of a 64 KB heap
    for i in range(0, len(vals), step):
        roundtrip(records(vals[i:i + step], keys=keys[i:i + step]))
    for v in vals:  # each alone: every column kind in a batch of one
        roundtrip(records([v]))
    for i in range(len(vals) - 3):  # and in small neighbourhoods, columns of mixed types
        roundtrip(records(vals[i:i + 4]))


def test_every_int_float_and_shape_survives_in_one_column():
    vals = [codec.dumps(v) for v in (0, -1, 2 ** 64 - 1, -2 ** 64, 5, 5, 5, 5, 7, -3)]
    roundtrip(records(vals))
    floats = [f64("%016x" % ((0x9E3779B97F4A7C15 * (i + 1)) & 0xFFFFFFFFFFFFFFFF)) for i in range(40)]
    roundtrip(records(floats))  # arbitrary bit patterns: Gorilla, exact to the bit
    dec = [codec.dumps(round(20 + (i * 37 % 500) / 100.0, 2)) for i in range(40)]
    assert len(encode(records(dec))) < len(encode(records(floats[:1] + dec[1:])))  # decimals when all are
    roundtrip(records(dec))
    roundtrip(records(dec[:5] + [codec.dumps(-0.0)] + dec[5:]))  # one -0.0: not decimal, still exact
    arrays = [codec.dumps(list(range(i % 13))) for i in range(30)]  # ragged, past 8 positions
    roundtrip(records(arrays))
    shapes = [cmap([("a", i), ("b", "x")]) if i % 3 else cmap([("b", "y"), ("c", [i]), ("a", -i)])
              for i in range(30)]
    roundtrip(records(shapes))


def test_seqs_and_timestamps():
    v = codec.dumps(1)
    roundtrip([])
    roundtrip([(1, 0, None, v)])
    roundtrip([(2 ** 64 - 1, 2 ** 64 - 1, b"k", v)])
    roundtrip([(1, 5 << 16, None, v), (2, (5 << 16) | 0xFFFF, None, v), (3, 6 << 16, None, v),
               (10, 1, None, v), (11, 2 ** 64 - 1, None, v), (12, 0, None, v), (2 ** 40, TS0, None, v)])
    ts = [TS0 + ((i * i) << 16) + (i & 3) for i in range(50)]
    roundtrip([(100 + i + (i // 7) * 3, ts[i], None, v) for i in range(50)])


def golden_batches():
    """(stem, records) of tests/golden/columnar-v1/; also tools/gen_columnar_golden.py's source."""
    sensors = records([sensor(n, round(20 + ((n * 7919) % 500) / 100.0, 2)) for n in range(10)])
    board = records([codec.dumps([s, "soil-moisture", (s % 97) * 0.25]) for s in range(1, 11)], step_ms=250)
    mixed = [
        (7, TS0, b"door-1", cmap([("open", True), ("t", 1 / 3)])),
        (8, TS0 + (3 << 16), b"door-1", cmap([("open", False), ("t", -0.0)])),
        (11, TS0 + (3 << 16) + 1, None, b"\x00raw bytes, not CBOR"),
        (12, TS0 - (1 << 16), b"door-2", codec.dumps([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])),
        (13, TS0 + (9 << 16), b"door-1", codec.dumps(codec.CBORTag(1, 1700000000))),
        (14, TS0 + (9 << 16), None, h("fb7ff8000000000001")),
    ]
    return [("empty", []), ("sensors", sensors), ("board", board), ("mixed", mixed)]


def _golden_path(stem):
    here = globals().get("__file__", "")
    sub = "tests/golden/columnar-v1"
    dirs = [sub]
    if "/tests/core/" in here:
        dirs.insert(0, here[:here.rindex("/tests/core/")] + "/" + sub)
    for d in dirs:
        try:
            open(d + "/README.md", "rb").close()
            return d + "/" + stem + ".col"
        except OSError:
            pass
    raise AssertionError("tests/golden/columnar-v1 not found")


def test_golden_files():
    for stem, recs in golden_batches():
        with open(_golden_path(stem), "rb") as f:
            data = f.read()
        assert encode(recs) == data, stem
        assert decode(data) == recs, stem


def test_error_is_an_edgeline_error():
    assert issubclass(ColumnarError, EdgelineError)


def test_encoder_refuses_what_it_cannot_carry():
    v = b"\x01"
    for bad in ([(0, 0, None, v)], [(1, -1, None, v)], [(1, 2 ** 64, None, v)], [(2 ** 64, 0, None, v)],
                [(2, 0, None, v), (2, 0, None, v)], [(3, 0, None, v), (2, 0, None, v)],
                [(1, 0, "key", v)], [(1, 0, None, "text")], [(1, 0, None, None)], [(1.0, 0, None, v)]):
        raises(ColumnarError, encode, bad)


def test_unknown_version_and_empty_input():
    for bad in (b"", b"\x00\x00", b"\x02\x00", b"\xff"):
        raises(ColumnarError, decode, bad)
    raises(ColumnarError, decode, "text")
    assert decode(b"\x01\x00") == []


def test_truncated_or_extended_input_is_refused():
    data = encode(golden_batches()[3][1])
    for i in range(len(data)):
        raises(ColumnarError, decode, data[:i])
    raises(ColumnarError, decode, data + b"\x00")


def test_damaged_input_only_raises_columnar_error():
    for stem, recs in golden_batches()[1:]:
        data = encode(recs)
        for i in range(len(data)):
            for x in (0x01, 0x80, 0xFF):
                bad = bytearray(data)
                bad[i] ^= x
                try:
                    decode(bytes(bad))
                except ColumnarError:
                    pass


def uv(n):
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_hostile_counts_are_bounded():
    # Huge declared counts cost a few bytes to write: each is refused before anything of
    # that size is built (spec: "Decoding hostile input").
    one = b"\x01\x01\x01\x00\x00"  # version 1, one record, seq 1, no gaps, ms 0
    tail = b"\x00\x00" + b"\x00\x00"  # logical 0, key null
    ok = one + b"\x00" + tail + b"\x00\x00"  # no dictionary; values: one null
    assert decode(ok) == [(1, 0, None, b"\xf6")]
    raises(ColumnarError, decode, one + uv(10 ** 9) + b"\x00" * 8)  # dictionary entries
    raises(ColumnarError, decode, one + b"\x00" + tail + uv(((2 ** 60 - 1) << 1) | 1) + b"\x00")  # a run
    raises(ColumnarError, decode, b"\x01" + uv(2 ** 28) + b"\x01\x00\x00\x00")  # records
    array = one + b"\x00" + tail + b"\x00\x10" + b"\x00" + uv(2 ** 31) + b"\x01\x00"  # 2**30 nulls
    raises(ColumnarError, decode, array)
    small = one + b"\x00" + tail + b"\x00\x10" + b"\x00" + uv(2 * 100) + b"\x01\x00" * 8 + uv(91 << 1 | 1) + b"\x00"
    raises(ColumnarError, decode, small, MAX_RECORDS, 100)  # over max_items
    assert decode(small, MAX_RECORDS, 101)[0][3] == b"\x98\x64" + b"\xf6" * 100
    raises(ColumnarError, decode, one + uv(1) + uv(10 ** 6) + b"x" * 10)  # an entry past the end
    raises(ColumnarError, decode, one + b"\x00" + tail + uv(2 * 5) + b"\x00")  # type 5 with no floats
    # a string's first use when every dictionary entry is used already: as the value, as the key
    raises(ColumnarError, decode, one + b"\x00" + tail + b"\x00\x0c" + b"\x00\x00")
    raises(ColumnarError, decode, one + b"\x00" + b"\x00\x00" + b"\x00\x02" + b"\x00\x00")
    assert decode(one + b"\x01\x02k" + b"\x00\x00" + b"\x00\x02" + b"\x00\x00") == [(1, 0, b"k", b"\xf6")]


def test_limits():
    # 10 records of 4 items (an array and what it holds), 8 string bytes each, and the
    # dictionary's 8 bytes
    recs = records([codec.dumps([i, "abcdef", b"xy"]) for i in range(10)])
    data = encode(recs)
    assert decode(data, 10, 40, 88) == recs
    raises(ColumnarError, decode, data, 9)
    raises(ColumnarError, decode, data, 10, 39)
    raises(ColumnarError, decode, data, 10, 40, 87)
    # a dictionary entry may share a prefix with an earlier one: a long entry from a few
    # bytes, charged to the same budget
    head = b"\x01\x01\x01\x00\x00"
    body = b"\x00\x00" + b"\x00\x00" + b"\x00\x00"  # logical 0, key null, a null value
    long_entry = uv(200 << 1) + b"a" * 200 + (uv(1) + uv(1) + uv(200)) * 3
    assert decode(head + uv(4) + long_entry + body, 1, 10, 800)[0][3] == b"\xf6"
    raises(ColumnarError, decode, head + uv(4) + long_entry + body, 1, 10, 799)
    raises(ColumnarError, decode, head + uv(1) + uv(1) + uv(1) + uv(3) + body)  # shares with nothing
    raises(ColumnarError, encode, TooMany())


class TooMany:
    # Counted before a record is read: no list of 65,537 records in a board's heap.
    def __len__(self):
        return MAX_RECORDS + 1

    def __iter__(self):
        raise AssertionError("records read before their count was checked")


def test_nothing_of_the_spec_limits_changes_silently():
    # docs/spec/columnar.md, "Limits"
    from edgeline import columnar
    assert (columnar.VERSION, columnar.MAX_RECORDS, columnar.MAX_ITEMS, columnar.MAX_BYTES) == (
        1, 65536, 262144, 8388608)
    assert (columnar.NEST, columnar.POSITIONS) == (8, 8)
    assert struct.pack(">d", 0.1) == h("3fb999999999999a")
