"""Outbox: durable cursor, peek/ack, gaps and depth (both runtimes)."""
import os
import struct

from edgeline.errors import ConfigError
from edgeline.log import RingLog
from edgeline.outbox import Outbox, pack_cursor_slot, parse_cursor
from support import fill, raises, rmtree, tempdir


def open_log(d, **kw):
    opts = {"segment_bytes": 256, "budget_bytes": 1 << 20}
    opts.update(kw)
    return RingLog(d, **opts)


def test_peek_ack_in_order_and_depth():
    d = tempdir("ob")
    log = open_log(d)
    ob = Outbox(log, "uplink")
    assert ob.acked == 0 and ob.depth == 0 and ob.peek() == [] and ob.gap() is None
    fill(log, 30)
    assert ob.depth == 30
    recs = ob.peek(10)
    assert [r.seq for r in recs] == list(range(1, 11))
    assert ob.peek(10) == recs  # peek does not move the cursor
    ob.ack(7)
    assert ob.acked == 7 and ob.depth == 23
    assert ob.peek(3)[0].seq == 8
    ob.ack(5)  # never rewinds
    assert ob.acked == 7
    e = raises(ConfigError, ob.ack, 31)
    assert "ends at 30" in str(e)
    log.close()
    rmtree(d)


def test_peek_commits_before_sending():
    # a record is never handed out before it is durable here
    d = tempdir("ob")
    log = open_log(d, sync="none")
    ob = Outbox(log, "uplink")
    fill(log, 5)
    assert log.durable_seq == 0
    assert len(ob.peek(10)) == 5
    assert log.durable_seq == 5
    log.close()
    rmtree(d)


def test_cursor_survives_reopen():
    d = tempdir("ob")
    log = open_log(d)
    ob = Outbox(log, "uplink")
    fill(log, 20)
    for seq in (3, 9, 15):
        ob.ack(seq)
    log.close()
    log = open_log(d)
    ob = Outbox(log, "uplink")
    other = Outbox(log, "peer-b")
    assert ob.acked == 15 and other.acked == 0
    assert ob.peek(1)[0].seq == 16
    log.close()
    rmtree(d)


def test_torn_cursor_write_keeps_previous_value():
    # I7: each update goes to the slot not holding the current value
    d = tempdir("ob")
    log = open_log(d)
    ob = Outbox(log, "uplink")
    fill(log, 20)
    ob.ack(4)
    ob.ack(11)
    log.close()
    p = d + "/uplink.cur"
    data = bytearray(open(p, "rb").read())
    assert len(data) == 32
    assert parse_cursor(data)[0] == 11
    cur_slot = parse_cursor(data)[2]
    # tear the slot holding the newest value: the older one (4) must be what we read
    data[cur_slot * 16 + 3] ^= 0xFF
    f = open(p, "wb")
    f.write(data)
    f.close()
    log = open_log(d)
    assert Outbox(log, "uplink").acked == 4
    log.close()
    # both slots bad: nothing acknowledged (never a value out of thin air)
    f = open(p, "wb")
    f.write(b"\xff" * 32)
    f.close()
    log = open_log(d)
    assert Outbox(log, "uplink").acked == 0
    log.close()
    rmtree(d)


def test_cursor_slot_format():
    s = pack_cursor_slot(123456789, 7)
    acked, gen, crc = struct.unpack("<QII", s)
    assert (acked, gen) == (123456789, 7)
    assert parse_cursor(bytes(16) + s) == (123456789, 7, 1)
    assert parse_cursor(pack_cursor_slot(5, 9) + pack_cursor_slot(6, 8)) == (5, 9, 0)
    assert parse_cursor(b"") == (0, 0, 1)


def test_gap_after_eviction_then_records():
    d = tempdir("ob")
    log = open_log(d, budget_bytes=768, full_policy="drop_oldest")
    ob = Outbox(log, "uplink")
    fill(log, 60)
    first = log.first_seq
    assert first > 1
    assert ob.peek(5) == []  # a gap comes first
    assert ob.gap() == (1, first - 1)
    assert ob.depth == 60
    ob.ack(first - 1)  # the receiver was told
    assert ob.gap() is None
    assert ob.peek(1)[0].seq == first
    log.close()
    rmtree(d)


def test_gap_counts_only_unacknowledged_evictions():
    d = tempdir("ob")
    log = open_log(d, budget_bytes=768, full_policy="drop_oldest")
    ob = Outbox(log, "uplink")
    fill(log, 10)
    ob.ack(10)
    fill(log, 60)
    assert log.evicted == log.first_seq - 1 - 10
    assert ob.gap() == (11, log.first_seq - 1)
    log.close()
    rmtree(d)


def test_two_consumers_hold_segments_until_both_ack():
    d = tempdir("ob")
    log = open_log(d, budget_bytes=768, full_policy="reject")
    a = Outbox(log, "uplink")
    b = Outbox(log, "peer")
    fill(log, 15)
    a.ack(15)
    # b has not acknowledged: space is not reclaimable, reject policy pushes back
    from edgeline.errors import LogFull

    n = 0
    try:
        for _ in range(100):
            fill(log, 1)
            n += 1
    except LogFull:
        pass
    assert log.reclaimed == 0
    b.ack(15)
    fill(log, 3)
    assert log.reclaimed > 0
    log.close()
    rmtree(d)


def test_bad_outbox_name():
    d = tempdir("ob")
    log = open_log(d)
    e = raises(ConfigError, Outbox, log, "../evil")
    assert "outbox name" in str(e)
    raises(ConfigError, Outbox, log, "")
    log.close()
    rmtree(d)


def test_max_bytes_limits_batch():
    d = tempdir("ob")
    log = open_log(d)
    ob = Outbox(log, "uplink")
    fill(log, 50)
    recs = ob.peek(100, 40)
    total = 0
    for r in recs[:-1]:
        total += len(r.value)
    assert total < 40 and len(recs) >= 1
    assert "uplink.cur" not in os.listdir(d)  # no file until the first ack
    ob.ack(1)
    assert os.stat(d + "/uplink.cur")[6] == 16  # slot 0 only, until the second ack
    ob.ack(2)
    assert os.stat(d + "/uplink.cur")[6] == 32
    log.close()
    rmtree(d)


def test_gap_reason_names_the_likelier_cause():
    d = tempdir("ob")
    log = open_log(d, budget_bytes=768, full_policy="drop_oldest")
    ob = Outbox(log, "uplink")
    fill(log, 60)
    assert ob.gap_reason(1) == "evicted"
    assert ob.gap_reason(log.first_seq) == "corrupt"  # a hole inside what the log holds
    log.close()
    rmtree(d)
