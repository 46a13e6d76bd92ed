"""The gateway over MQTT: a real Mosquitto, the gateway in-process, edges on paho clients.

Each test starts its own broker (tests/support/mosquitto.py) on a free port and an aiohttp
test server of the gateway with the MQTT transport attached (``attach_mqtt``). An edge is a
CPython ``sync.EdgeConnection`` on a paho client of its own: it publishes to
``edgeline/<node>/up`` and reads ``edgeline/<node>/down``, following the edge's part
described in host/edgeline_host/transports/mqtt.py (restart with HELLO on a timeout, an
ERROR or a broker reconnect; skip stale answers while waiting for CHALLENGE).
"""
import asyncio
import os
import secrets

import aiohttp
import paho.mqtt.client as paho
import pytest
from aiohttp.test_utils import TestServer
from paho.mqtt.enums import CallbackAPIVersion

from edgeline import codec, sync
from edgeline.errors import RemoteProtocolError
from edgeline.log import Record, RingLog
from edgeline.outbox import Outbox
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.gateway.topics import parse_topics
from edgeline_host.transports.mqtt import attach_mqtt, check_prefix, no_delay
from mosquitto import Mosquitto

KEY = bytes(range(32))
KEY2 = KEY[::-1]
KEYS = {"edge-1": KEY, "edge-2": KEY2}
WAIT_S = 10  # generous: a timeout here is a failure, never a measurement
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


def records(first, n):
    return [Record(s, 1000 + s, None, codec.dumps({"n": s})) for s in range(first, first + n)]


def stored(gw, topic="t", node="edge-1"):
    return [r["seq"] for r in gw.store.records(topic, origin=node, limit=100000)]


class MqttEdge:
    """An EdgeConnection over its own paho client. paho's callbacks run in paho's
    thread and only hand over to the asyncio loop, as in the gateway's MQTT transport."""

    def __init__(self, port, node_id="edge-1", key=KEY, topic_node=None, prefix="edgeline"):
        self.loop = asyncio.get_running_loop()
        self.node_id = node_id
        self.key = key
        topic_node = topic_node or node_id
        self.up = "%s/%s/up" % (prefix, topic_node)
        self.down = "%s/%s/down" % (prefix, topic_node)
        self.inbox = asyncio.Queue()
        self.subscribed = asyncio.Event()
        self.connects = 0  # broker connections with the down subscription in place
        self.conn = None
        self.conn_generation = None  # self.connects when the conversation began
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-%s-%s" % (node_id, secrets.token_hex(4)))
        c.on_connect = lambda client, _u, _f, rc, _p: rc.is_failure or client.subscribe(self.down, qos=1)
        c.on_subscribe = lambda *_a: self._call(self._subscribed)
        c.on_disconnect = lambda *_a: self._call(self.subscribed.clear)
        c.on_message = lambda _c, _u, msg: self._call(self.inbox.put_nowait, bytes(msg.payload))
        c.on_socket_open = no_delay
        c.reconnect_delay_set(0.1, 0.5)
        self.client = c
        self.port = port

    def _call(self, fn, *args):
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is gone

    def _subscribed(self):
        self.connects += 1
        self.subscribed.set()

    async def start(self):
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        await asyncio.wait_for(self.subscribed.wait(), WAIT_S)
        return self

    async def close(self):
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def publish_raw(self, payload, retain=False, topic=None):
        self.client.publish(topic or self.up, payload, qos=1, retain=retain)

    def publish(self, *events):
        self.publish_raw(b"".join(self.conn.send(e) for e in events))

    async def payload(self, timeout_s=WAIT_S):
        return await asyncio.wait_for(self.inbox.get(), timeout_s)

    async def receive(self, n, timeout_s=WAIT_S):
        """The next n events, fewer if an Error comes first."""
        out = []
        while len(out) < n:
            ev = self.conn.next_event()
            if ev is sync.NEED_DATA:
                self.conn.receive_data(await self.payload(timeout_s))
                continue
            out.append(ev)
            if type(ev) is sync.Error:
                break
        return out

    def drain(self):
        while not self.inbox.empty():
            self.inbox.get_nowait()

    async def handshake(self, timeout_s=WAIT_S):
        """A new conversation: HELLO ... WELCOME; returns the marks. Payloads that arrive
        before the CHALLENGE answer an older conversation and are skipped."""
        await asyncio.wait_for(self.subscribed.wait(), timeout_s)
        self.drain()
        self.conn = sync.EdgeConnection(self.node_id, self.key, os.urandom)
        self.conn_generation = self.connects
        self.publish(sync.Hello())
        while True:
            p = await self.payload(timeout_s)
            if sync.peek_type(p) in (sync.Challenge.TYPE, sync.Error.TYPE):
                break
        self.conn.receive_data(p)
        (ev,) = await self.receive(1, timeout_s)
        if type(ev) is not sync.Challenge:
            raise RemoteProtocolError("expected CHALLENGE, got %r" % (ev,))
        self.publish(sync.Auth())
        (ev,) = await self.receive(1, timeout_s)
        if type(ev) is not sync.Welcome:
            raise RemoteProtocolError("expected WELCOME, got %r" % (ev,))
        return self.conn.marks

    async def sync_outbox(self, outbox, topic, batch_records=50, ack_timeout_s=1.0, after_publish=None):
        """An uplink: send everything the outbox owes, resuming after any failure, until
        it is all acknowledged. after_publish(batch) runs after each BATCH is published
        (the tests kill the broker there). Returns the number of conversations."""
        conversations = 0
        while outbox.depth:
            ready = (self.conn is not None and self.conn.state == "READY"
                     and self.conn_generation == self.connects)
            if not ready:
                try:
                    marks = await self.handshake(timeout_s=ack_timeout_s)
                except (asyncio.TimeoutError, RemoteProtocolError):
                    self.conn = None
                    await asyncio.sleep(0.2)  # a backoff: stale answers arrive, are drained
                    continue
                conversations += 1
                outbox.ack(min(marks.get(topic, 0), outbox.log.last_seq))
                continue
            recs = outbox.peek(batch_records)
            batch = sync.batch_from_records(topic, recs)
            self.publish(batch)
            if after_publish is not None:
                await after_publish(batch)
            try:
                evs = await self.receive(1, ack_timeout_s)
            except (asyncio.TimeoutError, RemoteProtocolError):
                self.conn = None
                continue
            if evs and type(evs[0]) is sync.Ack and evs[0].topic == topic:
                outbox.ack(evs[0].seq)
            else:
                self.conn = None
        return conversations


