"""The agent's HTTP API in process: every error answer is one line of JSON (issue 9),
aiohttp's own 404/405/413 and an unexpected failure included."""
import asyncio

import aiohttp
from aiohttp.test_utils import TestServer

from edgeline_host.agent.config import parse_config
from edgeline_host.agent.service import Agent


def make_agent(tmp_path, max_body_bytes=1000):
    cfg = parse_config({"edge": {"node_id": "n1", "data_dir": "data", "sync": {"enabled": False},
                                 "local_topics": [{"topic": "t", "sync": "every"}],
                                 "ingest": {"http": {"listen": "127.0.0.1:0"}}}}, base_dir=str(tmp_path))
    return Agent(cfg, print_fn=lambda *_: None, max_body_bytes=max_body_bytes)


async def with_agent(tmp_path, fn):
    agent = make_agent(tmp_path)
    server = TestServer(agent.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async def call(method, path, **kw):
                async with http.request(method, server.make_url(path), **kw) as r:
                    assert r.content_type == "application/json", (path, r.status, await r.text())
                    return r.status, r.headers, await r.json()

            return await fn(agent, call)
    finally:
        await server.close()
        agent.store.close()
        agent.dirlock.release()


def test_every_error_is_json(tmp_path):
    async def fn(agent, call):
        s, _, body = await call("GET", "/nope")
        assert (s, body) == (404, {"error": "no such path: GET /nope"})
        s, h, body = await call("DELETE", "/v1/queue")
        assert s == 405 and h["Allow"] == "GET,HEAD"
        assert body == {"error": "method DELETE is not allowed on /v1/queue (allowed: GET, HEAD)"}
        s, _, body = await call("POST", "/v1/topics/t/records", data=b"[1, NaN]")
        assert (s, body) == (400, {"error": "record 1: NaN is not a finite number: JSON has none, and edgeline "
                                            "stores only what every API can give back (send null or a string "
                                            "instead)"})
        s, _, body = await call("POST", "/v1/topics/t/records", data=b"1" * 1001)
        assert s == 413 and list(body) == ["error"]
        s, _, body = await call("GET", "/v1/topics/t/records", params={"limit": "0"})
        assert s == 400 and "limit" in body["error"]

        def broken():
            raise RuntimeError("oops\nsecond line")

        agent.queue = broken
        s, _, body = await call("GET", "/v1/queue")
        assert (s, body) == (500, {"error": "internal error: RuntimeError: oops"})
        s, _, body = await call("POST", "/v1/topics/t/records", data=b"[1, 2]")  # it keeps serving
        assert s == 200 and body["last_seq"] == 2 and body["durable"] is True

    asyncio.run(with_agent(tmp_path, fn))
