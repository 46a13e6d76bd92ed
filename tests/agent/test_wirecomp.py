"""Compressed batches end to end (docs/spec/wire.md, "Compressed batches"): the agent's
uplink with each edge.sync.compression against a real gateway over HTTP, an old gateway
that ignores the offer, a malformed CBATCH, and a CBATCH over the gateway's TCP face.
Exactly once throughout: the records the gateway stores are the records sent."""
import asyncio
import os
import sys

import aiohttp

from edgeline import codec, columnar, sync
from edgeline.log import Record
from edgeline_host import fastcbor, wirecomp
from edgeline_host.transports.http import HttpEdgeClient
from edgeline_host.transports.tcp import start_tcp

from test_uplink import KEY, NODE, GatewayProc, free_port, make_uplink, open_topic, stopped, until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "datasets"))
import pos  # noqa: E402
import sensors  # noqa: E402


def fill(lg, recs):
    for _seq, ts, key, value in recs:
        lg.append(value, key=key, ts=ts)
    lg.flush()


def stored(gw, topic):
    return [(r["seq"], r["ts"], r["key"], r["value"]) for r in gw.gw.store.records(topic, origin=NODE, limit=10 ** 7)]


def test_each_compression_setting_over_http_exactly_once(tmp_path):
    sent = {"sensors": sensors.records(700), "pos": pos.records(300)}
    want = {"none": ("plain", set()), "columnar": ("columnar-1", {"columnar-1"}),
            "zstd": ("zstd-columnar-1", {"zstd-columnar-1"})}

    async def main():
        sizes = {}
        for compression, (encoding, used) in want.items():
            gw = await GatewayProc(str(tmp_path / ("gw-%s.db" % compression)), free_port()).start()
            topics = {name: open_topic(tmp_path / compression, name) for name in sent}
            for name, recs in sent.items():
                fill(topics[name][0], recs)
            up = make_uplink(gw.url, topics, batch_records=100, compression=compression)
            task = asyncio.create_task(up.run())
            try:
                await until(lambda: up.pending == 0, what="pending 0")
                for name, recs in sent.items():
                    assert stored(gw, name) == [(s, ts, k, v) for s, ts, k, v in recs], (compression, name)
                st = up.status()
                assert st["compression"] == compression and st["encoding"] == encoding
                assert set(st["batches_by_encoding"]) <= used and st["failures"] == 0
                if used:
                    assert sum(st["batches_by_encoding"].values()) >= 10
                sizes[compression] = st["bytes_sent"]
            finally:
                await stopped(up, task)
                await gw.stop()
        # fewer bytes for the same records, handshakes included
        assert sizes["zstd"] < sizes["columnar"] < sizes["none"] / 4, sizes

    asyncio.run(main())


def test_a_gateway_that_ignores_the_offer_gets_plain_batches(tmp_path, caplog):
    # a gateway from before compressed batches: its connections decode no CBATCH, its
    # WELCOME names no encodings (byte for byte the old one)
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        old = []

        def old_connection():
            conn = sync.GatewayConnection(gw.gw.keys.get, os.urandom, max_message_bytes=gw.gw.max_message_bytes,
                                          max_batch_records=gw.gw.max_batch_records, codec=fastcbor.CODEC)
            old.append(conn)
            return conn

        gw.gw.new_connection = old_connection
        lg, ob = open_topic(tmp_path, "t")
        recs = sensors.records(250)
        fill(lg, recs)
        up = make_uplink(gw.url, {"t": (lg, ob)}, batch_records=100)  # compression: zstd, the default
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: ob.acked == 250)
            assert stored(gw, "t") == [tuple(r) for r in recs]
            st = up.status()
            assert st["encoding"] == "plain" and st["batches_by_encoding"] == {} and st["failures"] == 0
            assert old and all(c.state in ("READY", "ERROR") for c in old)
        finally:
            await stopped(up, task)
            await gw.stop()

    with caplog.at_level("INFO", logger="edgeline.uplink"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "accepts no compressed BATCH" in r.getMessage()]
    assert len(lines) == 1, lines


