"""The gateway over HTTP: handshake, exactly-once storage, resume from marks, bad input."""
import asyncio
import os

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edgeline import codec, sync
from edgeline.errors import RemoteProtocolError
from edgeline.log import Record
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.transports.http import CBOR_TYPE, SESSION_HEADER, HttpEdgeClient
from edgeline_host.gateway.store import GatewayStore

KEY = bytes(range(32))


def records(first, n):
    return [Record(s, 1000 + s, None, codec.dumps({"n": s})) for s in range(first, first + n)]


async def with_gateway(tmp_path, fn):
    gw = Gateway(str(tmp_path / "gw.db"), {"edge-1": KEY, "edge-2": KEY[::-1]})
    api = GatewayApi(gw)
    server = TestServer(api.app())
    server.api = api  # the tests that make the gateway forget a session reach its table here
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            return await fn(gw, http, str(server.make_url("/v1/sync")), server)
    finally:
        await server.close()


def test_records_arrive_once_and_in_order(tmp_path):
    async def fn(gw, http, url, server):
        c = HttpEdgeClient(http, url, "edge-1", KEY)
        assert await c.connect() == {}
        evs = await c.exchange(sync.batch_from_records("t", records(1, 10)))
        assert [(type(e), e.topic, e.seq) for e in evs] == [(sync.Ack, "t", 10)]
        # a replay (a retry after a lost response) and an overlap store nothing twice
        evs = await c.exchange(sync.batch_from_records("t", records(1, 10)), sync.batch_from_records("t", records(8, 5)))
        assert evs[-1].seq == 12
        # a new session resumes from the marks
        c2 = HttpEdgeClient(http, url, "edge-1", KEY)
        assert await c2.connect() == {"t": 12}
        evs = await c2.exchange(sync.Gap("t", 13, 20, "evicted"), sync.batch_from_records("t", records(21, 2)))
        assert evs[-1].seq == 22
        async with http.get(server.make_url("/v1/records"), params={"topic": "t", "origin": "edge-1"}) as r:
            rows = (await r.json())["records"]
        assert [x["seq"] for x in rows] == list(range(1, 13)) + [21, 22]
        assert rows[0]["value"] == {"n": 1} and rows[0]["key"] is None  # the agent's read API's form
        async with http.get(server.make_url("/v1/status")) as r:
            st = (await r.json())["streams"]
        assert st == [{"origin": "edge-1", "topic": "t", "incarnation": "0000000000000000", "current": True, "mark": 22,
                   "records": 14, "lost": 8, "updated_ms": st[0]["updated_ms"]}]
        async with http.get(server.make_url("/v1/gaps")) as r:
            assert [(g["first"], g["last"]) for g in (await r.json())["gaps"]] == [(13, 20)]

    asyncio.run(with_gateway(tmp_path, fn))


def test_wrong_key_and_unknown_node_store_nothing(tmp_path):
    async def fn(gw, http, url, server):
        bad = HttpEdgeClient(http, url, "edge-1", b"\x00" * 32)
        with pytest.raises(RemoteProtocolError):
            await bad.connect()
        ghost = HttpEdgeClient(http, url, "edge-9", KEY)
        with pytest.raises(RemoteProtocolError):
            await ghost.connect()
        # a session id that was never issued (or expired) starts over: BATCH first is unexpected
        body = sync.EdgeConnection("edge-1", KEY, os.urandom)
        async with http.post(url, data=b"\x82\x05\x00", headers={"Content-Type": CBOR_TYPE, SESSION_HEADER: "nope"}) as r:
            data = await r.read()
        err = codec.decode_prefix(data)[0]
        assert err[0] == 10 and err[1] in (1, 5)
        assert gw.store.status() == []
        # others keep being served
        ok = HttpEdgeClient(http, url, "edge-2", KEY[::-1])
        await ok.connect()
        evs = await ok.exchange(sync.batch_from_records("t", records(1, 3)))
        assert evs[0].seq == 3
        del body

    asyncio.run(with_gateway(tmp_path, fn))


