"""The sending side of the sync protocol, sans-IO: what an edge sends next, and what the
gateway's marks and ACKs mean for its outbox (docs/spec/wire.md, "Sender rules").

Theory of operation
-------------------
One ``TopicSender`` per topic an edge sends, over that topic's ``Outbox``. It does no I/O
of its own choosing: it reads the outbox (which reads the log) and returns events and
decisions; the caller -- the agent's asyncio uplink, a board's blocking one -- moves the
bytes through its ``EdgeConnection``, writes the outbox cursor, retries and schedules.

A session, per topic:

    code = s.welcome(conn.marks.get(name, 0))   # after WELCOME: where to resume
    if code == ACKNOWLEDGE: outbox.ack(s.mark)  # the gateway holds more than the cursor says
    while s.owes:
        ev = s.next_message(max_records, max_bytes)  # a GAP or a BATCH, or None
        ... send conn.send(ev), receive the ACK for the topic ...
        code = s.on_ack(ack.seq)                # and again: ACKNOWLEDGE -> outbox.ack(s.mark)

What a mark means (``welcome`` and ``on_ack`` return one of these codes; ``s.mark`` is the
gateway's mark as last heard):

* ``IN_STEP`` -- the mark is the outbox cursor: send what follows it.
* ``ACKNOWLEDGE`` -- the mark is past the cursor and within the log: the gateway holds
  those seqs (an ACK that was lost, a cursor write a power cut prevented): acknowledge
  the outbox up to ``s.mark``; nothing is resent.
* ``GATEWAY_BEHIND`` -- the mark is below the cursor: the gateway lost seqs it had
  acknowledged (restored from a backup). The cursor never rewinds; the next message is
  ``GAP(mark + 1, cursor, gateway_lost)`` so the gateway's accounting is complete, and the
  stream goes on after it.
* ``PAST_END`` -- the mark is past the log's end: this log cannot be the one the gateway
  acknowledged (the same incarnation, restored from an older copy; a wiped or replaced
  log has a new incarnation, which the gateway keeps apart: mark 0). Records sent now
  would be taken for duplicates of the old ones and dropped. The topic stops for the
  session: ``s.stalled`` says why in one line, ``next_message`` gives nothing and nothing
  is acknowledged. The caller surfaces it (the agent in its status and log, a board as
  an ``UplinkError``); the other topics go on. It is decided again at the next WELCOME.

Otherwise the next message is a GAP when the outbox reports missing seqs after the
cursor (evicted, expired, corrupt: ``outbox.gap_reason``), else a BATCH of the records
``outbox.peek`` returns.

An ACK answers the message in flight. The receiver rules (wire.md W1-W3) allow only two
answers to a message of seqs first..last: at least ``last`` (taken, or held already), or
below ``first - 1`` (the gateway's mark is lower: resume from there, ``GATEWAY_BEHIND``).
Anything between -- the gateway refusing a message that continues its own mark, such as
its own gateway_lost GAP -- is a gateway breaking the protocol: ``RemoteProtocolError``,
rather than sending the same message for ever.
"""
from .errors import RemoteProtocolError
from .sync import Gap, batch_from_records

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# The GAP reason of the sender's own (wire.md, GAP); the outbox's are outbox.EVICTED,
# EXPIRED and CORRUPT (Outbox.gap_reason).
GATEWAY_LOST = "gateway_lost"  # acknowledged by the gateway, which no longer holds them

# What the gateway's mark means for a topic (TopicSender.welcome and on_ack).
IN_STEP = const(0)
ACKNOWLEDGE = const(1)
GATEWAY_BEHIND = const(2)
PAST_END = const(3)


class TopicSender:
    """TopicSender(name, outbox): the sending rules of one topic; see the module."""

    def __init__(self, name, outbox):
        self.name = name
        self.outbox = outbox
        self.mark = None  # the gateway's mark as last heard; None: no session
        self.stalled = None  # one line: why nothing of the topic is sent this session
        self._first = 0  # seqs of the message in flight; 0: none
        self._last = 0

    def welcome(self, mark):
        """A new session: the gateway's mark from WELCOME (0 for a topic it does not
        name). Returns IN_STEP, ACKNOWLEDGE, GATEWAY_BEHIND or PAST_END."""
        self.end_session()
        return self._heard(mark)

    def end_session(self):
        """The session ended: nothing is in flight, no mark is known."""
        self.mark = None
        self.stalled = None
        self._first = self._last = 0

    @property
    def owes(self):
        """True when a message of this topic is due (before a session: records or gaps
        after the cursor)."""
        if self.stalled is not None:
            return False
        ob = self.outbox
        return ob.depth > 0 or (self.mark is not None and self.mark < ob.acked)

    def next_message(self, max_records, max_bytes):
        """The next GAP or BATCH for the topic, or None when nothing is due (or no
        session, or stalled). A BATCH holds at most max_records records and about
        max_bytes of values (outbox.peek). The event is then in flight until ``on_ack``
        or ``cancel``."""
        if self.stalled is not None or self.mark is None:
            return None
        ob = self.outbox
        acked = ob.acked
        if self.mark < acked:
            ev = Gap(self.name, self.mark + 1, acked, GATEWAY_LOST)
            self._first, self._last = ev.first, ev.last
            return ev
        g = ob.gap()
        if g is not None:
            self._first, self._last = g[0], g[1]
            return Gap(self.name, g[0], g[1], ob.gap_reason(g[0]))
        recs = ob.peek(max_records, max_bytes)
        if not recs:
            return None
        self._first = recs[0].seq
        self._last = recs[-1].seq
        return batch_from_records(self.name, recs)

    def cancel(self):
        """The message ``next_message`` returned was not sent."""
        self._first = self._last = 0

    def on_ack(self, seq):
        """The gateway's ACK for the topic. Returns IN_STEP, ACKNOWLEDGE (then
        ``outbox.ack(self.mark)``), GATEWAY_BEHIND or PAST_END; RemoteProtocolError for
        an answer the receiver rules do not allow (see the module)."""
        first = self._first
        last = self._last
        self._first = self._last = 0
        if first and first - 1 <= seq < last:
            raise RemoteProtocolError("topic %s: the gateway acknowledged %d for seqs %d..%d, which continue its"
                                      " mark" % (self.name, seq, first, last))
        return self._heard(seq)

    def _heard(self, seq):
        ob = self.outbox
        end = ob.log.last_seq
        self.mark = seq
        if seq > end:
            self.stalled = ("topic %s: the gateway holds up to seq %d of this log's incarnation but the log ends at"
                            " %d: it was restored from an older copy; nothing of the topic is sent (the gateway would drop seqs up to %d as"
                            " duplicates)" % (self.name, seq, end, seq))
            return PAST_END
        acked = ob.acked
        if seq < acked:
            return GATEWAY_BEHIND
        return ACKNOWLEDGE if seq > acked else IN_STEP
