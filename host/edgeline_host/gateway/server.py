"""The gateway's HTTP face: the sync exchange and the query API (aiohttp).

Theory of operation
-------------------
``POST /v1/sync`` carries the sync protocol (docs/spec/wire.md) over HTTP: the request
body is a CBOR sequence of the edge's messages, the response body the gateway's answers.
A conversation spans several requests (HELLO -> CHALLENGE, AUTH -> WELCOME, then
BATCH/GAP -> ACK ...), so the gateway keeps one ``GatewayConnection`` per session; the
first response names the session in the ``X-Edgeline-Session`` header and the edge sends
it back. Sessions idle longer than ``session_idle_s`` are forgotten; an edge whose
session is gone starts again with HELLO (it resumes from the marks in WELCOME, so
nothing is lost or stored twice).

This module is a thin adapter: bytes in, ``receive_data``; events out, handled here;
``send`` -> bytes back. Batches and gaps of all concurrent requests go through the
group ``Committer``; an ACK is written only after its commit returned.

Cloud-to-edge topics (the topics file, ``topics.py``): ``POST /v1/topics/{topic}/publish``
takes JSON records as the agent's ingest does, gives them origin ``cloud`` and the next
seqs of the topic, commits them through the same group ``Committer``, and answers with
their seqs once they are durable. A PULL is answered from the store: a DATA with the
published records after ``after_seq`` (at most ``max_records``, the gateway's
``max_batch_records``, and what fits the edge's ``max_message_bytes``), or ERROR
``unknown_topic`` for a topic the node may not pull. The PULL's ``after_seq`` is the
node's acknowledgement; it is kept per node and topic for ``/v1/status``.

A body holds whole messages: one that ends inside a message is malformed (it is never
joined to the next request's bytes). An exchange that ends in an error stores nothing
of what it carried: its answer is the ERROR alone, and the edge resends what it still
owes in a new session. The requests of one session are handled one at a time, in the
order they arrive: a retried, duplicated or replayed request (a proxy, a load balancer)
cannot interleave with another on the same conversation; one that comes after the
session ended meets a new session (ERROR ``unexpected`` for anything but HELLO).

Query API (JSON): ``GET /v1/records?topic=T[&origin=O][&from=N][&to=N][&limit=N]``,
``GET /v1/status[?origin=O]``, ``GET /v1/gaps[?origin=O][&topic=T]``, ``GET /healthz``.
Values are decoded from CBOR where they are CBOR, else given as base64.
"""
import asyncio
import base64
import hmac
import logging
import os
import secrets
import time

from aiohttp import web

from edgeline import codec, sync
from edgeline.clock import HybridClock
from edgeline.errors import CodecError, LocalProtocolError, RemoteProtocolError

from edgeline_host import fastcbor
from edgeline_host.agent.agent import IngestError, parse_records

from .committer import Committer
from .store import Delivered, GatewayStore, Publish
from .topics import check_keys

log = logging.getLogger("edgeline.gateway")

SESSION_HEADER = "X-Edgeline-Session"
CBOR_TYPE = "application/cbor"
MAX_PUBLISH_BODY_BYTES = 1 << 20  # a publish request's body; larger is 413
_ENTRY_OVERHEAD = 28  # the most a DATA entry adds to its key and value: array, ts delta, two heads


def now_ms():
    return int(time.time() * 1000)


class _Session:
    __slots__ = ("conn", "seen", "lock")

    def __init__(self, conn):
        self.conn = conn
        self.seen = time.monotonic()
        self.lock = asyncio.Lock()  # one request of the session at a time