def test_garbage_gets_an_error_and_the_gateway_keeps_serving(tmp_path):
    async def fn(gw, http, url, server):
        for junk in (b"\xff\xff\xff", b"\x9f" * 64, b"hello world", codec.dumps([1, "x"]), b""):
            async with http.post(url, data=junk, headers={"Content-Type": CBOR_TYPE}) as r:
                assert r.status == 200
                data = await r.read()
            if junk:
                msg = codec.decode_prefix(data)[0]
                assert msg[0] == 10, msg
        c = HttpEdgeClient(http, url, "edge-1", KEY)
        await c.connect()
        assert (await c.exchange(sync.batch_from_records("t", records(1, 1))))[0].seq == 1
        async with http.get(server.make_url("/v1/records")) as r:
            assert r.status == 400

    asyncio.run(with_gateway(tmp_path, fn))


def test_publish_answers_once_durable_and_only_to_whom_may(tmp_path):
    from edgeline_host.jsonrecords import RequestError
    from edgeline_host.gateway.topics import parse_topics

    class Req:  # what _authorized looks at
        def __init__(self, remote, auth=None):
            self.remote = remote
            self.headers = {"Authorization": auth} if auth else {}

    async def fn(gw, http, url, server):
        gw.topics = parse_topics({"cmd": None}, gw.keys)
        async with http.post(server.make_url("/v1/topics/cmd/publish"), data=b'[{"key": "a", "value": 1}, 2]') as r:
            assert r.status == 200
            assert await r.json() == {"topic": "cmd", "origin": "cloud", "first_seq": 1, "last_seq": 2, "durable": True}
        # committed (synchronous=FULL) when answered: another connection to the file sees them
        other = GatewayStore(gw.store.path)
        assert [(r.seq, r.key) for r in other.pull("cmd", 0, 10)] == [(1, b"a"), (2, None)]
        other.close()
        c = HttpEdgeClient(http, url, "edge-1", KEY)
        await c.connect()
        (d,) = await c.exchange(sync.Pull("cmd", 0, 10))
        assert [(r.seq, codec.loads(r.value)) for r in sync.records_of(d)] == [(1, 1), (2, 2)]
        # loopback clients may publish without a token; others may not
        api = GatewayApi(gw)
        api._authorized(Req("127.0.0.1"))
        api._authorized(Req("::1"))
        with pytest.raises(RequestError) as e:
            api._authorized(Req("10.1.2.3"))
        assert e.value.status == 403 and "loopback" in str(e.value)
        gw.publish_token = "s3cret-token-0123456789"
        api._authorized(Req("10.1.2.3", "Bearer s3cret-token-0123456789"))
        for auth in (None, "Bearer nope", "s3cret-token-0123456789"):
            with pytest.raises(RequestError) as e:
                api._authorized(Req("127.0.0.1", auth))
            assert e.value.status == 401
    asyncio.run(with_gateway(tmp_path, fn))


async def post(http, url, body, sid=None):
    headers = {"Content-Type": CBOR_TYPE}
    if sid:
        headers[SESSION_HEADER] = sid
    async with http.post(url, data=body, headers=headers) as r:
        return r.status, r.headers.get(SESSION_HEADER), await r.read()


def error_of(data):
    msg, end = codec.decode_prefix(data)
    assert msg[0] == sync.Error.TYPE and end == len(data), msg
    return msg[1], msg[2]


