"""The sync protocol through an MQTT broker (paho-mqtt): both ends, one paho bridge.

Topic scheme (docs/spec/wire.md)
--------------------------------
An edge publishes its half of the conversation to ``<prefix>/<node_id>/up`` and reads the
gateway's half on ``<prefix>/<node_id>/down`` (``up_topic``, ``down_topic``; the gateway
subscribes to ``up_filter(prefix)`` = ``<prefix>/+/up``). The prefix is a topic without
wildcards or a leading/trailing ``/`` (``check_prefix``). A payload is a CBOR sequence
of whole messages ("Transport-independent framing"); one that ends inside a message is
malformed, never joined to the next payload. ``filter_covers`` is MQTT's filter matching
(``+`` one level, ``#`` the rest and the parent, ``$`` topics only by name), used by the
gateway's routing, the agent's config and MQTT ingest alike.

The paho bridge
---------------
paho runs its network loop in a thread of its own (``loop_start``). ``PahoBridge`` sets
a client up the one way every edgeline MQTT client wants it -- callback API 2, Nagle
off (``no_delay``), paho's own reconnect between ``reconnect_min_s`` and
``reconnect_max_s``, connect in the background -- and hands paho's callbacks to its
owner: ``mqtt_connect`` runs in paho's thread (it subscribes there, so a reconnect
subscribes before anything else happens); everything else (``mqtt_refused``,
``mqtt_unreachable``, ``mqtt_subscribed``, ``mqtt_disconnected``) runs on the asyncio
loop (``call_soon_threadsafe``), so the owner's state lives on the loop alone;
``mqtt_message`` runs in paho's thread and hands over itself with ``bridge.call``.
``generation`` counts connects and disconnects (under ``lock``, bumped in paho's
thread): what arrived on one connection can be told from what arrived on the next.
``Client.publish`` is thread-safe and does not block: it queues for the network thread.

Latency. A conversation is small messages, each waiting for the answer to the one
before, so Nagle's algorithm (with delayed ACKs) can hold every hop for 40 ms: the
bridge switches it off on its socket, and the broker should too (Mosquitto:
``set_tcp_nodelay true``; without it an exchange takes ~90 ms instead of ~2 ms on one
machine).

The gateway's end (``MqttGatewayTransport``)
--------------------------------------------
Subscribes to ``<prefix>/+/up`` (QoS 1) and keeps one ``GatewayConnection`` per node id,
what a TCP connection is to the TCP transport:

* The payloads of one node go through ``gateway.process`` one after the other, in the
  order the broker delivered them (at QoS 1 the broker keeps one publisher's order on
  a topic); different nodes run concurrently, so their batches share group commits.
* The answer is published to the node's ``down`` topic (QoS 1). ACKs leave only after
  their records are durable (``process`` commits before it writes them).
* A payload whose first message is a HELLO starts a new conversation (a node that
  rebooted, or gave up on the old one). A conversation that ended (an ERROR either
  way) is dropped; the node's next payload meets a fresh connection. A connection idle
  for longer than the gateway's ``session_idle_s`` is forgotten.
* The HELLO's node id must be the topic's: the answers go to the topic's node, and a
  node must not speak on another's topic. Otherwise: ERROR ``unknown_node``.
* A topic whose node level is not a valid node id, an empty payload, a retained
  message and a payload beyond ``MAX_QUEUED_PAYLOADS`` waiting for one node are
  ignored and counted (``ignored``), never answered.

Failure modes, and what holds:

* The broker goes away or restarts: paho reconnects by itself and ``mqtt_connect``
  subscribes again (a clean session: the broker keeps nothing for us). Payloads
  published meanwhile may be lost; answers published meanwhile are queued by paho and
  sent after the reconnect. Conversations survive a reconnect of the gateway's client.
* Nothing acknowledged is lost: an ACK leaves only after its records are durable, and
  an edge resends everything it holds unacknowledged. The store's dedupe (W1) makes
  the resends exactly once.
* QoS 1 delivers at least once. A duplicate BATCH or GAP is a replay (stored once,
  acknowledged again); a duplicate HELLO restarts the handshake; a duplicate AUTH ends
  the conversation with ERROR ``unexpected``. The edge starts over in each case.
* The gateway restarts: its conversations are gone, a node's next BATCH is answered
  with ERROR ``unexpected``, and the node starts over with HELLO.

The edge's end (``MqttEdgeTransport``)
--------------------------------------
Publishes a request to ``up`` and takes the next payload on ``down`` as the answer. What
the gateway's end asks of an edge, and why:

* The down subscription stands before anything is sent (``exchange`` waits for it).
* A conversation ends with the broker connection it began on: after a disconnect the
  next exchange fails, and the uplink starts over with HELLO, resuming from the marks
  in WELCOME. Nothing is lost: only an ACK moves a cursor, and the gateway dedupes a
  resent batch.
* Requests go out at QoS 0. The sync protocol acknowledges end to end, so a request
  lost on the way costs one timeout and a new conversation; at QoS 1 paho would resend
  unacknowledged requests of a dead conversation after a reconnect, and their answers
  (a stale CHALLENGE, an ERROR) would arrive in the middle of the next handshake.
* Answers that belong to an older conversation (one that timed out) can still arrive:
  while it waits for CHALLENGE, the edge skips payloads that begin with anything but a
  CHALLENGE or an ERROR (``sync.peek_type``; counted: ``stale``). Answers on one topic
  arrive in order, so nothing of an older conversation follows the CHALLENGE.
"""
import asyncio
import collections
import logging
import secrets
import socket
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeline import sync