async def with_mqtt_gateway(tmp_path, broker, fn, **kw):
    """The gateway's aiohttp app on a test server, the MQTT transport attached; fn(gw, gateway_mqtt)."""
    kw.setdefault("topics", parse_topics({"cmd": None}, KEYS))
    gw = Gateway(str(tmp_path / "gw.db"), KEYS, **kw)
    app = GatewayApi(gw).app()
    lines = []
    gateway_mqtt = attach_mqtt(app, gw, "127.0.0.1", broker.port, print_fn=lines.append,
                       reconnect_min_s=0.1, reconnect_max_s=0.5)
    server = TestServer(app)
    await server.start_server()
    try:
        await asyncio.wait_for(gateway_mqtt.subscribed.wait(), WAIT_S)
        gateway_mqtt.lines = lines
        gateway_mqtt.http_url = server.make_url("")
        return await fn(gw, gateway_mqtt)
    finally:
        await server.close()


async def until(cond, timeout_s=WAIT_S):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- pure helpers


def test_prefix_is_checked():
    assert check_prefix("acme/edgeline") == "acme/edgeline"
    for bad in ("", "/x", "x/", "a/+/b", "a/#", None):
        with pytest.raises(ValueError):
            check_prefix(bad)


# ---------------------------------------------------------------- against a broker


