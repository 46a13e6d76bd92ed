"""Bad input at every port, table-driven: the gateway's HTTP ``/v1/sync``, its plain TCP
port and its MQTT transport (a real Mosquitto), and the agent's HTTP ingest API.

For every row: a clear error (one ERROR message, or one JSON line with a 4xx status),
nothing stored (the store, or the agent's logs, exactly as before), nothing lost (the
node that sent it starts over and finds every record it had been acknowledged, then
goes on), and the server keeps serving a well-behaved edge whose conversation stays
open across all the rows.

Rows already checked elsewhere are not repeated here: garbage that is not CBOR, a
message before the handshake, a wrong key and an unknown node at each gateway port
(test_gateway_http.py, test_gateway_tcp.py, test_gateway_mqtt.py); a body or payload
that ends inside a message, replayed and duplicated batches (the same files); and at the
agent, unknown and cloud_to_edge topics, bodies that are not JSON or over 1 MiB, a
record over a segment, a full ``reject`` topic (test_agent.py).
"""
import asyncio
import json
import os
import secrets
import socket

import aiohttp
import paho.mqtt.client as paho
import pytest
from aiohttp.test_utils import TestServer
from paho.mqtt.enums import CallbackAPIVersion

from edgeline import codec, sync
from edgeline.log import Record
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.transports.http import CBOR_TYPE, SESSION_HEADER
from edgeline_host.transports.mqtt import attach_mqtt, no_delay
from edgeline_host.transports.tcp import start_tcp

KEY = bytes(range(32))
KEY2 = KEY[::-1]
KEYS = {"edge-1": KEY, "edge-2": KEY2}
MAX_MESSAGE = 4096  # small limits, so the oversized rows stay small
MAX_BATCH = 10
WAIT_S = 10
N16 = b"n" * 16

M, VERSION, UNEXPECTED, TOO_LARGE = sync.ERR_MALFORMED, sync.ERR_UNSUPPORTED_VERSION, sync.ERR_UNEXPECTED, \
    sync.ERR_TOO_LARGE


def entry(v=b"v"):
    return [0, None, v]


def next_batch(topic, base_ts, entries, seq_type=int):
    """A BATCH that would continue edge-1's stream (first_seq its mark + 1), so one taken
    would store new records: a function of the mark."""
    return lambda mark: codec.dumps([5, topic, seq_type(mark + 1), base_ts, entries])