from . import TransportError
from ..wirecomp import CBATCH

log = logging.getLogger("edgeline.gateway.mqtt")

QOS = 1
# An edge waits for each answer before it sends more, so a node with this many payloads
# waiting is flooding: the excess is dropped (and counted); an honest edge resends.
MAX_QUEUED_PAYLOADS = 64
SESSION_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5 Session Expiry Interval: kept until the broker drops it
_CONNECTION_LOST = 128  # paho's reason code "Unspecified error": what it says for a connection that broke


# ---------------------------------------------------------------------------- topics


def check_prefix(prefix):
    """The topic prefix, or ValueError: not empty, no wildcards, no leading or trailing '/'."""
    if (not isinstance(prefix, str) or not prefix or "+" in prefix or "#" in prefix or "\0" in prefix
            or prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError("MQTT topic prefix must be a non-empty topic without wildcards or "
                         "leading/trailing '/', got %r" % (prefix,))
    return prefix


def up_topic(prefix, node_id):
    return "%s/%s/up" % (prefix, node_id)


def down_topic(prefix, node_id):
    return "%s/%s/down" % (prefix, node_id)


def up_filter(prefix):
    return prefix + "/+/up"


def node_of_up_topic(prefix, topic):
    """The node id of ``<prefix>/<node_id>/up``, or None (another topic, not a node id)."""
    if topic is None or not topic.startswith(prefix + "/") or not topic.endswith("/up"):
        return None
    node = topic[len(prefix) + 1:-3]
    return node if sync.is_node_id(node) else None


def filter_covers(topic_filter, other):
    """Every topic ``other`` matches, ``topic_filter`` matches too. ``other`` is a topic
    (then: does the filter match it?) or a filter. ``+`` is one level, ``#`` the rest
    (and the parent); a filter starting with a wildcard does not match ``$`` topics."""
    o = topic_filter.split("/")
    i = other.split("/")
    for n, level in enumerate(o):
        if level == "#":
            return not (n == 0 and i[0].startswith("$"))
        if n >= len(i) or i[n] == "#":
            return False
        if level == "+":
            if i[n] != "+" and n == 0 and i[0].startswith("$"):
                return False
            continue
        if level != i[n]:
            return False
    return len(o) == len(i)


def no_delay(_client, _userdata, sock):
    """paho's on_socket_open: switch Nagle's algorithm off. A conversation is small
    messages each waiting for the answer to the one before; with Nagle (and the
    peer's delayed ACKs) each hop can wait 40 ms."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a websocket wrapper, a Unix socket)


class PahoBridge:
    """One paho client whose callbacks reach ``owner`` (see the module doc).

    Without ``session_window`` the client speaks MQTT 3.1.1 with a clean session. With
    it, MQTT 5 with a session the broker keeps forever (clean start off), manual
    acknowledgements, and a receive maximum of ``session_window``: at most that many
    messages unacknowledged with the broker (MQTT ingest)."""

    def __init__(self, owner, host, port, client_id, keepalive_s=30, reconnect_min_s=1, reconnect_max_s=30,
                 session_window=None):
        self.owner = owner
        self.host = host
        self.port = port
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.session_window = session_window
        self.client = None  # the paho client between start() and close()
        self.lock = threading.Lock()
        self.generation = 0  # bumped under lock on every connect and disconnect (paho's thread)
        self._loop = None

    def start(self):
        """Connect in the background: paho keeps trying until the broker answers."""
        self._loop = asyncio.get_running_loop()
        if self.session_window is None:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        else:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5,
                            manual_ack=True)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_message = self.owner.mqtt_message
        c.on_socket_open = no_delay
        c.reconnect_delay_set(self.reconnect_min_s, self.reconnect_max_s)
        if self.session_window is None:
            c.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        else:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_NEVER_EXPIRES
            props.ReceiveMaximum = self.session_window
            c.connect_async(self.host, self.port, keepalive=self.keepalive_s, clean_start=False, properties=props)
        self.client = c
        c.loop_start()

    async def close(self):
        """Disconnect (after whatever paho has queued) and join paho's thread."""
        c, self.client = self.client, None
        if c is not None:
            c.disconnect()
            await asyncio.to_thread(c.loop_stop)

    def call(self, fn, *args):
        """From paho's thread: run fn(*args) on the loop."""
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: shutting down

    # paho's thread

    def _on_connect(self, client, _userdata, flags, reason_code, _properties):
        if reason_code.is_failure:
            self.call(self.owner.mqtt_refused, str(reason_code))
            return
        with self.lock:
            self.generation += 1
            gen = self.generation
        self.owner.mqtt_connect(client, flags, gen)

    def _on_connect_fail(self, _client, _userdata):
        self.call(self.owner.mqtt_unreachable)

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties):
        refused = [(i, str(rc)) for i, rc in enumerate(reason_codes) if rc.is_failure]
        self.call(self.owner.mqtt_subscribed, refused)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties):
        with self.lock:
            self.generation += 1  # before paho reconnects: nothing of this connection is taken for the next's
        self.call(self.owner.mqtt_disconnected,
                  "connection lost" if reason_code.value == _CONNECTION_LOST else str(reason_code))


