"""The gateway over plain TCP: a CPython EdgeConnection on a real socket (asyncio streams)."""
import asyncio
import os

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edgeline import codec, sync
from edgeline.log import Record
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.gateway.topics import parse_topics
from edgeline_host.transports.tcp import attach_tcp, start_tcp

KEY = bytes(range(32))
KEY2 = KEY[::-1]


def records(first, n):
    return [Record(s, 1000 + s, None, codec.dumps({"n": s})) for s in range(first, first + n)]


class TcpEdge:
    """An EdgeConnection on an asyncio stream: send events, read until n answers."""

    def __init__(self, reader, writer, node_id, key):
        self.reader = reader
        self.writer = writer
        self.conn = sync.EdgeConnection(node_id, key, os.urandom)

    @classmethod
    async def open(cls, port, node_id="edge-1", key=KEY):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, node_id, key)

    async def send(self, *events, byte_at_a_time=False):
        data = b"".join(self.conn.send(e) for e in events)
        if byte_at_a_time:
            for i in range(len(data)):
                self.writer.write(data[i:i + 1])
                await self.writer.drain()
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def receive(self, n):
        """The next n events, fewer if an Error or ConnectionClosed comes first."""
        out = []
        while len(out) < n:
            ev = self.conn.next_event()
            if ev is sync.NEED_DATA:
                chunk = await asyncio.wait_for(self.reader.read(65536), 10)
                self.conn.receive_data(chunk)
                continue
            out.append(ev)
            if type(ev) in (sync.Error, sync.ConnectionClosed):
                break
        return out

    async def handshake(self):
        await self.send(sync.Hello())
        assert [type(e) for e in await self.receive(1)] == [sync.Challenge]
        await self.send(sync.Auth())
        assert [type(e) for e in await self.receive(1)] == [sync.Welcome]
        return self.conn.marks

    async def close(self):
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def with_tcp_gateway(tmp_path, fn, **kw):
    keys = {"edge-1": KEY, "edge-2": KEY2}
    kw.setdefault("topics", parse_topics({"cmd": None, "only2": {"nodes": ["edge-2"]}}, keys))
    gw = Gateway(str(tmp_path / "gw.db"), keys, **kw)
    await gw.committer.start()
    srv = await start_tcp(gw, "127.0.0.1", 0)
    try:
        return await fn(gw, srv.port)
    finally:
        srv.close()
        await srv.wait_closed()
        await gw.committer.stop()
        gw.store.close()


async def read_until_eof(reader):
    data = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            return data
        data += chunk


