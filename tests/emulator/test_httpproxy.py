"""emulator/httpproxy.py: whole requests forwarded both ways, and each message-level fault
(drop the request, drop the response, duplicate, delay, hold and replay late, outage)
seen from both ends: what the client got, and what the target received."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from emulator.httpproxy import HttpFaultProxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SESSION = "X-Edgeline-Session"


class Target:
    """An HTTP server that logs every request it receives and answers with the body
    reversed, the session header echoed and the request's number."""

    def __init__(self):
        self.seen = []  # (method, path_qs, body, session header)
        self.gate = None  # an asyncio.Event the answers wait for, when set

    async def handle(self, request):
        body = await request.read()
        self.seen.append((request.method, request.path_qs, body, request.headers.get(SESSION)))
        n = len(self.seen)
        if self.gate is not None:
            await self.gate.wait()
        return web.Response(body=body[::-1], content_type="application/cbor",
                            headers={SESSION: request.headers.get(SESSION, "new"), "X-Number": str(n)})

    async def start(self):
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]
        return self

    def bodies(self):
        return [b for _, _, b, _ in self.seen]


async def call(http, proxy, body, sid=None, method="POST", path="/v1/sync"):
    """(status, body, headers), or the exception the client got."""
    headers = {SESSION: sid} if sid else {}
    try:
        async with http.request(method, proxy.url + path, data=body, headers=headers) as r:
            return r.status, await r.read(), r.headers
    except (aiohttp.ClientError, OSError) as e:
        return e


def run(fn, **options):
    async def main():
        target = await Target().start()
        proxy = await HttpFaultProxy(target.url, **options).start()
        try:
            # a fresh connection per request, as after a reset the client must make one anyway
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                await asyncio.wait_for(fn(http, proxy, target), 30)
        finally:
            await proxy.stop()
            await target.runner.cleanup()

    asyncio.run(main())


def test_forwards_whole_requests_and_answers_both_ways():
    async def fn(http, proxy, target):
        status, body, headers = await call(http, proxy, b"hello", sid="s-1")
        assert (status, body, headers[SESSION], headers["Content-Type"]) == (200, b"olleh", "s-1", "application/cbor")
        status, body, _ = await call(http, proxy, None, method="GET", path="/v1/records?topic=t&from=3")
        assert status == 200
        big = os.urandom(3 << 20)
        status, body, _ = await call(http, proxy, big)
        assert body == big[::-1]
        assert target.seen[0] == ("POST", "/v1/sync", b"hello", "s-1")
        assert target.seen[1][:2] == ("GET", "/v1/records?topic=t&from=3")
        st = proxy.stats()
        assert st["requests"] == st["answered"] == st["upstream_requests"] == 3
        assert sum(st[k] for k in ("dropped_requests", "dropped_responses", "duplicated", "replayed")) == 0

    run(fn)


def test_drop_request_never_reaches_the_target():
    async def fn(http, proxy, target):
        got = [await call(http, proxy, b"r%d" % i) for i in range(20)]
        assert target.seen == []
        answered = [g for g in got if isinstance(g, tuple)]
        assert answered and all(g[0] == 502 for g in answered)  # a 502 ...
        assert len(answered) < 20  # ... or a reset connection
        assert proxy.stats()["dropped_requests"] == 20

    run(fn, drop_request=1.0, seed=1)


def test_drop_response_after_the_target_answered():
    async def fn(http, proxy, target):
        for i in range(5):
            assert isinstance(await call(http, proxy, b"r%d" % i), aiohttp.ClientError)
        assert target.bodies() == [b"r%d" % i for i in range(5)]  # every one arrived: the lost ACK
        st = proxy.stats()
        assert st["dropped_responses"] == 5 and st["answered"] == 0

    run(fn, drop_response=1.0, seed=2)


def test_duplicate_forwards_twice_answers_once():
    async def fn(http, proxy, target):
        for i in range(8):
            status, body, headers = await call(http, proxy, b"r%d" % i, sid="s")
            assert status == 200 and body == (b"r%d" % i)[::-1]
        assert sorted(target.bodies()) == sorted([b"r%d" % i for i in range(8)] * 2)
        assert proxy.stats()["duplicated"] == 8 and proxy.stats()["upstream_requests"] == 16

    run(fn, duplicate=1.0, seed=3)


def test_hold_and_replay_send_older_requests_again_after_newer_ones():
    async def fn(http, proxy, target):
        for i in range(30):
            status, body, _ = await call(http, proxy, b"r%02d" % i, sid="s")
            assert status == 200 and body == (b"r%02d" % i)[::-1]  # the client's own answer, never a replay's
        while proxy._background:
            await asyncio.sleep(0.01)
        bodies = target.bodies()
        st = proxy.stats()
        assert st["replayed"] >= 5 and st["held"] >= 10
        assert len(bodies) == 30 + st["replayed"]
        # each replay is of a request older than one forwarded before it: stale, reordered
        first_seen = {}
        stale = 0
        for pos, b in enumerate(bodies):
            if b in first_seen:
                assert any(int(x[1:]) > int(b[1:]) for x in bodies[first_seen[b]:pos])
                stale += 1
            else:
                first_seen[b] = pos
        assert stale == st["replayed"]
        assert all(sid == "s" for _, _, _, sid in target.seen)  # replayed with their headers
        # what is still held goes out at once, oldest first
        holding = [h.body for h in proxy.held]
        assert holding and await proxy.replay_held() == len(holding)
        assert target.bodies()[-len(holding):] == holding and not proxy.held

    run(fn, hold=0.6, replay=0.4, seed=4)