# (what, the state the conversation is in when the bytes come, the bytes (or a function
# of edge-1's mark on topic "t" giving them), the ERROR code, text in its message)
GATEWAY_ROWS = [
    ("HELLO of version 3", "start", codec.dumps([1, 3, "edge-1", N16, {}, {}]), VERSION, "HELLO version 3"),
    ("HELLO of version 2 without incarnations", "start", codec.dumps([1, 2, "edge-1", N16, {}]), M,
     "HELLO has 4 fields, needs 5"),
    ("HELLO: a 7-byte incarnation", "start", codec.dumps([1, 2, "edge-1", N16, {}, {"t": b"1234567"}]), M,
     "HELLO field incarnations"),
    ("HELLO: node id not text", "start", codec.dumps([1, 1, 7, N16, {}]), M, "HELLO field node_id"),
    ("HELLO: node id with a space", "start", codec.dumps([1, 1, "edge 1", N16, {}]), M, "HELLO field node_id"),
    ("HELLO: 15-byte nonce", "start", codec.dumps([1, 1, "edge-1", b"n" * 15, {}]), M, "client_nonce"),
    ("HELLO: max_message_bytes 100", "start", codec.dumps([1, 1, "edge-1", N16, {"max_message_bytes": 100}]), M,
     "capabilities"),
    ("HELLO: too few fields", "start", codec.dumps([1, 1, "edge-1"]), M, "HELLO has 2 fields, needs 4"),
    ("not an array", "start", codec.dumps({"type": 1}), M, "not an array"),
    ("unknown message type", "start", codec.dumps([42, "x"]), M, "unknown message type 42"),
    ("nested 500 deep", "start", b"\x81" * 500 + b"\x00", M, "nested too deep"),
    ("AUTH: 31-byte proof", "challenged", codec.dumps([3, b"p" * 31]), M, "AUTH field proof"),
    ("BATCH before AUTH", "challenged", next_batch("t", 0, [entry()]), UNEXPECTED,
     "BATCH not allowed in state CHALLENGED"),
    ("AUTH again", "ready", codec.dumps([3, b"p" * 32]), UNEXPECTED, "AUTH not allowed in state READY"),
    ("ACK from the edge", "ready", codec.dumps([6, "t", 3]), UNEXPECTED, "ACK not allowed"),
    ("BATCH: topic not text", "ready", next_batch(7, 0, [entry()]), M, "BATCH field topic"),
    ("BATCH: empty topic", "ready", next_batch("", 0, [entry()]), M, "BATCH field topic"),
    ("BATCH: topic of 129 characters", "ready", codec.dumps([5, "t" * 129, 1, 0, [entry()]]), M, "BATCH field topic"),
    ("BATCH: seq 0", "ready", codec.dumps([5, "t", 0, 0, [entry()]]), M, "seq, ts or entry"),
    ("BATCH: seq negative", "ready", codec.dumps([5, "t", -1, 0, [entry()]]), M, "BATCH field first_seq"),
    ("BATCH: seqs past 2^64", "ready", codec.dumps([5, "t", (1 << 64) - 1, 0, [entry(), entry()]]), M,
     "seq, ts or entry"),
    ("BATCH: a float seq", "ready", next_batch("t", 0, [entry()], float), M, "BATCH field first_seq"),
    ("BATCH: a ts below 0", "ready", next_batch("t", 5, [[-6, None, b"v"]]), M, "seq, ts or entry"),
    ("BATCH: value text, not bytes", "ready", next_batch("t", 0, [[0, None, "v"]]), M, "seq, ts or entry"),
    ("BATCH: key an int", "ready", next_batch("t", 0, [[0, 7, b"v"]]), M, "seq, ts or entry"),
    ("BATCH: entries a map", "ready", next_batch("t", 0, {"a": 1}), M, "BATCH field entries"),
    ("BATCH: an entry of two fields", "ready", next_batch("t", 0, [[0, None]]), M, "seq, ts or entry"),
    ("BATCH over max_batch_records", "ready", next_batch("t", 0, [entry()] * (MAX_BATCH + 1)), TOO_LARGE,
     "over max_batch_records %d" % MAX_BATCH),
    ("message over max_message_bytes", "ready", next_batch("t", 0, [entry(b"x" * MAX_MESSAGE)]), TOO_LARGE,
     "over max_message_bytes %d" % MAX_MESSAGE),
    ("GAP: first after last", "ready", codec.dumps([7, "t", 9, 8, "evicted"]), M, "GAP range 9..8"),
    ("GAP: reason not text", "ready", lambda mark: codec.dumps([7, "t", mark + 1, mark + 3, 3]), M,
     "GAP field reason"),
    ("PULL: after_seq negative", "ready", codec.dumps([8, "t", -1, 5]), M, "PULL field after_seq"),
    ("a good BATCH, then garbage", "ready", lambda mark: next_batch("t", 0, [entry()])(mark) + b"\xff", M,
     "not well-formed"),
]


def messages(data):
    out = []
    pos = 0
    while pos < len(data):
        msg, pos = codec.decode_prefix(data, pos)
        out.append(msg)
    return out


def snapshot(gw):
    recs = {t: gw.store.records(t, limit=10 ** 6) for t in ("t", "u", "t" * 128)}
    return gw.store.status(), gw.store.gaps(), recs


# ---------------------------------------------------------------- three transports, one shape
#
# A port opens a conversation and exchanges raw bytes: exchange(conv, data) returns
# the gateway's messages in answer and whether the conversation has ended.


