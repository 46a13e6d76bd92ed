"""MQTT ingest: the agent subscribes to topic filters on a local broker and appends what
arrives to its logs, acknowledging a message to the broker only once its record is durable.

Failure modes first
-------------------
* The agent is killed (SIGKILL, power cut) at any moment: a QoS 1 message is acknowledged
  to the broker (PUBACK) only after the commit that covered its record has returned, and
  the agent's session on the broker persists (MQTT 5, clean start off, a session that
  never expires), so every message the broker took from a publisher is either in a log
  or still held by the broker, which sends it again when the agent is back.
* A message whose record was committed but whose PUBACK never reached the broker (the
  agent died, or the connection broke, between the commit and the PUBACK) is sent again
  by the broker, marked DUP, under the same packet id. Each stored QoS 1 message leaves
  an entry in its topic's dedupe window (idempotency.py): key its packet id, digest its
  payload's, seqs its record's -- written before the record is appended and synced
  before the log's fsync, so a committed record always has its entry. A DUP message
  whose packet id and payload digest the window holds is acknowledged (once that record
  is durable) and not stored again, counted in ``redeliveries_dropped``; ``redelivered``
  counts every DUP. A packet id is reused only after the broker got the PUBACK of its
  previous message, so the first (non-DUP) delivery under an id removes the entry of the
  previous message under it, as soon as it arrives: a resend is never matched with an
  older message that had the same id and the same bytes. Exactly once into the log, then
  -- for SIGKILL at any moment; after a power cut, only if the removal above had reached
  the disk (it is synced at the next commit): a message first delivered just before the
  cut, not yet stored, with the same packet id and payload as the previous message under
  that id, could be taken for it.
* The broker goes away or restarts: paho reconnects by itself (``reconnect_min_s`` ..
  ``reconnect_max_s``). Acknowledgements owed on the broken connection are not sent on
  the next one: the broker resends those messages (see above). A broker that lost the
  session (restarted without persistence, or expired it) lost whatever it held for the
  agent; the agent logs a warning and counts it (``sessions_lost``).
* A message no topic takes (no filter of the map matches, no such topic, a
  ``cloud_to_edge`` topic, a key that is not text, a record over a segment): refused --
  acknowledged, so the broker does not resend it forever, counted by reason, and the
  reason logged in one line (the first of each kind, then at 10, 100, 1000, ...).
  Nothing of it is stored.
* Backpressure -- a full ``reject`` topic, ``sync.max_queue_size`` reached -- and a
  failed write: the message is kept, unacknowledged, and tried again every
  ``HOLD_RETRY_S``; the messages behind it wait (a subscription is one ordered stream),
  and once ``window`` messages are unacknowledged the broker stops sending and queues
  the rest (bounded by its own ``max_queued_messages``). Nothing is acknowledged that
  is not stored. A log that failed a write is reopened (``Agent.ready``) before the
  message's dedupe entry is written, so the entry names a seq of the log that takes it.
* A write error after the append (the commit fails, or a later write fails the log):
  the records it lost are never acknowledged. An owed entry is bound to the log object
  its record went to (``owed_state``): the reopened log gives the same seqs again to
  other records. The agent breaks the connection (paho reconnects) and the broker
  resends what was not acknowledged; a record recovery kept whole is found in the
  dedupe window (reopened with the log), so its resend is acknowledged, not stored.
* Clean stop: no more appends; the agent commits every log, then the acknowledgements
  of everything committed leave before the DISCONNECT; messages not yet appended stay
  with the broker for the next start.

Theory of operation
-------------------
paho runs the network in a thread of its own. Its callbacks only hand over to the
asyncio loop (``call_soon_threadsafe``), where everything else happens: messages wait in
``_queue`` in arrival order; ``_process`` takes them one by one, routes the MQTT topic
(``MqttIngest.route``: the first matching filter of the map), decodes the payload
(``jsonrecords.record_from_payload``) and appends through ``Agent.append`` -- the HTTP ingest's write path:
same checks, same hybrid clock, same logs, so both share group commits. Each QoS 1
message leaves an entry in ``_owed``, in arrival order; acknowledgements go out in that
order (MQTT wants PUBACKs in the order the PUBLISHes came), each once its entry is
settled: a refused or dropped message at once, a stored one once the log's
``durable_seq`` covers its seq (under ``sync: none`` at once: the topic chose not to
wait for the disk). A task per topic and pass waits on ``Agent.wait_durable`` (the commit
waiters HTTP answers wait on) and then sends what has settled. A pass yields to the loop
after ``PASS_BUDGET_S`` (under ``sync: every`` each message costs an fsync), so HTTP
requests are served in between.

The agent announces a receive maximum of ``window`` (MQTT 5 Receive Maximum): the broker
has at most that many messages unacknowledged with it, so at most that many wait here.
When all of them are owed, the broker sends nothing more until some are acknowledged.
Under ``sync: group`` nothing waits for ``group_ms`` anyway: the wait of a pass is a
commit waiter like an HTTP answer, so it starts a commit at once or joins the next
(leader/follower, service.py); ``commit_now`` on a full window makes sure of it.

Connections are numbered (the paho bridge's ``generation``, bumped by paho's thread on
connect and on disconnect, under its ``lock``); an entry keeps the number of the connection its message
came on and is acknowledged only on that same connection. Checking the number and
queueing the PUBACK happen under the lock, so a PUBACK can never leave on a later
connection, where the packet id may by then name another message.
"""
import asyncio
import collections
import hashlib
import json
import logging
import os
import socket

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..jsonrecords import RequestError, record_from_payload
from ..transports.mqtt import PahoBridge, filter_covers

