"""Compressed batches (docs/spec/wire.md, "Compressed batches"), one connection pair at a
time: negotiation (C1), a CBATCH is the BATCH it carries (C2), the bounds (C3), and bad
bodies are ERROR malformed and nothing else (C4)."""
import os
import sys

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeline import codec, columnar, sync
from edgeline.errors import LocalProtocolError, RemoteProtocolError
from edgeline_host import fastcbor, wirecomp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "datasets"))
import sensors  # noqa: E402

KEY = bytes(range(32))
NODE = "edge-1"


def pair(offer=("zstd-columnar-1", "columnar-1"), compression="zstd", max_message_bytes=1 << 20,
         max_batch_records=1000, gateway_codec=True):
    """A handshaken (edge, gateway, edge codec, gateway codec) over the wirecomp codecs."""
    ec = wirecomp.EdgeCodec()
    e = sync.EdgeConnection(NODE, KEY, os.urandom, codec=ec.codec)
    ec.conn = e
    gc = wirecomp.GatewayCodec()
    g = sync.GatewayConnection({NODE: KEY}.get, os.urandom, max_message_bytes=max_message_bytes,
                               max_batch_records=max_batch_records, codec=gc.codec if gateway_codec else None)
    gc.conn = g
    if gateway_codec:
        g.wirecodec = gc
    caps = {"encodings": list(offer)} if offer is not None else None
    g.receive_data(e.send(sync.Hello(capabilities=caps)))
    hello = g.next_event()
    e.receive_data(g.send(sync.Challenge()))
    e.next_event()
    g.receive_data(e.send(sync.Auth()))
    g.next_event()
    e.receive_data(g.send(sync.Welcome(marks={}, limits=wirecomp.welcome_limits(g, hello.capabilities))))
    welcome = e.next_event()
    ec.encoding = wirecomp.choose(compression, welcome.limits)
    return e, g, ec, gc


def batch(n=100):
    return sync.batch_from_records("sensors", [sync.Record(*r) for r in sensors.records(n)])


def send_batch(e, g, ev):
    data = e.send(ev)
    g.receive_data(data)
    return data, g.next_event()


def test_negotiation():
    assert wirecomp.offer("none") is None
    assert wirecomp.offer("columnar") == ["columnar-1"]
    assert wirecomp.offer("zstd") == ["zstd-columnar-1", "columnar-1"]
    # the gateway answers the offer's encodings it knows, in the edge's order
    assert wirecomp.accepted({"encodings": ["lz4-9", "columnar-1", "zstd-columnar-1"]}) == \
        ["columnar-1", "zstd-columnar-1"]
    for caps in ({}, None, {"encodings": "columnar-1"}, {"encodings": [1, None]}, {"encodings": {}}):
        assert wirecomp.accepted(caps) == []
    assert wirecomp.choose("zstd", {"encodings": ["columnar-1", "zstd-columnar-1"]}) == "zstd-columnar-1"
    assert wirecomp.choose("zstd", {"encodings": ["columnar-1"]}) == "columnar-1"
    assert wirecomp.choose("columnar", {"encodings": ["zstd-columnar-1"]}) is None
    assert wirecomp.choose("none", {"encodings": ["columnar-1"]}) is None
    assert wirecomp.choose("zstd", {"max_message_bytes": 256, "max_batch_records": 1}) is None
    assert wirecomp.choose("zstd", {"encodings": "columnar-1"}) is None
    # over connections: the WELCOME names what was accepted; without an offer it is the old WELCOME
    e, g, ec, _ = pair()
    assert ec.encoding == "zstd-columnar-1"
    e, g, ec, _ = pair(offer=("columnar-1",), compression="columnar")
    assert ec.encoding == "columnar-1"
    e, g, ec, _ = pair(offer=None)
    assert ec.encoding is None
    assert "encodings" not in wirecomp.welcome_limits(g, None)
    # a gateway connection without the codec (an old gateway) accepts nothing
    e, g, ec, _ = pair(gateway_codec=False)
    assert ec.encoding is None


def test_each_encoding_carries_the_batch_exactly():
    for compression, want in (("zstd", {"zstd-columnar-1"}), ("columnar", {"columnar-1"}), ("none", set())):
        e, g, ec, gc = pair(offer=wirecomp.offer(compression) or (), compression=compression)
        ev = batch(100)
        data, got = send_batch(e, g, ev)
        assert type(got) is sync.Batch and got == ev, compression
        assert set(gc.batches) == want and set(ec.batches) == want
        plain = codec.dumps([5] + ev.values())
        if compression == "none":
            assert data == plain
        else:
            assert len(data) * 4 < len(plain), (compression, len(data), len(plain))
    # a batch of one record: no encoding makes it smaller, so it goes plain
    e, g, ec, gc = pair()
    ev = batch(1)
    data, got = send_batch(e, g, ev)
    assert got == ev and gc.batches == {} and ec.batches == {"plain": 1}
    assert data == codec.dumps([5] + ev.values())
    # a few: the zstd frame would be larger than the columnar bytes, so they go columnar-1
    ev = batch(6)
    data, got = send_batch(e, g, ev)
    assert got == ev and gc.batches == {"columnar-1": 1}
    assert cbor_first_fields(data)[:3] == [11, "sensors", "columnar-1"]


