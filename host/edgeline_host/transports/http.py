"""The sync protocol over HTTP: ``POST /v1/sync`` (docs/spec/wire.md), both ends.

Theory of operation
-------------------
The request body is a CBOR sequence (``Content-Type: application/cbor``) of the edge's
messages, the response body the gateway's answers. A conversation spans several
requests (HELLO -> CHALLENGE, AUTH -> WELCOME, then BATCH/GAP -> ACK ...), so the
gateway keeps one ``GatewayConnection`` per session; the first response names the
session in the ``X-Edgeline-Session`` header and the edge sends it back. Sessions idle
longer than the gateway's ``session_idle_s`` are forgotten; an edge whose session is
gone starts again with HELLO (it resumes from the marks in WELCOME, so nothing is lost
or stored twice). A gateway that does not know the session an edge names answers under
a new one: that is how the edge learns its session is gone (``lost_session``).

A body holds whole messages: one that ends inside a message is malformed (it is never
joined to the next request's bytes). The requests of one session are handled one at a
time, in the order they arrive: a retried, duplicated or replayed request (a proxy, a
load balancer) cannot interleave with another on the same conversation; one that comes
after the session ended meets a new session (ERROR ``unexpected`` for anything but
HELLO).

* ``HttpGatewayTransport`` -- the gateway's end: the session table and the aiohttp
  handler of ``/v1/sync``; bytes go through ``gateway.process`` (transports/__init__).
* ``HttpEdgeTransport`` -- the edge's end the uplink drives: a POST per exchange.
* ``HttpEdgeClient`` -- an edge end for tests and tools: one ``EdgeConnection``,
  ``exchange(*events)`` sends events and returns the answers.
"""
import asyncio
import os
import secrets
import time

import aiohttp
from aiohttp import web

from edgeline import sync
from edgeline.errors import LocalProtocolError

from . import TransportError

SYNC_PATH = "/v1/sync"
SESSION_HEADER = "X-Edgeline-Session"
CBOR_TYPE = "application/cbor"
_SESSION_ID_BYTES = 18


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------- the gateway's end


class _Session:
    __slots__ = ("conn", "seen", "lock")

    def __init__(self, conn):
        self.conn = conn
        self.seen = time.monotonic()
        self.lock = asyncio.Lock()  # one request of the session at a time


class HttpGatewayTransport:
    """The gateway's end of ``/v1/sync``: ``attach(app)`` adds the route; ``sessions``
    maps session id -> session (its ``conn``)."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.sessions = {}

    def attach(self, app):
        app.router.add_post(SYNC_PATH, self.handle_sync)

    def _session(self, sid):
        t = time.monotonic()
        idle_s = self.gateway.session_idle_s
        for k in [k for k, s in self.sessions.items() if t - s.seen > idle_s]:
            del self.sessions[k]
        if sid:
            s = self.sessions.get(sid)
            if s is not None:
                s.seen = t
                return sid, s
        sid = secrets.token_urlsafe(_SESSION_ID_BYTES)
        s = self.sessions[sid] = _Session(self.gateway.new_connection())
        return sid, s

    async def handle_sync(self, request):
        body = await request.read()
        sid, s = self._session(request.headers.get(SESSION_HEADER))
        async with s.lock:
            if self.sessions.get(sid) is not s:
                # The session ended (or expired) while this request waited for the one
                # before: it meets a new session, as after a gateway restart.
                sid, s = self._session(None)
            out, finished = await self.gateway.process(s.conn, body, "body")
            if finished:
                self.sessions.pop(sid, None)
        return web.Response(body=out, content_type=CBOR_TYPE, headers={SESSION_HEADER: sid})


# ---------------------------------------------------------------------------- the edge's end


class HttpEdgeTransport:
    """POST each exchange to ``url`` with aiohttp; ``http`` an ``aiohttp.ClientSession``
    (one is made, and closed by ``close()``, if not given). The session rides in the
    ``X-Edgeline-Session`` header, and a gateway that forgot it answers with a new one."""

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
                    raise TransportError("gateway answered HTTP %d %s" % (resp.status, resp.reason or ""))
                self._sid = resp.headers.get(SESSION_HEADER)
        except asyncio.TimeoutError:
            raise TransportError("no answer from %s within %d ms" % (self.url, self.request_timeout_ms)) from None
        except aiohttp.ClientError as e:
            raise TransportError("%s: %s" % (self.url, one_line(str(e) or type(e).__name__))) from None
        return data

    def lost_session(self, code):
        # The gateway answered under a new session id: ours is gone.
        return bool(self._sent_sid) and self._sid != self._sent_sid and code in (sync.ERR_UNEXPECTED,
                                                                                  sync.ERR_MALFORMED)


class HttpEdgeClient:
    """The edge side of POST /v1/sync for tests and tools: one EdgeConnection, one
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

    async def connect(self, incarnations=None, version=None, capabilities=None):
        """HELLO/CHALLENGE, AUTH/WELCOME; returns the gateway's marks (of the topics'
        incarnations: ``incarnations`` {topic: 8 bytes}, a topic not in it legacy;
        ``version=1`` speaks as an edge from before incarnations; ``capabilities`` the
        HELLO's, e.g. table reports)."""
        evs = await self.exchange(sync.Hello(version=version, incarnations=incarnations, capabilities=capabilities))
        if not evs or type(evs[0]) is not sync.Challenge:
            raise LocalProtocolError("expected CHALLENGE, got %r" % (evs,))
        evs = await self.exchange(sync.Auth())
        if not evs or type(evs[0]) is not sync.Welcome:
            raise LocalProtocolError("expected WELCOME, got %r" % (evs,))
        return self.conn.marks