# ---------------------------------------------------------------------------- the gateway's end


class _Node:
    __slots__ = ("conn", "queue", "task", "seen")

    def __init__(self):
        self.conn = None
        self.queue = collections.deque()
        self.task = None
        self.seen = time.monotonic()


class MqttGatewayTransport:
    """The gateway's end: ``await start()``, ``await close()``; ``subscribed`` (an
    asyncio.Event, set while the subscription to the up topics stands) and counters:
    ``payloads``, ``ignored``, ``published``, ``connects``."""

    def __init__(self, gateway, host, port, prefix="edgeline", print_fn=None, client_id=None,
                 keepalive_s=30, reconnect_min_s=1, reconnect_max_s=30):
        self.gateway = gateway
        self.host = host
        self.port = port
        self.prefix = check_prefix(prefix)
        self.up_filter = up_filter(prefix)
        self.print_fn = print_fn
        self.client_id = client_id or "edgeline-gw-" + secrets.token_hex(6)
        self.payloads = 0  # payloads handed to a connection
        self.ignored = 0  # payloads dropped unanswered: bad node id, empty, retained, flood
        self.published = 0  # answers published
        self.connects = 0  # successful connections to the broker
        self.subscribed = None
        self._nodes = {}  # node_id -> _Node
        self._bridge = PahoBridge(self, host, port, self.client_id, keepalive_s, reconnect_min_s, reconnect_max_s)
        self._loop = None
        self._last_sweep = time.monotonic()

    async def start(self):
        """Connect in the background: paho keeps trying until the broker answers."""
        self._loop = asyncio.get_running_loop()
        self.subscribed = asyncio.Event()
        self._bridge.start()

    async def close(self):
        await self._bridge.close()
        tasks = [n.task for n in self._nodes.values() if n.task is not None]
        for t in tasks:
            t.cancel()  # anything unanswered is resent by its edge
        await asyncio.gather(*tasks, return_exceptions=True)
        self._nodes.clear()

    # paho's thread

    def mqtt_connect(self, client, _flags, _gen):
        client.subscribe(self.up_filter, qos=QOS)
        self._bridge.call(self._connected)

    def mqtt_message(self, _client, _userdata, msg):
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        self._bridge.call(self._received, topic, bytes(msg.payload), msg.retain)

    # the loop

    def mqtt_refused(self, why):
        self._say("edgeline gateway: MQTT broker %s:%d refused the connection: %s" % (self.host, self.port, why))

    def mqtt_unreachable(self):
        pass  # paho keeps trying; the connect line says when it succeeds

    def mqtt_subscribed(self, refused):
        if not refused:
            self.subscribed.set()
        else:
            self._say("edgeline gateway: MQTT broker refused the subscription to %s" % self.up_filter)

    def mqtt_disconnected(self, why):
        self.subscribed.clear()
        if self._bridge.client is not None:  # not our own close()
            self._say("edgeline gateway: MQTT broker %s:%d: %s; reconnecting" % (self.host, self.port, why))

    def _say(self, line):
        if self.print_fn is not None:
            self.print_fn(line)
        else:
            log.info("%s", line)

    def _connected(self):
        self.connects += 1
        self._say("edgeline gateway: MQTT broker %s:%d connected" % (self.host, self.port))

    def _received(self, topic, payload, retained):
        node = node_of_up_topic(self.prefix, topic)
        if node is None or not payload or retained:
            self.ignored += 1
            why = "not a node id" if node is None else "retained" if retained else "empty"
            log.warning("edgeline gateway: MQTT payload on %r ignored: %s", topic, why)
            return
        now = time.monotonic()
        self._sweep(now)
        n = self._nodes.get(node)
        if n is None:
            n = self._nodes[node] = _Node()
        if len(n.queue) >= MAX_QUEUED_PAYLOADS:
            self.ignored += 1
            log.warning("edgeline gateway: MQTT payload of %s dropped: %d already waiting", node, len(n.queue))
            return
        n.seen = now
        n.queue.append(payload)
        if n.task is None:
            n.task = self._loop.create_task(self._drain(node, n))

    def _sweep(self, now):
        idle_s = self.gateway.session_idle_s
        if now - self._last_sweep < min(idle_s / 4, 60):
            return
        self._last_sweep = now
        for node in [k for k, n in self._nodes.items() if n.task is None and now - n.seen > idle_s]:
            del self._nodes[node]

    async def _drain(self, node, n):
        # One task per node with payloads waiting: the node's payloads in order.
        try:
            while n.queue:
                await self._exchange(node, n, n.queue.popleft())
        finally:
            n.task = None
            if n.conn is None and not n.queue and self._nodes.get(node) is n:
                del self._nodes[node]

    async def _exchange(self, node, n, payload):
        gw = self.gateway
        if n.conn is None or sync.peek_type(payload) == sync.Hello.TYPE:
            n.conn = gw.new_connection()
        conn = n.conn
        self.payloads += 1
        try:
            out, finished = await gw.process(conn, payload, "payload")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one node never takes the transport down
            log.exception("edgeline gateway: MQTT exchange with %s failed", node)
            out, finished = b"", True
        if not finished and conn.node_id is not None and conn.node_id != node:
            # Found at HELLO: nothing of this conversation reached the store.
            out = conn.send(sync.Error(sync.ERR_UNKNOWN_NODE,
                                       "node id %r does not match the topic's %r" % (conn.node_id, node)))
            finished = True
            gw.rejected += 1
        if finished:
            n.conn = None
        n.seen = time.monotonic()
        client = self._bridge.client
        if out and client is not None:
            client.publish(down_topic(self.prefix, node), out, qos=QOS)
            self.published += 1


