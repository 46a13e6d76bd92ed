"""edgeline.auth's pure HMAC-SHA256 (the one MicroPython runs) against CPython's hmac."""
import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from edgeline.auth import client_proof, digest_equal, hmac_sha256, server_proof


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_sha256_matches_cpython(key, msg):
    assert hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


@given(st.binary(min_size=32, max_size=32), st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
       st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_proofs_match_cpython(key, node, cn, sn):
    node_b = node.encode()
    assert client_proof(key, node, cn, sn) == hmac.new(key, b"edgeline-auth-v1" + node_b + cn + sn, "sha256").digest()
    assert server_proof(key, node, cn, sn) == hmac.new(key, b"edgeline-gw-v1" + node_b + sn + cn, "sha256").digest()


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_digest_equal_is_equality(a, b):
    assert digest_equal(a, b) == hmac.compare_digest(a, b)
    assert digest_equal(a, a)


def test_hmac_through_circuitpython_hashlib(monkeypatch):
    # CircuitPython's hashlib has only new(name, data) (circuitpython-stubs): load
    # edgeline.auth against such a module and check the same HMAC comes out.
    import importlib.util
    import sys
    import types

    import edgeline.auth

    cp_hashlib = types.ModuleType("hashlib")
    cp_hashlib.new = lambda name, data=b"": hashlib.new(name, data)
    monkeypatch.setitem(sys.modules, "hashlib", cp_hashlib)
    monkeypatch.setitem(sys.modules, "uhashlib", None)  # import fails, as on CircuitPython
    spec = importlib.util.spec_from_file_location("auth_on_circuitpython", edgeline.auth.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.sha256 is not hashlib.sha256  # the fallback, not CPython's constructor
    for key, msg in ((b"k", b"m"), (b"x" * 100, b"y" * 300), (b"", b"")):
        assert mod.hmac_sha256(key, msg) == hmac.new(key, msg, "sha256").digest()