def test_a_body_ending_inside_a_message_is_malformed_never_joined_to_the_next(tmp_path):
    # Before the fix the partial BATCH stayed in the session and the next request's bytes
    # completed it: a record was stored with a value made of two requests.
    async def fn(gw, http, url, server):
        c = HttpEdgeClient(http, url, "edge-1", KEY)
        await c.connect()
        batch = c.conn.send(sync.Batch("t", 1, 5, [[0, None, b"A" * 20]]))
        for cut in (1, 5, len(batch) - 1):
            status, _, data = await post(http, url, batch[:cut], c.sid)
            assert status == 200
            assert error_of(data) == (sync.ERR_MALFORMED,
                                      "malformed: the body ends inside a message (%d bytes of it)" % cut)
            # the session is over: the rest of the message meets a new one, never the old bytes
            status, sid, data = await post(http, url, batch[cut:] + batch, c.sid)
            assert sid != c.sid and error_of(data)[0] in (sync.ERR_MALFORMED, sync.ERR_UNEXPECTED)
            assert gw.store.status() == []
            c = HttpEdgeClient(http, url, "edge-1", KEY)
            await c.connect()
        # complete messages before the cut are not stored either: the body was refused whole
        status, _, data = await post(http, url, batch + batch[:3], c.sid)
        assert error_of(data)[0] == sync.ERR_MALFORMED and gw.store.status() == []
        c = HttpEdgeClient(http, url, "edge-1", KEY)
        assert await c.connect() == {}
        assert await c.exchange(sync.Batch("t", 1, 5, [[0, None, b"A" * 20]])) == [sync.Ack("t", 1)]
        assert [r["value"] for r in gw.store.records("t")] == [b"A" * 20]
        assert gw.rejected == 7  # three cuts, the three requests after them, the last body

    asyncio.run(with_gateway(tmp_path, fn))


def test_publish_when_the_store_cannot_commit_stores_nothing(tmp_path):
    import sqlite3

    from edgeline_host.gateway.topics import parse_topics

    async def fn(gw, http, url, server):
        gw.topics = parse_topics({"cmd": None}, gw.keys)
        real = gw.store.commit

        def full(items, now_ms):
            raise sqlite3.OperationalError("database or disk is full")

        gw.store.commit = full
        async with http.post(server.make_url("/v1/topics/cmd/publish"), data=b"[1, 2]") as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert await r.json() == {"error": "could not store: database or disk is full"}
        gw.store.commit = real
        assert gw.store.published("cmd") == 0
        async with http.post(server.make_url("/v1/topics/cmd/publish"), data=b"3") as r:
            assert (await r.json())["first_seq"] == 1  # the failed request used no seq
    asyncio.run(with_gateway(tmp_path, fn))


def test_an_exchange_that_ends_in_an_error_stores_nothing_of_it(tmp_path):
    # BATCH then garbage (or then the edge's own ERROR) in one body: before the fix the
    # batch was committed, then its ACK could not be sent on the stopped connection and
    # the gateway answered 500 with a traceback in its log.
    async def fn(gw, http, url, server):
        for tail, code in ((b"\xff", sync.ERR_MALFORMED), (codec.dumps([7, "t", 1, 0, "x"]), sync.ERR_MALFORMED),
                           (codec.dumps([1, 1, "edge-1", b"n" * 16, {}]), sync.ERR_UNEXPECTED),
                           (codec.dumps([10, 8, "edge gives up"]), None)):
            c = HttpEdgeClient(http, url, "edge-1", KEY)
            await c.connect()
            body = c.conn.send(sync.batch_from_records("t", records(1, 5)))
            status, _, data = await post(http, url, body + tail, c.sid)
            assert status == 200
            if code is None:
                assert data == b""  # a received ERROR stops the gateway's side without an answer
            else:
                assert error_of(data)[0] == code
            assert gw.store.status() == [], tail
        c = HttpEdgeClient(http, url, "edge-1", KEY)
        assert await c.connect() == {}
        assert (await c.exchange(sync.batch_from_records("t", records(1, 5))))[0] == sync.Ack("t", 5)

    asyncio.run(with_gateway(tmp_path, fn))


