"""The edge's uplink: its logs' outboxes, sent to the gateway over HTTP or MQTT (asyncio).

Failure modes first
-------------------
* The gateway is down, refuses, times out or answers 5xx: the session is dropped and the
  uplink backs off (``RetryPolicy``: exponential, capped, jittered); records stay in the
  logs. After ``CircuitBreaker.failures`` failures in a row it stops trying for
  ``open_ms``, then makes one attempt (half-open): success closes the breaker, failure
  opens it again.
* The gateway forgot the session (idle, restarted): it answers with a new session id;
  the uplink starts a new session at once (HELLO), not counted as a failure.
* The gateway answers ERROR (bad proof, unknown node, internal): a failure, as above;
  the ERROR's line is ``status()["last_error"]``.
* A batch is over the gateway's limits (``LocalProtocolError`` from ``send``): halved and
  tried again at once. A single record over them stalls its topic (``status()``), not
  the others.
* A response is lost after the gateway stored the batch: the next WELCOME's mark (or
  ACK) covers it; it is never resent, never stored twice.
* Records were evicted before they were sent: a GAP for exactly those seqs, then the
  records after them.
* The gateway's mark is below this node's cursor (it lost data it had acknowledged): a
  warning, and a GAP ``gateway_lost`` from its mark to the cursor so the stream can
  continue; nothing is rewound.
* The gateway's mark is past the log's end (the log was restored from an older copy; a
  wiped or replaced log has a new incarnation, which the HELLO names, and starts at mark 0): the topic
  sends nothing in that session (its records would be dropped as duplicates), logged
  as an error and shown as the topic's ``error`` in ``status()``; the other topics go on.
  A gateway whose ACK contradicts the receiver rules is a failed exchange.
* Over MQTT (transports/mqtt.py): the broker connection breaks, or an answer does not come
  within the timeout: the exchange fails as above and the next session starts on a
  fresh connection; ERROR ``unexpected`` to a BATCH (the gateway restarted) is a
  forgotten session.

Guarantees: only an ACK moves an outbox cursor (wire.md W2), so a record leaves the
log's "owed" set only once the gateway has it durably; every seq reaches the gateway
exactly once, as a record or inside a GAP.

Theory of operation
-------------------
``run()`` is one loop. A *session* is a fresh ``EdgeConnection`` and the transport's
conversation (transports/: over HTTP the gateway's session id, ``X-Edgeline-Session``;
over MQTT the broker connection it began on): HELLO -> CHALLENGE and AUTH -> WELCOME are
two exchanges. What to send and what a mark means are the core's rules
(``edgeline.sender``, one ``TopicSender`` per topic, the same a board runs): on WELCOME
each topic's outbox is reconciled with the gateway's mark. Then each *round* builds one
request, a CBOR sequence of up to one message per topic, visiting the topics round robin
(the first topic of a round rotates, so a busy topic cannot starve the others): the
topic's next message, a GAP or a BATCH. Connections use the C-accelerated CBOR
(``fastcbor``) through ``wirecomp.EdgeCodec``: the HELLO offers the encodings of
``compression`` (none; zstd: zstd-cbor-1; columnar: zstd-columnar-1, columnar-1), and
once the WELCOME accepts one every BATCH goes out compressed (docs/spec/wire.md,
"Compressed batches"); a gateway that accepts none gets plain BATCHes. The request body stays under ``max_batch_bytes`` (and
the gateway's ``max_message_bytes``); every ACK in the response acknowledges the
outbox. The loop keeps sending rounds while anything is owed, and otherwise waits
``interval_ms`` -- or less, when ``notify()`` (new records) or ``sync_now()`` is called.

With a ``Downlink`` (``downlink.py``: the cloud-to-edge topics), the same loop pulls: a
pull that is due counts as something owed, and after the batches of a round the due
topics' PULLs go as one more request of the same session; the wait between rounds is
cut short when a pull falls due. ``sync_now()`` pulls at once too.

A bandwidth limit is a token bucket over request body bytes holding at most one
second's worth: a request of n bytes waits until n tokens have accumulated (the bucket
may go into debt for a request larger than a second's worth, so a small limit still
makes progress). Rounds are also kept to about one second's worth of bytes, so the
limit is met smoothly rather than in bursts.

The core's log and outbox are called directly from the event loop: they are the same
objects producers append to, and they are not thread-safe.
"""
import asyncio
import logging
import os
import random
import time

