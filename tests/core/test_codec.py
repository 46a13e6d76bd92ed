"""CBOR codec tests; plain functions, same file under CPython (pytest) and MicroPython."""
from edgeline import codec
from edgeline.codec import CBORTag, CodecError, NeedData, Undefined, decode_prefix, dumps, loads
from support import raises

NAN = float("nan")
INF = float("inf")


def h(s):
    return bytes.fromhex(s.replace(" ", ""))


def same(a, b):
    """Equality that treats NaN as equal to NaN and tells 0.0 from -0.0."""
    if isinstance(a, float) and isinstance(b, float):
        if a != a or b != b:
            return a != a and b != b
        return a == b and str(a) == str(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return len(a) == len(b) and all(k in b and same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# The vector tables are built on demand, not kept at module level: live, they would
# hold ~14 KiB of the 64 KiB MicroPython heap for the whole run.


def encode_vectors():
    """RFC 8949 Appendix A, encoded by us (and by cbor2) exactly as listed."""
    return [
        (h("00"), 0),
        (h("01"), 1),
        (h("0a"), 10),
        (h("17"), 23),
        (h("1818"), 24),
        (h("1819"), 25),
        (h("1864"), 100),
        (h("1903e8"), 1000),
        (h("1a000f4240"), 1000000),
        (h("1b000000e8d4a51000"), 1000000000000),
        (h("1bffffffffffffffff"), 18446744073709551615),
        (h("c249010000000000000000"), 18446744073709551616),
        (h("3bffffffffffffffff"), -18446744073709551616),
        (h("c349010000000000000000"), -18446744073709551617),
        (h("20"), -1),
        (h("29"), -10),
        (h("3863"), -100),
        (h("3903e7"), -1000),
        (h("fb3ff199999999999a"), 1.1),
        (h("fb7e37e43c8800759c"), 1.0e300),
        (h("fbc010666666666666"), -4.1),
        (h("f97c00"), INF),
        (h("f97e00"), NAN),
        (h("f9fc00"), -INF),
        (h("f4"), False),
        (h("f5"), True),
        (h("f6"), None),
        (h("f7"), Undefined),
        (h("c074323031332d30332d32315432303a30343a30305a"), CBORTag(0, "2013-03-21T20:04:00Z")),
        (h("c11a514b67b0"), CBORTag(1, 1363896240)),
        (h("c1fb41d452d9ec200000"), CBORTag(1, 1363896240.5)),
        (h("d74401020304"), CBORTag(23, b"\x01\x02\x03\x04")),
        (h("d818456449455446"), CBORTag(24, b"dIETF")),
        (h("d82076687474703a2f2f7777772e6578616d706c652e636f6d"),
         CBORTag(32, "http://www.example.com")),
        (h("40"), b""),
        (h("4401020304"), b"\x01\x02\x03\x04"),
        (h("60"), ""),
        (h("6161"), "a"),
        (h("6449455446"), "IETF"),
        (h("62225c"), "\"\\"),
        (h("62c3bc"), "\u00fc"),
        (h("63e6b0b4"), "\u6c34"),
        (h("64f0908591"), "\U00010151"),
        (h("80"), []),
        (h("83010203"), [1, 2, 3]),
        (h("8301820203820405"), [1, [2, 3], [4, 5]]),
        (h("98190102030405060708090a0b0c0d0e0f101112131415161718181819"), list(range(1, 26))),
        (h("a0"), {}),
        (h("a201020304"), {1: 2, 3: 4}),
        (h("a26161016162820203"), {"a": 1, "b": [2, 3]}),
        (h("826161a161626163"), ["a", {"b": "c"}]),
        (h("a56161614161626142616361436164614461656145"),
         {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
    ]


def decode_only_vectors():
    """RFC 8949 Appendix A forms we decode but never write (we write float64 and
    definite lengths), plus non-shortest forms, which are well-formed and accepted."""
    return [
        (h("f90000"), 0.0),
        (h("f98000"), -0.0),
        (h("f93c00"), 1.0),
        (h("f93e00"), 1.5),
        (h("f97bff"), 65504.0),
        (h("fa47c35000"), 100000.0),
        (h("fa7f7fffff"), 3.4028234663852886e38),
        (h("f90001"), 5.960464477539063e-8),
        (h("f90400"), 0.00006103515625),
        (h("f9c400"), -4.0),
        (h("fa7f800000"), INF),
        (h("fa7fc00000"), NAN),
        (h("faff800000"), -INF),
        (h("fb7ff0000000000000"), INF),
        (h("fb7ff8000000000000"), NAN),
        (h("fbfff0000000000000"), -INF),
        (h("5f42010243030405ff"), b"\x01\x02\x03\x04\x05"),
        (h("7f657374726561646d696e67ff"), "streaming"),
        (h("9fff"), []),
        (h("9f018202039f0405ffff"), [1, [2, 3], [4, 5]]),
        (h("9f01820203820405ff"), [1, [2, 3], [4, 5]]),
        (h("83018202039f0405ff"), [1, [2, 3], [4, 5]]),
        (h("83019f0203ff820405"), [1, [2, 3], [4, 5]]),
        (h("9f0102030405060708090a0b0c0d0e0f101112131415161718181819ff"), list(range(1, 26))),
        (h("bf61610161629f0203ffff"), {"a": 1, "b": [2, 3]}),
        (h("826161bf61626163ff"), ["a", {"b": "c"}]),
        (h("bf6346756ef563416d7421ff"), {"Fun": True, "Amt": -2}),
        (h("5fff"), b""),
        (h("7fff"), ""),
        (h("5f40ff"), b""),
        (h("c240"), 0),
        (h("c34100"), -1),
        (h("c2420001"), 1),
        (h("1800"), 0),
        (h("1900ff"), 255),
    ]


def all_vectors():
    return encode_vectors() + decode_only_vectors()


# MicroPython's dicts do not keep insertion order, so multi-key maps may encode in
# another (equally valid) order there.
ORDERED_DICTS = list(dict(zip("edcba", range(5)))) == list("edcba")


def test_rfc_vectors_encode():
    for data, value in encode_vectors():
        if ORDERED_DICTS or not (isinstance(value, dict) and len(value) > 1):
            assert dumps(value) == data, data
        assert same(loads(dumps(value)), value), data


def test_rfc_vectors_decode_whole_input():
    for data, value in all_vectors():
        assert same(loads(data), value), data
        assert same(loads(bytearray(data)), value), data
        assert same(loads(memoryview(data)), value), data


def test_decode_prefix_one_byte_at_a_time():
    for data, value in all_vectors():
        for n in range(len(data)):
            raises(NeedData, decode_prefix, data[:n])
        obj, end = decode_prefix(data)
        assert same(obj, value) and end == len(data), data


def test_decode_prefix_at_offset_and_streams_of_items():
    pairs = all_vectors()
    stream = b"".join(data for data, _ in pairs)
    offset = 0
    for data, value in pairs:
        obj, end = decode_prefix(memoryview(stream), offset)
        assert same(obj, value) and end == offset + len(data), data
        offset = end
    assert offset == len(stream)
    raises(NeedData, decode_prefix, stream, len(stream))
    raises(CodecError, decode_prefix, stream, len(stream) + 1)
    raises(CodecError, decode_prefix, stream, -1)


def test_truncation_at_every_prefix_length_raises_codec_error():
    for data, _ in all_vectors():
        for n in range(len(data)):
            e = raises(CodecError, loads, data[:n])
            assert "truncated" in str(e), data


def test_trailing_garbage_is_rejected_by_loads():
    for data, _ in all_vectors():
        for junk in (b"\x00", b"\xff", data):
            e = raises(CodecError, loads, data + junk)
            assert "trailing" in str(e), data
        assert decode_prefix(data + b"\xff")[1] == len(data)


def test_reserved_additional_info_is_malformed():
    for major in range(8):
        for ai in (28, 29, 30):
            ib = bytes([(major << 5) | ai])
            raises(CodecError, loads, ib + b"\x00" * 9)
            e = raises(CodecError, decode_prefix, ib)
            assert not isinstance(e, NeedData)


def test_break_and_indefinite_length_misuse():
    for bad in ("ff", "81ff", "a1ff", "a101ff", "1f", "3f", "df", "bf01ff",
                "5f61ff", "7f41ff", "5f5f40ffff", "7f7f60ffff", "5f01ff", "7fa0ff"):
        e = raises(CodecError, loads, h(bad))
        assert not isinstance(e, NeedData), bad


def test_bad_utf8_is_rejected():
    for bad in ("61ff", "62c328", "63eda080", "62c080", "64f4908080", "62e282",
                "61c3", "62c3c3", "7f61c361a9ff"):
        e = raises(CodecError, loads, h(bad))
        assert "UTF-8" in str(e), bad


def test_strict_utf8_checker_agrees_with_rfc3629():
    good = (b"", b"abc", b"\xc3\xbc", b"\xe6\xb0\xb4", b"\xf0\x90\x85\x91", b"\xed\x9f\xbf",
            b"\xee\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xc2\x80", b"\xe0\xa0\x80")
    bad = (b"\x80", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x9f\xbf", b"\xed\xa0\x80",
           b"\xed\xbf\xbf", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
           b"\xff", b"\xc3", b"\xe6\xb0", b"\xc3\x28", b"\xe6\x28\xb4", b"\xf0\x90\x85\x28")
    for b in good:
        assert codec._utf8_valid(b), b
    for b in bad:
        assert not codec._utf8_valid(b), b


def test_unhashable_map_keys_are_rejected():
    for bad in ("a1800001", "a1a00001", "a1d864800001", "bf8001ff"):
        e = raises(CodecError, loads, h(bad))
        assert "hashable" in str(e), bad
    assert loads(h("a1d8646161f5")) == {CBORTag(100, "a"): True}
    assert loads(h("a2f401f502")) == {False: 1, True: 2}


def test_nesting_depth_limit():
    d = codec.MAX_DEPTH
    for opener in (b"\x81", b"\x9f", b"\xa1\x00", b"\xd8\x64"):
        closer = b"\xff" if opener == b"\x9f" else b""
        ok = opener * d + b"\x00" + closer * d
        assert loads(ok) is not None
        e = raises(CodecError, loads, opener * (d + 1) + b"\x00" + closer * (d + 1))
        assert "nesting" in str(e)
        # A bomb is rejected as soon as it is too deep, not reported as truncated.
        e = raises(CodecError, decode_prefix, opener * (d + 50))
        assert not isinstance(e, NeedData)
    nested = 0
    for _ in range(d):
        nested = [nested]
    assert loads(dumps(nested)) == nested
    raises(CodecError, dumps, [nested])
    loop = []
    loop.append(loop)
    raises(CodecError, dumps, loop)


def test_huge_declared_lengths_do_not_allocate():
    for head in ("5b7fffffffffffffff", "7b7fffffffffffffff", "9b7fffffffffffffff",
                 "bb7fffffffffffffff", "5bffffffffffffffff", "9bffffffffffffffff",
                 "5affffffff", "9affffffff", "baffffffff"):
        data = h(head) + b"\x00\x00\x00"
        raises(CodecError, loads, data)
        raises(NeedData, decode_prefix, data)


def test_simple_values_and_bignum_content():
    assert loads(h("f7")) is Undefined
    for bad in ("f0", "f3", "f800", "f81f", "f820", "f8ff", "c200", "c360", "c29f40ff"):
        e = raises(CodecError, loads, h(bad))
        assert not isinstance(e, NeedData), bad
    assert loads(h("c25f4101ff")) == 1  # bignum over an indefinite byte string


def test_half_floats_decoded_by_hand():
    for hexed, value in (("f903ff", 6.097555160522461e-05), ("f93c01", 1.0009765625),
                         ("f9fbff", -65504.0), ("f98001", -5.960464477539063e-08),
                         ("f97c01", NAN), ("f9fe00", NAN), ("f97800", 32768.0),
                         ("f93555", 0.333251953125)):
        assert same(loads(h(hexed)), value), hexed


def test_integer_boundaries_round_trip():
    for base in (24, 256, 65536, 4294967296, 18446744073709551616, 1 << 200):
        for n in (base - 1, base, base + 1):
            for v in (n, -n, -n - 1):
                assert loads(dumps(v)) == v, v
    assert dumps(1 << 64) == h("c249010000000000000000")
    assert dumps(-(1 << 72)) == h("c349ffffffffffffffffff")
    assert dumps(0x10000000000000000ff) == h("c24a010000000000000000ff")


def test_encode_equivalent_containers_and_buffers():
    assert dumps((1, 2)) == dumps([1, 2]) == h("820102")
    assert dumps(bytearray(b"ab")) == dumps(memoryview(b"ab")) == dumps(b"ab") == h("426162")
    assert dumps(memoryview(b"xabx")[1:3]) == h("426162")
    assert dumps(-0.0) == h("fb8000000000000000")
    assert dumps(CBORTag(2, b"\x01")) == h("c24101")
    assert dumps(CBORTag(18446744073709551615, None)) == h("dbfffffffffffffffff6")
    assert dumps({"k": [1, {"n": None}]}) == h("a1616b8201a1616ef6")


def test_encode_rejects_unsupported_values():
    for bad in (set(), object(), CBORTag(-1, 0), CBORTag(1 << 64, 0), CBORTag("x", 0)):
        raises(CodecError, dumps, bad)
    assert "set" in str(raises(CodecError, dumps, [1, {2}]))
    raises(CodecError, dumps, {"a": object()})


def test_decode_rejects_non_bytes_input():
    raises(CodecError, loads, "00")
    raises(CodecError, loads, None)
    raises(CodecError, decode_prefix, [0])


def test_cbortag_equality_and_hash():
    a = CBORTag(100, "x")
    assert a == CBORTag(100, "x") and not (a != CBORTag(100, "x"))
    assert a != CBORTag(101, "x") and a != CBORTag(100, "y") and a != (100, "x")
    assert hash(a) == hash(CBORTag(100, "x"))
    assert repr(a) == "CBORTag(100, 'x')"