def test_batches_acks_replays_and_resume(tmp_path):
    async def fn(gw, port):
        e = await TcpEdge.open(port)
        assert await e.handshake() == {}
        await e.send(sync.batch_from_records("t", records(1, 10)))
        assert await e.receive(1) == [sync.Ack("t", 10)]
        # a replay and an overlap in one write: nothing stored twice, one ACK per exchange
        await e.send(sync.batch_from_records("t", records(1, 10)), sync.batch_from_records("t", records(8, 5)))
        acks = await e.receive(1)
        while acks[-1].seq != 12:
            acks += await e.receive(1)
        assert all(type(a) is sync.Ack and a.topic == "t" for a in acks)
        # a batch that does not continue the stream stores nothing and names the mark
        await e.send(sync.batch_from_records("t", records(20, 2)))
        assert await e.receive(1) == [sync.Ack("t", 12)]
        await e.close()
        # a new connection resumes from the marks; a GAP, then more records
        e2 = await TcpEdge.open(port)
        assert await e2.handshake() == {"t": 12}
        await e2.send(sync.Gap("t", 13, 20, "evicted"))
        assert await e2.receive(1) == [sync.Ack("t", 20)]
        await e2.send(sync.batch_from_records("t", records(21, 2)))
        assert await e2.receive(1) == [sync.Ack("t", 22)]
        # PULL: nothing to send yet, an empty DATA
        await e2.send(sync.Pull("cmd", 0, 10))
        assert await e2.receive(1) == [sync.Data("cmd", 1, 0, [])]
        await e2.close()
        rows = gw.store.records("t", origin="edge-1")
        assert [r["seq"] for r in rows] == list(range(1, 13)) + [21, 22]
        assert codec.loads(rows[0]["value"]) == {"n": 1} and rows[0]["ts"] == 1001
        assert [(g["first"], g["last"]) for g in gw.store.gaps()] == [(13, 20)]

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_pull_published_records_over_tcp(tmp_path):
    async def fn(gw, port):
        assert await gw.publish("cmd", [codec.dumps({"set": i}) for i in range(1, 6)]) == (1, 5)
        e = await TcpEdge.open(port)
        await e.handshake()
        await e.send(sync.Pull("cmd", 0, 3))
        (d,) = await e.receive(1)
        assert type(d) is sync.Data and d.first_seq == 1
        assert [codec.loads(r.value) for r in sync.records_of(d)] == [{"set": 1}, {"set": 2}, {"set": 3}]
        # the next PULL acknowledges 3 and gets the rest; then nothing is new
        await e.send(sync.Pull("cmd", 3, 100))
        (d,) = await e.receive(1)
        assert [r.seq for r in sync.records_of(d)] == [4, 5]
        await e.send(sync.Pull("cmd", 5, 100))
        assert await e.receive(1) == [sync.Data("cmd", 6, 0, [])]
        assert gw.store.delivered("edge-1", "cmd")[0] == 5
        # a batch and a PULL of a topic this node may not pull, in one write: the batch is
        # stored and acknowledged, then ERROR unknown_topic ends the conversation
        await e.send(sync.batch_from_records("t", records(1, 2)), sync.Pull("only2", 0, 10))
        ack, err = await e.receive(2)
        assert ack == sync.Ack("t", 2) and type(err) is sync.Error and err.code == sync.ERR_UNKNOWN_TOPIC
        assert "only2" in err.message
        assert await asyncio.wait_for(e.reader.read(100), 10) == b""
        await e.close()
        e2 = await TcpEdge.open(port, "edge-2", KEY2)
        await e2.handshake()
        await e2.send(sync.Pull("only2", 0, 10), sync.Pull("cmd", 2, 10))
        d1, d2 = await e2.receive(2)
        assert d1 == sync.Data("only2", 1, 0, [])
        assert d2.topic == "cmd" and [(r.seq, codec.loads(r.value)) for r in sync.records_of(d2)] == [
            (3, {"set": 3}), (4, {"set": 4}), (5, {"set": 5})]
        await e2.close()
        assert gw.refused_pulls == 1

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_pull_a_record_over_the_edges_limit_and_a_pull_from_the_future(tmp_path, caplog):
    async def fn(gw, port):
        await gw.publish("cmd", [codec.dumps("s"), codec.dumps("x" * 400), codec.dumps("t")])
        e = await TcpEdge.open(port)
        e.conn = sync.EdgeConnection("edge-1", KEY, os.urandom, max_message_bytes=256)  # a small board
        await e.handshake()
        await e.send(sync.Pull("cmd", 0, 10))  # seq 1 fits, seq 2 does not: DATA of seq 1 alone
        (d,) = await e.receive(1)
        assert [r.seq for r in sync.records_of(d)] == [1]
        await e.send(sync.Pull("cmd", 1, 10))
        (err,) = await e.receive(1)
        assert err.code == sync.ERR_TOO_LARGE and "seq 2" in err.message and "256" in err.message
        await e.close()
        # an edge that holds more than the gateway published (a store restored from an old
        # backup): nothing new for it until the topic's seqs pass its own
        e = await TcpEdge.open(port)
        await e.handshake()
        await e.send(sync.Pull("cmd", 7, 10))
        assert await e.receive(1) == [sync.Data("cmd", 8, 0, [])]
        await gw.publish("cmd", [codec.dumps(i) for i in range(5)])  # seqs 4..8
        await e.send(sync.Pull("cmd", 7, 10))
        (d,) = await e.receive(1)
        assert [r.seq for r in sync.records_of(d)] == [8]
        await e.close()
        assert any("only 3 were published" in r.getMessage() for r in caplog.records)

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_conversation_one_byte_at_a_time(tmp_path):
    async def fn(gw, port):
        e = await TcpEdge.open(port)
        await e.send(sync.Hello(), byte_at_a_time=True)
        assert type((await e.receive(1))[0]) is sync.Challenge
        await e.send(sync.Auth(), byte_at_a_time=True)
        assert type((await e.receive(1))[0]) is sync.Welcome
        await e.send(sync.batch_from_records("t", records(1, 3)), byte_at_a_time=True)
        assert await e.receive(1) == [sync.Ack("t", 3)]
        await e.close()
        assert [r["seq"] for r in gw.store.records("t")] == [1, 2, 3]

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_garbage_gets_error_then_close_and_others_keep_working(tmp_path):
    async def fn(gw, port):
        good = await TcpEdge.open(port, "edge-2", KEY2)
        await good.handshake()
        await good.send(sync.batch_from_records("t", records(1, 2)))
        assert await good.receive(1) == [sync.Ack("t", 2)]

        # not CBOR at all
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\xff\xfe garbage")
        await writer.drain()
        data = await read_until_eof(reader)
        err = codec.decode_prefix(data)[0]
        assert err[0] == 10 and err[1] == sync.ERR_MALFORMED
        writer.close()

        # a BATCH before the handshake: unexpected
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(codec.dumps([5, "t", 1, 0, [[0, None, b"x"]]]))
        await writer.drain()
        err = codec.decode_prefix(await read_until_eof(reader))[0]
        assert err[0] == 10 and err[1] == sync.ERR_UNEXPECTED
        writer.close()

        # garbage after a good handshake: the connection ends, what was acked stays
        bad = await TcpEdge.open(port)
        await bad.handshake()
        await bad.send(sync.batch_from_records("t", records(1, 4)))
        assert await bad.receive(1) == [sync.Ack("t", 4)]
        bad.writer.write(b"\x1c")  # reserved additional information: not well-formed CBOR
        await bad.writer.drain()
        assert await bad.receive(1) == [sync.Error(sync.ERR_MALFORMED, "malformed: not well-formed CBOR at byte 0x1c")]
        assert await asyncio.wait_for(bad.reader.read(100), 10) == b""
        await bad.close()

        # the first client never noticed
        await good.send(sync.batch_from_records("t", records(3, 2)))
        assert await good.receive(1) == [sync.Ack("t", 4)]
        await good.close()
        assert [r["seq"] for r in gw.store.records("t", origin="edge-1")] == [1, 2, 3, 4]
        assert [r["seq"] for r in gw.store.records("t", origin="edge-2")] == [1, 2, 3, 4]
        assert gw.rejected == 3

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_wrong_key_unknown_node_and_torn_message_store_nothing(tmp_path):
    async def fn(gw, port):
        bad = await TcpEdge.open(port, "edge-1", b"\x00" * 32)
        await bad.send(sync.Hello())
        await bad.receive(1)
        await bad.send(sync.Auth())
        (err,) = await bad.receive(1)
        assert type(err) is sync.Error and err.code == sync.ERR_BAD_PROOF
        assert await asyncio.wait_for(bad.reader.read(100), 10) == b""
        await bad.close()

        ghost = await TcpEdge.open(port, "edge-9", KEY)
        await ghost.send(sync.Hello())
        (err,) = await ghost.receive(1)
        assert type(err) is sync.Error and err.code == sync.ERR_UNKNOWN_NODE
        await ghost.close()

        # the edge hangs up inside a BATCH: nothing of it is stored
        torn = await TcpEdge.open(port)
        await torn.handshake()
        data = torn.conn.send(sync.batch_from_records("t", records(1, 5)))
        torn.writer.write(data[:-3])
        await torn.writer.drain()
        torn.writer.write_eof()
        err = codec.decode_prefix(await read_until_eof(torn.reader))[0]
        assert err[0] == 10 and err[1] == sync.ERR_MALFORMED
        await torn.close()
        assert gw.store.status() == []

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_oversized_message_refused_early(tmp_path):
    async def fn(gw, port):
        e = await TcpEdge.open(port)
        await e.handshake()
        assert e.conn.peer_max_message_bytes == 1024
        # a byte string declaring 1 MB: refused from its head, before the bytes arrive
        e.writer.write(codec.dumps([5, "t", 1, 0, []])[:-1] + b"\x81\x83\x00\xf6\x5a\x00\x10\x00\x00")
        await e.writer.drain()
        (err,) = await e.receive(1)
        assert type(err) is sync.Error and err.code == sync.ERR_TOO_LARGE
        assert await asyncio.wait_for(e.reader.read(100), 10) == b""
        await e.close()

    asyncio.run(with_tcp_gateway(tmp_path, fn, max_message_bytes=1024))