def attach_mqtt(app, gateway, host, port, prefix="edgeline", print_fn=print, **options):
    """Run the gateway's MQTT end with an aiohttp app: started on startup, closed on
    shutdown (before the gateway's store closes on cleanup). Returns the transport;
    ``options`` go to ``MqttGatewayTransport`` (client_id, keepalive_s, reconnect_min_s,
    reconnect_max_s)."""
    transport = MqttGatewayTransport(gateway, host, port, prefix, print_fn=print_fn, **options)

    async def startup(_app):
        if print_fn is not None:
            print_fn("edgeline gateway: sync over MQTT via %s:%d, %s -> %s"
                     % (host, port, transport.up_filter, down_topic(prefix, "<node>")))
        await transport.start()

    async def shutdown(_app):
        await transport.close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return transport


# ---------------------------------------------------------------------------- the edge's end


_LOST = object()  # in the inbox: the broker connection broke
_READY_TYPES = (sync.Batch.TYPE, sync.Gap.TYPE, sync.Pull.TYPE, CBATCH)  # CBATCH: a compressed BATCH (wirecomp)


class MqttEdgeTransport:
    """The edge's end: exchanges through an MQTT broker (MQTT 3.1.1, clean session).

    ``prefix`` is the topic prefix (``edgeline``): requests go to
    ``<prefix>/<node_id>/up``, answers come on ``<prefix>/<node_id>/down``.
    ``request_timeout_ms`` bounds the wait for an answer (and, before the first
    exchange, for the broker connection). Counters: ``connects``, ``stale``."""

    def __init__(self, node_id, host, port, prefix="edgeline", url=None, request_timeout_ms=10000, keepalive_s=30,
                 reconnect_min_s=0.5, reconnect_max_s=10, client_id=None):
        check_prefix(prefix)
        self.host = host
        self.port = port
        self.up = up_topic(prefix, node_id)
        self.down = down_topic(prefix, node_id)
        self.url = url or "mqtt://%s:%d/%s" % (host, port, prefix)
        self.request_timeout_ms = request_timeout_ms
        # A random suffix: two clients with one id would throw each other off the broker.
        self.client_id = client_id or "edgeline-up-%s-%s" % (node_id, secrets.token_hex(4))
        self.connects = 0
        self.stale = 0  # answers of an older conversation, skipped
        self.last_error = None
        self._bridge = PahoBridge(self, host, port, self.client_id, keepalive_s, reconnect_min_s, reconnect_max_s)
        self._loop = None
        self._ready = None  # asyncio.Event: connected with the down subscription in place
        self._inbox = None
        self._gen = 0  # bumped on every subscription and disconnect (the loop's view)
        self._session_gen = None  # _gen when the conversation began
        self._fresh = False  # new_session() was called: the next exchange is a HELLO
        self._await_challenge = False
        self._last_type = None

    async def start(self):
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._inbox = asyncio.Queue()
        self._bridge.start()

    async def close(self):
        await self._bridge.close()

    # paho's thread

    def mqtt_connect(self, client, _flags, _gen):
        client.subscribe(self.down, qos=1)

    def mqtt_message(self, _client, _userdata, msg):
        if not msg.retain:  # a retained answer is left over from some earlier conversation
            self._bridge.call(self._inbox.put_nowait, bytes(msg.payload))

    # the loop

    def mqtt_refused(self, why):
        self.last_error = "the broker %s:%d refused the connection: %s" % (self.host, self.port, why)

    def mqtt_unreachable(self):
        self.last_error = "cannot reach the broker %s:%d" % (self.host, self.port)

    def mqtt_subscribed(self, refused):
        if refused:
            self.last_error = "the broker %s:%d refused the subscription to %s" % (self.host, self.port, self.down)
            return
        self.connects += 1
        self._gen += 1
        self._ready.set()

    def mqtt_disconnected(self, why):
        self._ready.clear()
        self._gen += 1
        if self._bridge.client is not None:
            self.last_error = "the broker %s:%d: %s" % (self.host, self.port, why)
            self._inbox.put_nowait(_LOST)

    def new_session(self):
        self._fresh = True

    async def exchange(self, body):
        timeout_s = self.request_timeout_ms / 1000.0
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except asyncio.TimeoutError:
                raise TransportError("not connected to the MQTT broker %s:%d%s" % (
                    self.host, self.port, " (%s)" % self.last_error if self.last_error else "")) from None
        if self._fresh:
            # A new conversation: on this connection, with nothing of an older one waiting.
            self._fresh = False
            self._session_gen = self._gen
            self._await_challenge = True
            while not self._inbox.empty():
                if self._inbox.get_nowait() is not _LOST:
                    self.stale += 1
        elif self._session_gen != self._gen:
            raise TransportError("the connection to the broker %s:%d broke: the conversation is over"
                                 % (self.host, self.port))
        self._last_type = sync.peek_type(body)
        info = self._bridge.client.publish(self.up, body, qos=0)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise TransportError("cannot publish to %s: %s" % (self.up, paho.error_string(info.rc)))
        deadline = self._loop.time() + timeout_s
        while True:
            try:
                payload = await asyncio.wait_for(self._inbox.get(), max(0.0, deadline - self._loop.time()))
            except asyncio.TimeoutError:
                raise TransportError("no answer on %s within %d ms" % (self.down, self.request_timeout_ms)) from None
            if payload is _LOST:
                raise TransportError("the connection to the broker %s:%d broke while waiting for an answer"
                                     % (self.host, self.port))
            if self._await_challenge and sync.peek_type(payload) not in (sync.Challenge.TYPE, sync.Error.TYPE):
                self.stale += 1
                continue
            self._await_challenge = False
            return payload

    def lost_session(self, code):
        # The gateway's end answers a BATCH/GAP/PULL outside a conversation (the gateway
        # restarted or forgot an idle one) with ERROR unexpected.
        return code == sync.ERR_UNEXPECTED and self._last_type in _READY_TYPES