def test_delay_counts_and_still_answers():
    async def fn(http, proxy, target):
        got = await asyncio.gather(*(call(http, proxy, b"r%d" % i) for i in range(10)))
        assert all(g[0] == 200 for g in got)
        assert proxy.stats()["delayed"] == 10 and len(target.seen) == 10

    run(fn, delay=1.0, delay_ms=50, seed=5)


def test_same_seed_same_faults():
    def faults(seed):
        out = []

        async def fn(http, proxy, target):
            for i in range(40):
                await call(http, proxy, b"r%d" % i)
            while proxy._background:
                await asyncio.sleep(0.01)
            out.append(list(proxy.faults))

        run(fn, seed=seed, drop_request=0.1, drop_response=0.1, duplicate=0.1, hold=0.3, replay=0.2, delay=0.1,
            delay_ms=5)
        return out[0]

    a = faults(7)
    assert a == faults(7) and a != faults(8)
    assert {f for _, f in a} >= {"dropped_requests", "dropped_responses", "duplicated", "held", "replayed"}


def test_cut_resets_waiting_clients_and_new_ones_until_restore():
    async def fn(http, proxy, target):
        target.gate = asyncio.Event()
        waiting = asyncio.ensure_future(call(http, proxy, b"in flight"))
        while not target.seen:
            await asyncio.sleep(0.01)
        proxy.cut()
        assert isinstance(await waiting, aiohttp.ClientError)
        assert isinstance(await call(http, proxy, b"refused"), aiohttp.ClientError)
        target.gate.set()
        assert target.bodies() == [b"in flight"]  # the target got it: what it does with it goes on
        proxy.restore()
        assert (await call(http, proxy, b"back"))[1] == b"kcab"
        t = asyncio.ensure_future(proxy.outage(0.2))
        await asyncio.sleep(0.05)
        assert isinstance(await call(http, proxy, b"x"), aiohttp.ClientError)
        await t
        assert (await call(http, proxy, b"ok"))[0] == 200
        st = proxy.stats()
        assert (st["cuts"], st["cut_in_flight"], st["refused"], st["cut"]) == (2, 1, 2, False)

    run(fn)


def test_unreachable_target_is_a_502():
    async def fn(http, proxy, target):
        await target.runner.cleanup()
        status, body, _ = await call(http, proxy, b"x")
        assert status == 502 and b"cannot be reached" in body
        assert proxy.stats()["upstream_errors"] == 1

    run(fn)


def test_bad_probability_is_refused():
    with pytest.raises(ValueError, match="duplicate must be a probability"):
        HttpFaultProxy("http://127.0.0.1:1", duplicate=1.5)


def test_as_a_process_signals_cut_and_restore():
    async def main():
        target = await Target().start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "emulator.httpproxy", "--listen", "127.0.0.1:0", "--target", target.url,
            "--seed", "1", "--duplicate", "1", cwd=ROOT, stdout=subprocess.PIPE)
        try:
            port = int(json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))["listening"].rpartition(":")[2])
            url = "http://127.0.0.1:%d/v1/sync" % port
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.post(url, data=b"abc") as r:
                    assert await r.read() == b"cba"
                proc.send_signal(signal.SIGUSR1)
                await asyncio.sleep(0.3)
                with pytest.raises(aiohttp.ClientError):
                    async with http.post(url, data=b"lost") as r:
                        await r.read()
                proc.send_signal(signal.SIGUSR2)
                await asyncio.sleep(0.3)
                async with http.post(url, data=b"xyz") as r:
                    assert await r.read() == b"zyx"
            proc.send_signal(signal.SIGTERM)
            out = await asyncio.wait_for(proc.stdout.read(), 30)
            st = json.loads(out.decode().strip().splitlines()[-1])
            assert (st["requests"], st["duplicated"], st["refused"], st["cuts"]) == (3, 2, 1, 1)
            assert await proc.wait() == 0
            assert target.bodies() == [b"abc", b"abc", b"xyz", b"xyz"]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await target.runner.cleanup()

    asyncio.run(main())


def test_bad_listen_address_is_one_line():
    p = subprocess.run([sys.executable, "-m", "emulator.httpproxy", "--listen", "nope", "--target", "http://x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stderr.strip() == "httpproxy: expected [HOST:]PORT, got 'nope'"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "emulator.httpproxy", "--listen", str(port), "--target", "http://x",
                        "--replay", "2"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stderr.strip() == "httpproxy: replay must be a probability in [0, 1], got 2.0"
