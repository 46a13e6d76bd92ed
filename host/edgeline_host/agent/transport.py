"""How the uplink's exchanges travel: one request, one answer, over HTTP or through an
MQTT broker.

The uplink (uplink.py) runs the sync protocol -- sessions, rounds, acknowledgements,
backoff -- and hands each exchange's bytes to a transport, which only moves them, the
way the gateway's faces do on the other side. A transport has:

* ``url`` -- where it goes, for status and logs;
* ``await start()`` / ``await close()`` -- around ``Uplink.run()``;
* ``new_session()`` -- a HELLO comes next: forget the old conversation;
* ``await exchange(body) -> bytes`` -- send one CBOR sequence, return the gateway's
  answer (a CBOR sequence); raise ``UplinkFailure`` with one line when there is none;
* ``lost_session(error_code) -> bool`` -- after an ERROR answer: does it mean only
  that the gateway forgot the conversation (idle, restarted)? Then the uplink starts a
  new one at once instead of counting a failure.

HTTP (``HttpTransport``): a POST per exchange to the gateway's ``/v1/sync``; the session
rides in the ``X-Edgeline-Session`` header, and a gateway that forgot it answers with
a new one.

MQTT (``MqttTransport``, ``cloud_endpoint: mqtt://broker:port/prefix``): the edge
publishes a request to ``<prefix>/<node_id>/up`` and takes the next payload on
``<prefix>/<node_id>/down`` as the answer (the gateway's MQTT face,
gateway/mqtt.py, publishes one answer per payload, in order). What the face's
docstring asks of an edge, and why:

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
  CHALLENGE or an ERROR (counted: ``stale``). Answers on one topic arrive in order, so
  nothing of an older conversation follows the CHALLENGE.
* Nagle's algorithm is off on the socket (``no_delay``): an exchange is a small message
  waiting for a small answer.
"""
import asyncio
import secrets

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeline import sync

from ..gateway.mqtt import check_prefix, message_type, no_delay
from ..gateway.server import CBOR_TYPE, SESSION_HEADER


class UplinkFailure(Exception):
    """One exchange failed (transport, HTTP status, protocol, or an ERROR from the gateway)."""


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class HttpTransport:
    """POST each exchange to ``url`` with aiohttp; ``http`` an ``aiohttp.ClientSession``
    (one is made, and closed by ``close()``, if not given)."""

    def __init__(self, url, http=None, request_timeout_ms=30000):
        self.url = url
        self.request_timeout_ms = request_timeout_ms
        self._http = http
        self._own_http = http is None
        self._sid = None
        self._sent_sid = None  # the session id the last request carried

    async def start(self):
        if self._http is None:
            self._http = aiohttp.ClientSession()

    async def close(self):
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    def new_session(self):
        self._sid = None

    async def exchange(self, body):
        headers = {"Content-Type": CBOR_TYPE}
        self._sent_sid = self._sid
        if self._sid:
            headers[SESSION_HEADER] = self._sid
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_ms / 1000.0)
        try:
            async with self._http.post(self.url, data=body, headers=headers, timeout=timeout) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise UplinkFailure("gateway answered HTTP %d %s" % (resp.status, resp.reason or ""))
                self._sid = resp.headers.get(SESSION_HEADER)
        except asyncio.TimeoutError:
            raise UplinkFailure("no answer from %s within %d ms" % (self.url, self.request_timeout_ms)) from None
        except aiohttp.ClientError as e:
            raise UplinkFailure("%s: %s" % (self.url, one_line(str(e) or type(e).__name__))) from None
        return data

    def lost_session(self, code):
        # The gateway answered under a new session id: ours is gone.
        return bool(self._sent_sid) and self._sid != self._sent_sid and code in (sync.ERR_UNEXPECTED,
                                                                                  sync.ERR_MALFORMED)


_LOST = object()  # in the inbox: the broker connection broke
_READY_TYPES = (sync.Batch.TYPE, sync.Gap.TYPE, sync.Pull.TYPE)


