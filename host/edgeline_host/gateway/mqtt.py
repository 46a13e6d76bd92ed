"""The gateway's MQTT face: the sync protocol through a broker (paho-mqtt).

Theory of operation
-------------------
An edge that reaches the cloud through MQTT (``cloud_endpoint: mqtt://broker/prefix``,
docs/config.md) publishes its half of the conversation to ``<prefix>/<node_id>/up`` and
reads the gateway's half on ``<prefix>/<node_id>/down``. A payload is a CBOR sequence of
whole messages (docs/spec/wire.md, "Transport-independent framing"); one that ends inside
a message is malformed, never joined to the next payload. This face
subscribes to ``<prefix>/+/up`` (QoS 1) and keeps one ``GatewayConnection`` per node id,
what a TCP connection is to the TCP face:

* The payloads of one node go through ``Gateway.process`` one after the other, in the
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

Threads. paho runs its network loop in a thread of its own (``loop_start``). Its
callbacks only hand over to the asyncio loop (``call_soon_threadsafe``); connections,
processing and counters live on the loop alone. ``Client.publish`` is thread-safe and
does not block: it queues the message for the network thread.

Latency. A conversation is small messages, each waiting for the answer to the one
before, so Nagle's algorithm (with delayed ACKs) can hold every hop for 40 ms: this
client switches it off on its socket (``no_delay``), and the broker should too
(Mosquitto: ``set_tcp_nodelay true``; without it an exchange takes ~90 ms instead of
~2 ms on one machine).

Failure modes, and what holds
-----------------------------
* The broker goes away or restarts: paho reconnects by itself, waiting between
  ``reconnect_min_s`` and ``reconnect_max_s``, and ``on_connect`` subscribes again (a
  clean session: the broker keeps nothing for us). Payloads published meanwhile may be
  lost; answers published meanwhile are queued by paho and sent after the reconnect.
  Conversations survive a reconnect of the gateway's client.
* Nothing acknowledged is lost: an ACK leaves only after its records are durable, and
  an edge resends everything it holds unacknowledged. The store's dedupe (W1) makes
  the resends exactly once.
* QoS 1 delivers at least once. A duplicate BATCH or GAP is a replay (stored once,
  acknowledged again); a duplicate HELLO restarts the handshake; a duplicate AUTH ends
  the conversation with ERROR ``unexpected``. The edge starts over in each case.
* The gateway restarts: its conversations are gone, a node's next BATCH is answered
  with ERROR ``unexpected``, and the node starts over with HELLO.

What an MQTT edge does (tests/host/test_gateway_mqtt.py has one):

* subscribe to its ``down`` topic before it sends HELLO;
* treat a timeout, an ERROR or a reconnect to the broker as the end of the
  conversation: wait a little, discard its inbox, send HELLO on a new connection and
  resume from the marks in WELCOME;
* while it waits for CHALLENGE, skip payloads that begin with anything else but an
  ERROR (``message_type``): they answer an earlier conversation. Answers on one topic
  arrive in order, so nothing of an older conversation follows the CHALLENGE.
"""
import asyncio
import collections
import logging
import secrets
import socket
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeline import sync

log = logging.getLogger("edgeline.gateway.mqtt")

QOS = 1
HELLO_TYPE = 1
# An edge waits for each answer before it sends more, so a node with this many payloads
# waiting is flooding: the excess is dropped (and counted); an honest edge resends.
MAX_QUEUED_PAYLOADS = 64


def message_type(payload):
    """The type of the first message in ``payload`` (an int), or None when the payload
    does not begin like a message (the connection then says what is wrong).

    Reads two CBOR heads, decodes nothing: cheap enough for every payload."""
    n = len(payload)
    if n < 2 or payload[0] >> 5 != 4:  # an array
        return None
    ai = payload[0] & 0x1F
    if ai < 24 or ai == 31:
        i = 1
    elif ai <= 27:
        i = 1 + (1 << (ai - 24))
    else:
        return None
    if i >= n or payload[i] >> 5 != 0:  # an unsigned int
        return None
    ai = payload[i] & 0x1F
    if ai < 24:
        return ai
    if ai > 27:
        return None
    width = 1 << (ai - 24)
    if i + 1 + width > n:
        return None
    return int.from_bytes(bytes(payload[i + 1:i + 1 + width]), "big")