def test_good_messages_then_garbage_in_one_read_store_nothing(tmp_path):
    # Before the fix the batch was committed, then its ACK raised on the stopped
    # connection: the edge got no ERROR, only a closed socket, and the log a traceback.
    async def fn(gw, port):
        e = await TcpEdge.open(port)
        await e.handshake()
        e.writer.write(e.conn.send(sync.batch_from_records("t", records(1, 5))) + b"\xff")
        await e.writer.drain()
        err = codec.decode_prefix(await read_until_eof(e.reader))[0]
        assert err[:2] == [10, sync.ERR_MALFORMED]
        await e.close()
        assert gw.store.status() == [] and gw.rejected == 1
        e = await TcpEdge.open(port)
        assert await e.handshake() == {}
        await e.send(sync.batch_from_records("t", records(1, 5)))
        assert await e.receive(1) == [sync.Ack("t", 5)]
        await e.close()

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_idle_connection_is_closed(tmp_path):
    async def fn(gw, port):
        srv = await start_tcp(gw, "127.0.0.1", 0, idle_timeout_s=0.2)
        try:
            e = await TcpEdge.open(srv.port)
            await e.handshake()
            assert await asyncio.wait_for(e.reader.read(100), 10) == b""  # closed by the gateway
            await e.close()
        finally:
            srv.close()
            await srv.wait_closed()

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_many_edges_at_once(tmp_path):
    async def one(port, node, key, n):
        e = await TcpEdge.open(port, node, key)
        await e.handshake()
        for first in range(1, n + 1, 25):
            await e.send(sync.batch_from_records("t", records(first, 25)))
            assert await e.receive(1) == [sync.Ack("t", first + 24)]
        await e.close()

    async def fn(gw, port):
        await asyncio.gather(one(port, "edge-1", KEY, 200), one(port, "edge-2", KEY2, 200))
        for node in ("edge-1", "edge-2"):
            assert [r["seq"] for r in gw.store.records("t", origin=node)] == list(range(1, 201))

    asyncio.run(with_tcp_gateway(tmp_path, fn))


