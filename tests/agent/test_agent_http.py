"""The agent's HTTP API in process: every error answer is one line of JSON (issue 9),
aiohttp's own 404/405/413 and an unexpected failure included."""
import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edgeline_host.agent.config import parse_config
from edgeline_host.agent.service import Agent, RequestError


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


class DiskFull:
    """Arms one ENOSPC on the next file write of the process (edgeline.storage's file
    handles): the write stores nothing and raises, as a full disk does."""

    def __init__(self, monkeypatch):
        import edgeline.storage as storage

        self.armed = 0
        self.skip = 0  # writes let through before the armed ones fail
        self.fired = 0
        real = storage._File.write

        def write(handle, buf, n):
            if self.armed and self.skip:
                self.skip -= 1
            elif self.armed:
                self.armed -= 1
                self.fired += 1
                raise OSError(28, "No space left on device")
            return real(handle, buf, n)

        monkeypatch.setattr(storage._File, "write", write)


def sending_agent(tmp_path):
    cfg = parse_config({"edge": {
        "node_id": "n1", "data_dir": "data", "key": "ab" * 32, "cloud_endpoint": "http://127.0.0.1:9",
        "sync_topics": [{"topic": "t", "direction": "edge_to_cloud", "sync": "every"},
                        {"topic": "g", "direction": "edge_to_cloud", "sync": "group", "group_ms": 10}],
        "ingest": {"http": {"listen": "127.0.0.1:0"}}}}, base_dir=str(tmp_path))
    return Agent(cfg, print_fn=lambda *_: None)


def test_agent_recovers_a_log_after_a_write_error_by_itself(tmp_path, monkeypatch):
    """Issue 9: after a write error the next ingest (sync: every) or housekeeping (a
    group-commit topic nobody writes to) reopens the log; nothing acknowledged is lost,
    nothing is stored twice, and the outbox (and uplink) follow the new log."""
    disk = DiskFull(monkeypatch)
    agent = sending_agent(tmp_path)
    lines = []
    agent.print = lines.append
    server = TestServer(agent.app())

    async def main():
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                async def post(topic, values):
                    async with http.post(server.make_url("/v1/topics/%s/records" % topic), json=values) as r:
                        return r.status, await r.json()

                async def read(topic):
                    async with http.get(server.make_url("/v1/topics/%s/records" % topic)) as r:
                        return [x["value"] for x in (await r.json())["records"]]

                assert (await post("t", [1, 2, 3]))[1]["last_seq"] == 3
                disk.armed = 1
                s, body = await post("t", [4, 5])
                assert s == 500 and "; nothing of the request is known durable" in body["error"], body
                assert "retry with the same key" in body["error"]
                assert "No space left" in body["error"]
                assert agent.topics["t"].log.failure is not None
                # The producer retries; the agent reopens the log first, by itself.
                s, body = await post("t", [4, 5])
                assert (s, body["first_seq"], body["last_seq"], body["durable"]) == (200, 4, 5, True), body
                assert await read("t") == [1, 2, 3, 4, 5]
                st = agent.topics["t"]
                assert st.log.failure is None and agent.recovered == 1
                assert agent.uplink._by_name["t"].outbox is st.outbox and st.outbox.depth == 5
                assert any("log reopened after a write error" in x for x in lines)

                # sync: every, the write of the 2nd record of a request fails: the 1st is
                # durable, and the answer says so (a retry of the rest stores nothing twice)
                disk.armed, disk.skip = 1, 1
                s, body = await post("t", [6, 7])
                assert s == 500, body
                assert "; records 0..0 of the request were stored as seqs 6..6 (durable); " in body["error"], body
                s, body = await post("t", [7])
                assert (s, body["first_seq"], body["last_seq"]) == (200, 7, 7), body
                assert await read("t") == [1, 2, 3, 4, 5, 6, 7]

                # group commit: the commit's write fails; housekeeping heals the log.
                assert (await post("g", ["a"]))[1]["durable"] is True
                disk.armed = 1
                s, body = await post("g", ["b"])
                assert s == 500 and "No space left" in body["error"], body
                agent.housekeeping_ms = 10
                task = asyncio.ensure_future(agent._housekeeping())
                for _ in range(200):
                    if agent.topics["g"].log.failure is None:
                        break
                    await asyncio.sleep(0.01)
                task.cancel()
                assert agent.topics["g"].log.failure is None and agent.recovered == 3
                assert (await post("g", ["b"]))[0] == 200
                assert await read("g") == ["a", "b"]
                assert disk.fired == 3
        finally:
            await server.close()
        agent._final_commit()
        assert agent.stop_line() == "edgeline agent: stopped; logs flushed and closed"
        agent.store.close()
        agent.dirlock.release()

    asyncio.run(main())


def test_stop_line_does_not_claim_a_flush_that_failed(tmp_path, monkeypatch):
    disk = DiskFull(monkeypatch)
    agent = sending_agent(tmp_path)
    agent.print = lambda *_: None

    async def main():
        st = agent.topics["g"]
        agent.append(st, [None], [b"\x01"])  # buffered, owed to the group commit
        disk.armed = 10  # the disk stays full through shutdown
        agent._final_commit()

    asyncio.run(main())
    line = agent.stop_line()
    assert line.startswith("edgeline agent: stopped; logs closed, but not every record was made durable: topic g: ")
    assert "logs flushed" not in line and "\n" not in line
    agent.store.close()
    agent.dirlock.release()


def test_a_recovery_that_fails_part_way_leaves_one_outbox(tmp_path, monkeypatch):
    """Review 9: the window's rewrite fails during a recovery: the new log is closed and
    forgotten (no second outbox pinning its segments), the failed log stays; the next
    try succeeds with one outbox, followed by the uplink."""
    disk = DiskFull(monkeypatch)
    agent = sending_agent(tmp_path)

    async def main():
        st = agent.topics["t"]
        w = st.window
        await agent.ingest("t", [None], [b"\x01"])
        disk.armed = 1
        with pytest.raises(RequestError):
            await agent.ingest("t", [None], [b"\x02"])
        old = st.log
        w._rewrite = lambda parts: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        w._needs_rewrite = True
        assert agent.recover(st) is False and agent.recover(st) is False
        assert st.log is old and "t" not in agent.store.logs
        del w._rewrite
        assert agent.recover(st) is True
        assert agent.store.logs["t"] is st.log and len(st.log.consumers) == 1
        assert agent.uplink._by_name["t"].outbox is st.outbox and st.outbox.log is st.log
        await agent._settle_commits()

    try:
        asyncio.run(main())
    finally:
        agent.close()
