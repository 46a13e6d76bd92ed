"""The agent as an MQTT endpoint: producers connect to the agent itself (MQTT 3.1.1 and 5)
and publish; a QoS 1 PUBACK leaves only once the record is durable.

Failure modes first
-------------------
* The agent is killed (SIGKILL, power cut) at any moment: a PUBACK is sent only after
  the commit that covered its record returned, so every message a publisher saw
  acknowledged is in the log. A message not acknowledged is still the publisher's: an
  MQTT client keeps it and publishes it again (DUP set, same packet id) when it is
  connected again.
* Such a resend of a message whose record was committed before the crash must not be
  stored twice: the agent recognises a redelivery by ``(client id, packet id, payload
  digest)`` and acknowledges it without storing it again (``redeliveries_dropped``).
* A publisher that sends garbage (a malformed packet, a packet over
  ``MAX_PACKET_BYTES``, a second CONNECT, a PUBLISH before CONNECT) is disconnected
  (MQTT 5: DISCONNECT with the reason code first), counted in ``protocol_errors``; what it
  had published before is committed and acknowledged first.
* QoS 2 is not offered: an MQTT 5 client is told so in the CONNACK (Maximum QoS 1) and a
  QoS 2 PUBLISH from any client is refused by disconnecting it (MQTT 5: DISCONNECT 0x9B
  "QoS not supported"; 3.1.1 has no way to say it: the connection is closed). Nothing
  of it is stored; counted in ``refusals["qos2"]``.
* A message no topic takes (no filter of ``ingest.mqtt.map`` matches, a cloud_to_edge
  topic, a payload that is not a record): acknowledged, not stored, counted by reason
  (MQTT 5: the PUBACK carries the reason code and a reason string), so the publisher does
  not resend it forever -- as the bridge mode does (mqtt_ingest.py).
* Backpressure (a full ``reject`` topic, ``sync.max_queue_size``) and a failed write: the
  message waits unacknowledged, the connection stops being read, and it is tried again
  every ``HOLD_RETRY_S``. Nothing is acknowledged that is not stored. A log that failed
  a write is reopened (``Agent.ready``) before the message's dedupe entry is written, so
  the entry names a seq of the log that takes the record.
* A write error after the append (the commit fails, or a later write fails the log):
  the records it lost are never acknowledged -- each owed entry is bound to the log
  object it went to (``mqtt_ingest.owed_state``), since the reopened log gives the same
  seqs again to other records. The connection that owes one is closed (MQTT 5: 0x80) and
  its publisher resends it; if recovery kept the record whole, the dedupe window (reopened
  with the log) drops the resend.
* A publisher that goes silent: closed after 1.5 keepalive periods (MQTT 5: 0x8D), its
  will (if any) stored as a record, like a QoS 0 message.
* SIGTERM / SIGINT: the endpoint stops reading, the agent commits, the endpoint sends
  the PUBACKs the commit covered, then DISCONNECT 0x8B (MQTT 5) and closes.

Theory of operation
-------------------
``mqtt_packets.Decoder`` turns each connection's bytes into packets (sans-IO); a
``_Connection`` (an ``asyncio.Protocol``) only moves bytes and acts on packets. A
PUBLISH is routed by the bridge's own ``route_message`` (same ``map``), its payload made
a record by ``jsonrecords.record_from_payload``, and appended by ``Agent.append``: the
write path of HTTP and the bridge. The PUBLISHes of one read that go to one topic are a
burst (``_store_burst``): their dedupe entries go in one write (``DedupeWindow.add_many``),
their records in one ``Agent.append``, and a burst cut short by backpressure or a write
error owes exactly the messages it stored -- the same outcome as one at a time, for a
fraction of the CPU per message. Each QoS 1 PUBLISH leaves an entry on its
connection's ``owed`` list, in arrival order; PUBACKs leave in that order, each once its
record is durable (``durable_seq`` covers it; under ``sync: none`` at once).

Group commit without a timer: a QoS 1 publisher waits for its PUBACK, so waiting out
``group_ms`` would only stall it. After the bytes that arrived in one turn of the event
loop are appended, the endpoint commits once (``Agent.commit_now``) at the start of the
next turn, covering every connection's records of that turn. The commit's fsync runs in
a worker thread (service.py's leader/follower group commit), so per topic one task
awaits ``Agent.wait_durable`` of the round's highest seq and then sends the PUBACKs of
the connections that waited on it -- by itself, whether or not the publisher sends
anything more (keepalive 0). While that fsync runs, more PUBLISHes gather in the
sockets; they go in the next commit. So one fsync covers whatever arrived meanwhile --
as a database's group commit does. A connection closed by the endpoint (a protocol
error, a keepalive timeout, a session taken over) is read no more, and its DISCONNECT
waits for the commit of what it published before: those PUBACKs leave first.

Sessions: the endpoint holds no messages for a client (it delivers nothing: an ingest
endpoint, not a broker; SUBSCRIBE is refused), so a session is only a name: client ids
that connected with a persistent session (3.1.1 clean session 0; MQTT 5 clean start 0
with a session expiry) are kept in ``<data_dir>/mqtt-endpoint.json``, so the CONNACK's
session present flag is true when such a client comes back, even after a crash, until it
connects with a clean session. Its unacknowledged packet ids live in the publisher,
which resends them; the dedupe window is what makes the resend harmless. An MQTT 5
session expiry interval is timed by a sweep every ``SESSION_SWEEP_S``, off the message
path: the session is forgotten once its client has been gone that long (counted from
when the sweep first saw it gone, so never early; a restart starts every count again);
3.1.1's and the interval 0xFFFFFFFF never expire.
"""
import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import struct