def test_attached_to_the_http_app_lifecycle(tmp_path):
    async def run():
        gw = Gateway(str(tmp_path / "gw.db"), {"edge-1": KEY})
        app = GatewayApi(gw).app()
        lines = []
        attach_tcp(app, gw, "127.0.0.1", 0, lines.append)
        server = TestServer(app)
        await server.start_server()
        try:
            port = int(lines[0].rsplit(":", 1)[1])
            e = await TcpEdge.open(port)
            await e.handshake()
            await e.send(sync.batch_from_records("t", records(1, 3)))
            assert await e.receive(1) == [sync.Ack("t", 3)]
            async with aiohttp.ClientSession() as http:
                async with http.get(server.make_url("/v1/records"), params={"topic": "t"}) as r:
                    rows = (await r.json())["records"]
            assert [x["seq"] for x in rows] == [1, 2, 3]
        finally:
            await server.close()  # shutdown closes the TCP transport and its open connection
        assert await asyncio.wait_for(e.reader.read(100), 10) == b""
        await e.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(run())


def test_cli_rejects_a_bad_tcp_address(tmp_path, capsys):
    from edgeline_host.cli import main

    with pytest.raises(SystemExit) as e:
        main(["gateway", "--keys", str(tmp_path / "keys.yaml"), "--tcp", "8701"])
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == "edgeline: error: --tcp must be host:port, got '8701'"