def no_delay(_client, _userdata, sock):
    """paho's on_socket_open: switch Nagle's algorithm off. A conversation is small
    messages each waiting for the answer to the one before; with Nagle (and the
    peer's delayed ACKs) each hop can wait 40 ms."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a websocket wrapper, a Unix socket)


def check_prefix(prefix):
    """The topic prefix, or ValueError: not empty, no wildcards, no leading or trailing '/'."""
    if (not isinstance(prefix, str) or not prefix or "+" in prefix or "#" in prefix or "\0" in prefix
            or prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError("MQTT topic prefix must be a non-empty topic without wildcards or "
                         "leading/trailing '/', got %r" % (prefix,))
    return prefix


class _Node:
    __slots__ = ("conn", "queue", "task", "seen")

    def __init__(self):
        self.conn = None
        self.queue = collections.deque()
        self.task = None
        self.seen = time.monotonic()


class MqttFace:
    """A running MQTT face: ``start()``, ``await close()``; ``subscribed`` (an
    asyncio.Event, set while the subscription to the up topics stands) and counters:
    ``payloads``, ``ignored``, ``published``, ``connects``."""

    def __init__(self, gateway, host, port, prefix="edgeline", print_fn=None, client_id=None,
                 keepalive_s=30, reconnect_min_s=1, reconnect_max_s=30):
        self.gateway = gateway
        self.host = host
        self.port = port
        self.prefix = check_prefix(prefix)
        self.up_filter = prefix + "/+/up"
        self.print_fn = print_fn
        self.client_id = client_id or "edgeline-gw-" + secrets.token_hex(6)
        self.keepalive_s = keepalive_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.payloads = 0  # payloads handed to a connection
        self.ignored = 0  # payloads dropped unanswered: bad node id, empty, retained, flood
        self.published = 0  # answers published
        self.connects = 0  # successful connections to the broker
        self.subscribed = None
        self._nodes = {}  # node_id -> _Node
        self._loop = None
        self._client = None
        self._last_sweep = time.monotonic()

    # ------------------------------------------------------------ lifecycle

    async def start(self):
        """Connect in the background: paho keeps trying until the broker answers."""
        self._loop = asyncio.get_running_loop()
        self.subscribed = asyncio.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = no_delay
        c.reconnect_delay_set(self.reconnect_min_s, self.reconnect_max_s)
        c.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self._client = c
        c.loop_start()

    async def close(self):
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            await asyncio.to_thread(c.loop_stop)  # joins paho's thread
        tasks = [n.task for n in self._nodes.values() if n.task is not None]
        for t in tasks:
            t.cancel()  # anything unanswered is resent by its edge
        await asyncio.gather(*tasks, return_exceptions=True)
        self._nodes.clear()

    # ------------------------------------------------------------ paho's thread

    def _call(self, fn, *args):
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: we are shutting down

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            self._call(self._say, "edgeline gateway: MQTT broker %s:%d refused the connection: %s"
                       % (self.host, self.port, reason_code))
            return
        client.subscribe(self.up_filter, qos=QOS)
        self._call(self._connected)

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties):
        if all(not rc.is_failure for rc in reason_codes):
            self._call(self.subscribed.set)
        else:
            self._call(self._say, "edgeline gateway: MQTT broker refused the subscription to %s" % self.up_filter)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties):
        # 128 "Unspecified error" is what paho says for a connection that broke
        self._call(self._disconnected, "connection lost" if reason_code.value == 128 else str(reason_code))

    def _on_message(self, _client, _userdata, msg):
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        self._call(self._received, topic, bytes(msg.payload), msg.retain)

    # ------------------------------------------------------------ the loop

    def _say(self, line):
        if self.print_fn is not None:
            self.print_fn(line)
        else:
            log.info("%s", line)

    def _connected(self):
        self.connects += 1
        self._say("edgeline gateway: MQTT broker %s:%d connected" % (self.host, self.port))

    def _disconnected(self, why):
        self.subscribed.clear()
        if self._client is not None:  # not our own close()
            self._say("edgeline gateway: MQTT broker %s:%d: %s; reconnecting" % (self.host, self.port, why))

    def _node_of(self, topic):
        if topic is None or not topic.startswith(self.prefix + "/") or not topic.endswith("/up"):
            return None
        node = topic[len(self.prefix) + 1:-3]
        return node if sync.is_node_id(node) else None

    def _received(self, topic, payload, retained):
        node = self._node_of(topic)
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
        if n.conn is None or message_type(payload) == HELLO_TYPE:
            n.conn = gw.new_connection()
        conn = n.conn
        self.payloads += 1
        try:
            out, finished = await gw.process(conn, payload, "payload")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one node never takes the face down
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
        if out and self._client is not None:
            self._client.publish("%s/%s/down" % (self.prefix, node), out, qos=QOS)
            self.published += 1


def attach_mqtt(app, gateway, host, port, prefix="edgeline", print_fn=print, **options):
    """Run the MQTT face with an aiohttp app: started on startup, closed on shutdown
    (before the gateway's store closes on cleanup). Returns the face; ``options`` go to
    ``MqttFace`` (client_id, keepalive_s, reconnect_min_s, reconnect_max_s)."""
    face = MqttFace(gateway, host, port, prefix, print_fn=print_fn, **options)

    async def startup(_app):
        if print_fn is not None:
            print_fn("edgeline gateway: sync over MQTT via %s:%d, %s -> %s/<node>/down"
                     % (host, port, face.up_filter, prefix))
        await face.start()

    async def shutdown(_app):
        await face.close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return face