from edgeline.errors import EdgelineError
from edgeline.log import DROP_NEWEST

from ..jsonrecords import RequestError, record_from_payload
from . import mqtt_packets as mp
from .mqtt_ingest import LOST, WAITING, owed_state, payload_digest, route_message

log = logging.getLogger("edgeline.agent.mqtt_endpoint")

WINDOW = 1000  # MQTT 5 Receive Maximum; past this many owed, a connection is not read
HOLD_RETRY_S = 1.0  # a held message (backpressure, a failed write) is tried again this often
MAX_PACKET_BYTES = (1 << 20) + 1024  # a record fits a segment anyway; larger packets: disconnected
MAX_BURST = 1000  # at most this many messages appended (and their dedupe entries written) in one go
ROUTES_CACHED = 1024  # MQTT topic -> route, remembered (the map does not change while the agent runs)
LINGER_S = 0.002  # a commit waits at most this long for publishers still sending...
LINGER_STEP_S = 0.0002  # ...as long as bytes keep coming in every this often
CONNECT_TIMEOUT_S = 10  # a connection that sends no CONNECT by then is closed
STATE_FILE = "mqtt-endpoint.json"  # in data_dir: client ids with a persistent session
_NEVER = 0xFFFFFFFF
SESSION_SWEEP_S = 1.0  # how often stored sessions are checked for expiry
_WKEY_HEAD = struct.Struct(">2sH")  # b"c:" and the packet id: the head of a message's dedupe window key
_PUBACK_SUCCESS = mp._PUBACK_SUCCESS  # what encode_puback gives for reason code 0 (either version)

# why a message was refused -> the MQTT 5 PUBACK reason code
_REASON_CODES = {
    "bad_topic": mp.RC_TOPIC_NAME_INVALID,
    "unmapped": mp.RC_TOPIC_NAME_INVALID,
    "unknown_topic": mp.RC_TOPIC_NAME_INVALID,
    "cloud_to_edge": mp.RC_NOT_AUTHORIZED,
    "bad_value": mp.RC_PAYLOAD_FORMAT_INVALID,
    "too_large": mp.RC_QUOTA_EXCEEDED,
}


class _Hold(Exception):
    """``pending[index]`` and what follows wait: backpressure or a failed write (``error``)."""

    def __init__(self, index, error):
        Exception.__init__(self, index, error)
        self.index = index
        self.error = error


class _Owed:
    """A QoS 1 message not yet acknowledged: its packet id, the record that must be
    durable first (``st`` None: nothing to wait for) in the log ``lg`` it went to, the
    reason code of a refusal."""

    __slots__ = ("pid", "st", "lg", "seq", "rc", "reason")

    def __init__(self, pid, st=None, seq=0, rc=mp.RC_SUCCESS, reason=None, lg=None):
        self.pid = pid
        self.st = st
        self.lg = lg if lg is not None or st is None else st.log
        self.seq = seq
        self.rc = rc
        self.reason = reason

    def state(self):
        """``mqtt_ingest.owed_state``: SETTLED, WAITING, or LOST (to a write error)."""
        return owed_state(self.st, self.lg, self.seq)


