"""The sync session's per-record work on a board (issue 16; docs/design-alloc-free-32bit.md,
"The sync session"): send_into (the message encoded into the caller's buffer), the
codec encoding into a reused buffer, and the timestamps of BATCH and DATA worked out
from their bytes where they are heap ints (sync.TS_BYTES: 32-bit ports). Each is
checked against the general path: the same bytes on the wire, the same records in the
log. The allocation figures are pinned by tests/firmware/test_mp32.py. Plain
functions; CPython and MicroPython (both lanes)."""
from edgeline import codec, sync
from edgeline.errors import RemoteProtocolError
from edgeline.inbox import append_data
from edgeline.log import Record, RingLog
from edgeline.sync import (NEED_DATA, Ack, Auth, Batch, Challenge, Data, EdgeConnection, Gap, GatewayConnection,
                           Hello, Pull, Welcome, batch_from_records, records_of)
from support import raises, rmtree, tempdir

KEY = bytes(range(32))
NODE = "node-1"
U64 = 1 << 64
HLC = 1700000000000 << 16

# ts deltas around every CBOR width and the small-delta shortcut's bounds
DELTAS = [0, 1, 23, 24, 255, 256, 65535, 65536, (1 << 29) - 1, 1 << 29, (1 << 29) + 65536, (1 << 30) - 1,
          1 << 30, (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 62) + 5]
# bases at the ends of the range and where the top 24 bits or a 16-bit piece is about to carry
BASES = [0, 1, HLC, HLC - 1, HLC | 0xFFFFFFFFFF, HLC | 0xFFFF, HLC | 0xFFFFFFFF, 1 << 63, U64 - 1]


def _nonce(n):
    return bytes(range(0xC0, 0xC0 + n))


def _ready(edge_max=1 << 20):
    e = EdgeConnection(NODE, KEY, _nonce, max_message_bytes=edge_max)
    g = GatewayConnection({NODE: KEY}.get, _nonce)
    for src, dst, ev in ((e, g, Hello()), (g, e, Challenge()), (e, g, Auth()), (g, e, Welcome())):
        dst.receive_data(src.send(ev))
        assert type(dst.next_event()) is type(ev)
    return e, g


def _both(fn):
    # fn with the timestamps as ints (64-bit ports), then from their bytes (32-bit ports)
    was = sync.TS_BYTES[0]
    try:
        for on in (False, True):
            sync.TS_BYTES[0] = on
            fn()
    finally:
        sync.TS_BYTES[0] = was


def _records(base, deltas, first=1):
    out = []
    for i in range(len(deltas)):
        ts = base + deltas[i]
        if 0 <= ts < U64:
            key = None if i % 3 else bytes([i]) * (i * 7 % 40)
            out.append(Record(first + len(out), ts, key, bytes([0x41 + i % 26]) * (i * 37 % 30)))
    return out


def test_send_into_is_the_bytes_send_gives():
    e, g = _ready()
    out = bytearray()  # one buffer for every message, as a board's uplink keeps
    for ev in (Batch("t", 1, HLC, [[0, None, b"v" * 300], [-5, b"k", b""], [1 << 33, None, b"w"]]), Gap("t", 3, 4, "evicted"),
               Pull("cmd", 0, 8), Batch("t", 5, 0, [[0, None, b"x"]] * 40)):
        data = e.send(ev)
        assert type(data) is bytes and data == codec.dumps([ev.TYPE] + ev.values())
        view = e.send_into(ev, out)
        assert bytes(view) == data
        g.receive_data(view)  # the gateway reads it as the event
        assert g.next_event() == ev
        assert g.next_event() is NEED_DATA
        view = None  # no view held when the buffer is used again
    for ev in (Ack("t", 7), Data("cmd", 1, HLC, [[1, None, b"d"]])):
        data = g.send(ev)
        assert bytes(g.send_into(ev, bytearray(b"old"))) == data
        e.receive_data(data)
        assert e.next_event() == ev