def test_batches_acks_replays_and_resume(tmp_path, broker):
    async def fn(gw, gateway_mqtt):
        e = await MqttEdge(broker.port).start()
        assert await e.handshake() == {}
        e.publish(sync.batch_from_records("t", records(1, 10)))
        assert await e.receive(1) == [sync.Ack("t", 10)]
        # a replay and an overlap in one payload: stored once, one ACK for the payload
        e.publish(sync.batch_from_records("t", records(1, 10)), sync.batch_from_records("t", records(8, 5)))
        assert await e.receive(1) == [sync.Ack("t", 12)]
        # the same payload twice (a QoS 1 redelivery): acknowledged twice, stored once
        payload = e.conn.send(sync.batch_from_records("t", records(11, 2)))
        e.publish_raw(payload)
        e.publish_raw(payload)
        assert await e.receive(2) == [sync.Ack("t", 12), sync.Ack("t", 12)]
        # a batch that does not continue the stream stores nothing and names the mark
        e.publish(sync.batch_from_records("t", records(20, 2)))
        assert await e.receive(1) == [sync.Ack("t", 12)]
        # HELLO while a conversation stands (a node that rebooted): a new one, from the marks
        assert await e.handshake() == {"t": 12}
        e.publish(sync.Gap("t", 13, 20, "evicted"))
        assert await e.receive(1) == [sync.Ack("t", 20)]
        e.publish(sync.batch_from_records("t", records(21, 2)), sync.Pull("cmd", 0, 10))
        # (process answers the PULL at once, the BATCH after its commit)
        assert await e.receive(2) == [sync.Data("cmd", 1, 0, []), sync.Ack("t", 22)]
        # records published at the gateway come down as DATA to a PULL through the broker
        assert await gw.publish("cmd", [codec.dumps("on"), codec.dumps("off")], [b"fan", None]) == (1, 2)
        e.publish(sync.Pull("cmd", 0, 10))
        (d,) = await e.receive(1)
        assert [(r.seq, r.key, codec.loads(r.value)) for r in sync.records_of(d)] == [(1, b"fan", "on"),
                                                                                     (2, None, "off")]
        e.publish(sync.Pull("cmd", 2, 10))
        assert await e.receive(1) == [sync.Data("cmd", 3, 0, [])]
        await e.close()
        rows = gw.store.records("t", origin="edge-1")
        assert [r["seq"] for r in rows] == list(range(1, 13)) + [21, 22]
        assert codec.loads(rows[0]["value"]) == {"n": 1} and rows[0]["ts"] == 1001
        assert [(g["first"], g["last"]) for g in gw.store.gaps()] == [(13, 20)]
        assert gateway_mqtt.ignored == 0 and gw.rejected == 0

    asyncio.run(with_mqtt_gateway(tmp_path, broker, fn))


def test_ring_log_synced_exactly_once_in_order(tmp_path, broker):
    lg = RingLog(str(tmp_path / "log"), segment_bytes=8192, budget_bytes=262144)
    ob = Outbox(lg)
    for s in range(1, 501):
        lg.append(codec.dumps([s, "v%d" % s]), ts=1000 * s)
    lg.flush()

    async def fn(gw, gateway_mqtt):
        e = await MqttEdge(broker.port).start()
        assert await e.sync_outbox(ob, "temp", batch_records=64, ack_timeout_s=WAIT_S) == 1
        await e.close()
        rows = gw.store.records("temp", origin="edge-1", limit=100000)
        assert [r["seq"] for r in rows] == list(range(1, 501))
        assert [codec.loads(r["value"]) for r in rows] == [[s, "v%d" % s] for s in range(1, 501)]
        assert ob.acked == 500

    asyncio.run(with_mqtt_gateway(tmp_path, broker, fn))
    lg.close()


def test_garbage_gets_error_and_drops_only_that_node(tmp_path, broker):
    async def fn(gw, gateway_mqtt):
        good = await MqttEdge(broker.port, "edge-2", KEY2).start()
        await good.handshake()
        good.publish(sync.batch_from_records("t", records(1, 2)))
        assert await good.receive(1) == [sync.Ack("t", 2)]

        bad = await MqttEdge(broker.port).start()
        # not CBOR at all, before any conversation
        bad.publish_raw(b"\xff\xfe garbage")
        err = codec.decode_prefix(await bad.payload())[0]
        assert err[0] == sync.Error.TYPE and err[1] == sync.ERR_MALFORMED
        # a BATCH before the handshake (what a gateway restart looks like): unexpected
        bad.publish_raw(codec.dumps([5, "t", 1, 0, [[0, None, b"x"]]]))
        err = codec.decode_prefix(await bad.payload())[0]
        assert err[0] == sync.Error.TYPE and err[1] == sync.ERR_UNEXPECTED

        # garbage after a good handshake: ERROR, the conversation is dropped, acks stay
        await bad.handshake()
        bad.publish(sync.batch_from_records("t", records(1, 4)))
        assert await bad.receive(1) == [sync.Ack("t", 4)]
        bad.publish_raw(b"\x1c")  # reserved additional information: not well-formed CBOR
        assert await bad.receive(1) == [sync.Error(sync.ERR_MALFORMED, "malformed: not well-formed CBOR at byte 0x1c")]
        await until(lambda: "edge-1" not in gateway_mqtt._nodes)
        # ... so the next BATCH of the old conversation meets a fresh connection
        bad.publish_raw(codec.dumps([5, "t", 5, 0, [[0, None, b"x"]]]))
        err = codec.decode_prefix(await bad.payload())[0]
        assert err[1] == sync.ERR_UNEXPECTED
        # and the node starts over with HELLO, resuming from its mark
        assert await bad.handshake() == {"t": 4}

        # the other node never noticed
        good.publish(sync.batch_from_records("t", records(3, 2)))
        assert await good.receive(1) == [sync.Ack("t", 4)]
        await good.close()
        await bad.close()
        assert stored(gw, node="edge-1") == [1, 2, 3, 4]
        assert stored(gw, node="edge-2") == [1, 2, 3, 4]
        assert gw.rejected == 4

    asyncio.run(with_mqtt_gateway(tmp_path, broker, fn))