class HttpPort:
    def __init__(self, http, url, sessions):
        self.http, self.url, self.sessions = http, url, sessions

    async def open(self, node):
        return {"sid": None}

    async def exchange(self, conv, data):
        headers = {"Content-Type": CBOR_TYPE}
        if conv["sid"]:
            headers[SESSION_HEADER] = conv["sid"]
        async with self.http.post(self.url, data=data, headers=headers) as r:
            assert r.status == 200, (r.status, await r.text())
            conv["sid"] = r.headers[SESSION_HEADER]
            body = await r.read()
        return messages(body), conv["sid"] not in self.sessions

    async def close(self, conv):
        pass


class TcpPort:
    def __init__(self, port):
        self.port = port

    async def open(self, node):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return {"r": reader, "w": writer, "buf": b""}

    async def exchange(self, conv, data):
        conv["w"].write(data)
        await conv["w"].drain()
        while True:  # until the answer is whole (a complete CBOR sequence), or EOF
            chunk = await asyncio.wait_for(conv["r"].read(65536), WAIT_S)
            conv["buf"] += chunk
            try:
                out = messages(conv["buf"])
            except Exception:  # noqa: BLE001 - not whole yet
                out = None
            if not chunk or out:
                break
        conv["buf"] = b""
        ended = not chunk
        if out and out[-1][0] == sync.Error.TYPE and not ended:
            ended = await asyncio.wait_for(conv["r"].read(100), WAIT_S) == b""
        return out or [], ended

    async def close(self, conv):
        conv["w"].close()


class MqttPort:
    """A raw MQTT edge: publishes bytes on edgeline/<node>/up, reads edgeline/<node>/down.
    Each conversation has a client of its own."""

    def __init__(self, broker_port, gateway_mqtt):
        self.broker_port = broker_port
        self.gateway_mqtt = gateway_mqtt

    async def open(self, node):
        loop = asyncio.get_running_loop()
        inbox = asyncio.Queue()
        ready = asyncio.Event()
        down = "edgeline/%s/down" % node
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bad-%s-%s" % (node, secrets.token_hex(4)))
        c.on_connect = lambda client, _u, _f, rc, _p: rc.is_failure or client.subscribe(down, qos=1)
        c.on_subscribe = lambda *_a: loop.call_soon_threadsafe(ready.set)
        c.on_message = lambda _c, _u, msg: loop.call_soon_threadsafe(inbox.put_nowait, bytes(msg.payload))
        c.on_socket_open = no_delay
        c.connect_async("127.0.0.1", self.broker_port, keepalive=5)
        c.loop_start()
        await asyncio.wait_for(ready.wait(), WAIT_S)
        return {"c": c, "inbox": inbox, "up": "edgeline/%s/up" % node, "node": node}

    async def exchange(self, conv, data):
        conv["c"].publish(conv["up"], data, qos=1)
        out = messages(await asyncio.wait_for(conv["inbox"].get(), WAIT_S))
        ended = False
        if out and out[-1][0] == sync.Error.TYPE:
            for _ in range(WAIT_S * 100):  # the transport drops the conversation right after answering
                n = self.gateway_mqtt._nodes.get(conv["node"])
                if n is None or n.conn is None:
                    ended = True
                    break
                await asyncio.sleep(0.01)
        return out, ended

    async def close(self, conv):
        conv["c"].disconnect()
        await asyncio.to_thread(conv["c"].loop_stop)


async def handshake(port, conv, edge, upto="ready"):
    """Drive edge's handshake through the port; returns the WELCOME marks."""
    msgs, _ = await port.exchange(conv, edge.send(sync.Hello()))
    edge.receive_data(b"".join(codec.dumps(m) for m in msgs))
    assert type(edge.next_event()) is sync.Challenge, msgs
    if upto == "challenged":
        return None
    msgs, _ = await port.exchange(conv, edge.send(sync.Auth()))
    edge.receive_data(b"".join(codec.dumps(m) for m in msgs))
    assert type(edge.next_event()) is sync.Welcome, msgs
    return edge.marks


