"""The agent's uplink over MQTT (``cloud_endpoint: mqtt://broker/prefix``): the same
exchange loop as over HTTP (uplink.py), its bytes moved by ``MqttEdgeTransport`` through a
real Mosquitto to the gateway's MQTT transport -- in process, or `edgeline gateway --mqtt` as
a process with the broker SIGKILLed under it."""
import asyncio
import json
import os
import time
import urllib.request

import aiohttp
import paho.mqtt.client as paho
import pytest
from aiohttp.test_utils import TestServer
from paho.mqtt.enums import CallbackAPIVersion

from edgeline import codec, sync
from edgeline.errors import ConfigError
from edgeline.log import RingLog
from edgeline.outbox import Outbox
from edgeline_host.agent.config import CircuitBreaker, RetryPolicy, parse_config
from edgeline_host.agent.service import Agent
from edgeline_host.agent.uplink import Uplink, from_config
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.transports import TransportError
from edgeline_host.transports.mqtt import MqttEdgeTransport, attach_mqtt
from mosquitto import Mosquitto, free_port

NODE = "edge-1"
KEY = bytes(range(32))
WAIT_S = 30  # generous: a timeout here is a failure, never a measurement
FAST_MQTT = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 5, "request_timeout_ms": 2000}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


async def until(cond, timeout_s=WAIT_S, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


class FaceGateway:
    """An in-process gateway with its MQTT transport; can be stopped and started again on
    the same store (a restart: every conversation forgotten)."""

    def __init__(self, db, broker, topics=None):
        self.db = db
        self.broker = broker
        self.topics = topics
        self.gw = self.gateway_mqtt = self.server = None

    async def start(self):
        self.gw = Gateway(self.db, {NODE: KEY}, topics=self.topics)
        app = GatewayApi(self.gw).app()
        self.gateway_mqtt = attach_mqtt(app, self.gw, "127.0.0.1", self.broker.port, print_fn=None,
                                reconnect_min_s=0.1, reconnect_max_s=0.5)
        self.server = TestServer(app)
        await self.server.start_server()
        await asyncio.wait_for(self.gateway_mqtt.subscribed.wait(), WAIT_S)
        return self

    async def stop(self):
        if self.server is not None:
            await self.server.close()
            self.server = None

    def seqs(self, topic):
        return [r["seq"] for r in self.gw.store.records(topic, origin=NODE, limit=10 ** 7)]


def open_topic(tmp_path, name):
    lg = RingLog(str(tmp_path / "logs" / name))
    return lg, Outbox(lg)


def append(lg, first, n):
    for i in range(first, first + n):
        lg.append(codec.dumps({"n": i}), ts=1000 + i)
    lg.flush()


def mqtt_uplink(port, topics, **kw):
    transport = MqttEdgeTransport(NODE, "127.0.0.1", port, kw.pop("prefix", "edgeline"), **FAST_MQTT)
    kw.setdefault("retry", RetryPolicy(initial_ms=20, max_ms=100, multiplier=2.0, jitter=0.2))
    kw.setdefault("breaker", CircuitBreaker(failures=0, open_ms=1000))
    kw.setdefault("interval_ms", 50)
    return Uplink(NODE, KEY, None, topics, transport=transport, **kw)


async def stopped(up, task):
    up.stop()
    await asyncio.wait_for(task, WAIT_S)


# ---------------------------------------------------------------------------- in process


def test_two_topics_exactly_once_in_order_over_mqtt(tmp_path, broker):
    async def main():
        gw = await FaceGateway(str(tmp_path / "gw.db"), broker).start()
        a, b = open_topic(tmp_path, "a"), open_topic(tmp_path, "b")
        append(a[0], 1, 1500)
        append(b[0], 1, 300)
        up = mqtt_uplink(broker.port, {"a": a, "b": b}, batch_records=200)
        assert up.url == "mqtt://127.0.0.1:%d/edgeline" % broker.port
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.pending == 0, what="pending 0")
            assert gw.seqs("a") == list(range(1, 1501)) and gw.seqs("b") == list(range(1, 301))
            st = up.status()
            assert st["failures"] == 0 and st["sessions"] == 1 and st["topics"]["a"]["batches"] >= 8
            assert st["gateway"] == up.url
            append(b[0], 301, 5)
            up.notify()
            await until(lambda: b[1].acked == 305, what="new records")
            assert gw.seqs("b") == list(range(1, 306))
            assert gw.gateway_mqtt.ignored == 0 and gw.gw.rejected == 0
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_a_gateway_restart_is_a_new_session_not_a_failure(tmp_path, broker):
    """The gateway restarts between two rounds: the next BATCH meets no conversation and
    is answered ERROR unexpected; the uplink starts a new one at once, resumes from the
    marks, and counts no failure."""

    async def main():
        gw = await FaceGateway(str(tmp_path / "gw.db"), broker).start()
        a = open_topic(tmp_path, "a")
        append(a[0], 1, 100)
        up = mqtt_uplink(broker.port, {"a": a}, interval_ms=60000)
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.pending == 0)
            await gw.stop()
            await gw.start()
            append(a[0], 101, 50)
            up.notify()
            await until(lambda: up.pending == 0, what="the records after the restart")
            assert gw.seqs("a") == list(range(1, 151))
            st = up.status()
            assert st["sessions"] == 2 and st["total_failures"] == 0
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_cloud_to_edge_records_come_down_over_mqtt(tmp_path, broker):
    """The downlink rides the same transport: records published at the gateway reach
    the agent's cloud log once each, in order, while its own records go up."""
    from edgeline_host.gateway.topics import parse_topics

    topics = parse_topics({"setpoints": "cloud_to_edge"}, {NODE: KEY})
    cfg = parse_config({"edge": {
        "node_id": NODE, "key": KEY.hex(), "data_dir": str(tmp_path / "data"),
        "cloud_endpoint": "mqtt://127.0.0.1:%d" % broker.port,
        "sync": {"interval_secs": 1, "batch_size": 40, "retry": {"initial_ms": 50, "max_ms": 300},
                 "circuit_breaker": {"failures": 0}},
        "sync_topics": [{"topic": "telemetry", "direction": "edge_to_cloud", "group_ms": 20},
                        {"topic": "setpoints", "direction": "cloud_to_edge"}],
        "ingest": {"http": {"listen": "127.0.0.1:0"}},  # any free port: none chosen ahead to race for
    }}, base_dir=str(tmp_path))

    async def main():
        gw = await FaceGateway(str(tmp_path / "gw.db"), broker, topics=topics).start()
        agent = Agent(cfg, print_fn=lambda *_: None, uplink_options={"mqtt_options": dict(FAST_MQTT)})
        task = asyncio.ensure_future(agent.run(install_signals=False))
        try:
            await gw.gw.publish("setpoints", [codec.dumps({"n": i}) for i in range(1, 101)])
            agent.append(agent.topics["telemetry"], [None] * 10, [codec.dumps(i) for i in range(10)])
            await until(lambda: agent.queue()["topics"]["setpoints"]["received_seq"] == 100, what="the downlink")
            await until(lambda: agent.uplink is not None and agent.uplink.pending == 0, what="the uplink")
            down = agent.topics["setpoints"].down
            assert [(r.seq, codec.loads(r.value)) for r in down.read(1, 1000, 1 << 20)] == \
                [(i, {"n": i}) for i in range(1, 101)]
            assert gw.seqs("telemetry") == list(range(1, 11))
            assert agent.uplink.status()["total_failures"] == 0
        finally:
            agent.stop()
            await asyncio.wait_for(task, WAIT_S)
            await gw.stop()

    asyncio.run(main())


