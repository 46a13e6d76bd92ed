"""A message-level fault proxy for HTTP (CPython, aiohttp): what a flaky network, a
retrying client library and a misbehaving middlebox do to ``POST /v1/sync``.

    python -m emulator.httpproxy --listen [HOST:]PORT --target http://HOST:PORT [--seed N]
        [--drop-request P] [--drop-response P] [--duplicate P] [--delay P] [--delay-ms MS]
        [--hold P] [--replay P]

A TCP stream hides duplication and reordering (edgeline_host/faultlink.py works at that
level), but whole requests are duplicated and reordered all the time: a client retries
a request whose first copy did arrive; a load balancer or middlebox replays an old
request late; a response is lost after the server committed (the classic lost ACK). This
reverse proxy forwards each request whole (method, path, query, body and end-to-end
headers -- the sync session in ``X-Edgeline-Session`` included -- both ways) and, per
request, under one seeded RNG, may:

* ``drop_request`` -- never forward it: answer 502, or reset the client's connection
  (half each);
* ``drop_response`` -- forward it, let the target answer (and commit), then reset the
  client's connection instead of answering: the lost ACK;
* ``duplicate`` -- forward it twice, one copy after the other or both at once, and
  answer with one of the two responses;
* ``delay`` -- hold it ``0..delay_ms`` before forwarding;
* ``hold`` -- keep a copy (at most ``max_held``; the oldest is forgotten) for a later
  replay;
* ``replay`` -- after forwarding this request, send one held copy of an *older* one to
  the target again -- before answering, or in the background so it races the client's
  next request -- and throw its response away: a stale replay, reordered after newer
  requests.

``cut()`` starts an outage: requests in flight lose their client connection (what the
target does with them goes on), new ones are reset at once, until ``restore()``;
``outage(seconds)`` does both. ``replay_held()`` sends every copy still held. A target
that cannot be reached (down, killed, resetting) is a 502, as from a real reverse
proxy. Every fault is counted (``stats()``).

Decisions are drawn when a request arrives, the same number of draws for every request,
so a client that sends one request at a time (the agent's uplink) meets the same faults
on every run with the same seed.

Used in-process (``await HttpFaultProxy(target_url, ...).start()`` in the caller's event
loop) or as a process: SIGUSR1 cuts, SIGUSR2 restores, SIGINT/SIGTERM stop it; it prints
one JSON line when listening and one with its counters when it stops.
"""
import asyncio
import collections
import random
import socket
import struct
import sys

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from edgeline_host.faultlink import Outages, host_port, run_as_process

# Headers that belong to one hop (RFC 9110 section 7.6.1), and those aiohttp sets itself.
_HOP = frozenset(h.lower() for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
                                     "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Date",
                                     "Server"))

_Held = collections.namedtuple("_Held", "number method path_qs headers body")


def _end_to_end(headers, decoded=False):
    # decoded: the body was decoded by aiohttp already, so its Content-Encoding goes too
    return [(k, v) for k, v in headers.items()
            if k.lower() not in _HOP and not (decoded and k.lower() == "content-encoding")]


