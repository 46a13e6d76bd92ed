"""Two small rules of the sync protocol (docs/spec/wire.md): ``peek_type``, a payload's
message type read from its first CBOR heads, and ``is_node_id``, the one node-id rule.
Plain functions; CPython and MicroPython. (Apart from test_sync.py, whose module is as
large as a 64 KB heap allows.)"""
from edgeline import codec
from edgeline.errors import ConfigError, RemoteProtocolError
from edgeline.sync import EdgeConnection, GatewayConnection, is_node_id, peek_type
from support import raises

KEY = bytes(range(0x20, 0x40))


def _golden_dir():
    here = globals().get("__file__", "")
    dirs = ["tests/golden/wire-v1"]
    if "/tests/core/" in here:
        dirs.insert(0, here[:here.rindex("/tests/core/")] + "/tests/golden/wire-v1")
    for d in dirs:
        try:
            open(d + "/hello.cbor", "rb").close()
            return d
        except OSError:
            pass
    raise AssertionError("tests/golden/wire-v1 not found")


_GOLDEN = (("hello", 1), ("challenge", 2), ("auth", 3), ("welcome", 4), ("gap", 7), ("batch", 5), ("ack", 6),
           ("pull", 8), ("data", 9), ("error", 10))


def test_peek_type_reads_the_first_heads_only():
    d = _golden_dir()
    for stem, want in _GOLDEN:
        with open(d + "/" + stem + ".cbor", "rb") as f:
            data = f.read()
        assert codec.loads(data)[0] == want, stem
        assert peek_type(data) == want, stem
        assert peek_type(data + b"\xff garbage") == want, stem
        assert peek_type(data[:0]) is None and peek_type(data[:1]) is None, stem
        assert peek_type(bytearray(data)) == peek_type(memoryview(data)) == want, stem
    # any well-formed heads: indefinite arrays, wide lengths, non-preferred uints
    assert peek_type(b"\x9f\x01\xff") == 1
    assert peek_type(b"\x98\x05\x01") == 1
    assert peek_type(b"\x85\x18\x06") == 6
    assert peek_type(b"\x85\x19\x00\x05") == 5
    assert peek_type(b"\x85\x19\x00") is None  # torn
    for junk in (b"", b"\x01", b"\xff\xfe", b"\xa1\x01\x02", b"\x85\x61a", b"\x85\x1c", b"\x9c\x01"):
        assert peek_type(junk) is None, junk


def test_node_id_rule():
    for good in ("n", "node-1", "a.b_c-D", "...", ".a", "a..", "x" * 64):
        assert is_node_id(good), good
    for bad in ("", ".", "..", "x" * 65, "a/b", "a b", "n\x00", "\u00e9t\u00e9", "-\n", None, 5, b"node"):
        assert not is_node_id(bad), bad
    e = raises(ConfigError, EdgeConnection, "..", KEY, bytes)
    assert "not . or .." in str(e)
    # a gateway refuses a HELLO naming such a node: malformed, like any bad field
    g = GatewayConnection({"..": KEY}.get, bytes)
    g.receive_data(codec.dumps([1, 1, "..", bytes(16), {}]))
    e = raises(RemoteProtocolError, g.next_event)
    assert str(e).startswith("malformed:"), str(e)
    assert codec.loads(g.pending_error_bytes())[:2] == [10, 1]