def test_transport_skips_stale_answers_until_challenge(broker):
    """A scripted gateway: HELLO is answered with an ACK left over from an older
    conversation, then the CHALLENGE. The transport skips the ACK; the next exchange
    gets its answer as it comes; no answer at all is one TransportError line."""

    async def main():
        conn = sync.EdgeConnection(NODE, KEY, os.urandom)
        hello = conn.send(sync.Hello())
        stale = codec.dumps([sync.Ack.TYPE, "a", 7])
        challenge = codec.dumps([sync.Challenge.TYPE, b"\x01" * 16])
        script = {sync.Hello.TYPE: [stale, challenge], sync.Auth.TYPE: [stale]}

        gw = paho.Client(CallbackAPIVersion.VERSION2, client_id="scripted-gateway")

        def on_message(client, _u, msg):
            for answer in script.get(codec.decode_prefix(msg.payload)[0][0], []):
                client.publish("edgeline/%s/down" % NODE, answer, qos=1)

        gw.on_message = on_message
        gw.connect("127.0.0.1", broker.port)
        gw.subscribe("edgeline/+/up", qos=1)
        gw.loop_start()
        t = MqttEdgeTransport(NODE, "127.0.0.1", broker.port, **FAST_MQTT)
        await t.start()
        try:
            await asyncio.sleep(0.3)  # the scripted gateway's SUBACK
            t.new_session()
            assert await t.exchange(hello) == challenge and t.stale == 1
            auth = codec.dumps([sync.Auth.TYPE, b"\x00" * 32])
            assert await t.exchange(auth) == stale  # past the CHALLENGE nothing is skipped
            with pytest.raises(TransportError, match="no answer on edgeline/edge-1/down within 2000 ms"):
                await t.exchange(codec.dumps([sync.Gap.TYPE, "a", 1, 2, "x"]))
            assert t.lost_session(sync.ERR_UNEXPECTED) and not t.lost_session(sync.ERR_BAD_PROOF)
        finally:
            await t.close()
            gw.disconnect()
            gw.loop_stop()

    asyncio.run(main())


