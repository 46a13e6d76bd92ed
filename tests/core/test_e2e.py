"""The end-to-end envelope (docs/spec/e2e.md) as the boards run it: ``edgeline.e2e``.

Plain functions; CPython and MicroPython (cryptolib's AES on the unix port, the Python
AES on the 32-bit WebAssembly lane, which has no cryptolib). The vectors of
tests/golden/e2e-v1/ were sealed by the host's `cryptography`-based module, so passing
them here is the two implementations agreeing byte for byte."""
import json

from edgeline import e2e
from edgeline.e2e import E2EError, TopicKey, associated_data, hkdf_sha256, key_id_of, seal, unseal
from edgeline.softaes import SoftAES
from support import raises


def _h(s):
    return None if s is None else bytes.fromhex(s)


def _golden_dir():
    here = globals().get("__file__", "")
    dirs = ["tests/golden/e2e-v1"]
    if "/tests/core/" in here:
        dirs.insert(0, here[:here.rindex("/tests/core/")] + "/tests/golden/e2e-v1")
    for d in dirs:
        try:
            open(d + "/vectors.json").close()
            return d
        except OSError:
            pass
    raise AssertionError("tests/golden/e2e-v1 not found")


def _vectors():
    with open(_golden_dir() + "/vectors.json") as f:
        return json.load(f)


def _header(v):
    """(origin, incarnation, seq, ts, key) of a vector."""
    return v["origin"], _h(v["incarnation"]), v["seq"], v["ts"], _h(v["key"])


def _table():
    for v in _vectors():
        if v["name"] == "table":
            return v, TopicKey(v["topic"], v["key_id"], _h(v["topic_key"]))
    raise AssertionError("no table vector")


def test_golden_vectors_byte_for_byte():  # E4-E9
    vecs = _vectors()
    assert len(vecs) >= 4
    for v in vecs:
        tk = TopicKey(v["topic"], v["key_id"], _h(v["topic_key"]))
        assert (tk.iv_key, tk.mac_key) == (_h(v["iv_key"]), _h(v["mac_key"])), v["name"]
        assert tk._ecb.encrypt(bytes(16)) == SoftAES(_h(v["enc_key"])).encrypt(bytes(16)), v["name"]
        o, inc, seq, ts, key = _header(v)
        prefix, value = _h(v["prefix"]), _h(v["value"])
        assert associated_data(v["key_id"], v["topic"], o, inc, seq, ts, key, prefix) == _h(v["ad"]), v["name"]
        env = seal(tk, o, inc, seq, ts, key, value, prefix)
        assert env == _h(v["envelope"]), v["name"]
        assert unseal(tk, o, inc, seq, ts, key, env, prefix) == value, v["name"]
        assert unseal({v["key_id"]: tk}, o, inc, seq, ts, key, bytearray(env), prefix) == value, v["name"]
        assert key_id_of(env) == v["key_id"]
        kid_bytes = 1 if v["key_id"] < 24 else 2 if v["key_id"] < 256 else 3 if v["key_id"] < 65536 else 5
        body = 1 + kid_bytes + len(value) + 16  # E1: tag head, length head, body
        assert len(env) == 3 + (1 if body < 24 else 2) + body, v["name"]


def test_aes_fips197_known_answers():
    pt = bytes.fromhex("00112233445566778899aabbccddeeff")
    cases = ((bytes(range(16)), "69c4e0d86a7b0430d8cdb78070b4c55a"),
             (bytes(range(32)), "8ea2b7ca516745bfeafc49904b496089"))
    for key, want in cases:
        assert SoftAES(key).encrypt(pt) == _h(want)
        out = bytearray(16)
        SoftAES(key, 1).encrypt(pt, out)
        assert out == _h(want)
        if e2e._native_aes is not None:  # the firmware's AES, what a board seals with
            out = bytearray(16)
            e2e._native_aes(key, 1).encrypt(pt, out)
            assert out == _h(want)


