"""The MQTT endpoint's packet codec (host/edgeline_host/agent/mqtt_packets.py): every packet
fed whole, one byte at a time and back to back; bytes written out by hand from the MQTT
3.1.1 and 5 specs (not only our own encoder's); malformed input is MalformedPacket (sticky),
never another exception (hypothesis)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from edgeline_host.agent import mqtt_packets as mp

# CONNECT, MQTT 3.1.1, client id "c1", clean session, keepalive 60, user "u", password "pw"
V3_CONNECT = bytes([0x10, 0x15, 0, 4]) + b"MQTT" + bytes([4, 0xC2, 0, 60, 0, 2]) + b"c1" + \
    bytes([0, 1]) + b"u" + bytes([0, 2]) + b"pw"
# CONNECT, MQTT 5, client id "c5", clean start off, keepalive 30, session expiry 3600
V5_CONNECT = bytes([0x10, 0x14, 0, 4]) + b"MQTT" + bytes([5, 0x00, 0, 30, 5, 0x11, 0, 0, 0x0E, 0x10, 0, 2]) + b"c5"
# PUBLISH QoS 1, DUP, topic "a/b", packet id 7, payload "{}" (3.1.1; MQTT 5 adds a 0 property length)
V3_PUBLISH = bytes([0x3A, 0x09, 0, 3]) + b"a/b" + bytes([0, 7]) + b"{}"
V5_PUBLISH = bytes([0x3A, 0x0A, 0, 3]) + b"a/b" + bytes([0, 7, 0]) + b"{}"


def decode_all(data, version=None, step=None):
    d = mp.Decoder()
    out = []
    chunks = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for c in chunks:
        d.receive_data(c)
        while True:
            p = d.next_packet()
            if p is None:
                break
            out.append(p)
    return d, out


@pytest.mark.parametrize("step", [None, 1, 2, 3])
def test_connect_and_publish_whole_and_byte_by_byte(step):
    for connect, publish, version in ((V3_CONNECT, V3_PUBLISH, 4), (V5_CONNECT, V5_PUBLISH, 5)):
        d, ps = decode_all(connect + publish + bytes([0xC0, 0]) + bytes([0xE0, 0]), step=step)
        c, p, ping, disc = ps
        assert d.version == version and c.version == version
        if version == 4:
            assert (c.client_id, c.clean_start, c.keepalive_s, c.username, c.password) == ("c1", True, 60, "u", b"pw")
        else:
            assert (c.client_id, c.clean_start, c.keepalive_s) == ("c5", False, 30)
            assert c.properties == {"session_expiry_interval": 3600}
        assert (p.topic, p.payload, p.qos, p.dup, p.retain, p.packet_id) == ("a/b", b"{}", 1, True, False, 7)
        assert ping.type == mp.PINGREQ and disc.type == mp.DISCONNECT


def test_encoders_match_the_spec_bytes():
    assert mp.encode_connect(4, "c1", True, 60, "u", b"pw") == V3_CONNECT
    assert mp.encode_connect(5, "c5", False, 30, properties={"session_expiry_interval": 3600}) == V5_CONNECT
    assert mp.encode_publish(4, "a/b", b"{}", 1, 7, dup=True) == V3_PUBLISH
    assert mp.encode_publish(5, "a/b", b"{}", 1, 7, dup=True) == V5_PUBLISH
    assert mp.encode_puback(4, 7) == bytes([0x40, 2, 0, 7])
    assert mp.encode_puback(5, 7) == bytes([0x40, 2, 0, 7])  # success, no properties: the short form
    assert mp.encode_puback(5, 7, mp.RC_TOPIC_NAME_INVALID) == bytes([0x40, 4, 0, 7, 0x90, 0])
    assert mp.encode_connack(4, 0, True) == bytes([0x20, 2, 1, 0])
    assert mp.encode_connack(4, mp.RC_BAD_USER_OR_PASSWORD) == bytes([0x20, 2, 0, 4])
    assert mp.encode_connack(5, 0, False, {"maximum_qos": 1}) == bytes([0x20, 5, 0, 0, 2, 0x24, 1])
    assert mp.encode_suback(4, 9, [0x80]) == bytes([0x90, 3, 0, 9, 0x80])
    assert mp.encode_pingresp() == bytes([0xD0, 0])
    assert mp.encode_disconnect(mp.RC_QOS_NOT_SUPPORTED) == bytes([0xE0, 2, 0x9B, 0])


def test_round_trip_of_every_client_packet():
    will = mp.Publish("w/t", b"gone", 1, retain=True, properties={"will_delay_interval": 5})
    for v in (4, 5):
        props = {"user_property": [("a", "b"), ("a", "c")], "content_type": "json"} if v == 5 else {}
        data = (mp.encode_connect(v, "id", False, 10, "user", b"secret", will) +
                mp.encode_publish(v, "x", b"p" * 300, 0, properties=props) +
                mp.encode_publish(v, "y", b"", 1, 65535, retain=True) +
                mp.encode_subscribe(v, 3, [("s/#", 1), ("t", 2)]) +
                mp.encode_simple(mp.PUBREL, 4) + mp.encode_simple(mp.PINGREQ))
        for step in (None, 1, 7):
            _, ps = decode_all(data, step=step)
            c, p0, p1, sub, rel, ping = ps
            assert (c.client_id, c.clean_start, c.username, c.password) == ("id", False, "user", b"secret")
            assert (c.will.topic, c.will.payload, c.will.qos, c.will.retain) == ("w/t", b"gone", 1, True)
            assert c.will.properties == ({"will_delay_interval": 5} if v == 5 else {})
            assert (p0.payload, p0.qos, p0.properties) == (b"p" * 300, 0, props)
            assert (p1.topic, p1.payload, p1.packet_id, p1.retain) == ("y", b"", 65535, True)
            assert sub.packet_id == 3 and sub.filters == [("s/#", 1), ("t", 2)]
            assert rel.type == mp.PUBREL and rel.packet_id == 4 and ping.type == mp.PINGREQ


@pytest.mark.parametrize("data, code", [
    (bytes([0x30, 0]), mp.RC_PROTOCOL_ERROR),  # PUBLISH before CONNECT
    (V3_CONNECT + V3_CONNECT, mp.RC_PROTOCOL_ERROR),  # a second CONNECT
    (V3_CONNECT + bytes([0x36, 5, 0, 1]) + b"a" + bytes([0, 1]), mp.RC_MALFORMED),  # QoS 3
    (V3_CONNECT + bytes([0x38, 3, 0, 1]) + b"a", mp.RC_PROTOCOL_ERROR),  # DUP at QoS 0
    (V3_CONNECT + bytes([0x32, 5, 0, 1]) + b"a" + bytes([0, 0]), mp.RC_PROTOCOL_ERROR),  # packet id 0
    (V3_CONNECT + bytes([0x30, 3, 0, 5]) + b"a", mp.RC_MALFORMED),  # topic runs past the packet
    (V3_CONNECT + bytes([0x30, 4, 0, 2, 0xFF, 0xFE]), mp.RC_MALFORMED),  # topic not UTF-8
    (V3_CONNECT + bytes([0x80, 3, 0, 1, 0]), mp.RC_MALFORMED),  # SUBSCRIBE with bad flags
    (V3_CONNECT + bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF]), mp.RC_MALFORMED),  # 5-byte length
    (V3_CONNECT + bytes([0x20, 2, 0, 0]), mp.RC_PROTOCOL_ERROR),  # CONNACK from a client
    (V5_CONNECT + bytes([0x30, 5, 0, 1]) + b"a" + bytes([1, 0x7F]), mp.RC_MALFORMED),  # unknown property
])
def test_malformed_input_is_a_sticky_error(data, code):
    d = mp.Decoder()
    d.receive_data(data)
    with pytest.raises(mp.MalformedPacket) as e:
        while d.next_packet() is not None:
            pass
    assert e.value.reason_code == code
    with pytest.raises(mp.MalformedPacket):
        d.next_packet()


def test_unsupported_versions_and_too_large_packets():
    d = mp.Decoder()
    d.receive_data(bytes([0x10, 12, 0, 6]) + b"MQIsdp" + bytes([3, 2, 0, 60]))  # MQTT 3.1
    with pytest.raises(mp.UnsupportedVersion) as e:
        d.next_packet()
    assert e.value.level == 3 and e.value.reason_code == mp.RC_UNSUPPORTED_VERSION
    d = mp.Decoder(max_packet_bytes=100)
    d.receive_data(V3_CONNECT + bytes([0x30, 0x80, 0x01]))  # a 128-byte body announced: refused at once
    d.next_packet()
    with pytest.raises(mp.MalformedPacket) as e:
        d.next_packet()
    assert e.value.reason_code == mp.RC_PACKET_TOO_LARGE


@settings(max_examples=300, deadline=None)
@given(hs.binary(max_size=200), hs.sampled_from([V3_CONNECT, V5_CONNECT, b""]))
def test_garbage_never_raises_anything_else(garbage, prefix):
    d = mp.Decoder(max_packet_bytes=1000)
    d.receive_data(prefix + garbage)
    try:
        for _ in range(300):
            if d.next_packet() is None:
                break
    except mp.MalformedPacket:
        pass


def _outcome(fn):
    try:
        p = fn()
    except mp.MalformedPacket as e:
        return ("malformed", str(e), e.reason_code)
    return (p.topic, p.payload, p.qos, p.dup, p.retain, p.packet_id, p.properties)


_TOPICS = hs.one_of(hs.binary(max_size=12), hs.text(max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass")))


@settings(max_examples=1000, deadline=None)
@given(hs.integers(0, 15), hs.one_of(hs.none(), hs.integers(0, 12)), _TOPICS, hs.binary(max_size=12),
       hs.sampled_from([4, 5]))
def test_publish_read_in_place_is_the_reference_reader(flags, declared, topic, rest, version):
    """The PUBLISH hot path (``_publish_at``, in the decoder's buffer) gives what the
    reference path (``_publish`` over a ``_Reader`` of the body) gives: the same packet,
    or the same MalformedPacket and reason code, for any flags and body."""
    body = (len(topic) if declared is None else declared).to_bytes(2, "big") + topic + rest
    d = mp.Decoder()
    d.version = version
    d._buf = bytearray(b"\x00\x00" + body + b"\x00")  # the body in place, bytes around it
    fast = _outcome(lambda: d._publish_at(flags, 2, 2 + len(body)))
    ref = _outcome(lambda: d._publish(flags, mp._Reader(body), version == mp.MQTT5))
    assert fast == ref