async def batch(port, conv, edge, topic, first, n):
    """Send records first..first+n-1 of topic; the ACK's seq."""
    recs = [Record(s, 1000 + s, None, codec.dumps({"s": s})) for s in range(first, first + n)]
    msgs, ended = await port.exchange(conv, edge.send(sync.batch_from_records(topic, recs)))
    assert not ended and msgs == [[sync.Ack.TYPE, topic, first + n - 1]], msgs
    return msgs[0][2]


async def run_rows(port, gw, rows):
    """The table against one port (see the module's docstring)."""
    good_edge = sync.EdgeConnection("edge-2", KEY2, os.urandom)
    good = await port.open("edge-2")
    assert await handshake(port, good, good_edge) == {}
    good_seq = await batch(port, good, good_edge, "u", 1, 3)
    e1 = sync.EdgeConnection("edge-1", KEY, os.urandom)
    conv = await port.open("edge-1")
    await handshake(port, conv, e1)
    mark = await batch(port, conv, e1, "t", 1, 5)  # what edge-1 was acknowledged: must never be lost
    await port.close(conv)
    rejected = gw.rejected
    for what, stage, data, code, text in rows:
        before = snapshot(gw)
        conv = await port.open("edge-1")
        edge = sync.EdgeConnection("edge-1", KEY, os.urandom)
        if stage != "start":
            await handshake(port, conv, edge, stage)
        msgs, ended = await port.exchange(conv, data(mark) if callable(data) else data)
        # a clear error: exactly one ERROR, one line, and the conversation is over
        assert len(msgs) == 1 and msgs[0][0] == sync.Error.TYPE, (what, msgs)
        assert msgs[0][1] == code and text in msgs[0][2] and "\n" not in msgs[0][2], (what, msgs)
        assert ended, what
        await port.close(conv)
        rejected += 1
        assert gw.rejected == rejected, what
        # nothing stored, wrongly or at all
        assert snapshot(gw) == before, what
        # the other edge, mid-conversation, never noticed
        good_seq = await batch(port, good, good_edge, "u", good_seq + 1, 1)
        # nothing lost: edge-1 starts over, finds its mark, goes on
        conv = await port.open("edge-1")
        edge = sync.EdgeConnection("edge-1", KEY, os.urandom)
        assert (await handshake(port, conv, edge))["t"] == mark, what
        mark = await batch(port, conv, edge, "t", mark + 1, 1)
        await port.close(conv)
    await port.close(good)
    assert [r["seq"] for r in gw.store.records("t", origin="edge-1", limit=10 ** 6)] == list(range(1, mark + 1))
    assert [r["seq"] for r in gw.store.records("u", origin="edge-2", limit=10 ** 6)] == list(range(1, good_seq + 1))
    assert gw.store.gaps() == [] and gw.store_failures == 0


def gateway():
    return Gateway(":memory:", KEYS, max_message_bytes=MAX_MESSAGE, max_batch_records=MAX_BATCH)


# ---------------------------------------------------------------- the gateway's ports


def test_bad_input_at_the_http_sync_port():
    async def main():
        gw = gateway()
        api = GatewayApi(gw)
        server = TestServer(api.app())
        await server.start_server()
        url = str(server.make_url("/v1/sync"))
        try:
            async with aiohttp.ClientSession() as http:
                port = HttpPort(http, url, api.sync.sessions)
                await run_rows(port, gw, GATEWAY_ROWS)
                # HTTP's own rows: answered by HTTP status, before any session is touched
                good_edge = sync.EdgeConnection("edge-2", KEY2, os.urandom)
                good = await port.open("edge-2")
                await handshake(port, good, good_edge)
                before = snapshot(gw)
                for method, data, headers, status, text in (
                    ("POST", b"\x80" * (4 * MAX_MESSAGE + 1), {SESSION_HEADER: good["sid"]}, 413,
                     "Maximum request body"),
                    ("POST", b"\x80", {SESSION_HEADER: "s" * 9000}, 400, "Got more than 8190 bytes"),
                    ("GET", None, {}, 405, "{\"error\": \"method GET is not allowed on /v1/sync (allowed: POST)\"}"),
                    ("PUT", b"x", {}, 405, "{\"error\": \"method PUT is not allowed on /v1/sync"),
                ):
                    async with http.request(method, url, data=data, headers=headers) as r:
                        body = await r.text()
                        assert r.status == status and text in body, (method, r.status, body)
                assert snapshot(gw) == before and good["sid"] in api.sync.sessions
                # a session id the gateway never issued: a new session, which HELLO starts
                e = sync.EdgeConnection("edge-1", KEY, os.urandom)
                conv = {"sid": "never-issued"}
                assert (await handshake(port, conv, e))["t"] >= 5 and conv["sid"] != "never-issued"
                assert (await batch(port, good, good_edge, "u", gw.store.mark("edge-2", "u") + 1, 2)) > 0
        finally:
            await server.close()

    asyncio.run(main())


