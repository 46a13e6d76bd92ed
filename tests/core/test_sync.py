"""The sync protocol (docs/spec/wire.md): both sides in memory, on both runtimes.

Conversations run through real EdgeConnection/GatewayConnection pairs; input is fed
whole, one byte at a time, split at every position, and with trailing garbage. The
golden files of tests/golden/wire-v2/ are replayed here (and the version-1 HELLO of
tests/golden/wire-v1/ is still accepted): the encoder must produce them
byte for byte and the decoder must read them back.
"""
from edgeline import codec
from edgeline.auth import client_proof, digest_equal, hmac_sha256, server_proof
from edgeline.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from edgeline.log import Record
from edgeline.sync import (ERR_INTERNAL, NEED_DATA, Ack, Auth, Batch, Challenge, ConnectionClosed, Data,
                           EdgeConnection, Error, Gap, GatewayConnection, Hello, Pull, Welcome, apply_batch,
                           apply_gap, batch_from_records, records_of)
from support import raises

KEY = bytes(range(0x20, 0x40))
NODE = "node-1"
MS0 = 1700000000000
INCARNATION = bytes.fromhex("0123456789abcdef")


def edge_nonce(n):
    return bytes(range(0xC0, 0xC0 + n))


def gw_nonce(n):
    return bytes(range(0xD0, 0xD0 + n))


def pair(edge_key=KEY, gw_key=KEY, edge_max=16384, **gw_options):
    e = EdgeConnection(NODE, edge_key, edge_nonce, max_message_bytes=edge_max)
    g = GatewayConnection({NODE: gw_key}.get, gw_nonce, **gw_options)
    return e, g


def drain(conn, data, step=0):
    """Feed data in chunks of step bytes (all at once for 0); return every event up to
    NEED_DATA or an Error (after which the connection has stopped)."""
    out = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        conn.receive_data(data[i:i + step])
        ev = conn.next_event()
        while ev is not NEED_DATA:
            out.append(ev)
            if isinstance(ev, Error):
                return out
            ev = conn.next_event()
    return out


def deliver(src, dst, event):
    got = drain(dst, src.send(event))
    assert len(got) == 1, got
    return got[0]


HANDSHAKE = (("e", Hello), ("g", Challenge), ("e", Auth), ("g", Welcome))


def handshake(e, g, steps=4, marks=None):
    for who, cls in HANDSHAKE[:steps]:
        ev = cls(marks=marks) if cls is Welcome else cls()
        if who == "e":
            deliver(e, g, ev)
        else:
            deliver(g, e, ev)
    return e, g


def ready(**kw):
    return handshake(*pair(**kw))


def remote_error(conn, data, name):
    """Feeding data makes conn fail with error name; return the ERROR it owes the peer."""
    conn.receive_data(data)
    e = raises(RemoteProtocolError, conn.next_event)
    assert str(e).startswith(name + ":"), str(e)
    assert conn.state == "ERROR"
    owed = codec.loads(conn.pending_error_bytes())
    assert owed[0] == 10 and owed[2] == str(e), owed
    return owed


def golden_conversation():
    """The conversation of the golden files: [(file stem, sender, event)].

    Also the source tools/make_wire_golden.py writes tests/golden/wire-v2/ from."""
    recs = [
        Record(5, MS0 << 16, None, b"\xa1bt1\x18\x15"),
        Record(6, (MS0 + 1000) << 16, b"s1", b"raw"),
        Record(7, ((MS0 - 1) << 16) | 3, b"", b""),  # ts below base_ts: a negative delta
    ]
    return [
        ("hello", "edge", Hello(capabilities={"pull": True}, incarnations={"temp": INCARNATION})),
        ("challenge", "gateway", Challenge()),
        ("auth", "edge", Auth()),
        ("welcome", "gateway", Welcome(marks={"temp": 2, "config": 0})),
        ("gap", "edge", Gap("temp", 3, 4, "evicted")),
        ("batch", "edge", batch_from_records("temp", recs)),
        ("ack", "gateway", Ack("temp", 7)),
        ("pull", "edge", Pull("config", 0, 10)),
        ("data", "gateway", Data("config", 1, MS0 << 16, [[0, b"rate", b"\x0a"]])),
        ("error", "gateway", Error(ERR_INTERNAL, "database down; retry later")),
    ]