def test_a_payload_ending_inside_a_message_is_malformed(tmp_path, broker):
    # A payload holds whole messages: before the fix a torn one stayed in the node's
    # connection and the next payload's bytes completed it (a record stored wrongly).
    async def fn(gw, gateway_mqtt):
        e = await MqttEdge(broker.port).start()
        await e.handshake()
        batch = e.conn.send(sync.Batch("t", 1, 5, [[0, None, b"A" * 20]]))
        e.publish_raw(batch[:-4])
        err = codec.decode_prefix(await e.payload())[0]
        assert err == [10, sync.ERR_MALFORMED, "malformed: the payload ends inside a message (%d bytes of it)"
                       % (len(batch) - 4)]
        e.publish_raw(batch[-4:] + batch)  # the rest: meets a fresh connection, refused
        assert codec.decode_prefix(await e.payload())[0][:2] == [10, sync.ERR_MALFORMED]
        assert gw.store.status() == []
        assert await e.handshake() == {}
        e.publish(sync.Batch("t", 1, 5, [[0, None, b"A" * 20]]))
        assert await e.receive(1) == [sync.Ack("t", 1)]
        assert [r["value"] for r in gw.store.records("t")] == [b"A" * 20]
        await e.close()

    asyncio.run(with_mqtt_gateway(tmp_path, broker, fn))


def test_wrong_key_unknown_node_and_foreign_topic(tmp_path, broker):
    async def fn(gw, gateway_mqtt):
        wrong = await MqttEdge(broker.port, "edge-1", b"\x00" * 32).start()
        wrong.conn = sync.EdgeConnection("edge-1", wrong.key, os.urandom)
        wrong.publish(sync.Hello())
        assert [type(x) for x in await wrong.receive(1)] == [sync.Challenge]
        wrong.publish(sync.Auth())
        (err,) = await wrong.receive(1)
        assert type(err) is sync.Error and err.code == sync.ERR_BAD_PROOF
        await wrong.close()

        ghost = await MqttEdge(broker.port, "edge-9", KEY).start()
        with pytest.raises(RemoteProtocolError, match="expected CHALLENGE"):
            await ghost.handshake()
        assert ghost.conn.state == "ERROR"
        await ghost.close()

        # edge-2 (with its own key) speaking on edge-1's topic: refused at HELLO
        thief = await MqttEdge(broker.port, "edge-2", KEY2, topic_node="edge-1").start()
        with pytest.raises(RemoteProtocolError, match="expected CHALLENGE"):
            await thief.handshake()
        await thief.close()
        assert gw.store.status() == []
        assert gw.rejected == 3

    asyncio.run(with_mqtt_gateway(tmp_path, broker, fn))


def test_bad_node_ids_empty_and_retained_payloads_are_ignored(tmp_path, broker):
    hello = sync.EdgeConnection("edge-1", KEY, os.urandom).send(sync.Hello())

    async def fn(gw, gateway_mqtt):
        # the broker hands the retained HELLO to the gateway as it subscribes: stale
        await until(lambda: gateway_mqtt.ignored == 1)
        spy = await MqttEdge(broker.port).start()
        spy.publish_raw(hello, topic="edgeline/no spaces/up")
        spy.publish_raw(hello, topic="edgeline//up")
        spy.publish_raw(hello, topic="edgeline/%s/up" % ("x" * 65))
        spy.publish_raw(b"")
        await until(lambda: gateway_mqtt.ignored == 5)
        assert gateway_mqtt.payloads == 0 and gateway_mqtt.published == 0 and gateway_mqtt._nodes == {}
        # the node is not poisoned: a proper conversation works
        assert await spy.handshake() == {}
        await spy.close()

    async def run():
        # a retained message is stale by the time a gateway subscribes: published first
        early = await MqttEdge(broker.port).start()
        info = early.client.publish(early.up, hello, qos=1, retain=True)
        await asyncio.to_thread(info.wait_for_publish, WAIT_S)
        await early.close()
        await with_mqtt_gateway(tmp_path, broker, fn)

    asyncio.run(run())