def test_bad_input_at_the_tcp_port():
    async def main():
        gw = gateway()
        await gw.committer.start()
        srv = await start_tcp(gw, "127.0.0.1", 0)
        try:
            await run_rows(TcpPort(srv.port), gw, GATEWAY_ROWS)
        finally:
            srv.close()
            await srv.wait_closed()
            await gw.committer.stop()
            gw.store.close()

    asyncio.run(main())


@pytest.fixture
def broker(tmp_path):
    from mosquitto import Mosquitto

    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


def test_bad_input_at_the_mqtt_port(broker):
    async def main():
        gw = gateway()
        app = GatewayApi(gw).app()
        gateway_mqtt = attach_mqtt(app, gw, "127.0.0.1", broker.port, print_fn=None, reconnect_min_s=0.1,
                                   reconnect_max_s=0.5)
        server = TestServer(app)
        await server.start_server()
        try:
            await asyncio.wait_for(gateway_mqtt.subscribed.wait(), WAIT_S)
            await run_rows(MqttPort(broker.port, gateway_mqtt), gw, GATEWAY_ROWS)
            assert gateway_mqtt.ignored == 0
        finally:
            await server.close()

    asyncio.run(main())


# ---------------------------------------------------------------- the agent's ingest port


AGENT_CONFIG = {"edge": {
    "node_id": "edge-1", "key": KEY.hex(), "cloud_endpoint": None,
    "sync": {"interval_secs": 1, "retry": {"initial_ms": 50, "max_ms": 200}, "circuit_breaker": {"failures": 0}},
    "sync_topics": [{"topic": "telemetry", "direction": "edge_to_cloud", "group_ms": 10},
                    {"topic": "setpoints", "direction": "cloud_to_edge"}],
    "local_topics": [{"topic": "local.cache", "sync": "every"}],
    "ingest": {"http": {"listen": None}},
}}

# (what, method, path, body, headers, status, text in the one-line error)
AGENT_ROWS = [
    ("body not UTF-8", "POST", "telemetry", b'{"t": "\xff\xfe"}', {}, 400, "not valid JSON"),
    ("JSON with a lone surrogate", "POST", "telemetry", b'{"t": "\\ud800"}', {}, 400, "record 0: cannot be encoded"),
    ("nested 40 deep", "POST", "telemetry", b"[" * 40 + b"1" + b"]" * 40, {}, 400, "cannot be encoded"),
    ("nested 100000 deep", "POST", "telemetry", b"[" * 100000 + b"]" * 100000, {}, 400, "nested too deep"),
    ("records not a list", "POST", "telemetry", b'{"records": {"a": 1}}', {}, 400, '"records" must be a list'),
    ("no records", "POST", "telemetry", b'{"records": []}', {}, 400, "no records"),
    ("empty body", "POST", "telemetry", b"", {}, 400, "not valid JSON"),
    ("key a list", "POST", "telemetry", b'[1, {"key": ["k"], "value": 2}]', {}, 400, 'record 1: "key" must be'),
    ("a bad record after good ones", "POST", "telemetry", b'[1, 2, {"key": 3, "value": 4}]', {}, 400, "record 2"),
    # no Content-Length: the agent learns the size only as the chunks come
    ("chunked body over 1 MiB", "POST", "telemetry", None, {}, 413, "over 1048576 bytes"),
    ("unknown topic, URL-encoded", "POST", "no%20such", b"1", {}, 404, "unknown topic 'no such'"),
    ("cloud_to_edge topic", "POST", "setpoints", b"1", {}, 409, "cloud_to_edge"),
    ("unknown sync action", "POST", "/v1/sync/explode", b"", {}, 404, "unknown sync action 'explode'"),
]