def replay(step=0):
    """Run the golden conversation; return [(stem, bytes, received event)]."""
    e, g = pair()
    out = []
    for stem, who, ev in golden_conversation():
        src, dst = (e, g) if who == "edge" else (g, e)
        data = src.send(ev)
        got = drain(dst, data, step)
        assert len(got) == 1, (stem, got)
        out.append((stem, data, got[0]))
    assert e.state == "ERROR" and g.state == "ERROR"
    return out


def _golden_path(stem, version=2):
    here = globals().get("__file__", "")
    sub = "tests/golden/wire-v%d" % version
    dirs = [sub]
    if "/tests/core/" in here:
        dirs.insert(0, here[:here.rindex("/tests/core/")] + "/" + sub)
    for d in dirs:
        try:
            open(d + "/hello.cbor", "rb").close()
            return d + "/" + stem + ".cbor"
        except OSError:
            pass
    raise AssertionError(sub + " not found")


# ------------------------------------------------------------------ authentication


def test_hmac_sha256_rfc4231():
    assert hmac_sha256(b"\x0b" * 20, b"Hi There") == bytes.fromhex(
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?") == bytes.fromhex(
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First") == bytes.fromhex(
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_proofs_per_spec():
    cn, sn = edge_nonce(16), gw_nonce(16)
    assert client_proof(KEY, NODE, cn, sn) == hmac_sha256(KEY, b"edgeline-auth-v1node-1" + cn + sn)
    assert server_proof(KEY, NODE, cn, sn) == hmac_sha256(KEY, b"edgeline-gw-v1node-1" + sn + cn)
    p = client_proof(KEY, NODE, cn, sn)
    assert digest_equal(p, bytes(p)) and not digest_equal(p, p[:31] + b"\x00")
    assert not digest_equal(p, p[:31])


# ------------------------------------------------------------------ conversations


def test_full_conversation():
    e, g = pair()
    assert e.state == g.state == "START"
    hello = deliver(e, g, Hello())
    assert hello.version == 2 and hello.node_id == NODE and hello.client_nonce == edge_nonce(16)
    assert hello.capabilities == {"max_message_bytes": 16384} and hello.incarnations == {}
    assert (e.state, g.state) == ("HELLO_SENT", "HELLO_RECEIVED")
    assert deliver(g, e, Challenge()).server_nonce == gw_nonce(16)
    assert (e.state, g.state) == ("CHALLENGED", "CHALLENGED")
    assert deliver(e, g, Auth()).proof == client_proof(KEY, NODE, edge_nonce(16), gw_nonce(16))
    assert (e.state, g.state) == ("AUTH_SENT", "AUTHENTICATED") and g.node_id == NODE
    w = deliver(g, e, Welcome(marks={"temp": 2}))
    assert w.limits == {"max_message_bytes": 1048576, "max_batch_records": 1000}
    assert e.state == g.state == "READY"
    assert e.marks == {"temp": 2} and e.peer_max_batch_records == 1000 and g.peer_max_message_bytes == 16384

    # the gateway's side of W1-W3, with a dict as its storage
    stored = {}
    mark = 2
    recs = [Record(s, (MS0 + s) << 16, None, b"v%d" % s) for s in range(1, 6)]
    for batch in (batch_from_records("temp", recs[:3]), batch_from_records("temp", recs[2:])):
        got = deliver(e, g, batch)
        assert got == batch
        new, mark = apply_batch(mark, got)
        for r in new:
            stored[r.seq] = r
        assert deliver(g, e, Ack("temp", mark)) == Ack("temp", mark)
    assert mark == 5 and sorted(stored) == [3, 4, 5] and stored[4] == recs[3]

    assert deliver(e, g, Pull("config", 0, 10)) == Pull("config", 0, 10)
    assert deliver(g, e, Data("config", 1, 0, [])).entries == []
    e.receive_data(b"")
    assert isinstance(e.next_event(), ConnectionClosed)
    assert isinstance(e.next_event(), ConnectionClosed)


def test_golden_files():
    for stem, data, ev in replay():
        with open(_golden_path(stem), "rb") as f:
            assert f.read() == data, stem
        assert codec.loads(data)[1:] == ev.values(), stem
    # the edge ends on the gateway's ERROR: returned as an event, then the stop is sticky
    assert ev == Error(ERR_INTERNAL, "database down; retry later")


def test_version_1_hello_is_accepted_as_the_legacy_incarnation():
    # An edge from before version 2 (a board not yet upgraded): its golden HELLO.
    with open(_golden_path("hello", 1), "rb") as f:
        old = f.read()
    assert codec.loads(old)[1] == 1 and len(codec.loads(old)) == 5
    g = GatewayConnection({NODE: KEY}.get, gw_nonce)
    g.receive_data(old)
    hello = g.next_event()
    assert hello.version == 1 and hello.incarnations == {} and g.incarnations == {} and g.version == 1
    # and an edge may still speak version 1 itself (no incarnations then)
    e, g = pair()
    hello = deliver(e, g, Hello(version=1))
    assert hello.version == 1 and hello.incarnations == {}
    assert len(codec.loads(EdgeConnection(NODE, KEY, edge_nonce).send(Hello(version=1)))) == 5
    assert len(codec.loads(EdgeConnection(NODE, KEY, edge_nonce).send(Hello(version=1, incarnations={"t": b"x" * 8})))) == 5


def test_hello_incarnations_checked():
    e, g = pair()
    hello = deliver(e, g, Hello(incarnations={"temp": INCARNATION, "b": bytes(8)}))
    assert g.incarnations == {"temp": INCARNATION, "b": bytes(8)} and g.version == 2
    for bad in ({"temp": b"short"}, {"": INCARNATION}, {"t": 5}, [INCARNATION]):
        raises(LocalProtocolError, EdgeConnection(NODE, KEY, edge_nonce).send, Hello(incarnations=bad))
    # a gateway answers a HELLO of an unknown version with unsupported_version
    g = GatewayConnection({NODE: KEY}.get, gw_nonce)
    g.receive_data(codec.dumps([1, 3, NODE, edge_nonce(16), {}]))
    e = raises(RemoteProtocolError, g.next_event)
    assert "versions 1 and 2" in str(e)


def test_every_message_one_byte_at_a_time():
    whole = replay()
    for step in (1, 2, 7):
        assert replay(step) == whole


def test_split_at_every_position():
    e, g = pair()
    handshake(e, g)
    msgs = [Gap("t", 1, 2, "expired"), batch_from_records("t", [Record(3, 9, b"k", b"abc"), Record(4, 8, None, b"")]),
            Pull("c", 0, 5), Batch("t", 3, 9, [[0, b"k", b"abc"]])]
    stream = b"".join(e.send(m) for m in msgs)
    for cut in range(len(stream) + 1):
        _, g = ready()
        got = drain(g, stream[:cut]) + drain(g, stream[cut:])
        assert got == msgs, cut
    acks = [Ack("t", 2), Ack("t", 4), Data("c", 1, 5, [[0, None, b"x"], [-1, b"", b"y"]])]
    stream = b"".join(g.send(m) for m in acks)
    for cut in range(len(stream) + 1):
        e, _ = ready()
        assert drain(e, stream[:cut]) + drain(e, stream[cut:]) == acks, cut


def test_trailing_garbage():
    for garbage in (b"\x1c", b"\xff", b"\x00", b"\x86\x05"):
        e, g = ready()
        g.receive_data(e.send(Pull("c", 0, 1)) + garbage)
        assert g.next_event() == Pull("c", 0, 1)
        if garbage == b"\x86\x05":  # a message's start: not wrong yet
            assert g.next_event() is NEED_DATA
            g.receive_data(b"")
        raises(RemoteProtocolError, g.next_event)
        assert g.state == "ERROR" and codec.loads(g.pending_error_bytes())[1] == 1


def test_indefinite_length_cbor_accepted():
    # CBOR the spec does not forbid: indefinite arrays and chunked strings
    msg = b"\x9f\x06\x7f\x61t\xff\x01\xff"  # [6, "t", 1] with an indefinite array and text
    for step in (0, 1):
        e, g = ready()
        assert drain(e, msg, step) == [Ack("t", 1)]
    remote_error(e, b"\x83\x06\x61t\xff", "malformed")  # a break outside an indefinite item


# ------------------------------------------------------------------ receiver rules


def test_apply_batch_duplicates_replays_out_of_order():
    b = Batch("t", 4, 100, [[0, None, b"a"], [1, None, b"b"], [2, None, b"c"]])  # seqs 4..6
    new, ack = apply_batch(3, b)
    assert [(r.seq, r.ts, r.value) for r in new] == [(4, 100, b"a"), (5, 101, b"b"), (6, 102, b"c")] and ack == 6
    assert apply_batch(6, b) == ([], 6)  # replay: nothing new, acked again
    assert apply_batch(9, b) == ([], 9)  # wholly below the mark
    new, ack = apply_batch(5, b)  # overlap: only seq 6 is new
    assert [r.seq for r in new] == [6] and ack == 6
    assert apply_batch(2, b) == ([], 2)  # does not continue the stream: ACK(mark)
    assert apply_batch(0, Batch("t", 1, 0, [])) == ([], 0)


def test_out_of_order_batch_acks_mark_and_edge_resumes():
    e, g = ready()
    mark = 0
    for first in (3, 1, 3):
        b = batch_from_records("t", [Record(s, s, None, b"") for s in range(first, first + 2)])
        new, mark = apply_batch(mark, deliver(e, g, b))
        assert deliver(g, e, Ack("t", mark)).seq == mark
    assert mark == 4


def test_apply_gap():
    gap = Gap("t", 3, 7, "evicted")
    assert apply_gap(2, gap) == ((3, 7), 7)
    assert apply_gap(4, gap) == ((5, 7), 7)  # partly known: only the new part is lost
    assert apply_gap(7, gap) == (None, 7) and apply_gap(9, gap) == (None, 9)  # duplicate
    assert apply_gap(1, gap) == (None, 1)  # starts beyond mark + 1
    e, g = ready()
    for bad in ((7, "t", 5, 4, "expired"), (7, "t", 0, 4, "expired"), (7, "t", 1, 4, 5)):
        remote_error(g, codec.dumps(list(bad)), "malformed")
        e, g = ready()
    assert deliver(e, g, Gap("t", 1, 1, "a reason from a newer edge")).reason == "a reason from a newer edge"


def test_records_round_trip():
    recs = [Record(10, 500, b"k", b"v"), Record(11, 400, None, b""), Record(12, 1 << 60, b"", b"x")]
    b = batch_from_records("t", recs)
    assert b.first_seq == 10 and b.base_ts == 500 and b.entries[1] == [-100, None, b""]
    assert records_of(b) == recs and records_of(b, 2) == recs[2:]
    assert records_of(batch_from_records("t", recs, Data)) == recs
    raises(LocalProtocolError, batch_from_records, "t", [])
    e = raises(LocalProtocolError, batch_from_records, "t", recs[:1] + recs[2:])
    assert "12 where 11" in str(e)


# ------------------------------------------------------------------ authentication on the wire


def test_wrong_key_bad_proof_nothing_accepted():
    e, g = pair(edge_key=bytes(32))
    handshake(e, g, 2)
    owed = remote_error(g, e.send(Auth()), "bad_proof")
    assert owed[1] == 4
    assert g.node_id == NODE  # known, never authenticated: no Auth event was returned
    # whatever follows is ignored: no event, ever
    g.receive_data(codec.dumps([5, "t", 1, 0, [[0, None, b"x"]]]))
    raises(RemoteProtocolError, g.next_event)
    # the edge learns why, then stops
    err = drain(e, codec.dumps(owed))[0]
    assert err.code == 4 and e.state == "ERROR"
    assert "bad_proof" in str(raises(RemoteProtocolError, e.next_event))
    assert e.pending_error_bytes() == b""  # an ERROR is not answered


def test_gateway_without_the_key_fails_at_the_edge():
    e, g = pair(gw_key=bytes(range(32)))
    handshake(e, g, 2)
    g.receive_data(e.send(Auth()))
    raises(RemoteProtocolError, g.next_event)  # the gateway's own check fails first
    # a gateway that skipped its check still cannot forge the server proof
    e, g = pair()
    handshake(e, g, 3)
    forged = server_proof(bytes(range(32)), NODE, edge_nonce(16), gw_nonce(16))
    welcome = [4, forged, {}, {"max_message_bytes": 999, "max_batch_records": 9}]
    owed = remote_error(e, codec.dumps(welcome), "bad_proof")
    assert owed[1] == 4 and e.marks is None


def test_unknown_node_and_version():
    e = EdgeConnection("stranger", KEY, edge_nonce)
    g = GatewayConnection({NODE: KEY}.get, gw_nonce)
    assert remote_error(g, e.send(Hello()), "unknown_node")[1] == 3
    g = GatewayConnection({NODE: KEY}.get, gw_nonce)
    owed = remote_error(g, codec.dumps([1, 3, NODE, b"x" * 16, {}, "v3 field"]), "unsupported_version")
    assert owed[1] == 2 and "versions 1 and 2" in owed[2]


def test_keys_lookup_failure_keeps_the_message():
    calls = []

    def flaky(node):
        calls.append(node)
        if len(calls) == 1:
            raise OSError("key store down")
        return KEY

    e = EdgeConnection(NODE, KEY, edge_nonce)
    g = GatewayConnection(flaky, gw_nonce)
    g.receive_data(e.send(Hello()))
    raises(OSError, g.next_event)
    assert g.state == "START"
    assert g.next_event().node_id == NODE and g.state == "HELLO_RECEIVED"


# ------------------------------------------------------------------ bad input, misuse


def test_malformed_messages():
    for raw in (b"\xa0", b"\x80", b"\x81\x61x", b"\x81\x18\x63", b"\x81\x00", b"\x1c", b"\x7f\x00\xff",
                codec.dumps([1, 1, NODE, b"short", {}]), codec.dumps([1, 1, NODE, b"n" * 16]),
                codec.dumps([1, 1, "bad id!", b"n" * 16, {}]), codec.dumps([1, 1, "x" * 65, b"n" * 16, {}]),
                codec.dumps([1, True, NODE, b"n" * 16, {}]),
                codec.dumps([1, 1, NODE, b"n" * 16, {"max_message_bytes": 9}]),
                b"\x81" * 40 + b"\x00"):
        g = GatewayConnection({NODE: KEY}.get, gw_nonce)
        assert remote_error(g, raw, "malformed")[1] == 1, raw
    for fields in ((5, "", 1, 0, []), (5, "t", 0, 0, []), (5, "t", 1, 0, [[0, None]]),
                   (5, "t", 1, 5, [[-6, None, b""]]), (5, "t", 1, 0, [[0, "k", b""]]),
                   (5, "t", 1, 0, [[0, None, None]]),
                   (6, "t", -1), (6, "t", 1 << 64), (8, "t" * 129, 0, 1)):
        conn = ready()[0 if fields[0] in (6, 9) else 1]
        remote_error(conn, codec.dumps(list(fields)), "malformed")


def test_unknown_fields_ignored():
    e, g = ready()
    assert drain(g, codec.dumps([8, "t", 0, 1, "later", {}])) == [Pull("t", 0, 1)]
    later = [[1, None, b"x", "later"]]
    assert drain(e, codec.dumps([9, "t", 1, 2, later, 0])) == [Data("t", 1, 2, later)]
    assert records_of(Data("t", 1, 2, [[1, None, b"x", "later"]])) == [Record(1, 3, None, b"x")]


def raw_message(t):
    """Valid bytes of a message of type t (proofs and nonces are not right)."""
    return codec.dumps((None, [1, 1, NODE, b"n" * 16, {}], [2, b"n" * 16], [3, b"p" * 32],
                        [4, b"p" * 32, {}, {"max_message_bytes": 1000, "max_batch_records": 10}],
                        [5, "t", 1, 0, []], [6, "t", 1], [7, "t", 1, 1, "corrupt"], [8, "t", 0, 1],
                        [9, "t", 1, 0, []])[t])


def event_of(t):
    return (None, Hello(), Challenge(), Auth(), Welcome(), Batch("t", 1, 0, []), Ack("t", 1), Gap("t", 1, 1, "x"),
            Pull("t", 0, 1), Data("t", 1, 0, []))[t]


# What may be received and sent after 0..4 handshake messages (wire.md, "States"); the
# other message types must be refused.
EDGE_RECEIVES = ((), (2,), (), (4,), (6, 9))
GW_RECEIVES = ((1,), (), (3,), (), (5, 7, 8))
EDGE_SENDS, GW_SENDS = GW_RECEIVES, EDGE_RECEIVES


def test_unexpected_message_in_every_state():
    for steps in range(5):
        for t in range(1, 10):
            for side, allowed in ((0, EDGE_RECEIVES), (1, GW_RECEIVES)):
                if t in allowed[steps]:
                    continue
                conn = handshake(*pair(), steps)[side]
                state = conn.state
                owed = remote_error(conn, raw_message(t), "unexpected")
                assert owed[1] == 5 and state in owed[2], (steps, t, owed)


def test_local_misuse_raises_and_changes_nothing():
    for steps in range(5):
        for t in range(1, 10):
            for side, allowed in ((0, EDGE_SENDS), (1, GW_SENDS)):
                if t in allowed[steps]:
                    continue
                conn = handshake(*pair(), steps)[side]
                state = conn.state
                raises(LocalProtocolError, conn.send, event_of(t))
                assert conn.state == state
    e, g = ready()
    for bad in (Batch("", 1, 0, []), Ack("t", -1), Gap("t", 2, 1, "x"), Batch("t", 1, 0, [[0, "str", b""]]),
                "not an event"):
        raises(LocalProtocolError, e.send, bad)
    raises(LocalProtocolError, EdgeConnection(NODE, KEY, edge_nonce).send, Hello(node_id="other"))
    raises(LocalProtocolError, EdgeConnection(NODE, KEY, edge_nonce).send, Hello(capabilities={"x": object()}))
    raises(ConfigError, EdgeConnection(NODE, KEY, lambda n: b"short").send, Hello())
    raises(ConfigError, EdgeConnection, "bad id", KEY, edge_nonce)
    raises(ConfigError, EdgeConnection, NODE, b"short key", edge_nonce)
    raises(ConfigError, GatewayConnection, {}.get, gw_nonce, 100)
    assert e.state == "READY"
    e.receive_data(b"")
    raises(LocalProtocolError, e.receive_data, b"x")


def test_oversized_messages():
    e, g = ready(max_message_bytes=256, max_batch_records=3)
    assert e.peer_max_message_bytes == 256
    big = [[0, None, b"x" * 300]]
    raises(LocalProtocolError, e.send, Batch("t", 1, 0, big))  # the edge keeps to the limit
    raises(LocalProtocolError, e.send, Batch("t", 1, 0, [[0, None, b""]] * 4))
    assert e.state == "READY"
    # refused as soon as a declared length passes the limit, before the bytes arrive
    raw = codec.dumps([5, "t", 1, 0, big])
    assert remote_error(g, raw[:16], "too_large")[1] == 7
    # many small items: refused once 256 bytes are buffered without a message end
    _, g = ready(max_message_bytes=256)
    raw = codec.dumps([5, "t", 1, 0, [[0, None, b""]] * 100])
    g.receive_data(raw[:255])
    assert g.next_event() is NEED_DATA
    remote_error(g, raw[255:256], "too_large")
    _, g = ready(max_batch_records=3)
    remote_error(g, codec.dumps([5, "t", 1, 0, [[0, None, b""]] * 4]), "too_large")
    # a gateway keeps to the edge's max_message_bytes from HELLO
    e, g = ready(edge_max=256)
    raises(LocalProtocolError, g.send, Data("t", 1, 0, big))
    remote_error(e, codec.dumps([9, "t", 1, 0, big]), "too_large")


def test_eof_inside_a_message():
    e, g = ready()
    g.receive_data(e.send(Pull("t", 0, 1))[:-1])
    assert g.next_event() is NEED_DATA
    g.receive_data(b"")
    remote_error(g, b"", "malformed")
    # A unit that holds whole messages (an HTTP body, an MQTT payload) ends inside one
    # when buffered_bytes is not 0 at NEED_DATA. (Not a test function of its own: one
    # more global costs this module's dict a resize past the 64 KB board heap.)
    e, g = ready()
    pull = e.send(Pull("t", 0, 1))
    assert g.buffered_bytes == 0
    for cut in range(1, len(pull)):
        e, g = ready()
        g.receive_data(pull + pull[:cut])
        assert g.next_event() == Pull("t", 0, 1)
        assert g.next_event() is NEED_DATA and g.buffered_bytes == cut
        g.receive_data(pull[cut:])
        assert g.next_event() == Pull("t", 0, 1)
        assert g.next_event() is NEED_DATA and g.buffered_bytes == 0
    # after an error nothing is buffered: everything the peer sends is ignored
    e, g = ready()
    g.receive_data(b"\xff" + pull)
    raises(RemoteProtocolError, g.next_event)
    assert g.buffered_bytes == 0


def test_error_state_is_sticky():
    e, g = ready()
    owed = remote_error(g, b"\xc1\x00", "malformed")  # a tag around an int: not an array
    why = str(raises(RemoteProtocolError, g.next_event))
    assert why == owed[2] and why == str(raises(RemoteProtocolError, g.next_event))
    assert g.pending_error_bytes() == b""
    g.receive_data(e.send(Pull("t", 0, 1)))
    raises(RemoteProtocolError, g.next_event)
    raises(LocalProtocolError, g.send, Ack("t", 1))
    raises(LocalProtocolError, g.send, Error(8))
    # the application stops a connection itself: ERROR with a default message
    e, g = ready()
    assert codec.loads(g.send(Error(6))) == [10, 6, "unknown_topic"]
    assert g.state == "ERROR" and g.pending_error_bytes() == b""
    raises(LocalProtocolError, g.send, Ack("t", 1))