def test_no_broker_is_one_line_and_the_uplink_backs_off(tmp_path):
    async def main():
        a = open_topic(tmp_path, "a")
        append(a[0], 1, 3)
        port = free_port()
        up = mqtt_uplink(port, {"a": a})
        up.transport.request_timeout_ms = 300
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.total_failures >= 2, what="failures")
            st = up.status()
            assert st["last_error"].startswith("not connected to the MQTT broker 127.0.0.1:%d" % port)
            assert "\n" not in st["last_error"] and a[1].acked == 0
        finally:
            await stopped(up, task)

    asyncio.run(main())


def test_from_config_mqtt_and_mqtts_refused(tmp_path):
    cfg = parse_config({"edge": {
        "node_id": NODE, "key": KEY.hex(), "cloud_endpoint": "mqtt://broker.example:1884/acme/edgeline",
        "sync_topics": [{"topic": "t", "direction": "edge_to_cloud"}],
    }}, base_dir=str(tmp_path))
    lg, ob = open_topic(tmp_path, "t")
    up = from_config(cfg, {"t": (lg, ob)})
    t = up.transport
    assert isinstance(t, MqttEdgeTransport) and up.url == "mqtt://broker.example:1884/acme/edgeline"
    assert (t.host, t.port, t.up, t.down) == ("broker.example", 1884, "acme/edgeline/edge-1/up",
                                              "acme/edgeline/edge-1/down")
    assert t.request_timeout_ms == 10000

    tls = parse_config({"edge": {
        "node_id": NODE, "key": KEY.hex(), "cloud_endpoint": "mqtts://broker.example", "data_dir": str(tmp_path / "d"),
        "sync_topics": [{"topic": "t", "direction": "edge_to_cloud"}],
    }}, base_dir=str(tmp_path))
    with pytest.raises(ConfigError) as e:
        Agent(tls)
    assert "mqtts://" in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "d")  # refused before anything was opened


# ---------------------------------------------------------------------------- the whole path, the broker SIGKILLed