def test_hkdf_rfc5869_case_1():
    okm = hkdf_sha256(b"\x0b" * 22, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm == _h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_counter_block_wraps_at_2_to_128():  # E7: the whole block is the counter
    key = bytes(range(32))
    ks = e2e._ctr_xor(SoftAES(key), b"\xff" * 16, bytes(32))
    assert ks[:16] == SoftAES(key).encrypt(b"\xff" * 16)
    assert ks[16:] == SoftAES(key).encrypt(bytes(16))
    ks = e2e._ctr_xor(SoftAES(key), bytes(14) + b"\x00\xff", bytes(17))
    assert ks[16:] == SoftAES(key).encrypt(bytes(14) + b"\x01\x00")[:1]


def test_soft_aes_is_the_native_one():
    if e2e._native_aes is None:
        return  # nothing to compare with here (the 32-bit lane: no cryptolib)
    key = bytes(range(7, 39))
    block = bytearray(range(16))
    for i in range(8):
        block[i] ^= 0xA5
        a, b = bytearray(16), bytearray(16)
        e2e._native_aes(key, 1).encrypt(block, a)
        SoftAES(key).encrypt(block, b)
        assert a == b, i


def test_every_byte_flipped_is_refused():  # E3, E9
    v, tk = _table()
    o, inc, seq, ts, key = _header(v)
    env, prefix = _h(v["envelope"]), _h(v["prefix"])
    for i in range(len(env)):
        for bit in (0x01, 0x80):
            bad = bytearray(env)
            bad[i] ^= bit
            raises(E2EError, unseal, tk, o, inc, seq, ts, key, bad, prefix)
    for n in range(len(env)):
        raises(E2EError, unseal, tk, o, inc, seq, ts, key, env[:n], prefix)
    raises(E2EError, unseal, tk, o, inc, seq, ts, key, env + b"\x00", prefix)


def test_every_header_field_is_authenticated():  # E5: moved to another record, it fails
    v, tk = _table()
    o, inc, seq, ts, key = _header(v)
    env, prefix = _h(v["envelope"]), _h(v["prefix"])
    assert unseal(tk, o, inc, seq, ts, key, env, prefix) == _h(v["value"])
    moved = ((o + "x", inc, seq, ts, key, prefix), (o, None, seq, ts, key, prefix),
             (o, b"\x01" + inc[1:], seq, ts, key, prefix), (o, inc, seq + 1, ts, key, prefix),
             (o, inc, seq - 1, ts, key, prefix), (o, inc, seq, ts + 1, key, prefix),
             (o, inc, seq, ts, None, prefix), (o, inc, seq, ts, b"", prefix), (o, inc, seq, ts, key + b"x", prefix),
             (o, inc, seq, ts, key, b""), (o, inc, seq, ts, key, prefix[:-1] + b"\x08"))
    for i, (o2, inc2, seq2, ts2, key2, prefix2) in enumerate(moved):
        e = raises(E2EError, unseal, tk, o2, inc2, seq2, ts2, key2, env, prefix2)
        assert "bad tag" in str(e), i
    other_topic = TopicKey(v["topic"] + "2", v["key_id"], _h(v["topic_key"]))
    raises(E2EError, unseal, other_topic, o, inc, seq, ts, key, env, prefix)


def test_legacy_incarnation_is_all_zeros():
    v, tk = _table()
    a = seal(tk, "n", None, 1, 2, None, b"\x01")
    assert a == seal(tk, "n", bytes(8), 1, 2, None, b"\x01")
    assert unseal(tk, "n", bytes(8), 1, 2, None, a) == b"\x01"


def test_unknown_key_id_and_rotation():  # E2, E11
    v, tk1 = _table()
    secret2 = bytes(range(100, 132))
    tk2 = TopicKey(v["topic"], 2, secret2)
    o, inc, seq, ts, key = _header(v)
    old = _h(v["envelope"])  # sealed under key id 1 before the rotation
    new = seal(tk2, o, inc, seq + 1, ts + 1, key, b"\xa0")
    ring = {1: tk1, 2: tk2}
    assert unseal(ring, o, inc, seq, ts, key, old, _h(v["prefix"])) == _h(v["value"])
    assert unseal(ring, o, inc, seq + 1, ts + 1, key, new) == b"\xa0"
    e = raises(E2EError, unseal, {2: tk2}, o, inc, seq, ts, key, old, _h(v["prefix"]))
    assert "unknown key id 1" in str(e)
    assert key_id_of(old) == 1 and key_id_of(new) == 2
    raises(E2EError, unseal, tk2, o, inc, seq, ts, key, old, _h(v["prefix"]))
    # the key id is authenticated: relabelled to the other key it holds, the ring refuses it
    relabelled = bytearray(old)
    relabelled[6] = 2
    e = raises(E2EError, unseal, ring, o, inc, seq, ts, key, relabelled, _h(v["prefix"]))
    assert "bad tag" in str(e)
    # the same secret under another key id derives other keys
    same = TopicKey(v["topic"], 2, _h(v["topic_key"]))
    assert same.mac_key != tk1.mac_key and same.iv_key != tk1.iv_key


def test_malformed_envelopes_are_refused_by_name():  # E3
    v, tk = _table()
    o, inc, seq, ts, key = _header(v)

    def refused(env, why):
        e = raises(E2EError, unseal, tk, o, inc, seq, ts, key, env)
        assert why in str(e), (env, str(e))

    body = b"\x01\x01" + bytes(16)
    refused(b"\xa1\x63qty\x05", "not an envelope")
    refused(b"\xd9\xe2\xe1\x53" + body, "malformed")  # body shorter than its head says
    refused(b"\xd9\xe2\xe1\x52" + body, "bad tag")  # well-formed: an empty value, a wrong tag
    refused(b"\xd9\xe2\xe1\x52\x02\x01" + bytes(16), "version 2")
    refused(b"\xd9\xe2\xe1\x40", "version (none)")
    refused(b"\xd9\xe2\xe1\x52\x01\x00" + bytes(16), "key id")  # key id 0 is reserved
    refused(b"\xd9\xe2\xe1\x53\x01\x18\x05" + bytes(16), "non-shortest")
    refused(b"\xd9\xe2\xe1\x58\x12" + body, "non-shortest")  # length head not shortest
    refused(b"\xd9\xe2\xe1\x51\x01\x01" + bytes(15), "key id or length")  # no room for the tag
    refused(b"\xd9\xe2\xe1\x5b" + bytes(8), "malformed")
    refused(b"\xd9\xe2\xe1\x41\x01", "malformed")  # version, then nothing
    refused(b"", "not an envelope")
    x = 0x12345
    for n in range(40):  # pseudo-random bytes behind a valid head: E2EError, nothing else
        junk = bytearray(n)
        for i in range(n):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            junk[i] = x >> 16 & 0xFF
        raises(E2EError, unseal, tk, o, inc, seq, ts, key, b"\xd9\xe2\xe1" + bytes(junk))


def test_bad_keys_and_headers_are_refused():
    raises(E2EError, TopicKey, "t", 0, bytes(32))
    raises(E2EError, TopicKey, "t", 1 << 32, bytes(32))
    raises(E2EError, TopicKey, "t", 1, bytes(16))
    tk = TopicKey("t", 1, bytes(32))
    raises(E2EError, seal, tk, "n", b"short", 1, 1, None, b"\x01")
    raises(E2EError, seal, tk, "n" * 256, None, 1, 1, None, b"\x01")
    raises(E2EError, seal, tk, "n", None, -1, 1, None, b"\x01")
    raises(E2EError, seal, tk, "n", None, 1, 1 << 64, None, b"\x01")
    assert seal(tk, "n", None, (1 << 64) - 1, (1 << 64) - 1, None, b"\x01")

    class Long:  # a 64 KB key, without the 64 KB (a board's heap has not got them)
        def __len__(self):
            return 0xFFFF

    raises(E2EError, seal, tk, "n", None, 1, 1, Long(), b"\x01")


def test_one_record_one_keystream():  # E6: seqs never share a keystream; sealing is deterministic
    tk = TopicKey("t", 1, bytes(32))
    value = bytes(20)
    a = seal(tk, "n", None, 1, 5, None, value)
    assert seal(tk, "n", None, 1, 5, None, value) == a
    others = (seal(tk, "n", None, 2, 5, None, value), seal(tk, "m", None, 1, 5, None, value),
              seal(tk, "n", b"\x00" * 7 + b"\x01", 1, 5, None, value), seal(tk, "n", None, 1, 6, None, value))
    for b in others:
        assert a[6:26] != b[6:26]  # the ciphertext of zeros is the keystream itself


def test_table_writes_keep_their_context_readable_and_authenticated():  # E10
    from edgeline import codec, table
    from edgeline.e2e import seal_table_write, unseal_table_write

    v, tk = _table()
    o, inc, seq, ts, key = _header(v)
    write = _h(v["prefix"]) + _h(v["value"])
    assert codec.loads(write) == [1, 0, ["cloud", 3, "store-1", 7], {"qty": 5}]
    sealed = seal_table_write(tk, o, inc, seq, ts, key, write)
    assert sealed == _h(v["prefix"]) + _h(v["envelope"])
    assert unseal_table_write({1: tk}, o, inc, seq, ts, key, sealed) == write
    # what a gateway without the key reads: version, op and ctx; the value is a tagged byte string
    seen = codec.loads(sealed)
    assert seen[:3] == [1, 0, ["cloud", 3, "store-1", 7]]
    assert isinstance(seen[3], codec.CBORTag) and seen[3].tag == 58081
    applied = table.read_value(seen)  # the gateway can still apply it as a write (tables.md)
    assert len(applied) == 1 and applied[0][0] is None and applied[0][1] == 0
    # a relay that rewrites the context (to hide a conflict) breaks the tag
    forged = bytearray(sealed)
    forged[sealed.index(b"store-1") + 7] = 8  # store-1: 7 -> 8
    e = raises(E2EError, unseal_table_write, tk, o, inc, seq, ts, key, bytes(forged))
    assert "bad tag" in str(e)
    # a delete seals nothing; counter totals are sealed; set/map writes are refused by name
    delete = codec.dumps(table.write_value(table.OP_DELETE, ["store-1", 7]))
    assert seal_table_write(tk, o, inc, seq, ts, key, delete) == delete
    counter = codec.dumps(table.write_value(table.OP_COUNT, [], 12))
    c = seal_table_write(tk, o, inc, seq, ts, key, counter)
    assert c != counter and unseal_table_write(tk, o, inc, seq, ts, key, c) == counter
    fields = codec.dumps(table.field_value([["qty", table.OP_PUT, ["cloud", 1], 5]]))
    e = raises(E2EError, seal_table_write, tk, o, inc, seq, ts, key, fields)
    assert "set or map" in str(e)
    raises(E2EError, seal_table_write, tk, o, inc, seq, ts, key, b"\x84\x01")
    raises(E2EError, seal_table_write, tk, o, inc, seq, ts, key, _h(v["value"]))
    raises(E2EError, unseal_table_write, tk, o, inc, seq, ts, key, write)  # not sealed