def _reset(request):
    """Drop the client's connection with an RST, no answer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class HttpFaultProxy(Outages):
    """HttpFaultProxy(target_url, ...): see the module's docstring. ``listen_port`` 0
    picks a free port; ``port`` and ``url`` are the bound ones after ``start()``.
    Probabilities are per request, in [0, 1]; ``seed`` seeds the proxy's own RNG
    (``rng`` may be given instead)."""

    def __init__(self, target_url, listen_host="127.0.0.1", listen_port=0, seed=None, rng=None,
                 drop_request=0.0, drop_response=0.0, duplicate=0.0, delay=0.0, delay_ms=100, hold=0.0,
                 replay=0.0, max_held=16, upstream_timeout_s=60):
        for name, p in (("drop_request", drop_request), ("drop_response", drop_response),
                        ("duplicate", duplicate), ("delay", delay), ("hold", hold), ("replay", replay)):
            if not 0.0 <= p <= 1.0:
                raise ValueError("%s must be a probability in [0, 1], got %r" % (name, p))
        self.target_url = target_url.rstrip("/")
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.rng = rng if rng is not None else random.Random(seed)
        self.drop_request = drop_request
        self.drop_response = drop_response
        self.duplicate = duplicate
        self.delay = delay
        self.delay_ms = delay_ms
        self.hold = hold
        self.replay = replay
        self.held = collections.deque(maxlen=max_held)
        self.upstream_timeout_s = upstream_timeout_s
        self.is_cut = False
        self.counts = collections.Counter()
        self.faults = collections.deque(maxlen=200)  # (request number, fault): the latest, for a failure message
        self._number = 0
        self._in_flight = {}  # number -> request whose client is still waiting
        self._background = set()  # replays racing the client's next request
        self._runner = None
        self._http = None

    @property
    def port(self):
        return self.listen_port

    @property
    def url(self):
        return "http://%s:%d" % (self.listen_host, self.listen_port)

    # ------------------------------------------------------------------ control

    async def start(self):
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.upstream_timeout_s),
                                           auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen_host, self.listen_port)
        await site.start()
        self.listen_port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def cut(self):
        """Start an outage: reset every client waiting for an answer, and new ones."""
        if not self.is_cut:
            self.counts["cuts"] += 1
        self.is_cut = True
        for request in list(self._in_flight.values()):
            self.counts["cut_in_flight"] += 1
            _reset(request)
        self._in_flight.clear()

    async def replay_held(self):
        """Send every held copy to the target now, oldest first, and forget them (the
        stale replays still due when a run ends); returns how many were sent."""
        n = 0
        while self.held:
            older = self.held.popleft()
            self._count(older.number, "replayed")
            await self._replay(older)
            n += 1
        return n

    def stats(self):
        out = {k: self.counts[k] for k in ("requests", "answered", "upstream_requests", "upstream_errors",
                                           "dropped_requests", "dropped_responses", "duplicated", "delayed", "held",
                                           "replayed", "refused", "cut_in_flight", "cuts")}
        out["cut"] = self.is_cut
        out["holding"] = len(self.held)
        return out

    def _count(self, number, fault):
        self.counts[fault] += 1
        self.faults.append((number, fault))

    # ------------------------------------------------------------------ forwarding

    async def _upstream(self, method, path_qs, headers, body):
        """(status, headers, body) from the target; None if it cannot be reached."""
        self.counts["upstream_requests"] += 1
        try:
            async with self._http.request(method, self.target_url + path_qs, headers=headers, data=body,
                                          allow_redirects=False) as r:
                return r.status, _end_to_end(r.headers), await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            self.counts["upstream_errors"] += 1
            return None

    async def _replay(self, held):
        await self._upstream(held.method, held.path_qs, held.headers, held.body)

    async def _handle(self, request):
        self._number += 1
        number = self._number
        self.counts["requests"] += 1
        if self.is_cut:
            self._count(number, "refused")
            _reset(request)
            return web.Response()  # never written: the connection is gone
        r = self.rng
        # Every draw up front, the same number each time (see the module's docstring).
        p_drop_req, p_drop_resp, p_dup, p_delay, p_hold, p_replay = (r.random() for _ in range(6))
        as_502, dup_at_once, answer_second, replay_inline = (r.random() < 0.5 for _ in range(4))
        delay_s, pick = r.random() * self.delay_ms / 1000.0, r.random()

        self._in_flight[number] = request
        try:
            body = await request.read()
            headers = _end_to_end(request.headers, decoded=True)
            method, path_qs = request.method, request.path_qs
            if p_delay < self.delay:
                self._count(number, "delayed")
                await asyncio.sleep(delay_s)
            if p_drop_req < self.drop_request:
                self._count(number, "dropped_requests")
                if as_502:
                    return self._answer(number, (502, [], b"fault proxy: request dropped\n"))
                _reset(request)
                return web.Response()
            older = None
            if p_replay < self.replay and self.held:
                older = self.held[int(pick * len(self.held))]
                self.held.remove(older)
            if p_hold < self.hold:
                self._count(number, "held")
                self.held.append(_Held(number, method, path_qs, headers, body))
            if p_dup < self.duplicate:
                self._count(number, "duplicated")
                if dup_at_once:
                    answers = await asyncio.gather(self._upstream(method, path_qs, headers, body),
                                                   self._upstream(method, path_qs, headers, body))
                else:
                    answers = [await self._upstream(method, path_qs, headers, body)]
                    answers.append(await self._upstream(method, path_qs, headers, body))
                answer = answers[1] if answer_second else answers[0]
            else:
                answer = await self._upstream(method, path_qs, headers, body)
            if older is not None:
                self._count(number, "replayed")
                if replay_inline:
                    await self._replay(older)
                else:
                    t = asyncio.ensure_future(self._replay(older))
                    self._background.add(t)
                    t.add_done_callback(self._background.discard)
            if answer is not None and p_drop_resp < self.drop_response:
                self._count(number, "dropped_responses")
                _reset(request)
                return web.Response()
            return self._answer(number, answer)
        finally:
            self._in_flight.pop(number, None)

    def _answer(self, number, answer):
        if number not in self._in_flight:  # cut while the target answered
            return web.Response()
        if answer is None:
            answer = (502, [], b"fault proxy: the target cannot be reached\n")
        status, headers, body = answer
        self.counts["answered"] += 1
        return web.Response(status=status, body=body, headers=CIMultiDict(headers))


# ---------------------------------------------------------------------- as a process


async def _main(args):
    host, port = host_port(args.listen, "127.0.0.1", "httpproxy")
    proxy = HttpFaultProxy(args.target, listen_host=host, listen_port=port, seed=args.seed,
                           drop_request=args.drop_request, drop_response=args.drop_response,
                           duplicate=args.duplicate, delay=args.delay, delay_ms=args.delay_ms, hold=args.hold,
                           replay=args.replay)
    await run_as_process(proxy, lambda: {"listening": "%s:%d" % (host, proxy.port), "target": proxy.target_url})


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m emulator.httpproxy", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="[HOST:]PORT to accept on (PORT 0: any free port)")
    ap.add_argument("--target", required=True, help="base URL to forward to, e.g. http://127.0.0.1:8700")
    ap.add_argument("--seed", type=int, default=None, help="seed of the fault RNG (default: random)")
    for name, what in (("drop-request", "never forward (502 or reset)"),
                       ("drop-response", "forward, then reset instead of answering"),
                       ("duplicate", "forward twice"), ("delay", "wait up to --delay-ms first"),
                       ("hold", "keep a copy for a later replay"), ("replay", "replay a held older copy after it")):
        ap.add_argument("--" + name, type=float, default=0.0, metavar="P", help="probability per request: " + what)
    ap.add_argument("--delay-ms", type=float, default=100, help="the longest delay (default 100)")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except ValueError as e:
        raise SystemExit("httpproxy: %s" % e)


if __name__ == "__main__":
    sys.exit(main())