def big_chunks():
    async def gen():
        for _ in range(20):
            yield b"[" + b"1," * 40000 + b"1]"

    return gen()


def test_bad_input_at_the_agent_ingest_port(tmp_path):
    from edgeline_host.agent.service import Agent
    from edgeline_host.agent.config import parse_config

    async def main():
        gw = gateway()
        server = TestServer(GatewayApi(gw).app())
        await server.start_server()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            agent_port = s.getsockname()[1]
        raw = json.loads(json.dumps(AGENT_CONFIG))
        raw["edge"]["cloud_endpoint"] = str(server.make_url(""))
        raw["edge"]["data_dir"] = str(tmp_path / "data")
        raw["edge"]["ingest"]["http"]["listen"] = "127.0.0.1:%d" % agent_port
        agent = Agent(parse_config(raw, base_dir=str(tmp_path)), print_fn=lambda *_: None)
        task = asyncio.ensure_future(agent.run(install_signals=False))
        base = "http://127.0.0.1:%d" % agent_port
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(WAIT_S * 20):
                    try:
                        async with http.get(base + "/v1/health") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)

                async def post(path, body, headers=None, method="POST"):
                    url = base + (path if path.startswith("/") else "/v1/topics/%s/records" % path)
                    async with http.request(method, url, data=body, headers=headers or {}) as r:
                        return r.status, await r.text()

                async def queue():
                    async with http.get(base + "/v1/queue") as r:
                        return {t: (q["last_seq"], q["durable_seq"]) for t, q in (await r.json())["topics"].items()}

                # acknowledged before the bad input comes: must reach the gateway all the same
                assert (await post("telemetry", b"[0, 1, 2]"))[0] == 200
                sent = 3
                for what, method, path, body, headers, status, text in AGENT_ROWS:
                    before = await queue()
                    got_status, got = await post(path, body if body is not None else big_chunks(), headers, method)
                    assert got_status == status, (what, got_status, got)
                    err = json.loads(got)
                    assert list(err) == ["error"] and text in err["error"] and "\n" not in err["error"], (what, err)
                    assert await queue() == before, what
                    # the agent keeps serving: the next good request is stored and synced
                    s, answer = await post("telemetry", b'{"after": %d}' % sent)
                    assert s == 200 and json.loads(answer)["first_seq"] == sent + 1, (what, answer)
                    sent += 1
                # a local topic takes records but never sends them; a sync topic does
                s, answer = await post("local.cache", b'[{"key": "k", "value": 1}]')
                assert s == 200 and json.loads(answer) == {"topic": "local.cache", "first_seq": 1, "last_seq": 1,
                                                           "durable": True}
                s, answer = await post("telemetry", b"[]", method="PUT")
                assert s == 405
                for _ in range(WAIT_S * 20):
                    if gw.store.mark("edge-1", "telemetry") == sent:
                        break
                    await asyncio.sleep(0.05)
                rows = gw.store.records("telemetry", origin="edge-1", limit=10 ** 6)
                assert [r["seq"] for r in rows] == list(range(1, sent + 1))
                assert [codec.loads(r["value"]) for r in rows][:4] == [0, 1, 2, {"after": 3}]
                assert [s["topic"] for s in gw.store.status()] == ["telemetry"]  # nothing of local.cache
                async with http.get(base + "/v1/health") as r:
                    h = await r.json()
                assert h["ok"] and h["rejected"] == len(AGENT_ROWS) - 1  # the sync action is not an ingest
        finally:
            agent.stop()
            await asyncio.wait_for(task, 30)
            await server.close()

    asyncio.run(main())