import aiohttp

from edgeline import sync
from edgeline.errors import EdgelineError, LocalProtocolError, RemoteProtocolError
from edgeline.sender import ACKNOWLEDGE, GATEWAY_BEHIND, GATEWAY_LOST, PAST_END, TopicSender

from .. import wirecomp
from .config import CircuitBreaker, RetryPolicy
from ..transports import TransportError
from ..transports.http import HttpEdgeTransport
from ..transports.http import one_line as _one_line
from ..transports.mqtt import MqttEdgeTransport

log = logging.getLogger("edgeline.uplink")

MQTT_ANSWER_TIMEOUT_MS = 10000  # over MQTT a lost request shows only as a missing answer


def _monotonic_ms():
    return int(time.monotonic() * 1000)


class UplinkError(Exception):
    """One exchange failed: the protocol, or an ERROR from the gateway (the transport's
    own failures are ``TransportError``). One line, as on a board (boards/common/uplink.py)."""


class _SessionLost(Exception):
    """The gateway no longer knows our session: start a new one at once."""


class TokenBucket:
    """Bytes per second with a burst of one second's worth; 0 means unlimited.

    ``delay_ms(n)`` takes n bytes from the bucket and returns how long to wait before
    sending them (0 when the bucket held them). Time comes in as ``now_ms``.
    """

    def __init__(self, rate_bytes_per_sec, now_ms):
        self.rate = rate_bytes_per_sec
        self.capacity = float(rate_bytes_per_sec)
        self.tokens = self.capacity
        self._now_ms = now_ms
        self._t = now_ms()

    def delay_ms(self, n):
        if self.rate <= 0:
            return 0
        t = self._now_ms()
        self.tokens = min(self.capacity, self.tokens + (t - self._t) * self.rate / 1000.0)
        self._t = t
        self.tokens -= n
        if self.tokens >= 0:
            return 0
        return int(-self.tokens * 1000.0 / self.rate) + 1


class _Topic:
    """One topic's sending state."""

    def __init__(self, name, ringlog, outbox):
        self.name = name
        self.log = ringlog
        self.outbox = outbox
        self.sender = TopicSender(name, outbox)  # what to send next, what the gateway's marks mean
        self.limit = None  # records per batch after halving (None: no halving yet)
        self.stalled = None  # why this topic cannot send (a record over the gateway's limits)
        self.bytes_sent = 0
        self.batches = 0
        self.records_sent = 0
        self.gaps_sent = 0
        self.last_ack_ms = None  # wall clock (ms since the epoch) of the last ACK that moved the cursor


