"""Golden messages of the sync protocol v2 (tests/golden/wire-v2/) against the spec; the
v1 files (tests/golden/wire-v1/) differ only in HELLO, which a gateway still accepts.

Theory of operation
-------------------
tests/core/test_sync.py replays the golden conversation through the real connections
(on CPython and MicroPython) and asserts the bytes. Here the same files are read by a
second, independent reader: cbor2 decodes them and every field is checked against the
message table of docs/spec/wire.md — types, lengths, the proofs recomputed with
CPython's hmac from the fixed key and nonces, seq and ts arithmetic of BATCH and DATA,
and the RFC 8949 map key order the spec requires of senders. Nothing here imports
edgeline except to check that tools/make_wire_golden.py still writes these bytes.
"""
import hashlib
import hmac
import importlib.util
import os

import cbor2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "wire-v2")
GOLDEN_V1 = os.path.join(ROOT, "tests", "golden", "wire-v1")

# The fixed inputs, restated from the golden README (not imported from the test).
KEY = bytes(range(0x20, 0x40))
NODE = "node-1"
CLIENT_NONCE = bytes(range(0xC0, 0xD0))
SERVER_NONCE = bytes(range(0xD0, 0xE0))
TS0 = 1700000000000 << 16

# wire.md, "Messages": type -> file stem, and one letter per field after the type.
TYPES = {1: "hello", 2: "challenge", 3: "auth", 4: "welcome", 5: "batch", 6: "ack", 7: "gap", 8: "pull",
         9: "data", 10: "error"}
U64 = 1 << 64


def _read(stem):
    with open(os.path.join(GOLDEN, stem + ".cbor"), "rb") as f:
        return f.read()


def _msg(stem):
    return cbor2.loads(_read(stem))


def _uint(v):
    return type(v) is int and 0 <= v < U64


def _topic(v):
    return type(v) is str and 1 <= len(v) <= 128


def _entries_ok(first_seq, base_ts, entries):
    assert first_seq >= 1
    for e in entries:
        assert isinstance(e, list) and len(e) >= 3
        assert type(e[0]) is int and _uint(base_ts + e[0])
        assert e[1] is None or type(e[1]) is bytes
        assert type(e[2]) is bytes


def _keys_in_rfc8949_order(m):
    enc = [cbor2.dumps(k) for k in m]
    return enc == sorted(enc)


def test_one_file_per_message_type():
    names = sorted(n for n in os.listdir(GOLDEN) if n.endswith(".cbor"))
    assert names == sorted(s + ".cbor" for s in TYPES.values())
    for t, stem in TYPES.items():
        raw = _read(stem)
        m = cbor2.loads(raw)  # one complete item, nothing after it
        assert isinstance(m, list) and m[0] == t, stem
        assert cbor2.dumps(m) == raw  # definite lengths, shortest heads: canonical enough to re-encode


def test_handshake_fields():
    hello = _msg("hello")
    assert len(hello) == 6 and hello[1] == 2 and hello[2] == NODE and hello[3] == CLIENT_NONCE
    assert hello[5] == {"temp": bytes.fromhex("0123456789abcdef")}  # incarnations: topic -> 8 bytes
    caps = hello[4]
    assert isinstance(caps, dict) and _uint(caps["max_message_bytes"]) and caps["pull"] is True
    assert _keys_in_rfc8949_order(caps)
    challenge = _msg("challenge")
    assert challenge == [2, SERVER_NONCE]
    auth = _msg("auth")
    assert len(auth) == 2 and type(auth[1]) is bytes and len(auth[1]) == 32
    welcome = _msg("welcome")
    assert len(welcome) == 4 and len(welcome[1]) == 32
    marks, limits = welcome[2], welcome[3]
    assert all(_topic(k) and _uint(v) for k, v in marks.items()) and marks == {"temp": 2, "config": 0}
    assert _uint(limits["max_message_bytes"]) and _uint(limits["max_batch_records"])
    assert _keys_in_rfc8949_order(marks) and _keys_in_rfc8949_order(limits)


def test_v1_files_differ_only_in_hello():
    for stem in TYPES.values():
        with open(os.path.join(GOLDEN_V1, stem + ".cbor"), "rb") as f:
            old = f.read()
        if stem == "hello":
            v1 = cbor2.loads(old)
            assert v1[1] == 1 and len(v1) == 5 and v1[:5] == [1, 1] + _msg("hello")[2:5]
        else:
            assert old == _read(stem), stem


def test_proofs_match_hmac():
    proof = hmac.new(KEY, b"edgeline-auth-v1" + NODE.encode() + CLIENT_NONCE + SERVER_NONCE, hashlib.sha256).digest()
    assert _msg("auth")[1] == proof
    server = hmac.new(KEY, b"edgeline-gw-v1" + NODE.encode() + SERVER_NONCE + CLIENT_NONCE, hashlib.sha256).digest()
    assert _msg("welcome")[1] == server
    assert proof != server


def test_stream_messages():
    gap = _msg("gap")
    assert gap == [7, "temp", 3, 4, "evicted"] and 1 <= gap[2] <= gap[3]
    batch = _msg("batch")
    assert len(batch) == 5 and _topic(batch[1]) and _uint(batch[2]) and _uint(batch[3])
    _entries_ok(batch[2], batch[3], batch[4])
    seqs_ts = [(batch[2] + i, batch[3] + e[0], e[1], e[2]) for i, e in enumerate(batch[4])]
    assert seqs_ts == [(5, TS0, None, b"\xa1bt1\x18\x15"), (6, (1700000001000 << 16), b"s1", b"raw"),
                       (7, (1699999999999 << 16) | 3, b"", b"")]
    assert cbor2.loads(seqs_ts[0][3]) == {"t1": 21}  # a value may itself be CBOR: opaque bytes here
    assert _msg("ack") == [6, "temp", 7]
    assert _msg("pull") == [8, "config", 0, 10]
    data = _msg("data")
    _entries_ok(data[2], data[3], data[4])
    assert data == [9, "config", 1, TS0, [[0, b"rate", b"\n"]]]
    err = _msg("error")
    assert err[1] == 8 and type(err[2]) is str and "\n" not in err[2]


def test_generator_still_writes_these_bytes():
    path = os.path.join(ROOT, "tools", "make_wire_golden.py")
    spec = importlib.util.spec_from_file_location("make_wire_golden", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    msgs = mod.messages()
    assert [stem for stem, _, _ in msgs] == list(TYPES.values())[:4] + ["gap", "batch", "ack", "pull", "data", "error"]
    for stem, _, data in msgs:
        assert data == _read(stem), stem