log = logging.getLogger("edgeline.agent.mqtt")

WINDOW = 1000  # MQTT 5 Receive Maximum: messages unacknowledged at once
HOLD_RETRY_S = 1.0  # a held message (backpressure, a failed write) is tried again this often
MAX_WAITING = 10 * WINDOW  # QoS 0 messages beyond this many waiting are dropped (counted)
PASS_BUDGET_S = 0.02  # one pass over the waiting messages yields to the loop after this long
STATE_FILE = "mqtt-ingest.json"  # in data_dir: the filters subscribed last time


def window_key(mid):
    """A QoS 1 message's key in its topic's dedupe window: its packet id."""
    return b"m:" + mid.to_bytes(2, "big")


def payload_digest(payload):
    return hashlib.blake2b(payload, digest_size=16).digest()


def subscriptions(filters):
    """``filters`` less those another one covers (and repeats), in order. A broker may
    deliver a message once per matching subscription (MQTT 5, 3.3.4; Mosquitto does):
    overlapping filters would store it twice."""
    out = []
    for n, f in enumerate(filters):
        if any(filter_covers(g, f) and (not filter_covers(f, g) or m < n) for m, g in enumerate(filters) if m != n):
            continue
        out.append(f)
    return out


def route_message(agent, settings, topic):
    """The topic state a message on MQTT topic ``topic`` goes to, or ``(None, (reason,
    line))``: the routing both MQTT ingests share (this bridge and the agent's own
    endpoint, mqtt_endpoint.py). ``topic`` None: it was not valid UTF-8."""
    if topic is None:
        return None, ("bad_topic", "the topic is not valid UTF-8")
    name = settings.route(topic)
    if name is None:
        where = "ingest.mqtt.map" if settings.topic_map else "ingest.mqtt.topics"
        return None, ("unmapped", "no filter of %s matches it" % where)
    st = agent.topics.get(name)
    if st is None:
        return None, ("unknown_topic", "no topic %r in sync_topics or local_topics" % name)
    if st.cfg.direction == "cloud_to_edge":
        return None, ("cloud_to_edge", "topic %r is cloud_to_edge: the edge does not write to it" % name)
    return st, None


SETTLED, WAITING, LOST = "settled", "waiting", "lost"


def owed_state(st, lg, seq):
    """Where the record a QoS 1 message owes its acknowledgement to stands -- appended
    (or found in the dedupe window) as ``seq`` of ``lg``, topic ``st``'s log then: SETTLED
    (``st`` None: nothing to wait for; durable; or the topic's ``sync: none``), WAITING
    for a commit, or LOST: ``lg`` failed a write before the record was durable (it is, or
    will be, replaced by ``Agent.recover``, where the same seq may name another record).
    A lost one is never acknowledged: the sender must send it again (if the reopened log
    kept it whole, the dedupe window -- recovered with the log -- drops the resend). The
    log object, not the seq alone, tells: seqs start again where a reopened log ends."""
    if st is None or lg.durable_seq >= seq:
        return SETTLED
    if lg.sync == "none":
        return SETTLED
    if lg is not st.log or lg.failure is not None:
        return LOST
    return WAITING


class _Owed:
    """A QoS 1 message not yet acknowledged: its packet id, its connection, and the
    record that must be durable first (``st`` None: nothing to wait for) in the log
    ``lg`` it was appended to."""

    __slots__ = ("mid", "gen", "st", "lg", "seq")

    def __init__(self, mid, gen, st, seq):
        self.mid = mid
        self.gen = gen
        self.st = st
        self.lg = st.log if st is not None else None
        self.seq = seq

    def state(self):
        return owed_state(self.st, self.lg, self.seq)