def test_two_nodes_at_once(tmp_path, broker):
    async def one(port, node, key, n):
        e = await MqttEdge(port, node, key).start()
        await e.handshake()
        for first in range(1, n + 1, 25):
            e.publish(sync.batch_from_records("t", records(first, 25)))
            assert await e.receive(1) == [sync.Ack("t", first + 24)]
        await e.close()

    async def fn(gw, gateway_mqtt):
        await asyncio.gather(one(broker.port, "edge-1", KEY, 200), one(broker.port, "edge-2", KEY2, 200))
        for node in ("edge-1", "edge-2"):
            assert stored(gw, node=node) == list(range(1, 201))

    asyncio.run(with_mqtt_gateway(tmp_path, broker, fn))


def test_payloads_of_one_node_are_processed_in_order(tmp_path, broker):
    async def fn(gw, gateway_mqtt):
        e = await MqttEdge(broker.port).start()
        await e.handshake()
        # 40 batches published back to back, no waiting: each continues the one before,
        # so any reordering would leave an ACK short of the batch's end
        for first in range(1, 401, 10):
            e.publish(sync.batch_from_records("t", records(first, 10)))
        acks = await e.receive(40)
        assert acks == [sync.Ack("t", s) for s in range(10, 401, 10)]
        assert stored(gw) == list(range(1, 401))
        await e.close()

    asyncio.run(with_mqtt_gateway(tmp_path, broker, fn))


def test_broker_killed_and_restarted_mid_stream(tmp_path, broker):
    """SIGKILL the broker twice while a ring log is synced, and start it again on the
    same port each time: the gateway and the edge reconnect by themselves, the edge
    resumes from the marks and resends what is unacknowledged, and the store holds
    every record exactly once, in order.

    First kill: after the gateway committed a batch, and the edge drops whatever came
    back (the ACK is lost for sure). Second kill: right after a BATCH went out (it may
    or may not have reached the gateway), and the edge appends while the broker is down.
    """
    lg = RingLog(str(tmp_path / "log"), segment_bytes=8192, budget_bytes=1 << 20)
    ob = Outbox(lg)

    def append(first, n):
        for s in range(first, first + n):
            lg.append(codec.dumps([s]), ts=1000 * s)
        lg.flush()

    append(1, 300)
    sent = []  # first_seq of every BATCH published

    async def fn(gw, gateway_mqtt):
        e = await MqttEdge(broker.port).start()

        async def restart_broker():
            await asyncio.to_thread(broker.kill)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(broker.start)

        async def after_publish(batch):
            sent.append(batch.first_seq)
            last = batch.first_seq + len(batch.entries) - 1
            if batch.first_seq == 101 and sent.count(101) == 1:
                await until(lambda: max(stored(gw, "temp") or [0]) == last)
                await restart_broker()
                e.drain()  # the ACK, had it come back, is lost
            elif batch.first_seq == 201 and sent.count(201) == 1:
                await asyncio.to_thread(broker.kill)
                append(301, 200)  # the edge keeps logging while the broker is down
                await asyncio.sleep(0.3)
                await asyncio.to_thread(broker.start)

        conversations = await e.sync_outbox(ob, "temp", batch_records=20, ack_timeout_s=1.0,
                                            after_publish=after_publish)
        assert conversations >= 3 and gateway_mqtt.connects >= 3 and e.connects >= 3
        # the batch whose ACK was lost is not sent again: WELCOME's mark covers it
        assert sent.count(101) == 1 and 121 in sent
        rows = gw.store.records("temp", origin="edge-1", limit=100000)
        assert [r["seq"] for r in rows] == list(range(1, 501))
        assert [codec.loads(r["value"]) for r in rows] == [[s] for s in range(1, 501)]
        assert ob.acked == 500
        await e.close()

    asyncio.run(with_mqtt_gateway(tmp_path, broker, fn))
    lg.close()