def cbor_first_fields(data):
    return fastcbor.decode_prefix(data)[0]


def test_a_cbatch_before_welcome_is_unexpected_and_not_decoded():
    gc = wirecomp.GatewayCodec()
    g = sync.GatewayConnection({NODE: KEY}.get, os.urandom, codec=gc.codec)
    gc.conn = g
    # a body that would fail to decode: it is never looked at
    g.receive_data(codec.dumps([11, "t", "zstd-columnar-1", b"\x28\xb5\x2f\xfd" + b"\x00" * 64]))
    with pytest.raises(RemoteProtocolError, match="unexpected: BATCH not allowed in state START"):
        g.next_event()
    assert gc.batches == {}


def _expect_malformed(msg, g=None, match=None):
    if g is None:
        _, g, _, _ = pair()
    g.receive_data(codec.dumps(msg))
    with pytest.raises(RemoteProtocolError) as ei:
        g.next_event()
    assert str(ei.value).startswith("malformed: "), str(ei.value)
    if match:
        assert match in str(ei.value), str(ei.value)
    owed = codec.loads(g.pending_error_bytes())
    assert owed[:2] == [10, sync.ERR_MALFORMED]
    return str(ei.value)


def test_bad_bodies_are_malformed():
    good = columnar.encode([(1, 5, None, b"\x01"), (2, 6, None, b"\x02")])
    z = zstandard.ZstdCompressor(write_content_size=True)
    _expect_malformed([11, "t", "lz4-1", good], match="not one this gateway accepts")
    _expect_malformed([11, "t", "columnar-1"], match="CBATCH has 2 fields")
    _expect_malformed([11, "t", 1, good], match="ill-typed")
    _expect_malformed([11, "t", "columnar-1", "text"], match="ill-typed")
    _expect_malformed([11, "t", "columnar-1", good[:-1]], match="CBATCH body")
    _expect_malformed([11, "t", "columnar-1", good + b"\x00"], match="CBATCH body")
    _expect_malformed([11, "t", "columnar-1", columnar.encode([])], match="no records")
    gappy = columnar.encode([(1, 5, None, b"\x01"), (3, 6, None, b"\x02")])
    _expect_malformed([11, "t", "columnar-1", gappy], match="not consecutive")
    _expect_malformed([11, "t", "zstd-columnar-1", good], match="not a zstd frame")
    frame = z.compress(good)
    _expect_malformed([11, "t", "zstd-columnar-1", frame[:-2]], match="zstd")
    _expect_malformed([11, "t", "zstd-columnar-1", frame + b"x"], match="exactly one whole zstd frame")
    _expect_malformed([11, "t", "zstd-columnar-1", frame + frame], match="exactly one whole zstd frame")
    no_size = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    streamed = no_size.compress(good) + no_size.flush()
    _expect_malformed([11, "t", "zstd-columnar-1", streamed], match="does not declare its content size")
    # a frame that says it holds less than it does
    big = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(range(256)) * 8)
    lie = bytearray(big)
    assert lie[4] == 0x60  # single segment, 2-byte content size at offset 5
    lie[5:7] = b"\x00\x00"  # declares 256 bytes
    _expect_malformed([11, "t", "zstd-columnar-1", bytes(lie)], match="damaged")
    # a frame naming a dictionary
    d = zstandard.train_dictionary(2048, [r[3] + bytes([i % 7]) for i, r in enumerate(sensors.records(2000))])
    named = zstandard.ZstdCompressor(dict_data=d, write_dict_id=True, write_content_size=True).compress(good)
    assert zstandard.get_frame_parameters(named).dict_id == d.dict_id()
    _expect_malformed([11, "t", "zstd-columnar-1", named], match="names dictionary")
    # random garbage never raises anything but malformed
    rnd = __import__("random").Random(11)
    for _ in range(300):
        body = bytearray(good if rnd.random() < 0.5 else frame)
        for _ in range(rnd.randint(1, 4)):
            body[rnd.randrange(len(body))] = rnd.randrange(256)
        enc = "columnar-1" if body[:4] != b"\x28\xb5\x2f\xfd" else "zstd-columnar-1"
        _, g, _, _ = pair()
        g.receive_data(codec.dumps([11, "t", enc, bytes(body)]))
        try:
            ev = g.next_event()
            assert type(ev) is sync.Batch
        except RemoteProtocolError as e:
            assert str(e).startswith("malformed: "), str(e)


