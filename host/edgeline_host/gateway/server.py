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
import os
import secrets
import time

from aiohttp import web

from edgeline import codec, sync
from edgeline.errors import CodecError, LocalProtocolError, RemoteProtocolError

from edgeline_host import fastcbor

from .committer import Committer
from .store import GatewayStore

SESSION_HEADER = "X-Edgeline-Session"
CBOR_TYPE = "application/cbor"


def now_ms():
    return int(time.time() * 1000)


class _Session:
    __slots__ = ("conn", "seen", "lock")

    def __init__(self, conn):
        self.conn = conn
        self.seen = time.monotonic()
        self.lock = asyncio.Lock()  # one request of the session at a time


class Gateway:
    """One gateway process: store, committer, sessions, HTTP routes."""

    def __init__(self, db_path, keys, max_message_bytes=1 << 20, max_batch_records=10000, session_idle_s=300):
        fastcbor.install()  # the C-accelerated CBOR for every connection of this process
        self.store = GatewayStore(db_path)
        self.keys = keys  # node_id -> 32-byte key
        self.max_message_bytes = max_message_bytes
        self.max_batch_records = max_batch_records
        self.session_idle_s = session_idle_s
        self.committer = Committer(self.store, now_ms)
        self.sessions = {}
        self.rejected = 0  # exchanges that ended in a protocol error from the edge
        self.store_failures = 0  # groups the store could not commit (edges retry)

    # ------------------------------------------------------------------ app

    def app(self):
        app = web.Application(client_max_size=self.max_message_bytes * 4)
        app.router.add_post("/v1/sync", self.handle_sync)
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
            self.keys.get, os.urandom, max_message_bytes=self.max_message_bytes, max_batch_records=self.max_batch_records
        )

    async def process(self, conn, data, unit=None):
        """Feed bytes from an edge into its connection and answer every event.

        Returns (bytes to send back, finished): finished is True when the connection
        ended in an error (ours or the peer's) or the peer closed; the transport sends
        the bytes and closes. Batches and gaps are committed (durably, in a group with
        other exchanges) before their ACKs are written. Any transport uses this: HTTP
        bodies, TCP streams, MQTT payloads. ``unit`` names what data is when it holds
        whole messages (an HTTP ``"body"``, an MQTT ``"payload"``): then data that ends
        inside a message is malformed. None for a stream (TCP), whose messages may span
        chunks.

        An exchange that ends in an error -- the edge's garbage, an ERROR it sent, a
        unit ending inside a message -- commits nothing of what it carried: the answer
        is the ERROR owed (if any) alone. The edge was acknowledged nothing of it and
        sends it again on a new connection.
        """
        out = bytearray()
        items = []
        acks = []  # topics to acknowledge, in order of first appearance
        finished = False
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
                # Cloud-to-edge topics come with the PULL/DATA work of issue 3; until then
                # the gateway has nothing to send: an empty DATA.
                out += conn.send(sync.Data(ev.topic, ev.after_seq + 1, 0, []))
        if items:
            try:
                marks = await self.committer.submit(items)
            except Exception as e:  # noqa: BLE001 - the edge must hear it, then retry
                self.store_failures += 1
                if conn.state == "ERROR":
                    return bytes(out), True
                out += conn.send(sync.Error(8, "could not store: %s" % (str(e).splitlines() or ["?"])[0]))
                finished = True
            else:
                if conn.state == "ERROR":
                    # Another exchange on this connection ended it while the commit ran
                    # (a transport that lets two run at once): no ACK can be sent. The
                    # records are stored; the edge learns its marks at the next WELCOME.
                    return bytes(out), True
                last = {}
                for (_, ev), m in zip(items, marks):
                    last[ev.topic] = m
                for topic in acks:
                    out += conn.send(sync.Ack(topic, last[topic]))
        return bytes(out), finished

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
        return web.json_response({"streams": self.store.status(request.query.get("origin"))})

    async def handle_gaps(self, request):
        return web.json_response({"gaps": self.store.gaps(request.query.get("origin"), request.query.get("topic"))})

    async def handle_health(self, _request):
        return web.json_response({"ok": True, "sessions": len(self.sessions), "commits": self.committer.commits,
                                  "items": self.committer.items, "rejected": self.rejected,
                                  "store_failures": self.store_failures})


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
    keys = {}
    for node, text in data.items():
        if not isinstance(node, str) or not sync.is_node_id(node):
            raise ConfigError("%s: %r is not a valid node id (1-64 of A-Z a-z 0-9 . _ -)" % (path, node))
        try:
            keys[node] = decode_key(text).reveal()
        except ValueError as e:
            raise ConfigError("%s: %s: key %s" % (path, node, e)) from None
    return keys


def serve(db_path, keys, host, port, print_fn=print, tcp=None, mqtt=None):
    """Run the gateway until interrupted; tcp=(host, port) also serves sync over TCP,
    mqtt=(host, port) or (host, port, prefix) through that MQTT broker."""
    gw = Gateway(db_path, keys)
    print_fn("edgeline gateway: %d node(s), store %s, listening on http://%s:%d/v1/sync" % (len(keys), db_path, host, port))
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

    def __init__(self, http, url, node_id, key):
        self.http = http
        self.url = url
        self.conn = sync.EdgeConnection(node_id, key, os.urandom)
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