def test_agent_to_gateway_process_through_a_broker_killed_twice(tmp_path, broker):
    """An agent (ingest over HTTP, uplink over MQTT) and `edgeline gateway --mqtt` as a
    process. While a producer posts records, the broker is SIGKILLed and restarted on
    the same port, twice. Every record the agent acknowledged at ingest is at the
    gateway exactly once, in order (read back through its /v1/records API)."""
    import signal
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))
    keys = tmp_path / "keys.yaml"
    keys.write_text("%s: %s\n" % (NODE, KEY.hex()))
    gw_port = free_port()
    gw_log = tmp_path / "gateway.log"
    with open(gw_log, "wb") as out:
        gw = subprocess.Popen([sys.executable, "-m", "edgeline_host.cli", "gateway", "--keys", str(keys),
                               "--db", str(tmp_path / "gw.db"), "--listen", "127.0.0.1:%d" % gw_port,
                               "--mqtt", "127.0.0.1:%d" % broker.port],
                              env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def gw_get(path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (gw_port, path), timeout=10) as r:
            return json.loads(r.read())

    def gw_records(topic):
        return gw_get("/v1/records?topic=%s&origin=%s&limit=100000" % (topic, NODE))["records"]

    ingest_port = free_port()
    cfg = parse_config({"edge": {
        "node_id": NODE, "key": KEY.hex(), "data_dir": str(tmp_path / "data"),
        "cloud_endpoint": "mqtt://127.0.0.1:%d" % broker.port,
        "sync": {"interval_secs": 1, "retry": {"initial_ms": 50, "max_ms": 300}, "circuit_breaker": {"failures": 0}},
        "sync_topics": [{"topic": "telemetry", "direction": "edge_to_cloud", "group_ms": 20},
                        {"topic": "alarms", "direction": "edge_to_cloud", "sync": "every"}],
        "ingest": {"http": {"listen": "127.0.0.1:%d" % ingest_port}},
    }}, base_dir=str(tmp_path))
    acked = {"telemetry": [], "alarms": []}

    async def main():
        deadline = time.monotonic() + WAIT_S
        while "connected" not in (gw_log.read_text() if gw_log.exists() else ""):
            assert gw.poll() is None and time.monotonic() < deadline, gw_log.read_text()
            await asyncio.sleep(0.05)
        agent = Agent(cfg, print_fn=lambda *_: None,
                      uplink_options={"mqtt_options": dict(FAST_MQTT)})
        task = asyncio.ensure_future(agent.run(install_signals=False))
        stop = asyncio.Event()

        async def produce(topic):
            n = 0
            async with aiohttp.ClientSession() as http:
                while not stop.is_set():
                    body = [{"topic": topic, "n": n + i} for i in range(5)]
                    try:
                        async with http.post("http://127.0.0.1:%d/v1/topics/%s/records" % (ingest_port, topic),
                                             json=body) as r:
                            a = await r.json()
                    except aiohttp.ClientConnectionError:  # not listening yet: nothing was stored
                        await asyncio.sleep(0.05)
                        continue
                    if r.status == 200 and a["durable"]:
                        acked[topic].extend(range(n, n + 5))
                    n += 5
                    await asyncio.sleep(0.002)

        producers = [asyncio.ensure_future(produce(t)) for t in acked]
        try:
            await until(lambda: agent.uplink is not None and agent.uplink.status()["sessions"] >= 1, what="a session")
            for kill in range(2):
                stored_before = agent.uplink.status()["topics"]["telemetry"]["acked"]
                await until(lambda: agent.uplink.status()["topics"]["telemetry"]["acked"] > stored_before + 100,
                            what="records flowing before kill %d" % (kill + 1))
                await asyncio.to_thread(broker.kill)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(broker.start)
                sessions = agent.uplink.status()["sessions"]
                await until(lambda: agent.uplink.status()["sessions"] > sessions, what="a new session")
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*producers)
            await until(lambda: agent.uplink.pending == 0, what="the queue to drain")
            st = agent.uplink.status()
            assert st["sessions"] >= 3 and st["total_failures"] >= 2  # each kill broke a conversation
        finally:
            stop.set()
            await asyncio.gather(*producers, return_exceptions=True)
            agent.stop()
            await asyncio.wait_for(task, WAIT_S)

    try:
        asyncio.run(main())
        for topic, ns in acked.items():
            recs = gw_records(topic)
            assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))  # each seq once, none missing
            got = [r["value"]["n"] for r in recs]
            assert got == list(range(len(got)))  # each record once, in order
            assert set(ns) <= set(got) and len(ns) > 100
    finally:
        os.kill(gw.pid, signal.SIGTERM)
        gw.wait(15)