class MqttEndpoint:
    """``await start()``, ``stats()``, ``pause()``, ``await close()``. ``settings`` is the
    config's ``MqttIngest`` (its ``listen``, ``users``, ``map``)."""

    def __init__(self, agent, settings, window=WINDOW, max_packet_bytes=MAX_PACKET_BYTES,
                 connect_timeout_s=CONNECT_TIMEOUT_S, session_sweep_s=SESSION_SWEEP_S):
        self.agent = agent
        self.settings = settings
        self.listen = settings.listen
        self.window = window
        self.max_packet_bytes = max_packet_bytes
        self.connect_timeout_s = connect_timeout_s
        self.users = dict(settings.users)
        self.port = None  # the port listened on (listen's port 0: the one the system chose)
        # counters (stats())
        self.received = 0  # PUBLISH packets
        self.stored = 0  # records appended
        self.acked = 0  # PUBACKs sent
        self.refused = 0  # messages not stored: no topic takes them, QoS 2
        self.redeliveries_dropped = 0  # resends of a message already stored: acknowledged, not stored again
        self.redelivered = 0  # PUBLISHes with DUP set
        self.connects = 0
        self.connects_refused = 0
        self.protocol_errors = 0
        self.acks_lost = 0  # owed on a connection that closed: the publisher resends them
        self.bytes_in = 0
        self._linger = None
        self.commits = 0  # commits the endpoint asked for (one per loop turn with records to cover)
        self.refusals = {}
        self.last_refusal = None
        self.last_error = None
        self.connections = set()
        self.clients = {}  # client id -> its _Connection
        self._server = None
        self._loop = None
        self._commit_pending = False
        self._waiting = set()  # connections with unsettled QoS 1 entries
        self._tasks = set()  # _settle tasks: each waits for a commit, then acknowledges
        self._paused = False
        self._routes = {}  # MQTT topic -> route_message's answer (at most ROUTES_CACHED)
        self._state_path = os.path.join(agent.cfg.data_dir, STATE_FILE)
        self.sessions = self._read_state()  # client id -> session expiry (s)
        self.sessions_expired = 0
        self.session_sweep_s = session_sweep_s
        self._gone_since = {}  # client id of a timed session -> loop time the sweep first saw it gone
        self._sweeper = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self):
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Connection(self), self.listen.host, self.listen.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = self._loop.call_later(self.session_sweep_s, self._sweep_sessions)

    def pause(self):
        """Take nothing more: stop listening and reading; what is owed stays owed."""
        self._paused = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            c.pause()

    async def close(self):
        """After the agent's final commit: acknowledge what it covered, disconnect."""
        self.pause()
        for c in list(self.connections):
            c.ack_settled()
            c.close(mp.RC_SERVER_SHUTTING_DOWN, "the agent is stopping")
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def stats(self):
        return {
            "listen": "%s:%d" % (self.listen.host, self.port or self.listen.port),
            "connections": len(self.connections),
            "connects": self.connects,
            "connects_refused": self.connects_refused,
            "received": self.received,
            "stored": self.stored,
            "acked": self.acked,
            "refused": self.refused,
            "redelivered": self.redelivered,
            "redeliveries_dropped": self.redeliveries_dropped,
            "unacknowledged": sum(len(c.owed) for c in self.connections),
            "protocol_errors": self.protocol_errors,
            "acks_lost": self.acks_lost,
            "commits": self.commits,
            "sessions": len(self.sessions),
            "sessions_expired": self.sessions_expired,
            "refusals": dict(self.refusals),
            "last_refusal": self.last_refusal,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ sessions

    def _read_state(self):
        try:
            with open(self._state_path) as f:
                sessions = json.load(f).get("sessions")
            return {str(k): int(v) for k, v in sessions.items()} if isinstance(sessions, dict) else {}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _write_state(self):
        tmp = self._state_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"sessions": self.sessions}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state_path)
        except OSError as e:
            self._error("cannot write %s: %s" % (self._state_path, e))

    def open_session(self, client_id, clean_start, expiry_s):
        """The session present flag for a CONNECT; remembers a persistent session."""
        present = not clean_start and client_id in self.sessions
        keep = expiry_s > 0
        if (client_id in self.sessions) != keep or (keep and self.sessions.get(client_id) != expiry_s):
            if keep:
                self.sessions[client_id] = expiry_s
            else:
                self.sessions.pop(client_id, None)
            self._write_state()
        return present

    def _sweep_sessions(self):
        """Forget the MQTT 5 sessions whose client has been gone longer than its session
        expiry interval; a housekeeping timer, never on the message path."""
        now = self._loop.time()
        gone = self._gone_since
        expired = []
        for cid, expiry_s in self.sessions.items():
            if expiry_s >= _NEVER or cid in self.clients:
                gone.pop(cid, None)  # never expires, or connected: no count
            elif now - gone.setdefault(cid, now) >= expiry_s:
                expired.append(cid)
        for cid in list(gone):
            if cid not in self.sessions:
                del gone[cid]  # ended by a clean start meanwhile
        if expired:
            for cid in expired:
                del self.sessions[cid]
                del gone[cid]
            self.sessions_expired += len(expired)
            self._write_state()
            log.info("edgeline agent: MQTT endpoint: %d session(s) expired (%s)", len(expired),
                     ", ".join(sorted(expired)[:5]) + (", ..." if len(expired) > 5 else ""))
        self._sweeper = self._loop.call_later(self.session_sweep_s, self._sweep_sessions)

    # ------------------------------------------------------------------ accounting

    def _error(self, line):
        self.last_error = line
        log.warning("edgeline agent: MQTT endpoint: %s", line)

    def refuse(self, topic, reason, line):
        self.refused += 1
        n = self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.last_refusal = "%s: %s" % (topic, line)
        if n == 1 or (n >= 10 and str(n).strip("0") == "1"):
            log.warning("edgeline agent: MQTT endpoint: refused a message on %r: %s (%d %s so far)",
                        topic, line, n, reason)

    def route(self, topic):
        """``route_message`` for ``topic``, remembered: the map, the topics and their
        directions are fixed while the agent runs."""
        r = self._routes.get(topic)
        if r is None:
            r = route_message(self.agent, self.settings, topic)
            if len(self._routes) >= ROUTES_CACHED:
                self._routes.clear()
            self._routes[topic] = r
        return r

    def authenticate(self, username, password):
        if not self.users:
            return True
        expected = self.users.get(username)
        if expected is None or password is None:
            hmac.compare_digest(b"x", b"y")  # the same work for an unknown user
            return False
        return hmac.compare_digest(expected.encode("utf-8"), password)

    # ------------------------------------------------------------------ group commit

    def commit_soon(self, conn):
        """``conn`` owes acknowledgements of records not yet durable: commit soon, once
        for every connection's records so far (see ``_commit_round``)."""
        self._waiting.add(conn)
        if not self._commit_pending:
            self._commit_pending = True
            self._linger = (self.bytes_in, self._loop.time() + LINGER_S)
            self._loop.call_soon(self._commit_round)

    def _everyone_waits(self):
        for c in self.connections:
            if c.client_id is not None and not (c.owed and c.owed[-1].state() == WAITING):
                return False
        return True

    def settle(self, st, seq, conns):
        """Acknowledge on ``conns`` what is settled once topic ``st``'s ``seq`` is durable
        (``Agent.wait_durable``: the commit runs in a worker thread and ends later)."""
        t = self._loop.create_task(self._settle(st, seq, conns))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _settle(self, st, seq, conns):
        try:
            await self.agent.wait_durable(st, seq)
        except RequestError:
            # The commit failed (the agent logged it): what it covered is lost
            # (owed_state), and ack_settled closes the connections that owe it, saying
            # so: their publishers resend it.
            pass
        for c in conns:
            c.ack_settled()

    def _commit_round(self):
        """Commit now if every connected publisher waits for a PUBACK (nobody else is
        coming: a lone publisher never waits), or if no byte came in since the last look;
        else look again in LINGER_STEP_S, up to LINGER_S: publishers still sending join
        this commit rather than wait for the next fsync."""
        seen, until = self._linger
        if self.bytes_in != seen and self._loop.time() < until and not self._everyone_waits():
            self._linger = (self.bytes_in, until)
            self._loop.call_later(LINGER_STEP_S, self._commit_round)
            return
        self._commit_pending = False
        waiting, self._waiting = self._waiting, set()
        need = {}  # topic state -> [its highest seq waited for, the connections waiting for it]
        for c in waiting:
            # c.awaited: per topic, the log and highest seq c owes an acknowledgement
            # for; lower ones of that log are durable when it is (owed_state's WAITING).
            for st, (lg, seq) in c.awaited.items():
                if lg.durable_seq < seq and lg.sync != "none" and lg is st.log and lg.failure is None:
                    n = need.setdefault(st, [0, set()])
                    if seq > n[0]:
                        n[0] = seq
                    n[1].add(c)
        for st, (seq, conns) in need.items():
            # One commit per topic for every connection of the round; it ends in a
            # worker thread: the acknowledgements leave when it is done.
            if not self.agent.closing:
                self.commits += 1
                self.agent.commit_now(st)
            self.settle(st, seq, conns)
        for c in waiting:
            c.ack_settled()


