"""The sender's rules (edgeline.sender): what a WELCOME mark and an ACK mean for the
outbox, and what is sent next -- every case as a table row. Plain functions; CPython and
MicroPython (docs/spec/wire.md, "Sender rules")."""
from edgeline.errors import RemoteProtocolError
from edgeline.log import RingLog
from edgeline.outbox import EVICTED, Outbox
from edgeline.sender import (ACKNOWLEDGE, GATEWAY_BEHIND, GATEWAY_LOST, IN_STEP, PAST_END,
                             TopicSender)
from edgeline.sync import Batch, Gap
from support import fill, raises, rmtree, tempdir

_NAMES = ("IN_STEP", "ACKNOWLEDGE", "GATEWAY_BEHIND", "PAST_END")


def _describe(ev):
    # A message as a short tuple: ("gap", first, last, reason), ("batch", first, last), None.
    if ev is None:
        return None
    if type(ev) is Gap:
        return ("gap", ev.first, ev.last, ev.reason)
    assert type(ev) is Batch
    return ("batch", ev.first_seq, ev.first_seq + len(ev.entries) - 1)


def _session(s, mark):
    # What an uplink does on WELCOME: the code, and the cursor write it asks for.
    code = s.welcome(mark)
    if code == ACKNOWLEDGE:
        s.outbox.ack(s.mark)
    return code


def _check_rows(lg, rows):
    for i in range(len(rows)):
        acked, mark, code, acked_after, message = rows[i]
        ob = Outbox(lg, "c%d" % i)
        ob.ack(acked)
        s = TopicSender("t", ob)
        got = _session(s, mark)
        row = (acked, mark)
        assert got == code, (row, _NAMES[got])
        assert ob.acked == acked_after, (row, ob.acked)
        assert _describe(s.next_message(5, 4096)) == message, (row, _describe(s.next_message(5, 4096)))
        assert (s.stalled is not None) == (code == PAST_END), row
        assert s.owes == (message is not None), row
        ob.close()


def test_welcome_mark_against_the_cursor():
    d = tempdir("snd")
    lg = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    fill(lg, 30)
    try:
        _check_rows(lg, [
            # acked, mark -> code, cursor after, next message
            (0, 0, IN_STEP, 0, ("batch", 1, 5)),  # a fresh node
            (10, 10, IN_STEP, 10, ("batch", 11, 15)),  # mark = cursor
            (10, 20, ACKNOWLEDGE, 20, ("batch", 21, 25)),  # between cursor and end: an ACK was lost
            (10, 30, ACKNOWLEDGE, 30, None),  # the gateway holds everything
            (30, 30, IN_STEP, 30, None),
            (10, 5, GATEWAY_BEHIND, 10, ("gap", 6, 10, GATEWAY_LOST)),  # behind the cursor
            (30, 0, GATEWAY_BEHIND, 30, ("gap", 1, 30, GATEWAY_LOST)),  # the gateway lost all
            (10, 31, PAST_END, 10, None),  # past the log's end: the log was wiped
            (0, 500, PAST_END, 0, None),
        ])
    finally:
        lg.close()
        rmtree(d)


def test_welcome_mark_against_an_evicted_range():
    d = tempdir("snd")
    lg = RingLog(d, segment_bytes=256, budget_bytes=768, full_policy="drop_oldest")
    fill(lg, 60)
    f = lg.first_seq  # 1 .. f-1 were evicted unsent
    assert f > 8 and lg.last_seq == 60
    try:
        _check_rows(lg, [
            (0, 0, IN_STEP, 0, ("gap", 1, f - 1, EVICTED)),
            (0, 3, ACKNOWLEDGE, 3, ("gap", 4, f - 1, EVICTED)),  # the mark inside the evicted range
            (0, f - 1, ACKNOWLEDGE, f - 1, ("batch", f, f + 4)),
            (0, f + 2, ACKNOWLEDGE, f + 2, ("batch", f + 3, f + 7)),  # past it
            (5, 2, GATEWAY_BEHIND, 5, ("gap", 3, 5, GATEWAY_LOST)),  # the loss first, then the eviction
            (f + 3, 4, GATEWAY_BEHIND, f + 3, ("gap", 5, f + 3, GATEWAY_LOST)),
            (0, 61, PAST_END, 0, None),
        ])
    finally:
        lg.close()
        rmtree(d)


