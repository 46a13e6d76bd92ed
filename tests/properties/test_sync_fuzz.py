"""Fuzzing the sync state machine (CPython; hypothesis).

Theory of operation
-------------------
Both sides run with a small scripted application (answer HELLO with CHALLENGE, AUTH with
WELCOME, BATCH and GAP with ACK by the receiver rules, PULL with an empty DATA; the edge
answers CHALLENGE with AUTH and WELCOME with a BATCH) and are fed random bytes, and
mutated copies of a valid conversation (bytes replaced, inserted, deleted, truncated),
in random chunks. Whatever arrives, a side only ever returns events, NEED_DATA or
ConnectionClosed, or raises RemoteProtocolError -- after which it owes one well-formed
ERROR and stays stopped. Loops are bounded by the input's length, so a hang fails the
test instead of stalling it.

Then properties: records -> Batch/Data -> bytes -> events -> records is the identity
for random records; the streaming scanner finds exactly the end the CBOR decoder finds,
for random items with random definite/indefinite encodings; and a message fed one byte
at a time is decoded once.
"""
import os
import sys

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "core"))
from edgeline import codec, sync  # noqa: E402
from edgeline.errors import RemoteProtocolError  # noqa: E402
from edgeline.log import Record  # noqa: E402
from edgeline.sync import (NEED_DATA, Ack, Auth, Batch, Challenge, ConnectionClosed, Data, EdgeConnection,  # noqa: E402
                           Error, Gap, GatewayConnection, Hello, Pull, Welcome, apply_batch, apply_gap,
                           batch_from_records, records_of)

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY = bytes(range(0x20, 0x40))
NODE = "node-1"
U64 = 1 << 64


def edge_nonce(n):
    return bytes(range(0xC0, 0xC0 + n))


def gw_nonce(n):
    return bytes(range(0xD0, 0xD0 + n))


def new_edge(max_message_bytes=65536):
    return EdgeConnection(NODE, KEY, edge_nonce, max_message_bytes=max_message_bytes)


def new_gateway(max_message_bytes=65536, codec=None):
    return GatewayConnection({NODE: KEY}.get, gw_nonce, max_message_bytes=max_message_bytes, max_batch_records=20,
                             codec=codec)


class GatewayApp:
    """The scripted gateway application; what it sends is kept in out."""

    def __init__(self, conn):
        self.conn = conn
        self.marks = {}
        self.out = []

    def answer(self, ev):
        c = self.conn
        if isinstance(ev, Hello):
            self.out.append(c.send(Challenge()))
        elif isinstance(ev, Auth):
            self.out.append(c.send(Welcome(marks=dict(self.marks))))
        elif isinstance(ev, Batch):
            _, self.marks[ev.topic] = apply_batch(self.marks.get(ev.topic, 0), ev)
            self.out.append(c.send(Ack(ev.topic, self.marks[ev.topic])))
        elif isinstance(ev, Gap):
            _, self.marks[ev.topic] = apply_gap(self.marks.get(ev.topic, 0), ev)
            self.out.append(c.send(Ack(ev.topic, self.marks[ev.topic])))
        elif isinstance(ev, Pull):
            self.out.append(c.send(Data(ev.topic, ev.after_seq + 1 if ev.after_seq < U64 - 1 else ev.after_seq, 0, [])))


class Passive:
    def __init__(self, conn):
        self.conn = conn

    def answer(self, ev):
        pass


class EdgeApp:
    def __init__(self, conn):
        self.conn = conn
        self.out = [conn.send(Hello(capabilities={"pull": True}))]

    def answer(self, ev):
        c = self.conn
        if isinstance(ev, Challenge):
            self.out.append(c.send(Auth()))
        elif isinstance(ev, Welcome):
            self.out.append(c.send(Batch("temp", 1, 5, [[0, None, b"x"]])))


def run(app, data, cuts, eof=True):
    """Feed data to app.conn in pieces split at cuts, then EOF; return the events and
    how the side ended ("closed", "stopped" by a peer ERROR, "error", "open")."""
    conn = app.conn
    pieces = []
    last = 0
    for c in sorted(set(cuts)) + [len(data)]:
        if c > last:  # an empty piece would mean EOF
            pieces.append(data[last:c])
            last = c
    if eof:
        pieces.append(b"")
    events = []
    budget = len(data) + 2  # a message is at least one byte: more events means a loop
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError as e:
                assert conn.state == "ERROR" and "\n" not in str(e)
                owed = conn.pending_error_bytes()
                if owed:
                    msg = cbor2.loads(owed)
                    assert msg[0] == 10 and type(msg[1]) is int and 1 <= msg[1] <= 8 and msg[2] == str(e)
                assert conn.pending_error_bytes() == b""
                try:
                    conn.next_event()
                    raise AssertionError("the ERROR state is not sticky")
                except RemoteProtocolError as again:
                    assert str(again) == str(e)
                return events, "error"
            if ev is NEED_DATA:
                break
            events.append(ev)
            assert len(events) <= budget
            if isinstance(ev, ConnectionClosed):
                return events, "closed"
            if isinstance(ev, Error):
                return events, "stopped"
            app.answer(ev)
    return events, "open"


