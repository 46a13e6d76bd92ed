"""The end-to-end envelope (docs/spec/e2e.md): the host's `cryptography`-based module and the
core's (the boards') produce the same bytes and refuse the same inputs; the golden vectors
are the host's and are quoted in the spec; the core module is not loaded at rest."""
import json
import os
import re
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeline import e2e
from edgeline.e2e import E2EError
from edgeline_host import e2ecrypto

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "e2e-v1")
SPEC = os.path.join(ROOT, "docs", "spec", "e2e.md")

node_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=64)
headers = st.tuples(node_ids, st.one_of(st.none(), st.binary(min_size=8, max_size=8)),
                    st.integers(1, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1),
                    st.one_of(st.none(), st.binary(max_size=40)))


def _vectors():
    with open(os.path.join(GOLDEN, "vectors.json")) as f:
        return json.load(f)


def _h(s):
    return None if s is None else bytes.fromhex(s)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=128), st.integers(1, 2 ** 32 - 1), st.binary(min_size=32, max_size=32),
       headers, st.binary(max_size=100), st.binary(max_size=30))
def test_host_and_core_seal_the_same_bytes(topic, key_id, secret, header, value, prefix):
    origin, inc, seq, ts, key = header
    tk = e2e.TopicKey(topic, key_id, secret)
    dk = e2ecrypto.DerivedKeys(topic, key_id, secret)
    assert (tk.iv_key, tk.mac_key) == (dk.iv_key, dk.mac_key)
    a = e2e.seal(tk, origin, inc, seq, ts, key, value, prefix)
    b = e2ecrypto.seal(dk, origin, inc, seq, ts, key, value, prefix)
    assert a == b
    assert e2ecrypto.unseal({key_id: dk}, origin, inc, seq, ts, key, a, prefix) == value
    assert e2e.unseal(tk, origin, inc, seq, ts, key, b, prefix) == value


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=80), st.binary(max_size=40), st.binary(max_size=30), st.integers(1, 96))
def test_core_hkdf_is_rfc5869(ikm, salt, info, length):
    want = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
    assert e2e.hkdf_sha256(ikm, salt, info, length) == want


def test_vectors_are_the_hosts_and_the_specs():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import make_e2e_golden
    finally:
        sys.path.pop(0)
    vecs = _vectors()
    assert make_e2e_golden.vectors() == vecs  # the files are what the tool (the host module) writes
    spec = open(SPEC, encoding="utf-8").read()
    quoted = re.findall(r"`([0-9a-f]{32,})`", spec)
    by_name = {v["name"]: v for v in vecs}
    s = by_name["stream"]
    for field in ("enc_key", "iv_key", "mac_key", "ad", "iv", "envelope"):
        assert s[field] in quoted, field
    assert by_name["table"]["envelope"] in quoted and by_name["table"]["prefix"] in quoted
    for q in quoted:  # every long hex string on the page is one of the vectors' values
        assert any(q in v.values() for v in vecs), q


def _table():
    v = {x["name"]: x for x in _vectors()}["table"]
    keys = e2ecrypto.TopicKeys(v["topic"], {v["key_id"]: _h(v["topic_key"])})
    hdr = (v["origin"], _h(v["incarnation"]), v["seq"], v["ts"], _h(v["key"]))
    return v, keys, hdr, _h(v["envelope"]), _h(v["prefix"])


def test_host_refuses_what_the_core_refuses():
    v, keys, hdr, env, prefix = _table()
    assert keys.unseal(*hdr, env, prefix) == _h(v["value"])
    for i in range(len(env)):
        bad = bytearray(env)
        bad[i] ^= 0x04
        with_core = None
        try:
            e2e.unseal(e2e.TopicKey(v["topic"], v["key_id"], _h(v["topic_key"])), *hdr, bytes(bad), prefix)
        except E2EError as e:
            with_core = str(e)
        try:
            keys.unseal(*hdr, bytes(bad), prefix)
            raise AssertionError("byte %d flipped was accepted" % i)
        except E2EError as e:
            assert str(e) == with_core, i
    origin, inc, seq, ts, key = hdr
    for moved in ((origin, inc, seq + 1, ts, key), (origin, inc, seq, ts - 1, key), (origin, None, seq, ts, key),
                  ("store-2", inc, seq, ts, key), (origin, inc, seq, ts, None)):
        try:
            keys.unseal(*moved, env, prefix)
            raise AssertionError(moved)
        except E2EError as e:
            assert "bad tag" in str(e)


def test_host_refuses_headers_out_of_range():
    dk = e2ecrypto.DerivedKeys("t", 1, bytes(32))
    for bad in ((-1, 0), (1, 1 << 64), (1 << 64, 1)):
        try:
            e2ecrypto.seal(dk, "n", None, bad[0], bad[1], None, b"\x01")
            raise AssertionError(bad)
        except E2EError as e:
            assert "uint below 2**64" in str(e)


def test_rotation_and_unknown_key_id_on_the_host():
    v, keys, hdr, env, prefix = _table()
    rotated = e2ecrypto.TopicKeys(v["topic"], {1: _h(v["topic_key"]), 2: bytes(range(100, 132))})
    new = rotated.seal(2, *hdr, b"\x05", prefix)
    assert rotated.unseal(*hdr, new, prefix) == b"\x05" and rotated.unseal(*hdr, env, prefix) == _h(v["value"])
    only_new = e2ecrypto.TopicKeys(v["topic"], {2: bytes(range(100, 132))})
    try:
        only_new.unseal(*hdr, env, prefix)
        raise AssertionError("opened without its key")
    except E2EError as e:
        assert "unknown key id 1" in str(e)
    try:
        keys.seal(7, *hdr, b"\x05")
        raise AssertionError("sealed under a key it does not hold")
    except E2EError as e:
        assert "unknown key id 7" in str(e)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.booleans())
def test_random_bytes_raise_only_e2e_error(junk, with_head):
    v, keys, hdr, env, prefix = _table()
    data = (b"\xd9\xe2\xe1" + junk) if with_head else junk
    try:
        keys.unseal(*hdr, data, prefix)
    except E2EError:
        pass
    try:
        e2e.key_id_of(data)
    except E2EError:
        pass


def test_the_core_module_is_not_loaded_at_rest():
    """A board pays for e2e.py only where a topic is encrypted: nothing the core loads for
    logs, outboxes, sync, tables or the boards' common modules imports it."""
    code = ("import sys; sys.path[:0] = ['core', 'boards/common']\n"
            "import edgeline.log, edgeline.outbox, edgeline.sync, edgeline.sender, edgeline.store, "
            "edgeline.inbox, edgeline.table, edgeline.auth\n"
            "import edgeline_app, uplink\n"
            "assert 'edgeline.e2e' not in sys.modules, sorted(sys.modules)\n"
            "assert 'edgeline.softaes' not in sys.modules, sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([b"", b"\x84", b"\x84\x01\x00\x80", b"\x83\x01", b"\x84\x01\x01\x80"]))
def test_random_table_writes_raise_only_e2e_error(junk, head):
    tk = e2e.TopicKey("inventory", 1, bytes(32))
    data = head + junk
    for fn in (e2e.seal_table_write, e2e.unseal_table_write):
        try:
            fn(tk, "store-1", None, 1, 1, b"k", data)
        except E2EError:
            pass