def test_attached_to_the_http_app_lifecycle(tmp_path, broker):
    async def run():
        gw = Gateway(str(tmp_path / "gw.db"), KEYS)
        app = GatewayApi(gw).app()
        lines = []
        gateway_mqtt = attach_mqtt(app, gw, "127.0.0.1", broker.port, prefix="acme/edgeline", print_fn=lines.append)
        server = TestServer(app)
        await server.start_server()
        try:
            await asyncio.wait_for(gateway_mqtt.subscribed.wait(), WAIT_S)
            assert lines[0] == ("edgeline gateway: sync over MQTT via 127.0.0.1:%d, acme/edgeline/+/up -> "
                                "acme/edgeline/<node>/down" % broker.port)
            e = await MqttEdge(broker.port, prefix="acme/edgeline").start()
            await e.handshake()
            e.publish(sync.batch_from_records("t", records(1, 3)))
            assert await e.receive(1) == [sync.Ack("t", 3)]
            async with aiohttp.ClientSession() as http:
                async with http.get(server.make_url("/v1/records"), params={"topic": "t"}) as r:
                    rows = (await r.json())["records"]
            assert [x["seq"] for x in rows] == [1, 2, 3]
        finally:
            await server.close()  # shutdown disconnects the transport and joins paho's thread
        assert not gateway_mqtt.subscribed.is_set() and gateway_mqtt._bridge.client is None
        e.publish(sync.batch_from_records("t", records(4, 1)))
        with pytest.raises(asyncio.TimeoutError):
            await e.payload(timeout_s=0.5)  # nobody answers any more
        await e.close()

    asyncio.run(run())


def test_gateway_started_before_the_broker_connects_when_it_comes(tmp_path):
    b = Mosquitto(tmp_path / "mosquitto")  # configured, not started

    async def run():
        gw = Gateway(str(tmp_path / "gw.db"), KEYS)
        app = GatewayApi(gw).app()
        gateway_mqtt = attach_mqtt(app, gw, "127.0.0.1", b.port, print_fn=None, reconnect_min_s=0.1, reconnect_max_s=0.5)
        server = TestServer(app)
        await server.start_server()
        try:
            await asyncio.sleep(0.3)
            assert not gateway_mqtt.subscribed.is_set()
            await asyncio.to_thread(b.start)
            await asyncio.wait_for(gateway_mqtt.subscribed.wait(), WAIT_S)
            e = await MqttEdge(b.port).start()
            assert await e.handshake() == {}
            await e.close()
        finally:
            await server.close()

    try:
        asyncio.run(run())
    finally:
        b.stop()


def test_gateway_process_killed_and_restarted(tmp_path, broker):
    """`edgeline gateway --mqtt` as a real process, SIGKILLed mid-stream and started
    again: its conversations are gone, the edge notices (an ERROR or no answer), starts
    over with HELLO and resumes from the marks; every record is stored once."""
    import signal
    import subprocess
    import sys

    from mosquitto import free_port

    keys = tmp_path / "keys.yaml"
    keys.write_text("edge-1: %s\n" % KEY.hex())
    exe = os.path.join(os.path.dirname(sys.executable), "edgeline")
    argv = [exe, "gateway", "--keys", str(keys), "--db", str(tmp_path / "gw.db"),
            "--listen", "127.0.0.1:%d" % free_port(), "--mqtt", "127.0.0.1:%d" % broker.port]
    log_path = tmp_path / "gateway.log"

    def start_gateway():
        with open(log_path, "ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def subscribed_count():
        return log_path.read_text().count("connected") if log_path.exists() else 0

    lg = RingLog(str(tmp_path / "log"), segment_bytes=8192, budget_bytes=1 << 20)
    ob = Outbox(lg)
    for s in range(1, 301):
        lg.append(codec.dumps([s]), ts=s)
    lg.flush()
    procs = [start_gateway()]

    async def run():
        e = await MqttEdge(broker.port).start()

        async def after_publish(batch):
            if batch.first_seq == 141 and len(procs) == 1:
                os.kill(procs[0].pid, signal.SIGKILL)
                procs[0].wait()
                procs.append(start_gateway())

        await until(lambda: subscribed_count() == 1)  # a HELLO before its SUBACK is retried
        await e.sync_outbox(ob, "temp", batch_records=20, ack_timeout_s=1.0, after_publish=after_publish)
        await e.close()

    try:
        asyncio.run(run())
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(10)
        lg.close()
    assert len(procs) == 2 and ob.acked == 300
    gw = Gateway(str(tmp_path / "gw.db"), KEYS)
    try:
        assert stored(gw, "temp") == list(range(1, 301))
    finally:
        gw.store.close()


def test_cli_rejects_a_bad_mqtt_address(tmp_path, capsys):
    from edgeline_host.cli import main

    with pytest.raises(SystemExit) as e:
        main(["gateway", "--keys", str(tmp_path / "keys.yaml"), "--mqtt", "1883"])
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == "edgeline: error: --mqtt must be host:port, got '1883'"