def golden_streams():
    """The bytes each side sends in one good conversation: (edge's, gateway's)."""
    e, g = new_edge(), new_gateway()
    ea, ga = EdgeApp(e), GatewayApp(g)
    edge_stream = ea.out[0]
    gw_stream = b""
    for _ in range(4):
        g.receive_data(ea.out[-1])
        n = len(ga.out)
        ev = g.next_event()
        ga.answer(ev)
        if len(ga.out) == n:
            break
        e.receive_data(ga.out[-1])
        gw_stream += ga.out[-1]
        n = len(ea.out)
        ea.answer(e.next_event())
        if len(ea.out) == n:
            break
        edge_stream += ea.out[-1]
    extra = [Gap("temp", 2, 3, "evicted"), Pull("config", 0, 5),
             Batch("temp", 4, 9, [[0, b"k", b"v"], [-1, None, b""]])]
    edge_stream += b"".join(e.send(m) for m in extra)
    gw_stream += g.send(Data("config", 1, 7, [[0, None, b"cfg"]])) + g.send(Ack("temp", 5))
    return edge_stream, gw_stream


EDGE_STREAM, GW_STREAM = golden_streams()


def test_good_conversation_runs_clean():
    events, how = run(GatewayApp(new_gateway()), EDGE_STREAM, [])
    assert how == "closed"
    names = [type(ev).__name__ for ev in events]
    assert names == ["Hello", "Auth", "Batch", "Gap", "Pull", "Batch", "ConnectionClosed"]
    events, how = run(EdgeApp(new_edge()), GW_STREAM, [])
    assert how == "closed"
    assert [type(ev).__name__ for ev in events] == ["Challenge", "Welcome", "Ack", "Data", "Ack", "ConnectionClosed"]


cut_lists = st.lists(st.integers(min_value=0, max_value=4096), max_size=8)


@FUZZ
@given(st.binary(max_size=300), cut_lists, st.booleans())
def test_random_bytes_never_crash(data, cuts, ready):
    # into a fresh side, and into one past the handshake
    cuts = [c % (len(data) + 1) for c in cuts]
    for app, stream in ((EdgeApp(new_edge()), GW_STREAM), (GatewayApp(new_gateway()), EDGE_STREAM)):
        if ready:
            assert run(app, handshake_part(stream), [], eof=False)[1] == "open"
            assert app.conn.state == "READY"
        run(app, data, cuts)


def handshake_part(stream):
    """The first two messages of a side's stream: HELLO, AUTH or CHALLENGE, WELCOME."""
    _, end = codec.decode_prefix(stream, 0)
    _, end = codec.decode_prefix(stream, end)
    return stream[:end]


mutation = st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(min_value=0), st.integers(0, 255))


def mutate(data, ops, truncate):
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            break
        pos %= len(b)
        if op == "replace":
            b[pos] = val
        elif op == "insert":
            b.insert(pos, val)
        else:
            del b[pos]
    if truncate is not None:
        del b[truncate % (len(b) + 1):]
    return bytes(b)


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=6), st.none() | st.integers(min_value=0), cut_lists)
def test_mutated_conversations_never_crash(ops, truncate, cuts):
    for stream, app in ((EDGE_STREAM, GatewayApp(new_gateway())), (GW_STREAM, EdgeApp(new_edge()))):
        data = mutate(stream, ops, truncate)
        run(app, data, [c % (len(data) + 1) for c in cuts])


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=4), cut_lists)
def test_small_limits_under_mutation(ops, cuts):
    # the same with the smallest max_message_bytes: too_large paths everywhere
    data = mutate(EDGE_STREAM, ops, None)
    run(GatewayApp(new_gateway(max_message_bytes=256)), data, [c % (len(data) + 1) for c in cuts])


# ---------------------------------------------------------------- round trip