class MqttSource:
    """The agent's MQTT ingest: ``await start()``, ``stats()``, ``pause()``, ``await
    close()``. ``settings`` is the config's ``MqttIngest``; the rest is for tests and
    tuning (the client id must stay the same from one run to the next: it names the
    persistent session)."""

    def __init__(self, agent, settings, client_id=None, keepalive_s=30, reconnect_min_s=0.5, reconnect_max_s=10,
                 window=WINDOW):
        self.agent = agent
        self.settings = settings
        self.broker = str(settings.broker)
        self.client_id = client_id or "edgeline-ingest-" + agent.cfg.node_id
        self.window = window
        self.filters = subscriptions(settings.topics)  # what is subscribed to
        # counters (stats())
        self.received = 0  # PUBLISHes from the broker
        self.stored = 0  # records appended
        self.refused = 0  # acknowledged, not stored: no topic takes them
        self.dropped = 0  # the topic's drop_newest policy dropped them (the log counts them too)
        self.redelivered = 0  # marked as resent by the broker (DUP): possibly stored before
        self.redeliveries_dropped = 0  # resent, found in the dedupe window: acknowledged, not stored again
        self.overflow = 0  # QoS 0 messages dropped: too many waiting behind a held one
        self.acks_lost = 0  # owed on a connection that broke: the broker resends them
        self.connects = 0
        self.sessions_lost = 0
        self.refusals = collections.Counter()
        self.last_refusal = None
        self.last_error = None
        self.connected = False
        self.subscribed = None  # asyncio.Event, set while the subscriptions stand
        self.held = None  # why the message at the head of the queue waits, or None
        self._queue = collections.deque()  # (gen, topic, payload, qos, mid, dup)
        self._owed = collections.deque()  # _Owed, in arrival order
        b = settings.broker
        self._bridge = PahoBridge(self, b.host, b.port, self.client_id, keepalive_s, reconnect_min_s,
                                  reconnect_max_s, session_window=window)
        self._scheduled = False
        self._paused = False
        self._retry = None  # asyncio.TimerHandle of a held message's next try
        self._tasks = set()
        self._loop = None
        self._state_path = os.path.join(agent.cfg.data_dir, STATE_FILE)
        self._previous = self._read_state()  # filters of the last run; None: never subscribed
        self._unreachable = False
        self._broken = None  # the generation of a connection broken on purpose (_reconnect)

    # ------------------------------------------------------------------ lifecycle

    async def start(self):
        """Connect in the background: paho keeps trying until the broker answers."""
        self._loop = asyncio.get_running_loop()
        self.subscribed = asyncio.Event()
        self._bridge.start()

    def pause(self):
        """Append nothing more; what arrives stays unacknowledged (the broker keeps it)."""
        self._paused = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    async def close(self):
        """After the agent's final commit: acknowledge what it covered, disconnect."""
        self.pause()
        self._ack_settled()
        bridge = self._bridge
        if bridge.client is not None:
            with bridge.lock:
                bridge.generation += 1  # nothing is acknowledged from here on
            await bridge.close()  # its DISCONNECT is queued after the PUBACKs: they leave first
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stats(self):
        return {
            "broker": self.broker,
            "client_id": self.client_id,
            "topics": list(self.filters),
            "connected": self.connected,
            "subscribed": bool(self.subscribed is not None and self.subscribed.is_set()),
            "received": self.received,
            "stored": self.stored,
            "refused": self.refused,
            "dropped": self.dropped,
            "redelivered": self.redelivered,
            "redeliveries_dropped": self.redeliveries_dropped,
            "overflow": self.overflow,
            "unacknowledged": len(self._owed),
            "waiting": len(self._queue),
            "held": self.held,
            "connects": self.connects,
            "sessions_lost": self.sessions_lost,
            "acks_lost": self.acks_lost,
            "refusals": dict(self.refusals),
            "last_refusal": self.last_refusal,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ paho's thread

    def mqtt_connect(self, client, flags, gen):
        present = bool(flags.session_present)
        stale = [f for f in (self._previous or ()) if f not in self.filters] if present else []
        if stale:
            client.unsubscribe(stale)
        # Retained messages are old news when a subscription is made: not ingested.
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(f, opts) for f in self.filters])
        self._bridge.call(self._connected, gen, present, stale)

    def mqtt_message(self, _client, _userdata, msg):
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        self._bridge.call(self._received, (self._bridge.generation, topic, msg.payload, msg.qos, msg.mid, msg.dup))

    # ------------------------------------------------------------------ connection state

    def _error(self, line):
        self.last_error = line
        log.warning("edgeline agent: MQTT ingest: %s", line)

    def mqtt_refused(self, why):
        self._error("the broker %s refused the connection: %s" % (self.broker, why))

    def mqtt_unreachable(self):
        if not self._unreachable:
            self._unreachable = True
            self._error("cannot reach the broker %s; retrying" % self.broker)

    def _connected(self, gen, present, stale):
        self.connected = True
        self._unreachable = False
        self.connects += 1
        if not present and self._previous is not None:
            self.sessions_lost += 1
            self._error("the broker %s had no session for %s (restarted without persistence, or it expired the "
                        "session): what it held for the agent while it was away is lost"
                        % (self.broker, self.client_id))
        if stale:
            log.info("edgeline agent: MQTT ingest: unsubscribed from %s (no longer configured)", ", ".join(stale))
        log.info("edgeline agent: MQTT ingest: connected to %s (session %s)", self.broker,
                 "resumed" if present else "new")
        self._ack_settled()  # drops what was owed on the old connection

    def mqtt_subscribed(self, refused):
        refused = [(self.filters[i], rc) for i, rc in refused]
        if refused:
            self._error("the broker refused the subscription to %s"
                        % ", ".join("%s (%s)" % (f, rc) for f, rc in refused))
            return
        self.subscribed.set()
        if self._previous != self.filters:
            self._previous = list(self.filters)
            self._write_state()

    def mqtt_disconnected(self, why):
        self.connected = False
        if self.subscribed is not None:
            self.subscribed.clear()
        if self._bridge.client is not None:
            self._error("the broker %s: %s; reconnecting" % (self.broker, why))
        self._ack_settled()

    def _read_state(self):
        try:
            with open(self._state_path) as f:
                filters = json.load(f).get("filters")
            return list(filters) if isinstance(filters, list) else None
        except (OSError, ValueError, AttributeError):
            return None

    def _write_state(self):
        tmp = self._state_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"client_id": self.client_id, "filters": self.filters}, f)
            os.replace(tmp, self._state_path)
        except OSError as e:
            self._error("cannot write %s: %s" % (self._state_path, e))

    # ------------------------------------------------------------------ messages

    def _received(self, item):
        self.received += 1
        if item[5]:
            self.redelivered += 1
        elif item[3]:
            # A first delivery under this packet id: the broker has the PUBACK of the
            # message that had it before, which it will never resend. Forget that one at
            # once (not when this one is processed: it may wait, held, across a crash),
            # so that a resend of this one is never taken for it.
            st, _ = self._route(item[1])
            if st is not None and st.window is not None:
                st.window.discard(window_key(item[4]))
        if item[3] == 0 and len(self._queue) >= MAX_WAITING:
            self.overflow += 1  # QoS 0: the publisher chose at most once
            return
        self._queue.append(item)
        self._schedule()

    def _schedule(self):
        if not self._scheduled and self._retry is None and not self._paused:
            self._scheduled = True
            self._loop.call_soon(self._process)

    def _retry_now(self):
        self._retry = None
        self._schedule()

    def _route(self, topic):
        return route_message(self.agent, self.settings, topic)

    def _process(self):
        self._scheduled = False
        if self._paused or self.agent.closing:
            return
        agent = self.agent
        last = {}  # topic state -> the last seq appended to it in this pass
        loop = self._loop
        deadline = loop.time() + PASS_BUDGET_S  # under sync: every each message is an fsync
        while self._queue:
            if loop.time() > deadline:
                self._schedule()  # the rest in the next pass: HTTP requests get their turn
                break
            gen, topic, payload, qos, mid, dup = self._queue[0]
            st, why = self._route(topic)
            seq = None
            wkey = None
            if st is not None:
                try:
                    # A log failed by a write error is reopened first (its window recovered
                    # with it): the entry below must name a seq of the log that takes the record.
                    agent.ready(st)
                except RequestError as e:
                    self._hold(topic, st, e)
                    break
            if st is not None and qos and st.window is not None:
                wkey, digest = window_key(mid), payload_digest(payload)
                hit = st.window.lookup(wkey) if dup else None
                if hit is not None and hit[2] == digest:
                    # The broker resends a message whose record is in the log (its PUBACK
                    # was lost): acknowledge it once that record is durable, store nothing.
                    self.redeliveries_dropped += 1
                    st.window.hits += 1
                    seq = hit[1]
                    last[st] = max(last.get(st, 0), seq)
                    self._queue.popleft()
                    self.held = None
                    self._owed.append(_Owed(mid, gen, st, seq))
                    continue
            if st is not None:
                try:
                    key, value = record_from_payload(payload)
                    if wkey is not None:
                        # the entry first: the window is synced before the log's fsync
                        st.window.add(wkey, st.log.last_seq + 1, st.log.last_seq + 1, digest)
                    first, n = agent.append(st, [key], [value])
                except RequestError as e:
                    if wkey is not None:
                        st.window.discard(wkey)
                    if e.status >= 500:  # backpressure or a failed write: keep it, unacknowledged
                        self._hold(topic, st, e)
                        break
                    why = ("too_large" if e.status == 413 else "bad_value", str(e))
                    st = None
                except Exception as e:  # noqa: BLE001 - a bug here must not lose the message either
                    if wkey is not None:
                        st.window.discard(wkey)
                    log.exception("edgeline agent: MQTT ingest: unexpected error")
                    self._hold(topic, st, RequestError(500, "unexpected error: %s: %s" % (type(e).__name__, e)))
                    break
                else:
                    if n:
                        self.stored += 1
                        seq = last[st] = first
                    else:
                        self.dropped += 1
                        if wkey is not None:
                            st.window.discard(wkey)
                        st = None
            if why is not None:
                self._refuse(topic, why)
            self._queue.popleft()
            self.held = None
            if qos:
                self._owed.append(_Owed(mid, gen, st, seq))
        for st, seq in last.items():
            t = self._loop.create_task(self._settle(st, seq))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        self._ack_settled()
        if len(self._owed) >= self.window:
            # The broker waits for acknowledgements now: commit rather than wait for the timers.
            for st in {e.st for e in self._owed if e.state() == WAITING}:
                agent.commit_now(st)
            self._ack_settled()

    def _hold(self, topic, st, e):
        line = "a message on %r for topic %s waits: %s" % (topic, st.cfg.name, e)
        if self.held != line:
            log.warning("edgeline agent: MQTT ingest: %s", line)
        self.held = line
        if e.status == 500:
            self.last_error = line
        self._retry = self._loop.call_later(HOLD_RETRY_S, self._retry_now)

    def _refuse(self, topic, why):
        reason, line = why
        self.refused += 1
        self.refusals[reason] += 1
        self.last_refusal = "%s: %s" % (topic, line)
        n = self.refusals[reason]
        if n == 1 or (n >= 10 and str(n).strip("0") == "1"):
            log.warning("edgeline agent: MQTT ingest: refused a message on %r: %s (%d %s so far)",
                        topic, line, n, reason)

    async def _settle(self, st, seq):
        try:
            await self.agent.wait_durable(st, seq)
        except RequestError as e:  # the commit failed: nothing it covered is acknowledged
            self.last_error = "topic %s: %s" % (st.cfg.name, e)
        self._ack_settled()

    def _reconnect(self, e):
        """``e``'s record was lost to a write error (``owed_state``): acknowledge nothing
        more on this connection and break it; paho connects again, and the broker resends
        every message not acknowledged, ``e``'s too (the session persists)."""
        if self._broken == e.gen:
            return  # already done for this connection
        self._broken = e.gen
        self._error("topic %s: seq %d was lost to a write error before it was durable: breaking the connection so "
                    "that the broker resends the unacknowledged messages" % (e.st.cfg.name, e.seq))
        client = self._bridge.client
        sock = client.socket() if client is not None else None
        if sock is not None:
            try:
                # From outside paho's thread, only the socket: paho sees the connection
                # lost, bumps the generation (on_disconnect) and reconnects by itself.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _ack_settled(self):
        """Acknowledge, in arrival order, every owed message that has settled."""
        owed = self._owed
        bridge = self._bridge
        client = bridge.client
        while owed:
            e = owed[0]
            if e.gen != bridge.generation:
                owed.popleft()  # its connection is gone: the broker sends it again
                self.acks_lost += 1
                continue
            state = e.state()
            if state == WAITING:
                return
            if state == LOST:
                self._reconnect(e)  # this one and all behind it: the broker resends them
                return
            owed.popleft()
            with bridge.lock:
                if e.gen == bridge.generation and client is not None and client.ack(e.mid, 1) == paho.MQTT_ERR_SUCCESS:
                    continue
            self.acks_lost += 1