def test_dump_into_reuses_the_buffer_for_the_same_bytes():
    buf = bytearray()
    for v in ([5, "t", 1, HLC, [[0, None, b"v" * 1000]]], [1, [2, 3]], {"a": [b"", None, -1, 1.5]}, "x" * 300,
              [0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, U64 - 1, -U64, U64, (1 << 70)]):
        codec.dump_into(buf, v)
        assert bytes(buf) == codec.dumps(v)
        assert codec.loads(buf) == v


def test_batch_entries_are_the_same_from_the_ts_bytes():
    def run():
        e, g = _ready()
        for base in BASES:
            for i in range(0, len(DELTAS), 4):  # a few records a batch: a board's heap
                deltas = [0]
                for d in DELTAS[i:i + 4]:
                    deltas.append(d)
                    deltas.append(-d)
                recs = _records(base, deltas, first=7)
                b = batch_from_records("temp", recs)
                lists = [[r.ts - recs[0].ts, r.key, r.value] for r in recs]
                assert b.entries == lists, base
                assert bytes(e.send_into(b, bytearray())) == e.send(Batch("temp", 7, recs[0].ts, lists))
                g.receive_data(e.send(b))
                assert records_of(g.next_event()) == recs

    _both(run)


def test_append_data_stores_the_same_records_from_the_ts_bytes():
    def one(base):
        ents = []
        for i in range(len(DELTAS)):
            for delta in (DELTAS[i], -DELTAS[i]):
                if 0 <= base + delta < U64:
                    ents.append([delta, None if i % 2 else ("k%d" % i).encode(), bytes([0x30 + i]) * (i % 8)])
        d = tempdir("tsb")
        try:
            # small segments: records begin new ones (their first_ts from the stamp)
            lg = RingLog(d + "/l", segment_bytes=512, budget_bytes=1 << 20, sync="none")
            lg.append(b"held")  # seq 1 held already: the first DATA's first entry is skipped
            want = []
            for i in range(0, len(ents), 6):  # a pull loop's DATAs, a few records each
                data = Data("cmd", 1 + i, base, ents[i:i + 6])
                new = records_of(data, 1 if i == 0 else 0)
                assert append_data(lg, data) == len(new)
                want += new
            assert lg.read(2, 1000, 1 << 20) == want, base
            lg.close()
            lg = RingLog(d + "/l", segment_bytes=512, budget_bytes=1 << 20, sync="none")
            assert lg.read(2, 1000, 1 << 20) == want  # durable, and as read back from disk
            lg.close()
        finally:
            rmtree(d)

    def run():
        for base in BASES:
            one(base)

    _both(run)


def test_data_ts_range_is_checked_at_both_ends():
    for base, delta, ok in ((0, -1, False), (U64 - 1, 1, False), (U64 - 1, 0, True), (5, -5, True),
                            (1 << 63, (1 << 63) - 1, True), (1 << 63, 1 << 63, False), (HLC, -HLC - 1, False)):
        e, _ = _ready()
        e.receive_data(codec.dumps([9, "cmd", 1, base, [[0, None, b"a"], [delta, None, b"b"]]]))
        if ok:
            assert records_of(e.next_event())[1].ts == base + delta
        else:
            err = raises(RemoteProtocolError, e.next_event)
            assert str(err).startswith("malformed:"), str(err)


def test_heads_of_every_width_one_byte_at_a_time():
    # The scanner reads 1- and 2-byte lengths from the buffer's bytes (4- and 8-byte
    # ones as before: messages that large do not fit a board's heap).
    e, g = _ready()
    ents = [[0, None, b"a" * 23], [1, b"k" * 24, b"b" * 255], [-70000, None, b"c" * 256], [1 << 40, None, b"d" * 300]]
    msg = g.send(Data("cmd", 1, HLC, ents))
    for i in range(len(msg)):
        e.receive_data(msg[i:i + 1])
        ev = e.next_event()
        assert (ev is NEED_DATA) == (i < len(msg) - 1), i
    assert ev == Data("cmd", 1, HLC, ents)