class _Connection(asyncio.Protocol):
    """One client: bytes in, packets acted on, PUBACKs out in order."""

    def __init__(self, endpoint):
        self.ep = endpoint
        self.agent = endpoint.agent
        self.decoder = mp.Decoder(endpoint.max_packet_bytes)
        self.transport = None
        self.version = None
        self.client_id = None
        self.will = None
        self.owed = []  # _Owed, in arrival order (a list: acknowledged from the front in slices)
        self.awaited = {}  # topic state -> (its log, the highest seq of it an owed message waits for)
        self._wkey_cid = None  # (client id, its part of a dedupe window key)
        self.pending = []  # PUBLISHes read but not yet appended (held behind backpressure)
        self.held = None  # asyncio.TimerHandle of a held message's next try
        self.reading = True
        self.last_rx = 0.0
        self.keepalive_s = 0
        self._timer = None
        self._closing = False

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        self.ep.connections.add(self)
        self.last_rx = self.ep._loop.time()
        self._timer = self.ep._loop.call_later(self.ep.connect_timeout_s, self._check_alive)
        if self.ep._paused:
            self.pause()

    def data_received(self, data):
        if self._closing:
            return
        self.last_rx = self.ep._loop.time()
        self.ep.bytes_in += len(data)
        self.decoder.receive_data(data)
        next_packet = self.decoder.next_packet
        pending = self.pending
        try:
            while not self._closing:
                p = next_packet()
                if p is None:
                    break
                if type(p) is mp.Publish and p.qos < 2 and not p.properties:
                    # _packet's PUBLISH case without what such a packet cannot carry (QoS 2, a topic alias)
                    self.ep.received += 1
                    if p.dup:
                        self.ep.redelivered += 1
                    pending.append(p)
                    if len(pending) + len(self.owed) >= self.ep.window:
                        self.pause()
                    continue
                self._packet(p)
        except mp.UnsupportedVersion as e:
            self.ep.connects_refused += 1
            self.transport.write(mp.encode_connack(mp.MQTT5 if e.level == mp.MQTT5 else mp.MQTT311,
                                                   mp.RC_UNSUPPORTED_VERSION))
            self._abort("refused a connection: %s" % e)
        except mp.MalformedPacket as e:
            self.ep.protocol_errors += 1
            self._process()  # what came before it is appended (and acknowledged once durable)
            self.close(e.reason_code, str(e), "malformed packet from %s: %s" % (self.client_id or "a client", e))
        self._process()

    def connection_lost(self, exc):
        ep = self.ep
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self.held is not None:
            self.held.cancel()
        ep.connections.discard(self)
        ep._waiting.discard(self)
        if self.client_id is not None and ep.clients.get(self.client_id) is self:
            del ep.clients[self.client_id]
        ep.acks_lost += len(self.owed)
        self.owed = []
        self.pending = []
        if self.will is not None and not ep._paused and not self.agent.closing:
            will, self.will = self.will, None
            try:  # stored as a QoS 0 message: nobody waits for it
                self._store(mp.Publish(will.topic, will.payload, 0, retain=will.retain))
            except Exception as e:  # noqa: BLE001 - backpressure or a failed write: the will is lost, said so
                ep._error("the will of %s on %r was not stored: %s" % (self.client_id, will.topic, e))
        self.transport = None

    # ---------------------------------------------------------------- control

    def pause(self):
        if self.transport is not None and self.reading:
            self.reading = False
            self.transport.pause_reading()

    def _resume(self):
        if self.transport is not None and not self.reading and not self.ep._paused:
            self.reading = True
            self.transport.resume_reading()

    def close(self, reason_code=None, reason=None, log_line=None):
        """Close the connection (MQTT 5: DISCONNECT with ``reason_code`` first). What it
        published before is committed and acknowledged first (fewer resends): nothing
        more is read, and the close waits for that commit."""
        if log_line:
            self.ep._error(log_line)
        if self.transport is None or self._closing:
            return
        self._closing = True  # from here on nothing is read or acted on
        self.pause()
        self.will = None if reason_code == mp.RC_SERVER_SHUTTING_DOWN else self.will
        self.ack_settled()
        need = {}
        for e in self.owed:
            if e.state() == WAITING:
                need[e.st] = max(need.get(e.st, 0), e.seq)
        if need and not self.agent.closing:
            t = self.ep._loop.create_task(self._close_after(need, reason_code, reason))
            self.ep._tasks.add(t)
            t.add_done_callback(self.ep._tasks.discard)
            return
        self._disconnect(reason_code, reason)

    async def _close_after(self, need, reason_code, reason):
        try:
            for st, seq in need.items():
                self.agent.commit_now(st)
                try:
                    await self.agent.wait_durable(st, seq)
                except RequestError:
                    pass  # lost: not acknowledged (ack_settled), the publisher resends it
            self.ack_settled()
        finally:
            self._disconnect(reason_code, reason)

    def _disconnect(self, reason_code, reason):
        if self.transport is None:
            return
        if self.version == mp.MQTT5 and reason_code is not None:
            self.transport.write(mp.encode_disconnect(reason_code, reason))
        self.transport.close()

    def _abort(self, log_line):
        self.ep._error(log_line)
        self._closing = True
        self.transport.close()

    def _check_alive(self):
        self._timer = None
        if self.transport is None or self._closing:
            return
        if self.version is None:
            self.close(log_line="a client sent no CONNECT in %d s: closed" % self.ep.connect_timeout_s)
            return
        idle = self.ep._loop.time() - self.last_rx
        limit = self.keepalive_s * 1.5
        if idle >= limit:
            self.close(mp.RC_KEEP_ALIVE_TIMEOUT, "keep alive timeout",
                       "client %s silent for %.0f s (keepalive %d s): closed" % (self.client_id, idle,
                                                                                 self.keepalive_s))
            return
        self._timer = self.ep._loop.call_later(limit - idle, self._check_alive)

    # ---------------------------------------------------------------- packets

    def _packet(self, p):
        if isinstance(p, mp.Publish):
            self.ep.received += 1
            if p.dup:
                self.ep.redelivered += 1
            if p.qos == 2:
                self._process()  # what came before it is appended (and acknowledged if durable)
                self.ep.refuse(p.topic, "qos2", "QoS 2 is not supported (the endpoint offers QoS 0 and 1)")
                self.close(mp.RC_QOS_NOT_SUPPORTED, "QoS 2 is not supported: publish with QoS 1")
                return
            if p.properties.get("topic_alias"):
                self._process()
                self.ep.protocol_errors += 1
                self.close(mp.RC_TOPIC_ALIAS_INVALID, "topic aliases are not accepted (Topic Alias Maximum 0)",
                           "client %s used a topic alias: closed" % self.client_id)
                return
            self.pending.append(p)
            if len(self.pending) + len(self.owed) >= self.ep.window:
                self.pause()
            return
        if isinstance(p, mp.Connect):
            self._connect(p)
            return
        t = p.type if isinstance(p, mp.Simple) else None
        if t == mp.PINGREQ:
            self.transport.write(mp.encode_pingresp())
        elif t == mp.DISCONNECT:
            if p.reason_code != 0x04:  # 0x04: disconnect with will message
                self.will = None
            expiry = p.properties.get("session_expiry_interval")
            if expiry is not None and self.client_id in self.ep.sessions:
                self.ep.open_session(self.client_id, False, expiry)
            self._process()
            self.ack_settled()
            self._closing = True
            self.transport.close()
        elif isinstance(p, mp.Subscribe):
            # An ingest endpoint delivers nothing: a subscription is refused, not granted and left silent.
            self.transport.write(mp.encode_suback(self.version, p.packet_id,
                                                  [mp.RC_IMPLEMENTATION_SPECIFIC if self.version == mp.MQTT5
                                                   else 0x80] * len(p.filters),
                                                  "the edgeline agent takes publishes only"))
        elif isinstance(p, mp.Unsubscribe):
            self.transport.write(mp.encode_unsuback(self.version, p.packet_id, [0x11] * len(p.filters)))
        elif t == mp.AUTH:
            self.ep.protocol_errors += 1
            self.close(mp.RC_PROTOCOL_ERROR, "enhanced authentication is not supported")
        else:  # PUBACK, PUBREC, PUBREL, PUBCOMP: the endpoint sent nothing to acknowledge
            self.ep.protocol_errors += 1
            self.close(mp.RC_PROTOCOL_ERROR, "unexpected packet type %d" % t,
                       "client %s sent packet type %d: closed" % (self.client_id, t))

    def _connect(self, c):
        ep = self.ep
        self.version = c.version
        v5 = c.version == mp.MQTT5
        client_id = c.client_id
        props = {}
        if not client_id:
            if not c.clean_start and not v5:
                ep.connects_refused += 1
                self.transport.write(mp.encode_connack(c.version, mp.RC_CLIENT_ID_NOT_VALID))
                self._abort("refused a connection: an empty client id with a persistent session")
                return
            client_id = "edgeline-" + secrets.token_hex(8)
            if v5:
                props["assigned_client_identifier"] = client_id
        if not ep.authenticate(c.username, c.password):
            ep.connects_refused += 1
            self.transport.write(mp.encode_connack(c.version, mp.RC_BAD_USER_OR_PASSWORD))
            self._abort("refused a connection from %s: bad user name or password (user %r)"
                        % (client_id, c.username))
            return
        old = ep.clients.get(client_id)
        if old is not None:
            old.close(mp.RC_SESSION_TAKEN_OVER, "another connection took the client id over",
                      "client %s connected again: its old connection is closed" % client_id)
        ep.clients[client_id] = self
        self.client_id = client_id
        self.will = c.will
        self.keepalive_s = c.keepalive_s
        expiry = c.properties.get("session_expiry_interval", 0) if v5 else (0 if c.clean_start else _NEVER)
        present = ep.open_session(client_id, c.clean_start, expiry)
        if v5:
            props.update(receive_maximum=ep.window, maximum_qos=1, wildcard_subscription_available=0,
                         subscription_identifier_available=0, shared_subscription_available=0,
                         maximum_packet_size=ep.max_packet_bytes)
        ep.connects += 1
        self.transport.write(mp.encode_connack(c.version, mp.RC_SUCCESS, present, props))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.keepalive_s:
            self._timer = ep._loop.call_later(self.keepalive_s * 1.5, self._check_alive)

    # ---------------------------------------------------------------- messages

    def _store(self, p):
        """Route and append ``p``; ``(st, seq)``, ``(None, (reason, line))`` refused, or
        raises RequestError 5xx (hold it). A QoS 1 message is written to the topic's
        dedupe window before it is appended (so the window is synced before the log's
        fsync that makes the record durable: docs/spec/ingest-dedupe.md, D1); a resend
        (DUP) of one the window holds with the same payload is not appended again: its
        ``(st, seq)`` is the original's, acknowledged once that is durable."""
        st, why = self.ep.route(p.topic)
        if st is None:
            self.ep.refuse(p.topic, *why)
            return None, why
        try:
            key, value = record_from_payload(p.payload)
        except RequestError as e:
            why = ("bad_value", str(e))
            self.ep.refuse(p.topic, *why)
            return None, why
        # A log failed by a write error is reopened first, its window recovered with it
        # (RequestError 503 while it cannot be: the message is held): the window's entry
        # below must name a seq of the log that takes the record.
        self.agent.ready(st)
        window = st.window if p.qos else None
        wkey = None
        if window is not None:
            wkey = self._window_key(p.packet_id)
            digest = payload_digest(p.payload)
            if p.dup:
                hit = window.lookup(wkey)
                if hit is not None and hit[2] == digest:
                    window.hits += 1
                    self.ep.redeliveries_dropped += 1
                    return st, hit[1]
            # A new message, or a packet id used again after its PUBACK: the entry is replaced.
            window.add(wkey, st.log.last_seq + 1, st.log.last_seq + 1, digest)
        try:
            first, n = self.agent.append(st, [key], [value])
        except BaseException as e:
            if wkey is not None:
                window.discard(wkey)  # not stored: the resend stores it
            if not isinstance(e, RequestError) or e.status >= 500:
                raise
            why = ("too_large" if e.status == 413 else "bad_value", str(e))
            self.ep.refuse(p.topic, *why)
            return None, why
        if not n:
            if wkey is not None:
                window.discard(wkey)
            return None, None  # drop_newest dropped it (the log counts it)
        self.ep.stored += 1
        return st, first

    def _window_key(self, packet_id):
        """``c:`` + packet id (2 bytes, big-endian) + the client id (UTF-8; over 200 bytes:
        its BLAKE2b-16 digest): the endpoint's rows of the dedupe window."""
        if self._wkey_cid is None or self._wkey_cid[0] != self.client_id:
            cid = self.client_id.encode("utf-8")
            if len(cid) > 200:
                cid = hashlib.blake2b(cid, digest_size=16).digest()
            self._wkey_cid = (self.client_id, cid)
        return _WKEY_HEAD.pack(b"c:", packet_id) + self._wkey_cid[1]

    def _process(self):
        """Append what was read, in order; owe a PUBACK for each QoS 1 message. A run of
        messages to one topic goes in as one burst (``_store_burst``); a message no topic
        takes, and every message of a ``drop_newest`` topic, one at a time (``_store``)."""
        if self.held is not None or self.ep._paused or self.agent.closing or self.transport is None or self._closing:
            return
        ep = self.ep
        i = 0
        pending = self.pending
        try:
            while i < len(pending):
                try:
                    i = self._store_burst(i)
                except _Hold as h:
                    i = h.index
                    self._hold(pending[i], h.error)
                    return
        finally:
            del pending[:i]
        self.ack_settled()
        if self.owed:
            ep.commit_soon(self)
        elif self.transport is not None and not self._closing:
            self._resume()

    def _store_one(self, i):
        """``_store`` of ``pending[i]`` and its owed entry; the next index, or _Hold."""
        p = self.pending[i]
        try:
            st, got = self._store(p)
        except RequestError as e:
            raise _Hold(i, e) from None
        except Exception as e:  # noqa: BLE001 - a bug here must not lose the message either
            log.exception("edgeline agent: MQTT endpoint: unexpected error")
            raise _Hold(i, RequestError(500, "unexpected error: %s: %s" % (type(e).__name__, e))) from None
        if p.qos:
            if st is not None:
                self._owe(p.packet_id, st, st.log, got)
            else:
                reason, line = got or ("dropped", "the topic's drop_newest policy dropped it")
                self.owed.append(_Owed(p.packet_id, rc=_REASON_CODES.get(reason, mp.RC_SUCCESS), reason=line))
        return i + 1

    def _owe(self, pid, st, lg, seq):
        self.owed.append(_Owed(pid, st, seq, lg=lg))
        a = self.awaited.get(st)
        if a is None or a[0] is not lg or a[1] < seq:
            self.awaited[st] = (lg, seq)

    def _store_burst(self, i):
        """Store ``pending[i]`` and the messages after it that go to the same topic, as
        ``_store`` would one by one, with one write of their dedupe entries and one
        ``Agent.append``; return the index of the first message left. ``_Hold(index,
        error)``: backpressure or a failed write from that message on (nothing from it
        on is stored or owed)."""
        ep = self.ep
        pending = self.pending
        p = pending[i]
        st, why = ep.route(p.topic)
        if st is None or st.log.full_policy == DROP_NEWEST:
            return self._store_one(i)  # refused (counted there), or a log that may drop a record of a burst
        run = []  # (message, key, value)
        j = i
        end = min(len(pending), i + MAX_BURST)
        while j < end:
            q = pending[j]
            if j > i and ep.route(q.topic)[0] is not st:
                break
            try:
                key, value = record_from_payload(q.payload)
            except RequestError:
                break  # refused by _store, on its own
            run.append((q, key, value))
            j += 1
        if not run:
            return self._store_one(i)
        try:
            # A log failed by a write error is reopened first, its window recovered with
            # it: the window's entries below must name seqs of the log that takes them.
            self.agent.ready(st)
        except RequestError as e:
            raise _Hold(i, e) from None
        lg = st.log
        window = st.window
        next_seq = lg.last_seq + 1
        keys = []
        values = []
        rows = []  # dedupe window entries: (key, first, last, digest)
        fresh = {}  # window key -> its row in this burst
        seqs = []  # per message of run: the seq its PUBACK waits for (a redelivery: the original's)
        given = []  # per message of run: the seq it is appended as, 0 for a redelivery (not appended)
        hits = []  # run indexes of redeliveries of stored messages
        for q, key, value in run:
            if q.qos and window is not None:
                wkey = self._window_key(q.packet_id)
                digest = payload_digest(q.payload)
                if q.dup:
                    r = fresh.get(wkey)
                    hit = window.lookup(wkey) if r is None else (rows[r][1], rows[r][2], rows[r][3])
                    if hit is not None and hit[2] == digest:
                        hits.append(len(seqs))
                        seqs.append(hit[1])
                        given.append(0)
                        continue
                # A new message, or a packet id used again after its PUBACK: the entry is replaced.
                fresh[wkey] = len(rows)
                rows.append((wkey, next_seq, next_seq, digest))
            keys.append(key)
            values.append(value)
            seqs.append(next_seq)
            given.append(next_seq)
            next_seq += 1
        first = lg.last_seq + 1
        error = None
        try:
            if rows:
                window.add_many(rows)  # before the append: the window is synced first at every fsync (D1)
            n = self.agent.append(st, keys, values)[1] if values else 0
            if n != len(values):  # only drop_newest stores fewer, and it takes the one-by-one path
                error = RequestError(500, "%d of %d records appended" % (n, len(values)))
        except RequestError as e:
            error = e
            n = e.stored or 0
        except Exception as e:  # noqa: BLE001 - a bug here must not lose the messages either
            log.exception("edgeline agent: MQTT endpoint: unexpected error")
            error = RequestError(500, "unexpected error: %s: %s" % (type(e).__name__, e))
            n = max(0, lg.last_seq - first + 1)
        cut = len(run)
        failed = lg.failure is not None
        if error is not None:
            if failed:
                # A write error failed the log: what it took (seqs up to its last_seq)
                # keeps its entries and is owed -- LOST unless durable (owed_state), never
                # acknowledged: the connection closes, the publisher resends, and the
                # entries are kept or dropped with the records when the log is reopened
                # (D2) -- as if they had been appended one at a time before the error.
                n = max(0, lg.last_seq - first + 1)
            # Appended: the first n (seqs first.., as every burst); the rest is not stored,
            # their entries go (the resend stores them), and from the first of them on
            # the messages wait (a failed log) or go one by one (backpressure, a refusal).
            last = first + n - 1
            for r in rows:
                if r[1] > last:
                    try:
                        window.discard(r[0])
                    except (OSError, EdgelineError) as e:
                        ep._error("cannot forget the dedupe entry of a message not stored: %s" % e)
            cut = 0
            while cut < len(run) and given[cut] <= last:
                cut += 1
        ep.stored += n
        if hits:
            for h in hits:
                if h < cut:
                    window.hits += 1
                    ep.redeliveries_dropped += 1
        owed = self.owed
        top = 0
        for k in range(cut):
            q = run[k][0]
            if q.qos:
                seq = seqs[k]
                owed.append(_Owed(q.packet_id, st, seq, lg=lg))
                if seq > top:
                    top = seq
        if top:
            a = self.awaited.get(st)
            if a is None or a[0] is not lg or a[1] < top:
                self.awaited[st] = (lg, top)
        if error is None:
            return i + cut
        if failed:
            raise _Hold(i + cut, error)
        # The rest of the run one at a time, as without bursts: a 413 refuses only its own
        # message, ``sync.max_queue_size`` may have room for some of them (a burst must
        # not wait for room it may never get), a failed log is reopened or the message held.
        k = i + cut
        while k < i + len(run):
            k = self._store_one(k)  # _Hold from the first that waits
        return k

    def _hold(self, p, e):
        line = "a message on %r waits: %s" % (p.topic, e)
        if e.status == 500:
            self.ep._error(line)
        self.pause()
        self.held = self.ep._loop.call_later(HOLD_RETRY_S, self._retry)
        self.ack_settled()

    def _retry(self):
        self.held = None
        if self.transport is not None:
            self._process()

    def ack_settled(self):
        """Send, in arrival order, the PUBACK of every owed message that has settled. One
        lost to a write error (``owed_state``) is never acknowledged: the connection is
        closed, and the publisher resends it and what follows it."""
        owed = self.owed
        if self.transport is None:
            return
        n = 0
        out = []
        lost = None
        puback = _PUBACK_SUCCESS.pack
        version = self.version
        for e in owed:
            lg = e.lg
            if lg is not None and lg.durable_seq < e.seq and lg.sync != "none":
                # owed_state inline (the hot loop): not settled, so WAITING or LOST
                if lg is e.st.log and lg.failure is None:
                    break
                lost = e
                break
            if e.rc:
                out.append(mp.encode_puback(version, e.pid, e.rc, e.reason))
            else:
                out.append(puback(0x40, 2, e.pid))
            n += 1
        if n:
            del owed[:n]
            self.ep.acked += n
            self.transport.write(b"".join(out))
            if not self.pending and len(owed) < self.ep.window and self.held is None and not self._closing:
                self._resume()
        if lost is not None and not self._closing:
            self.close(mp.RC_UNSPECIFIED, "the agent cannot write the topic's log",
                       "topic %s: seq %d was lost to a write error before it was durable (%s): closing the "
                       "connection of %s, which resends it" % (lost.st.cfg.name, lost.seq, lost.lg.failure,
                                                               self.client_id))