def test_a_malformed_cbatch_is_an_error_and_nothing_of_the_request_is_stored(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        try:
            async with aiohttp.ClientSession() as http:
                good = [Record(s, 1000 + s, None, codec.dumps({"n": s})) for s in range(1, 6)]
                bodies = [
                    columnar.encode([tuple(r) for r in good])[:-3],  # truncated
                    b"\x28\xb5\x2f\xfd" + b"\x00" * 40,  # not a frame
                ]
                for enc, body in (("columnar-1", bodies[0]), ("zstd-columnar-1", bodies[1]),
                                  ("brotli-1", columnar.encode([tuple(r) for r in good]))):
                    ec = wirecomp.EdgeCodec()
                    c = HttpEdgeClient(http, gw.url, NODE, KEY, codec=ec.codec)
                    ec.conn = c.conn
                    await c.connect(capabilities={"encodings": ["zstd-columnar-1", "columnar-1"]})
                    # a good plain BATCH, then the bad CBATCH, in one request
                    plain = c.conn.send(sync.batch_from_records("t", good))
                    bad = codec.dumps([11, "t", enc, body])
                    async with http.post(gw.url, data=plain + bad, headers={
                            "Content-Type": "application/cbor", "X-Edgeline-Session": c.sid}) as r:
                        assert r.status == 200
                        answer = codec.loads(await r.read())
                    assert answer[:2] == [10, sync.ERR_MALFORMED], answer
                    assert stored(gw, "t") == [], enc
                # right ones then go through, compressed, exactly once
                ec = wirecomp.EdgeCodec()
                c = HttpEdgeClient(http, gw.url, NODE, KEY, codec=ec.codec)
                ec.conn = c.conn
                await c.connect(capabilities={"encodings": ["zstd-columnar-1", "columnar-1"]})
                ec.encoding = "zstd-columnar-1"
                more = [Record(*r) for r in sensors.records(200)]
                more = [Record(r.seq + 5, r.ts, r.key, r.value) for r in more]
                assert (await c.exchange(sync.batch_from_records("t", good)))[0] == sync.Ack("t", 5)
                assert (await c.exchange(sync.batch_from_records("t", more)))[0] == sync.Ack("t", 205)
                assert ec.batches == {"plain": 1, "zstd-columnar-1": 1}  # five small records: plain is smaller
                assert stored(gw, "t") == [tuple(r) for r in good + more]
                assert gw.gw.cbatches == {"zstd-columnar-1": 1}  # GET /healthz: compressed_batches
                async with http.get(gw.url.replace("/v1/sync", "/healthz")) as r:
                    assert (await r.json())["compressed_batches"] == {"zstd-columnar-1": 1}
                assert gw.gw.errors_by_reason.get("malformed", 0) >= 3
        finally:
            await gw.stop()

    asyncio.run(main())


def test_cbatch_over_tcp(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        server = await start_tcp(gw.gw, "127.0.0.1", 0)
        port = server.server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            ec = wirecomp.EdgeCodec()
            conn = sync.EdgeConnection(NODE, KEY, os.urandom, codec=ec.codec)
            ec.conn = conn

            async def answer():
                while True:
                    ev = conn.next_event()
                    if ev is not sync.NEED_DATA:
                        return ev
                    conn.receive_data(await asyncio.wait_for(reader.read(65536), 10))

            writer.write(conn.send(sync.Hello(capabilities={"encodings": wirecomp.offer("zstd")})))
            assert type(await answer()) is sync.Challenge
            writer.write(conn.send(sync.Auth()))
            welcome = await answer()
            assert welcome.limits["encodings"] == ["zstd-columnar-1", "columnar-1"]
            ec.encoding = wirecomp.choose("zstd", welcome.limits)
            recs = sensors.records(300)
            for first in (1, 101, 201):
                writer.write(conn.send(sync.batch_from_records("s", [Record(*r) for r in recs[first - 1:first + 99]])))
                assert await answer() == sync.Ack("s", first + 99)
            # a replay of the first batch changes nothing
            writer.write(conn.send(sync.batch_from_records("s", [Record(*r) for r in recs[:100]])))
            assert await answer() == sync.Ack("s", 300)
            assert ec.batches == {"zstd-columnar-1": 4}
            assert stored(gw, "s") == [tuple(r) for r in recs]
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
            await gw.stop()

    asyncio.run(main())