@st.composite
def record_lists(draw):
    n = draw(st.integers(min_value=1, max_value=20))  # the gateway here takes 20 a batch
    first = draw(st.integers(min_value=1, max_value=U64 - n))
    ts = st.integers(min_value=0, max_value=U64 - 1)
    return [Record(first + i, draw(ts), draw(st.none() | st.binary(max_size=12)), draw(st.binary(max_size=40)))
            for i in range(n)]


def ready_pair(gateway_codec=None):
    e, g = new_edge(), new_gateway(codec=gateway_codec)
    for src, dst, ev in ((e, g, Hello()), (g, e, Challenge()), (e, g, Auth()), (g, e, Welcome())):
        dst.receive_data(src.send(ev))
        assert dst.next_event() is not NEED_DATA
    return e, g


@PROPS
@given(record_lists(), st.text(min_size=1, max_size=128), cut_lists)
def test_records_round_trip_both_ways(recs, topic, cuts):
    e, g = ready_pair()
    batch = batch_from_records(topic, recs)
    events, how = run(Passive(g), e.send(batch), cuts)
    assert how == "closed" and events[0] == batch
    assert records_of(events[0]) == recs
    assert apply_batch(recs[0].seq - 1, events[0]) == (recs, recs[-1].seq)
    data = batch_from_records(topic, recs, Data)
    events, how = run(Passive(e), g.send(data), cuts)
    assert how == "closed" and events[0] == data and records_of(events[0]) == recs


# ---------------------------------------------------------------- scanner vs decoder


def _head(major, n):
    raw = cbor2.dumps(n)  # an unsigned int's head, major type 0
    return bytes([raw[0] | (major << 5)]) + raw[1:]


@st.composite
def cbor_items(draw, depth=0):
    """Bytes of one random CBOR item, each container and string definite or indefinite."""
    kinds = ["int", "neg", "float", "simple", "bytes", "text"] + (["array", "map", "tag"] if depth < 6 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        return cbor2.dumps(draw(st.integers(min_value=0, max_value=U64 - 1)))
    if kind == "neg":
        return cbor2.dumps(draw(st.integers(min_value=-U64, max_value=-1)))
    if kind == "float":
        return cbor2.dumps(draw(st.floats(allow_nan=False)))
    if kind == "simple":
        return cbor2.dumps(draw(st.sampled_from([None, True, False])))
    if kind in ("bytes", "text"):
        parts = draw(st.lists(st.binary(max_size=30) if kind == "bytes" else st.text(max_size=10), max_size=3))
        if draw(st.booleans()):
            return cbor2.dumps((b"" if kind == "bytes" else "").join(parts))
        return (b"\x5f" if kind == "bytes" else b"\x7f") + b"".join(cbor2.dumps(p) for p in parts) + b"\xff"
    if kind == "tag":
        return _head(6, draw(st.integers(min_value=4, max_value=1000))) + draw(cbor_items(depth + 1))
    n = draw(st.integers(min_value=0, max_value=4))
    items = [draw(cbor_items(depth + 1)) for _ in range(n * (2 if kind == "map" else 1))]
    if kind == "map":  # text keys, so the decoder accepts every map
        items = [cbor2.dumps("k%d" % i) if i % 2 == 0 else items[i] for i in range(len(items))]
    major = 4 if kind == "array" else 5
    if draw(st.booleans()):
        return _head(major, n) + b"".join(items)
    return bytes([(major << 5) | 31]) + b"".join(items) + b"\xff"


@PROPS
@given(cbor_items(), st.binary(max_size=5))
def test_scanner_finds_the_decoders_end(item, after):
    obj, end = codec.decode_prefix(item + after, 0)
    assert end == len(item)
    g = new_gateway(max_message_bytes=65536)
    g.receive_data(item + after)
    assert g._scan() == len(item)
    # fed one byte at a time, the end is found exactly when the last byte arrives
    g = new_gateway(max_message_bytes=65536)
    for i in range(len(item)):
        g.receive_data(item[i:i + 1])
        assert g._scan() == (len(item) if i == len(item) - 1 else None)


def test_byte_at_a_time_decodes_once():
    calls = []
    real = sync.codec.decode_prefix

    def counting(data, offset=0):
        calls.append(offset)
        return real(data, offset)

    e, g = ready_pair(sync.Codec(sync.codec.dumps, counting))
    recs = [Record(s, s, None, b"v" * 200) for s in range(1, 21)]
    data = e.send(batch_from_records("t", recs))
    calls.clear()
    for i in range(len(data)):
        g.receive_data(data[i:i + 1])
        got = g.next_event()
        assert (got is NEED_DATA) == (i < len(data) - 1)
    assert len(calls) == 1 and records_of(got) == recs