class MqttTransport:
    """Exchanges through an MQTT broker (paho-mqtt, MQTT 3.1.1, clean session).

    ``prefix`` is the topic prefix (``edgeline``): requests go to
    ``<prefix>/<node_id>/up``, answers come on ``<prefix>/<node_id>/down``.
    ``request_timeout_ms`` bounds the wait for an answer (and, before the first
    exchange, for the broker connection). Counters: ``connects``, ``stale``."""

    def __init__(self, node_id, host, port, prefix="edgeline", url=None, request_timeout_ms=10000, keepalive_s=30,
                 reconnect_min_s=0.5, reconnect_max_s=10, client_id=None):
        check_prefix(prefix)
        self.host = host
        self.port = port
        self.up = "%s/%s/up" % (prefix, node_id)
        self.down = "%s/%s/down" % (prefix, node_id)
        self.url = url or "mqtt://%s:%d/%s" % (host, port, prefix)
        self.request_timeout_ms = request_timeout_ms
        self.keepalive_s = keepalive_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        # A random suffix: two clients with one id would throw each other off the broker.
        self.client_id = client_id or "edgeline-up-%s-%s" % (node_id, secrets.token_hex(4))
        self.connects = 0
        self.stale = 0  # answers of an older conversation, skipped
        self.last_error = None
        self._loop = None
        self._client = None
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
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
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
            await asyncio.to_thread(c.loop_stop)

    # paho's thread: hand over to the loop only

    def _call(self, fn, *args):
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            self._call(self._set_error, "the broker %s:%d refused the connection: %s" % (self.host, self.port,
                                                                                         reason_code))
            return
        client.subscribe(self.down, qos=1)

    def _on_connect_fail(self, _client, _userdata):
        self._call(self._set_error, "cannot reach the broker %s:%d" % (self.host, self.port))

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties):
        if any(rc.is_failure for rc in reason_codes):
            self._call(self._set_error, "the broker %s:%d refused the subscription to %s"
                       % (self.host, self.port, self.down))
        else:
            self._call(self._subscribed)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties):
        self._call(self._disconnected, "connection lost" if reason_code.value == 128 else str(reason_code))

    def _on_message(self, _client, _userdata, msg):
        if not msg.retain:  # a retained answer is left over from some earlier conversation
            self._call(self._inbox.put_nowait, bytes(msg.payload))

    # the loop

    def _set_error(self, line):
        self.last_error = line

    def _subscribed(self):
        self.connects += 1
        self._gen += 1
        self._ready.set()

    def _disconnected(self, why):
        self._ready.clear()
        self._gen += 1
        if self._client is not None:
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
                raise UplinkFailure("not connected to the MQTT broker %s:%d%s" % (
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
            raise UplinkFailure("the connection to the broker %s:%d broke: the conversation is over"
                                % (self.host, self.port))
        self._last_type = message_type(body)
        info = self._client.publish(self.up, body, qos=0)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise UplinkFailure("cannot publish to %s: %s" % (self.up, paho.error_string(info.rc)))
        deadline = self._loop.time() + timeout_s
        while True:
            try:
                payload = await asyncio.wait_for(self._inbox.get(), max(0.0, deadline - self._loop.time()))
            except asyncio.TimeoutError:
                raise UplinkFailure("no answer on %s within %d ms" % (self.down, self.request_timeout_ms)) from None
            if payload is _LOST:
                raise UplinkFailure("the connection to the broker %s:%d broke while waiting for an answer"
                                    % (self.host, self.port))
            if self._await_challenge and message_type(payload) not in (sync.Challenge.TYPE, sync.Error.TYPE):
                self.stale += 1
                continue
            self._await_challenge = False
            return payload

    def lost_session(self, code):
        # The face answers a BATCH/GAP/PULL outside a conversation (the gateway restarted
        # or forgot an idle one) with ERROR unexpected.
        return code == sync.ERR_UNEXPECTED and self._last_type in _READY_TYPES