class Gateway:
    """One gateway process: store, committer, sessions, HTTP routes.

    ``topics`` ({name: topics.DownTopic}, from ``topics.load_topics``) are the
    cloud-to-edge topics it publishes and serves to PULLs. ``publish_token``: the
    bearer token the publish API requires; None lets only loopback clients publish.
    """

    def __init__(self, db_path, keys, max_message_bytes=1 << 20, max_batch_records=10000, session_idle_s=300,
                 topics=None, publish_token=None):
        check_keys(keys)
        self.store = GatewayStore(db_path)
        self.keys = keys  # node_id -> 32-byte key
        self.topics = dict(topics or {})
        self.publish_token = publish_token
        self.max_message_bytes = max_message_bytes
        self.max_batch_records = max_batch_records
        self.session_idle_s = session_idle_s
        self.committer = Committer(self.store, now_ms)
        self.clock = HybridClock(last_ts=self.store.last_published_ts())
        self.sessions = {}
        self.rejected = 0  # exchanges that ended in a protocol error from the edge
        self.store_failures = 0  # groups the store could not commit (edges retry)
        self.published = 0  # records published since start
        self.pulls = 0  # PULLs answered with DATA
        self.refused_pulls = 0  # PULLs answered with ERROR (topic not served to the node, record too large)
        self._last_pull_ms = {}  # (node, topic) -> wall ms of its last PULL
        self._warned = set()

    # ------------------------------------------------------------------ app

    def app(self):
        app = web.Application(client_max_size=self.max_message_bytes * 4)
        app.router.add_post("/v1/sync", self.handle_sync)
        app.router.add_post("/v1/topics/{topic}/publish", self.handle_publish)
        app.router.add_get("/v1/records", self.handle_records)
        app.router.add_get("/v1/status", self.handle_status)
        app.router.add_get("/v1/gaps", self.handle_gaps)
        app.router.add_get("/healthz", self.handle_health)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app):
        await self.committer.start()

    async def _cleanup(self, _app):
        await self.committer.stop()
        self.store.close()

    # ------------------------------------------------------------------ sync

    def _session(self, sid):
        t = time.monotonic()
        for k in [k for k, s in self.sessions.items() if t - s.seen > self.session_idle_s]:
            del self.sessions[k]
        if sid:
            s = self.sessions.get(sid)
            if s is not None:
                s.seen = t
                return sid, s
        sid = secrets.token_urlsafe(18)
        s = self.sessions[sid] = _Session(self.new_connection())
        return sid, s

    def new_connection(self):
        return sync.GatewayConnection(
            self.keys.get, os.urandom, max_message_bytes=self.max_message_bytes, max_batch_records=self.max_batch_records,
            codec=fastcbor.CODEC,  # the C-accelerated CBOR
        )

    async def process(self, conn, data, unit=None):
        """Feed bytes from an edge into its connection and answer every event.

        Returns (bytes to send back, finished): finished is True when the connection
        ended in an error (ours or the peer's) or the peer closed; the transport sends
        the bytes and closes. Batches and gaps are committed (durably, in a group with
        other exchanges) before their ACKs are written; a PULL is answered with its DATA
        at once. Any transport uses this: HTTP bodies, TCP streams, MQTT payloads.
        ``unit`` names what data is when it holds whole messages (an HTTP ``"body"``, an
        MQTT ``"payload"``): then data that ends inside a message is malformed. None for
        a stream (TCP), whose messages may span chunks.

        An exchange that ends in an error of the edge's making -- its garbage, an ERROR
        it sent, a unit ending inside a message -- commits nothing of what it carried:
        the answer is the ERROR owed (if any) alone. The edge was acknowledged nothing of
        it and sends it again on a new connection. A PULL this side refuses (ERROR
        ``unknown_topic``, ``too_large``) ends the exchange too, but after the ACKs of
        the batches before it, which are stored.
        """
        out = bytearray()
        items = []
        acks = []  # topics to acknowledge, in order of first appearance
        finished = False
        refusal = None  # the ERROR refusing a PULL, sent after the ACKs
        conn.receive_data(data)
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError:
                self.rejected += 1
                return conn.pending_error_bytes(), True
            if ev is sync.NEED_DATA:
                if unit and conn.buffered_bytes:
                    self.rejected += 1
                    return conn.send(sync.Error(sync.ERR_MALFORMED, "malformed: the %s ends inside a message (%d "
                                                "bytes of it)" % (unit, conn.buffered_bytes))), True
                break
            cls = type(ev)
            if cls is sync.Error:
                return b"", True
            if cls is sync.ConnectionClosed:
                # The edge closed after complete messages: they are stored, though no
                # ACK can reach it (it learns its marks at the next WELCOME).
                finished = True
                break
            if cls is sync.Hello:
                out += conn.send(sync.Challenge())
            elif cls is sync.Auth:
                out += conn.send(sync.Welcome(marks=self.store.marks(conn.node_id)))
            elif cls is sync.Batch or cls is sync.Gap:
                items.append((conn.node_id, ev))
                if ev.topic not in acks:
                    acks.append(ev.topic)
            elif cls is sync.Pull:
                answer, refusal = await self._pull(conn, ev)
                if refusal is not None:
                    self.refused_pulls += 1
                    finished = True
                    break
                out += answer
                self.pulls += 1
                key = (conn.node_id, ev.topic)
                self._last_pull_ms[key] = now_ms()
                before = self.store.delivered(*key)
                if before is None or before[0] != ev.after_seq:
                    items.append((conn.node_id, Delivered(ev.topic, ev.after_seq)))
        if items:
            try:
                marks = await self.committer.submit(items)
            except Exception as e:  # noqa: BLE001 - the edge must hear it, then retry
                self.store_failures += 1
                if conn.state == "ERROR":
                    return bytes(out), True
                out += conn.send(sync.Error(8, "could not store: %s" % (str(e).splitlines() or ["?"])[0]))
                return bytes(out), True
            if conn.state == "ERROR":
                # Another exchange on this connection ended it while the commit ran
                # (a transport that lets two run at once): no ACK can be sent. The
                # records are stored; the edge learns its marks at the next WELCOME.
                return bytes(out), True
            last = {}
            for (_, ev), m in zip(items, marks):
                if type(ev) is not Delivered:
                    last[ev.topic] = m
            for topic in acks:
                out += conn.send(sync.Ack(topic, last[topic]))
        if refusal is not None and conn.state != "ERROR":
            out += conn.send(refusal)
        return bytes(out), finished

    async def _pull(self, conn, ev):
        """(DATA bytes, None) answering a PULL, or (b"", Error event) refusing it."""
        node, name = conn.node_id, ev.topic
        topic = self.topics.get(name)
        if topic is None or not topic.may_pull(node):
            why = "not a cloud-to-edge topic of this gateway" if topic is None or not topic.publishes else \
                "not served to node %r (its nodes list)" % node
            self._warn_once(("refused", node, name), "gateway: node %s pulled topic %r: %s" % (node, name, why))
            return b"", sync.Error(sync.ERR_UNKNOWN_TOPIC, "topic %r is %s" % (name, why))
        after = ev.after_seq
        if after >= (1 << 64) - 1:
            return b"", sync.Error(sync.ERR_MALFORMED, "PULL after_seq %d leaves no seq to send" % after)
        published = self.store.published(name)
        if after > published:
            self._warn_once(("ahead", node, name, after),
                            "gateway: node %s holds topic %r up to seq %d, but only %d were published here (was "
                            "the store restored from an old backup?); it receives nothing until seqs pass %d"
                            % (node, name, after, published, after))
        n = min(ev.max_records, self.max_batch_records)
        rows = []
        if after < published and n > 0:
            rows = await asyncio.get_running_loop().run_in_executor(None, self.store.pull, name, after, n)
        if not rows:
            return conn.send(sync.Data(name, after + 1, 0, [])), None
        limit = conn.peer_max_message_bytes or self.max_message_bytes
        budget = limit - 32 - 3 * len(name)  # the message's own fields, generously
        size = 0
        for k, r in enumerate(rows):
            size += len(r.value) + (len(r.key) if r.key is not None else 0) + _ENTRY_OVERHEAD
            if size > budget and k:
                rows = rows[:k]
                break
        while True:
            try:
                return conn.send(sync.batch_from_records(name, rows, sync.Data)), None
            except LocalProtocolError as e:
                if len(rows) == 1:
                    r = rows[0]
                    self._warn_once(("large", node, name, r.seq), "gateway: node %s cannot take topic %r: %s"
                                    % (node, name, e))
                    return b"", sync.Error(sync.ERR_TOO_LARGE, "topic %r seq %d (%d bytes) is over this node's "
                                           "max_message_bytes %d" % (name, r.seq, len(r.value), limit))
                rows = rows[:len(rows) // 2]

    def _warn_once(self, key, line):
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", line)

    async def handle_sync(self, request):
        body = await request.read()
        sid, s = self._session(request.headers.get(SESSION_HEADER))
        async with s.lock:
            if self.sessions.get(sid) is not s:
                # The session ended (or expired) while this request waited for the one
                # before: it meets a new session, as after a gateway restart.
                sid, s = self._session(None)
            out, finished = await self.process(s.conn, body, "body")
            if finished:
                self.sessions.pop(sid, None)
        return web.Response(body=out, content_type=CBOR_TYPE, headers={SESSION_HEADER: sid})

    # ------------------------------------------------------------------ publish

    async def handle_publish(self, request):
        try:
            return web.json_response(await self._publish(request))
        except IngestError as e:
            return web.json_response({"error": str(e)}, status=e.status, headers=e.headers)

    def _authorized(self, request):
        if self.publish_token is None:
            remote = request.remote or ""
            if remote == "::1" or remote.startswith("127.") or remote.startswith("::ffff:127."):
                return
            raise IngestError(403, "publishing is open to loopback clients only (start the gateway with "
                                   "--publish-token-file to publish from elsewhere)")
        got = request.headers.get("Authorization", "")
        want = "Bearer " + self.publish_token
        if not hmac.compare_digest(got.encode("utf-8", "replace"), want.encode("utf-8")):
            raise IngestError(401, "publishing needs the header 'Authorization: Bearer <token>' with the "
                                   "gateway's publish token", {"WWW-Authenticate": "Bearer"})

    async def _publish(self, request):
        """Parse, check, stamp and commit one publish request; its JSON answer."""
        self._authorized(request)
        name = request.match_info["topic"]
        topic = self.topics.get(name)
        if topic is None:
            raise IngestError(404, "unknown topic %r: the gateway publishes only the topics of its topics file "
                                   "(--topics)" % name)
        if not topic.publishes:
            raise IngestError(409, "topic %r is edge_to_cloud: the gateway does not publish to it" % name)
        if request.content_length is not None and request.content_length > MAX_PUBLISH_BODY_BYTES:
            raise IngestError(413, "the body is over %d bytes" % MAX_PUBLISH_BODY_BYTES)
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > MAX_PUBLISH_BODY_BYTES:
                raise IngestError(413, "the body is over %d bytes" % MAX_PUBLISH_BODY_BYTES)
        keys, values = parse_records(bytes(body))
        if len(values) > self.max_batch_records:
            raise IngestError(413, "%d records in one request; at most %d" % (len(values), self.max_batch_records))
        for i, (k, v) in enumerate(zip(keys, values)):
            size = len(v) + (len(k) if k is not None else 0)
            if size > topic.max_record_bytes:
                raise IngestError(413, "record %d is %d bytes (key and CBOR value), over max_record_bytes %d of "
                                       "topic %r" % (i, size, topic.max_record_bytes, name))
        try:
            first, last = await self.publish(name, values, keys)
        except Exception as e:  # noqa: BLE001 - nothing of the request was stored
            self.store_failures += 1
            raise IngestError(503, "could not store: %s" % (str(e).splitlines() or ["?"])[0],
                              {"Retry-After": "1"}) from None
        return {"topic": name, "origin": sync.CLOUD_ORIGIN, "first_seq": first, "last_seq": last, "durable": True}

    async def publish(self, topic, values, keys=None):
        """Store values (CBOR bytes; keys bytes or None) as the next records of a
        cloud-to-edge topic, origin ``cloud``, stamped by the gateway's hybrid clock;
        return (first_seq, last_seq) once they are durable. The publish API's checks
        (topic, sizes) are the caller's."""
        if keys is None:
            keys = [None] * len(values)
        now = now_ms()
        entries = [(self.clock.now(now), k, v) for k, v in zip(keys, values)]
        marks = await self.committer.submit([(sync.CLOUD_ORIGIN, Publish(topic, entries))])
        self.published += len(entries)
        return marks[0] - len(entries) + 1, marks[0]

    def downlinks(self, node=None):
        """Per cloud-to-edge topic and node that may pull it: what was published, what
        the node acknowledged (its last PULL's after_seq), when it last pulled."""
        out = []
        for name in sorted(self.topics):
            topic = self.topics[name]
            if not topic.publishes:
                continue
            published = self.store.published(name)
            for n in sorted(topic.nodes if topic.nodes is not None else self.keys):
                if node is not None and n != node:
                    continue
                d = self.store.delivered(n, name)
                delivered = d[0] if d else 0
                pulled = self._last_pull_ms.get((n, name), d[1] if d else None)
                out.append({"topic": name, "node": n, "published": published, "delivered": delivered,
                            "pending": max(0, published - delivered), "pulled_ms": pulled})
        return out

    # ------------------------------------------------------------------ queries

    @staticmethod
    def _int(request, name, default):
        v = request.query.get(name)
        if v is None:
            return default
        try:
            return int(v)
        except ValueError:
            raise web.HTTPBadRequest(text="%s must be an integer, got %r\n" % (name, v))

    @staticmethod
    def _json_value(raw):
        try:
            return {"cbor": _jsonable(codec.loads(raw))}
        except CodecError:
            return {"base64": base64.b64encode(raw).decode()}

    async def handle_records(self, request):
        topic = request.query.get("topic")
        if not topic:
            raise web.HTTPBadRequest(text="topic is required\n")
        rows = self.store.records(
            topic,
            origin=request.query.get("origin"),
            from_seq=self._int(request, "from", 1),
            to_seq=self._int(request, "to", None),
            limit=min(self._int(request, "limit", 1000), 100000),
        )
        for r in rows:
            r["value"] = self._json_value(r["value"])
            r["key"] = base64.b64encode(r["key"]).decode() if r["key"] is not None else None
        return web.json_response({"records": rows})

    async def handle_status(self, request):
        origin = request.query.get("origin")
        return web.json_response({"streams": self.store.status(origin), "downlinks": self.downlinks(origin)})

    async def handle_gaps(self, request):
        return web.json_response({"gaps": self.store.gaps(request.query.get("origin"), request.query.get("topic"))})

    async def handle_health(self, _request):
        return web.json_response({"ok": True, "sessions": len(self.sessions), "commits": self.committer.commits,
                                  "items": self.committer.items, "rejected": self.rejected,
                                  "store_failures": self.store_failures, "published": self.published,
                                  "pulls": self.pulls, "refused_pulls": self.refused_pulls})


def _jsonable(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def load_keys(path):
    """The node keys file: a YAML mapping ``node_id: key`` (64 hex digits or base64 of 32
    bytes each). ConfigError, one line naming the file and node, if anything is wrong."""
    import yaml

    from edgeline.errors import ConfigError
    from edgeline_host.agent.config import decode_key

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    except yaml.YAMLError as e:
        raise ConfigError("%s: not valid YAML: %s" % (path, str(e).splitlines()[0])) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError("%s: must be a mapping of node_id: key" % path)
    check_keys(data, path)
    keys = {}
    for node, text in data.items():
        if not isinstance(node, str) or not sync.is_node_id(node):
            raise ConfigError("%s: %r is not a valid node id (1-64 of A-Z a-z 0-9 . _ -)" % (path, node))
        try:
            keys[node] = decode_key(text).reveal()
        except ValueError as e:
            raise ConfigError("%s: %s: key %s" % (path, node, e)) from None
    return keys


def load_token(path):
    """The publish token from a file (its first line, stripped); ConfigError if unusable."""
    from edgeline.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("%s: cannot read the publish token: %s" % (path, getattr(e, "strerror", None) or e)) from None
    if len(token) < 16 or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError("%s: the publish token must be at least 16 printable characters without spaces "
                          "(edgeline keygen makes one)" % path)
    return token


def serve(db_path, keys, host, port, print_fn=print, tcp=None, mqtt=None, topics=None, publish_token=None):
    """Run the gateway until interrupted; tcp=(host, port) also serves sync over TCP,
    mqtt=(host, port) or (host, port, prefix) through that MQTT broker; topics are the
    cloud-to-edge topics it publishes (topics.load_topics)."""
    gw = Gateway(db_path, keys, topics=topics, publish_token=publish_token)
    print_fn("edgeline gateway: %d node(s), store %s, listening on http://%s:%d/v1/sync" % (len(keys), db_path, host, port))
    down = sorted(n for n, t in gw.topics.items() if t.publishes)
    if down:
        print_fn("edgeline gateway: publishing %s on http://%s:%d/v1/topics/<topic>/publish (%s)" % (
            ", ".join(down), host, port, "token required" if publish_token else "loopback clients only"))
    app = gw.app()
    if tcp is not None:
        from .tcp import attach_tcp

        attach_tcp(app, gw, tcp[0], tcp[1], print_fn)
    if mqtt is not None:
        from .mqtt import attach_mqtt

        attach_mqtt(app, gw, *mqtt, print_fn=print_fn)
    web.run_app(app, host=host, port=port, print=None, handle_signals=True)


class HttpEdgeClient:
    """The edge side of POST /v1/sync for tests and the agent: one EdgeConnection, one
    aiohttp session; ``exchange(*events)`` sends events and returns the answers."""

    def __init__(self, http, url, node_id, key, codec=None):
        self.http = http
        self.url = url
        self.conn = sync.EdgeConnection(node_id, key, os.urandom, codec=codec)
        self.sid = None

    async def exchange(self, *events):
        body = b"".join(self.conn.send(e) for e in events)
        headers = {"Content-Type": CBOR_TYPE}
        if self.sid:
            headers[SESSION_HEADER] = self.sid
        async with self.http.post(self.url, data=body, headers=headers) as resp:
            data = await resp.read()
            self.sid = resp.headers.get(SESSION_HEADER)
        self.conn.receive_data(data)
        out = []
        while True:
            ev = self.conn.next_event()
            if ev is sync.NEED_DATA:
                return out
            out.append(ev)

    async def connect(self):
        """HELLO/CHALLENGE, AUTH/WELCOME; returns the gateway's marks."""
        evs = await self.exchange(sync.Hello())
        if not evs or type(evs[0]) is not sync.Challenge:
            raise LocalProtocolError("expected CHALLENGE, got %r" % (evs,))
        evs = await self.exchange(sync.Auth())
        if not evs or type(evs[0]) is not sync.Welcome:
            raise LocalProtocolError("expected WELCOME, got %r" % (evs,))
        return self.conn.marks