def test_requests_of_one_session_run_one_at_a_time(tmp_path):
    # A duplicate or a replay may reach the gateway while the request before it on the
    # same session waits for its commit. Before the fix a failing one stopped the shared
    # connection under the waiting one, whose ACK then raised: HTTP 500.
    async def fn(gw, http, url, server):
        c = HttpEdgeClient(http, url, "edge-1", KEY)
        await c.connect()
        submit = gw.committer.submit
        gate = asyncio.Event()

        async def held(items):
            await gate.wait()
            return await submit(items)

        gw.committer.submit = held
        batch = c.conn.send(sync.batch_from_records("t", records(1, 3)))
        first = asyncio.ensure_future(post(http, url, batch, c.sid))
        await asyncio.sleep(0.1)  # the first request is waiting for its commit
        dup = asyncio.ensure_future(post(http, url, batch, c.sid))
        junk = asyncio.ensure_future(post(http, url, b"\xff", c.sid))
        await asyncio.sleep(0.1)
        assert not dup.done() and not junk.done()  # queued behind the first
        gate.set()
        status, sid, data = await first
        assert status == 200 and sid == c.sid and codec.decode_prefix(data)[0] == [6, "t", 3]
        status, sid, data = await dup
        assert status == 200 and codec.decode_prefix(data)[0] == [6, "t", 3]  # a replay: acknowledged again
        status, sid, data = await junk
        assert status == 200 and error_of(data)[0] == sync.ERR_MALFORMED
        # the junk ended the session; the next request meets a new one and the edge starts over
        status, sid, data = await post(http, url, c.conn.send(sync.batch_from_records("t", records(4, 1))), c.sid)
        assert sid != c.sid and error_of(data)[0] == sync.ERR_UNEXPECTED
        gw.committer.submit = submit
        assert [r["seq"] for r in gw.store.records("t")] == [1, 2, 3]

    asyncio.run(with_gateway(tmp_path, fn))


def test_stale_replays_change_nothing(tmp_path):
    # What a middlebox replaying old requests late does: each is answered, nothing is
    # stored twice or out of order, marks never move back.
    async def fn(gw, http, url, server):
        old = HttpEdgeClient(http, url, "edge-1", KEY)
        await old.connect()
        b1 = old.conn.send(sync.batch_from_records("t", records(1, 10)))
        b2 = old.conn.send(sync.batch_from_records("t", records(11, 10)))
        gap = old.conn.send(sync.Gap("t", 21, 25, "evicted"))
        for body, mark in ((b1, 10), (b2, 20), (gap, 25)):
            assert codec.decode_prefix((await post(http, url, body, old.sid))[2])[0] == [6, "t", mark]
        # replayed on the live session, after newer ones were acked: the mark stands
        for body in (b1, gap, b2, b1):
            assert codec.decode_prefix((await post(http, url, body, old.sid))[2])[0] == [6, "t", 25]
        # replayed into a newer session of the same edge (an old request body re-sent)
        new = HttpEdgeClient(http, url, "edge-1", KEY)
        assert await new.connect() == {"t": 25}
        for body in (b2, b1):
            assert codec.decode_prefix((await post(http, url, body, new.sid))[2])[0] == [6, "t", 25]
        # replayed with a session id the gateway no longer knows: refused, nothing stored
        server.api.sync.sessions.pop(old.sid)
        status, sid, data = await post(http, url, b1, old.sid)
        assert error_of(data)[0] == sync.ERR_UNEXPECTED and sid != old.sid
        assert [r["seq"] for r in gw.store.records("t")] == list(range(1, 21))
        assert [(g["first"], g["last"]) for g in gw.store.gaps()] == [(21, 25)]
        assert gw.store.status()[0]["mark"] == 25 and gw.store.status()[0]["records"] == 20
        # the new session goes on
        assert await new.exchange(sync.batch_from_records("t", records(26, 2))) == [sync.Ack("t", 27)]

    asyncio.run(with_gateway(tmp_path, fn))