def test_bounds():
    # the decompressed body is bounded by max_message_bytes before it is decompressed
    many = [(i, 1000 + i, None, bytes([i % 251]) * 200) for i in range(1, 200)]
    body = columnar.encode(many)
    assert len(body) > 4096
    z = zstandard.ZstdCompressor(write_content_size=True).compress(body)
    assert len(z) < 2048
    _, g, _, _ = pair(max_message_bytes=4096)
    _expect_malformed([11, "t", "zstd-columnar-1", z], g, match="decompressed is over 4096")
    # the rebuilt values are bounded too, whatever the body's size
    same = [(i, 1000 + i, None, codec.dumps("Z" * 3000)) for i in range(1, 4)]  # one dictionary entry
    small = columnar.encode(same)
    assert len(small) < 4096
    _, g, _, _ = pair(max_message_bytes=4096)
    _expect_malformed([11, "t", "columnar-1", small], g, match="more bytes than the limit")
    # records over max_batch_records
    _, g, _, _ = pair(max_batch_records=10)
    _expect_malformed([11, "t", "columnar-1", columnar.encode([(i, i, None, b"") for i in range(1, 12)])], g)
    # the edge keeps to the gateway's limits: what it cannot send is a LocalProtocolError
    # (the uplink halves the batch), never a CBATCH the gateway refuses
    e, g, ec, _ = pair(max_message_bytes=4096)
    recs = [sync.Record(i, 1000 + i, None, b"\x5a" * 1500) for i in range(1, 4)]
    with pytest.raises(LocalProtocolError, match="over the peer's max_message_bytes 4096"):
        e.send(sync.batch_from_records("t", recs))
    data, got = send_batch(e, g, sync.batch_from_records("t", recs[:2]))
    assert type(got) is sync.Batch and len(got.entries) == 2


@settings(max_examples=150, deadline=None)
@given(first=st.integers(1, 2 ** 40), base=st.integers(0, 2 ** 63),
       entries=st.lists(st.tuples(st.integers(-2 ** 20, 2 ** 30), st.one_of(st.none(), st.binary(max_size=12)),
                                  st.one_of(st.binary(max_size=40),
                                            st.builds(codec.dumps, st.recursive(
                                                st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                                          st.text(max_size=8)),
                                                lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                                    st.text(max_size=4), c, max_size=4), max_leaves=8)))),
                        min_size=1, max_size=40),
       compression=st.sampled_from(["zstd", "columnar"]))
def test_any_batch_arrives_as_it_was_sent(first, base, entries, compression):
    entries = [[d, k, v] for d, k, v in entries if 0 <= base + d < 2 ** 64]
    if not entries:
        return
    e, g, ec, gc = pair(offer=wirecomp.offer(compression), compression=compression)
    ev = sync.Batch("t", first, base, entries)
    _, got = send_batch(e, g, ev)
    # the same records (a CBATCH's BATCH takes the first record's ts as base_ts, C2)
    assert type(got) is sync.Batch and got.topic == "t" and sync.records_of(got) == sync.records_of(ev)
    # and through each encoding, whichever the edge would pick
    msg = [5, "t", first, base, entries]
    for enc in ("columnar-1", "zstd-columnar-1"):
        out = wirecomp.compress_batch(msg, enc)
        assert out[2] in ("columnar-1", enc)
        back = wirecomp.expand(out, 1 << 24, 10 ** 5)
        assert back[:2] == [5, "t"] and sync.records_of(sync.Batch(*back[1:])) == sync.records_of(ev)
        assert back[3] == base + entries[0][0] and back[4][0][0] == 0


def test_without_zstandard_only_columnar(monkeypatch):
    # a host whose Python lacks the zstandard package (it is a dependency; a Pi's
    # hand-made environment may not have it): columnar-1 alone, offered and accepted
    monkeypatch.setattr(wirecomp, "zstandard", None)
    assert wirecomp.offer("zstd") == ["columnar-1"] and wirecomp.offer("columnar") == ["columnar-1"]
    assert wirecomp.accepted({"encodings": ["zstd-columnar-1", "columnar-1"]}) == ["columnar-1"]
    e, g, ec, gc = pair(offer=wirecomp.offer("zstd"))
    assert ec.encoding == "columnar-1"
    _, got = send_batch(e, g, batch(100))
    assert got == batch(100) and gc.batches == {"columnar-1": 1}
    _expect_malformed([11, "t", "zstd-columnar-1", b"\x28\xb5\x2f\xfd" + b"\x00" * 8], match="no zstandard")