def _after(s, seq):
    # What an uplink does with an ACK: the code, and the cursor write it asks for.
    code = s.on_ack(seq)
    if code == ACKNOWLEDGE:
        s.outbox.ack(s.mark)
    return code


def test_ack_of_a_batch():
    d = tempdir("snd")
    lg = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    fill(lg, 30)
    try:
        rows = [
            # ACK for BATCH 11..15 (cursor 10) -> code, cursor after, next message; None: refused
            (15, ACKNOWLEDGE, 15, ("batch", 16, 20)),  # taken
            (20, ACKNOWLEDGE, 20, ("batch", 21, 25)),  # the gateway held more already
            (7, GATEWAY_BEHIND, 10, ("gap", 8, 10, GATEWAY_LOST)),  # its mark fell behind
            (9, GATEWAY_BEHIND, 10, ("gap", 10, 10, GATEWAY_LOST)),
            (10, None, 10, None),  # refused a batch that continues its mark
            (12, None, 10, None),  # took part of it
            (31, PAST_END, 10, None),
        ]
        for i in range(len(rows)):
            seq, code, acked_after, message = rows[i]
            ob = Outbox(lg, "a%d" % i)
            ob.ack(10)
            s = TopicSender("t", ob)
            assert _session(s, 10) == IN_STEP
            assert _describe(s.next_message(5, 4096)) == ("batch", 11, 15)
            if code is None:
                e = raises(RemoteProtocolError, s.on_ack, seq)
                assert "acknowledged %d for seqs 11..15" % seq in str(e), seq
            else:
                assert _after(s, seq) == code, (seq, _NAMES[code])
                assert ob.acked == acked_after, seq
                assert _describe(s.next_message(5, 4096)) == message, seq
            ob.close()
    finally:
        lg.close()
        rmtree(d)


def test_gateway_lost_gap_then_the_stream_goes_on():
    d = tempdir("snd")
    lg = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    fill(lg, 12)
    ob = Outbox(lg)
    try:
        ob.ack(10)
        s = TopicSender("t", ob)
        assert _session(s, 5) == GATEWAY_BEHIND and s.owes
        assert _describe(s.next_message(5, 4096)) == ("gap", 6, 10, GATEWAY_LOST)
        raises(RemoteProtocolError, s.on_ack, 5)  # a gateway that does not take the GAP
        assert _describe(s.next_message(5, 4096)) == ("gap", 6, 10, GATEWAY_LOST)
        assert _after(s, 3) == GATEWAY_BEHIND  # it lost more meanwhile: report from there
        assert _describe(s.next_message(5, 4096)) == ("gap", 4, 10, GATEWAY_LOST)
        assert _after(s, 10) == IN_STEP and ob.acked == 10
        assert _describe(s.next_message(5, 4096)) == ("batch", 11, 12)
        assert _after(s, 12) == ACKNOWLEDGE and ob.acked == 12
        assert not s.owes and s.next_message(5, 4096) is None
    finally:
        lg.close()
        rmtree(d)


def test_no_session_unsolicited_acks_cancel_and_a_new_session():
    d = tempdir("snd")
    lg = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    fill(lg, 20)
    ob = Outbox(lg)
    try:
        s = TopicSender("t", ob)
        assert s.owes and s.mark is None and s.next_message(5, 4096) is None  # no session yet
        assert _session(s, 0) == IN_STEP
        assert _after(s, 4) == ACKNOWLEDGE and ob.acked == 4  # nothing in flight: any mark goes
        assert _describe(s.next_message(5, 4096)) == ("batch", 5, 9)
        s.cancel()  # not sent after all: the next ACK is not checked against it
        assert _after(s, 4) == IN_STEP
        assert _after(s, 25) == PAST_END and "ends at 20" in s.stalled and not s.owes
        s.end_session()
        assert s.stalled is None and s.mark is None and s.owes
        assert _session(s, 6) == ACKNOWLEDGE and ob.acked == 6  # decided again per WELCOME
        assert _describe(s.next_message(100, 4096)) == ("batch", 7, 20)
    finally:
        lg.close()
        rmtree(d)