def test_every_error_is_json(tmp_path):
    """Issue 9: aiohttp's own 404/405/413 and an unexpected failure are {"error": ...} too."""
    async def fn(gw, http, url, server):
        async def call(method, path, **kw):
            async with http.request(method, server.make_url(path), **kw) as r:
                assert r.content_type == "application/json", (path, r.status, await r.text())
                body = await r.json()
                assert list(body) == ["error"] and "\n" not in body["error"], body
                return r.status, r.headers, body["error"]

        s, _, e = await call("GET", "/nope")
        assert (s, e) == (404, "no such path: GET /nope")
        s, h, e = await call("GET", "/v1/sync")
        assert s == 405 and h["Allow"] == "POST" and e == "method GET is not allowed on /v1/sync (allowed: POST)"
        s, _, e = await call("GET", "/v1/records")
        assert s == 400 and e.startswith("topic is required")
        s, _, e = await call("GET", "/v1/records", params={"topic": "t", "limit": "x"})
        assert (s, e) == (400, "limit must be an integer, got 'x'")
        s, _, e = await call("POST", "/v1/sync", data=b"\0" * (gw.max_message_bytes * 4 + 1))
        assert s == 413 and "exceeded" in e
        s, _, e = await call("POST", "/v1/topics/x/publish", data=b"[NaN]")
        assert s == 404  # unknown topic first
        gw.store.status = None  # a bug: the handler fails
        s, _, e = await call("GET", "/v1/status")
        assert (s, e) == (500, "internal error: TypeError: 'NoneType' object is not callable")
        async with http.get(server.make_url("/healthz")) as r:  # and it keeps serving
            assert r.status == 200 and (await r.json())["ok"]

    asyncio.run(with_gateway(tmp_path, fn))


def test_records_api_gives_the_agents_form(tmp_path):
    async def fn(gw, http, url, server):
        c = HttpEdgeClient(http, url, "edge-1", KEY)
        await c.connect()
        recs = [Record(1, 1001, b"door", codec.dumps({"t": 1.5, "b": b"\x01"})), Record(2, 1002, b"\xff", b"\xff")]
        await c.exchange(sync.batch_from_records("t", recs))
        async with http.get(server.make_url("/v1/records"), params={"topic": "t", "origin": "edge-1"}) as r:
            rows = (await r.json())["records"]
        for row in rows:
            assert row.pop("stored_ms") > 0
        assert rows == [
            {"origin": "edge-1", "topic": "t", "seq": 1, "ts": 1001, "key": "door", "value": {"t": 1.5, "b": {"base64": "AQ=="}}},
            {"origin": "edge-1", "topic": "t", "seq": 2, "ts": 1002, "key": None, "value": None, "key_base64": "/w==",
             "value_base64": "/w=="},
        ]


def test_a_version_1_edge_and_a_new_incarnation_side_by_side(tmp_path):
    # An old board (wire version 1: no incarnations) is the legacy incarnation; the same
    # node upgraded and with a fresh log names a new one: both streams are kept, the new
    # one from seq 1, and status and records say which is which.
    new = bytes.fromhex("0123456789abcdef")

    async def fn(gw, http, url, server):
        old = HttpEdgeClient(http, url, "edge-1", KEY)
        assert await old.connect(version=1) == {}
        assert old.conn.marks == {}
        evs = await old.exchange(sync.batch_from_records("t", records(1, 10)))
        assert evs[-1].seq == 10
        again = HttpEdgeClient(http, url, "edge-1", KEY)
        assert await again.connect(version=1) == {"t": 10}  # legacy marks for a v1 HELLO
        assert await HttpEdgeClient(http, url, "edge-1", KEY).connect({"t": bytes(8)}) == {"t": 10}
        assert await HttpEdgeClient(http, url, "edge-1", KEY).connect({"t": new}) == {}  # reported once
        fresh = HttpEdgeClient(http, url, "edge-1", KEY)
        assert await fresh.connect({"t": new}) == {}
        evs = await fresh.exchange(sync.batch_from_records("t", records(1, 3)))
        assert evs[-1].seq == 3 and gw.new_incarnations == 1
        async with http.get(server.make_url("/v1/records"), params={"topic": "t", "origin": "edge-1"}) as r:
            rows = (await r.json())["records"]
        assert [(x["incarnation"], x["seq"]) for x in rows] == \
            [("0" * 16, s) for s in range(1, 11)] + [(new.hex(), s) for s in (1, 2, 3)]
        async with http.get(server.make_url("/v1/status")) as r:
            st = await r.json()
        assert [(s["incarnation"], s["current"], s["mark"]) for s in st["streams"]] == \
            [("0" * 16, False, 10), (new.hex(), True, 3)]
        assert st["incarnations"][0]["incarnations"][0]["unknown_after"] == 10
        async with http.get(server.make_url("/healthz")) as r:
            assert (await r.json())["new_incarnations"] == 1

    asyncio.run(with_gateway(tmp_path, fn))