class Uplink:
    """The sync loop of one edge to one gateway.

    ``topics`` maps a topic name to its ``(RingLog, Outbox)``: the edge_to_cloud and
    bidirectional topics. ``retry``/``breaker`` are the config's ``RetryPolicy`` and
    ``CircuitBreaker``. The exchanges travel over ``transport`` (transports/), by
    default an ``HttpEdgeTransport`` posting to ``url`` with ``http``, an
    ``aiohttp.ClientSession`` (one is made, and closed by ``run()``, if not given).
    ``now_ms`` (a monotonic clock in ms) and ``rand`` (in [0, 1)) may be replaced in tests.
    """

    def __init__(self, node_id, key, url, topics, retry=None, breaker=None, bandwidth_bytes_per_sec=0,
                 batch_records=1000, max_batch_bytes=256 * 1024, http=None, now_ms=_monotonic_ms,
                 rand=random.random, interval_ms=30000, request_timeout_ms=30000, max_message_bytes=1 << 20,
                 downlink=None, transport=None, hello_capabilities=None, compression="zstd"):
        if batch_records < 1 or max_batch_bytes < 1:
            raise ValueError("batch_records and max_batch_bytes must be at least 1")
        if compression not in wirecomp.OFFERS:
            raise ValueError("compression must be one of %s, not %r" % (", ".join(wirecomp.OFFERS), compression))
        self.node_id = node_id
        self._key = bytes(key)
        sync.EdgeConnection(node_id, self._key, os.urandom)  # checks node_id and key now, not at the first connect
        self.transport = transport if transport is not None else HttpEdgeTransport(url, http, request_timeout_ms)
        self.url = self.transport.url
        self._topics = [_Topic(name, lg, ob) for name, (lg, ob) in topics.items()]
        self.downlink = downlink  # a Downlink (downlink.py), or None: nothing to pull
        self.hello_capabilities = hello_capabilities  # a callable: more HELLO capabilities (table reports)
        self._by_name = {t.name: t for t in self._topics}
        self.retry = retry if retry is not None else RetryPolicy()
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.bandwidth_bytes_per_sec = bandwidth_bytes_per_sec
        self.batch_records = batch_records
        self.max_batch_bytes = max_batch_bytes
        self.interval_ms = interval_ms
        self.request_timeout_ms = request_timeout_ms
        self.max_message_bytes = max_message_bytes
        self._now_ms = now_ms
        self._rand = rand
        self._bucket = TokenBucket(bandwidth_bytes_per_sec, now_ms)
        self._wake = asyncio.Event()
        self._stopping = False
        self._paused = False
        self._forced = False  # sync_now(): skip the current wait, even an open breaker's
        self._conn = None  # EdgeConnection of the current session
        self._rr = 0  # the topic a round starts with
        self.state = "idle"
        self.failures = 0  # consecutive failed attempts
        self.total_failures = 0
        self.breaker_state = "closed"  # closed, open, half_open
        self._open_until_ms = None
        self._retry_at_ms = None
        self.last_error = None
        self.last_error_ms = None
        self.failing_since_ms = None  # now_ms() of the first failure of the current streak (health)
        self.refused = None  # the gateway's ERROR name refusing this node (bad_proof, unknown_node) until a WELCOME
        self.bytes_sent = 0  # request bodies, handshakes included
        self.requests = 0
        self.sessions = 0
        self.old_gateway = False  # the gateway speaks wire version 1 only (no incarnations)
        self.compression = compression  # edge.sync.compression: none, columnar, zstd (wirecomp.OFFERS)
        self.encoding = None  # the BATCH encoding of the current session (None: plain BATCH)
        self._wirecodec = None  # the session's wirecomp.EdgeCodec
        self.batches_by_encoding = {}  # compressed BATCHes sent, by encoding, since start

    # ------------------------------------------------------------------ control

    def pause(self):
        """Stop sending after the exchange in flight; records keep accumulating."""
        self._paused = True
        self._wake.set()

    def resume(self):
        self._paused = False
        self._wake.set()

    def sync_now(self):
        """Try at once: ends an idle wait, a backoff, and an open breaker's wait (the
        attempt is then the half-open one)."""
        self._forced = True
        if self.downlink is not None:
            self.downlink.force()
        self._wake.set()

    def notify(self):
        """New records were appended: end an idle wait (``interval_ms`` is for appends
        nobody notifies about)."""
        self._wake.set()

    def reattach(self, name, ringlog, outbox):
        """Topic ``name``'s log was reopened (the agent's recovery after a write error):
        send from ``ringlog`` through ``outbox`` from now on. The sender's session state
        (the gateway's mark, the message in flight) stays: the new outbox reads the same
        cursor file, and an ACK in flight lands on it."""
        t = self._by_name[name]
        t.log = ringlog
        t.outbox = outbox
        t.sender.outbox = outbox

    def stop(self):
        """Make ``run()`` return (after the exchange in flight, if any)."""
        self._stopping = True
        self._wake.set()

    @property
    def pending(self):
        """Seqs still owed to the gateway, over all topics (gaps included)."""
        return sum(t.outbox.depth for t in self._topics)

    def status(self):
        now = self._now_ms()
        if self._paused:
            state = "paused"
        else:
            state = self.state
        wait_until = self._open_until_ms if state == "open" else self._retry_at_ms if state == "backing_off" else None
        return {
            "state": state,
            "node_id": self.node_id,
            "gateway": self.url,
            "breaker": self.breaker_state,
            "failures": self.failures,
            "total_failures": self.total_failures,
            "next_attempt_in_ms": max(0, wait_until - now) if wait_until is not None else None,
            "last_error": self.last_error,
            "last_error_ms": self.last_error_ms,
            "failing_for_ms": now - self.failing_since_ms if self.failing_since_ms is not None else None,
            "refused": self.refused,
            "bytes_sent": self.bytes_sent,
            "requests": self.requests,
            "sessions": self.sessions,
            "old_gateway": self.old_gateway,
            "compression": self.compression,
            "encoding": self.encoding,  # plain, or the negotiated encoding; None before a WELCOME
            "batches_by_encoding": self._batches_by_encoding(),
            "bandwidth_bytes_per_sec": self.bandwidth_bytes_per_sec,
            "topics": {
                t.name: {
                    "acked": t.outbox.acked,
                    "pending": t.outbox.depth,
                    "last_seq": t.log.last_seq,
                    "incarnation": t.log.incarnation.hex(),  # the gateway's mark is of this log incarnation
                    "gateway_mark": t.sender.mark,
                    "last_ack_ms": t.last_ack_ms,
                    "bytes_sent": t.bytes_sent,
                    "batches": t.batches,
                    "records_sent": t.records_sent,
                    "gaps_sent": t.gaps_sent,
                    "error": t.stalled or t.sender.stalled,
                }
                for t in self._topics
            },
            "downlink": self.downlink.status() if self.downlink is not None else {},
        }

    # ------------------------------------------------------------------ the loop

    async def run(self):
        """Send until ``stop()``; never raises for a failed exchange."""
        await self.transport.start()
        try:
            while not self._stopping:
                if self._paused:
                    await self._wait(None)
                    continue
                if self.breaker_state == "open":
                    wait = self._open_until_ms - self._now_ms()
                    if wait > 0 and not self._forced:
                        self.state = "open"
                        await self._wait(wait)
                        continue
                    self.breaker_state = "half_open"
                if self._retry_at_ms is not None:
                    wait = self._retry_at_ms - self._now_ms()
                    if wait > 0 and not self._forced:
                        self.state = "backing_off"
                        await self._wait(wait)
                        continue
                    self._retry_at_ms = None
                self._forced = False
                if not self._owes():
                    self.state = "connected" if self._conn is not None else "idle"
                    # interval 0: records are sent as soon as notify() says they exist; do
                    # not poll (a wait of 0 would spin the loop).
                    wait = self.interval_ms or None
                    if self.downlink is not None:
                        due = self.downlink.due_in_ms()
                        wait = due if wait is None else min(wait, due)
                    await self._wait(wait)
                    continue
                try:
                    await self._attempt()
                except (UplinkError, TransportError, RemoteProtocolError, EdgelineError, aiohttp.ClientError,
                        asyncio.TimeoutError, OSError) as e:
                    self._failed(e)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - the loop must survive anything
                    log.exception("uplink: unexpected error")
                    self._failed(e)
        finally:
            self._conn = None
            self.state = "stopped"
            await self.transport.close()

    async def _wait(self, ms):
        self._wake.clear()
        if self._stopping:
            return
        try:
            if ms is None:
                await self._wake.wait()
            else:
                await asyncio.wait_for(self._wake.wait(), ms / 1000.0)
        except asyncio.TimeoutError:
            pass

    def _owes(self):
        for t in self._topics:
            if t.stalled is None and t.sender.owes:
                return True
        return self.downlink is not None and self.downlink.due()

    async def _attempt(self):
        """Connect if needed, then send rounds until nothing is owed (or a pause/stop)."""
        lost_once = False
        while True:
            try:
                if self._conn is None:
                    await self._connect()
                while self._owes() and not self._paused and not self._stopping:
                    if self._conn is None:  # a pull refused a topic, which ended the session
                        await self._connect()
                    sent = await self._round()
                    if self.downlink is not None and self.downlink.due():
                        sent = await self._pull_round() or sent
                    if not sent:
                        break
                    self._succeeded()
                if self._conn is None and not self._paused and not self._stopping:
                    await self._connect()  # the session a refused pull ended: stay connected
                if not self._owes():  # e.g. WELCOME's marks covered everything
                    self._succeeded()
                return
            except _SessionLost:
                self._drop_session()
                if lost_once:  # a gateway that forgets every session is failing
                    raise UplinkError("the gateway keeps forgetting the session")
                lost_once = True
                log.info("uplink: the gateway forgot the session; starting a new one")

    def _succeeded(self):
        if self.failures or self.breaker_state != "closed":
            log.info("uplink: gateway %s reachable again", self.url)
        self.failures = 0
        self.failing_since_ms = None
        self.breaker_state = "closed"
        self._open_until_ms = None
        self.state = "connected"

    def _failed(self, e):
        self._drop_session()
        line = _one_line(str(e) or type(e).__name__)
        if not isinstance(e, (UplinkError, TransportError)):
            line = "%s: %s" % (type(e).__name__, line)
        self.last_error = line
        self.last_error_ms = int(time.time() * 1000)
        now = self._now_ms()
        if self.failures == 0 or self.failing_since_ms is None:
            self.failing_since_ms = now
        self.failures += 1
        self.total_failures += 1
        b = self.breaker
        if self.breaker_state == "half_open" or (b.failures and self.failures >= b.failures):
            self.breaker_state = "open"
            self._open_until_ms = now + b.open_ms
            self._retry_at_ms = None
            self.state = "open"
            log.warning("uplink: %d failures in a row, circuit open for %d ms: %s", self.failures, b.open_ms, line)
        else:
            self._retry_at_ms = now + self.retry.delay_ms(self.failures - 1, self._rand())
            self.state = "backing_off"
            log.warning("uplink: exchange failed (%d in a row), retrying in %d ms: %s",
                        self.failures, self._retry_at_ms - now, line)

    def _drop_session(self):
        self._conn = None
        self._count_encodings()
        for t in self._topics:
            t.sender.end_session()
            t.limit = None

    # ------------------------------------------------------------------ exchanges

    async def _exchange(self, body, errors_ok=False):
        """Send body; the gateway's events. Raises UplinkError or _SessionLost; with
        errors_ok an ERROR from the gateway ends the list instead (the session is over)."""
        delay = self._bucket.delay_ms(len(body))
        if delay:
            await asyncio.sleep(delay / 1000.0)
        self.requests += 1
        self.bytes_sent += len(body)
        data = await self.transport.exchange(body)
        conn = self._conn
        conn.receive_data(data)
        events = []
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError as e:
                if str(e).startswith("bad_proof:"):  # the gateway's WELCOME proof: it holds another key
                    self.refused = "bad_proof"
                raise UplinkError("bad answer from the gateway: %s" % e) from None
            if ev is sync.NEED_DATA:
                break
            if type(ev) is sync.Error:
                name = sync.ERROR_NAMES[ev.code] if ev.code < len(sync.ERROR_NAMES) else "?"
                if self.transport.lost_session(ev.code):
                    raise _SessionLost()
                if name in ("bad_proof", "unknown_node"):
                    self.refused = name
                if errors_ok:
                    events.append(ev)
                    break
                raise UplinkError("gateway sent ERROR %s: %s" % (name, _one_line(ev.message)))
            events.append(ev)
        return events

    async def _connect(self):
        # "compaction": this agent takes compacted DATA of table topics (wire.md)
        caps = {"pull": True, "compaction": True} if self.downlink is not None else None
        encodings = wirecomp.offer(self.compression)  # compressed BATCHes (wire.md, "Compressed batches")
        if encodings:
            caps = dict(caps or {}, encodings=encodings)
        if self.hello_capabilities is not None:
            more = self.hello_capabilities()  # read now: a table report's two figures are of one moment
            if more:
                caps = dict(caps or {}, **more)
        # Each topic's log incarnation: the gateway keeps marks per (node, topic, incarnation),
        # so a wiped log's new seqs are never taken for the old log's (docs/spec/wire.md).
        incs = {t.name: t.log.incarnation for t in self._topics}
        for version in (None, 1):
            self.state = "connecting"
            self.transport.new_session()
            self._count_encodings()
            self._wirecodec = wirecomp.EdgeCodec()  # fastcbor's bytes; BATCHes compressed once negotiated
            self._conn = sync.EdgeConnection(self.node_id, self._key, os.urandom,
                                             max_message_bytes=self.max_message_bytes, codec=self._wirecodec.codec)
            self._wirecodec.conn = self._conn
            evs = await self._exchange(self._conn.send(sync.Hello(version=version, capabilities=caps,
                                                                  incarnations=incs)), errors_ok=True)
            if evs and type(evs[0]) is sync.Error:
                if version is None and evs[0].code == sync.ERR_UNSUPPORTED_VERSION:
                    # A gateway from before incarnations (wire version 1): speak its
                    # version. Every topic is then its legacy stream there; a wiped log
                    # is stopped by the sender rules (mark past the log's end), not lost.
                    if not self.old_gateway:
                        log.warning("uplink: the gateway speaks wire version 1 only (%s): syncing without log "
                                    "incarnations; upgrade the gateway", _one_line(evs[0].message))
                    self.old_gateway = True
                    continue
                ev = evs[0]
                name = sync.ERROR_NAMES[ev.code] if ev.code < len(sync.ERROR_NAMES) else "?"
                raise UplinkError("gateway sent ERROR %s: %s" % (name, _one_line(ev.message)))
            if version is None:
                self.old_gateway = False
            break
        if not evs or type(evs[0]) is not sync.Challenge:
            raise UplinkError("expected CHALLENGE, got %s" % _names(evs))
        evs = await self._exchange(self._conn.send(sync.Auth()))
        if not evs or type(evs[0]) is not sync.Welcome:
            raise UplinkError("expected WELCOME, got %s" % _names(evs))
        self.sessions += 1
        self.refused = None
        # the first of our encodings the gateway's WELCOME accepts; none (an older
        # gateway ignores the offer): plain BATCHes, as before
        encoding = wirecomp.choose(self.compression, evs[0].limits)
        if encoding is None and self.compression != "none" and self.encoding != "plain":
            log.info("uplink: the gateway accepts no compressed BATCH encoding (%s offered): sending plain BATCHes",
                     ", ".join(encodings or ()))
        self._wirecodec.encoding = encoding
        self.encoding = encoding or "plain"
        marks = self._conn.marks or {}
        for t in self._topics:
            self._heard(t, t.sender.welcome(marks.get(t.name, 0)), "WELCOME")
        self.state = "connected"

    def _heard(self, t, code, where):
        """Act on what the gateway's mark for t (from WELCOME or an ACK) means."""
        s = t.sender
        if code == ACKNOWLEDGE:
            t.outbox.ack(s.mark)
            t.last_ack_ms = int(time.time() * 1000)
        elif code == GATEWAY_BEHIND:
            log.warning(
                "uplink: topic %s: the gateway's mark is %d (%s), below this node's cursor %d: the gateway lost "
                "records it had acknowledged; they are not resent, seqs %d..%d are reported as a gap (%s)",
                t.name, s.mark, where, t.outbox.acked, s.mark + 1, t.outbox.acked, GATEWAY_LOST)
        elif code == PAST_END:
            log.error("uplink: %s (%s)", s.stalled, where)

    def _budget(self):
        budget = self.max_batch_bytes
        peer = self._conn.peer_max_message_bytes
        if peer:
            budget = min(budget, peer)
        if self.bandwidth_bytes_per_sec > 0:
            budget = min(budget, max(1024, self.bandwidth_bytes_per_sec))
        return budget

    async def _round(self):
        """One request with a message per topic that owes something; False if none did."""
        budget = self._budget()
        body = bytearray()
        sent = []  # (topic, kind, n records, bytes)
        n = len(self._topics)
        start = self._rr
        self._rr = (self._rr + 1) % n if n else 0
        for i in range(n):
            if len(body) >= budget:
                break
            t = self._topics[(start + i) % n]
            if t.stalled is not None or not t.sender.owes:
                continue
            msg, ev = self._message(t, max(1, budget - len(body)))
            if not msg:
                continue
            body += msg
            if type(ev) is sync.Gap:
                sent.append((t, "gap", 0, len(msg)))
            else:
                sent.append((t, "batch", len(ev.entries), len(msg)))
        if not sent:
            return False
        events = await self._exchange(bytes(body))
        for t, kind, count, nbytes in sent:
            t.bytes_sent += nbytes
            if kind == "gap":
                t.gaps_sent += 1
            else:
                t.batches += 1
                t.records_sent += count
        acked = set()
        for ev in events:
            if type(ev) is sync.Ack:
                t = self._by_name.get(ev.topic)
                if t is None:
                    log.warning("uplink: ACK for topic %r, which this node does not send; ignored", ev.topic)
                    continue
                acked.add(t.name)
                self._heard(t, t.sender.on_ack(ev.seq), "ACK")
        missing = [t.name for t, _, _, _ in sent if t.name not in acked]
        if missing:
            raise UplinkError("the gateway did not acknowledge topic(s) %s" % ", ".join(missing))
        return True

    async def _pull_round(self):
        """One request with a PULL per due cloud-to-edge topic; False if none was due."""
        from .downlink import DownlinkFailure

        body, sent = self.downlink.request(self._conn)
        if not sent:
            return False
        events = await self._exchange(body, errors_ok=True)
        try:
            ended = self.downlink.handle(sent, events)
        except DownlinkFailure as e:
            raise UplinkError(str(e)) from None
        if ended:  # the gateway refused a topic with an ERROR, which ends the session
            self._drop_session()
        return True

    def _message(self, t, max_bytes):
        """(bytes, event) of t's next message, a batch halved until the gateway's limits
        take it; (b"", None) if nothing is to send."""
        conn = self._conn
        limit = self.batch_records
        if conn.peer_max_batch_records:
            limit = min(limit, conn.peer_max_batch_records)
        if t.limit is not None:
            limit = min(limit, t.limit)
        while True:
            ev = t.sender.next_message(limit, max_bytes)
            if ev is None:
                return b"", None
            try:
                return conn.send(ev), ev
            except LocalProtocolError as e:
                t.sender.cancel()
                if type(ev) is sync.Gap:
                    raise
                n = len(ev.entries)
                if n == 1:
                    t.stalled = _one_line("seq %d cannot be sent: %s" % (ev.first_seq, e))
                    log.error("uplink: topic %s stalled: %s", t.name, t.stalled)
                    return b"", None
                limit = t.limit = max(1, n // 2)
                max_bytes = max(1, max_bytes // 2)
                log.info("uplink: topic %s: batch of %d records over the gateway's limits (%s); halving",
                         t.name, n, e)


    def _batches_by_encoding(self):
        out = dict(self.batches_by_encoding)
        if self._wirecodec is not None:  # the current session's
            for name, n in self._wirecodec.batches.items():
                out[name] = out.get(name, 0) + n
        return out

    def _count_encodings(self):
        wc = self._wirecodec
        if wc is not None:
            for name, n in wc.batches.items():
                self.batches_by_encoding[name] = self.batches_by_encoding.get(name, 0) + n
            wc.batches = {}


def _names(events):
    return ", ".join(type(e).__name__.upper() for e in events) or "nothing"


def from_config(cfg, topics, http=None, mqtt_options=None, **kwargs):
    """An Uplink for an ``EdgeConfig``: its sync settings and its ``cloud_endpoint``.
    An HTTP endpoint is posted to as given (point it at the gateway's ``/v1/sync``; no
    path means that route); an ``mqtt://`` one goes through its broker, to
    ``<prefix>/<node_id>/up`` (``mqtt_options`` go to ``MqttEdgeTransport``). ``topics``
    maps each sending topic to its (RingLog, Outbox); a ``downlink=`` keyword pulls the
    receiving topics in the same loop."""
    from edgeline.errors import ConfigError

    gw = cfg.gateway
    if gw is None or gw.scheme not in ("http", "https", "mqtt"):
        raise ConfigError("%s: the uplink needs an http://, https:// or mqtt:// cloud_endpoint" % cfg.source)
    s = cfg.sync
    kwargs.setdefault("interval_ms", s.interval_ms)
    kwargs.setdefault("batch_records", s.batch_size)
    kwargs.setdefault("compression", s.compression)
    if gw.transport == "mqtt":
        options = dict(mqtt_options or {})
        options.setdefault("request_timeout_ms", kwargs.get("request_timeout_ms", MQTT_ANSWER_TIMEOUT_MS))
        prefix = gw.uplink_topic[:-len("/%s/up" % cfg.node_id)]
        kwargs["transport"] = MqttEdgeTransport(cfg.node_id, gw.host, gw.port, prefix, url=gw.url, **options)
        url = gw.url
    else:
        # An endpoint without a path means the gateway's own route (docs/config.md).
        url = gw.url.rstrip("/") + "/v1/sync" if gw.path in ("", "/") else gw.url
    return Uplink(cfg.node_id, cfg.node_key().reveal(), url, topics, retry=s.retry, breaker=s.circuit_breaker,
                  bandwidth_bytes_per_sec=s.bandwidth_bytes_per_sec, http=http, **kwargs)
