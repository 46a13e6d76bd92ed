"""MQTT ingest at the edge agent: a real Mosquitto (tests/support/mosquitto.py), the agent
in-process (or as a process, SIGKILLed), publishers on paho clients.

What is checked: routing (first matching filter wins; no map: the MQTT topic is the
topic's name), payload -> record value, refusals counted and acknowledged, QoS 1
acknowledged only once the record is durable (also when the broker's window fills),
backpressure that holds a message unacknowledged until there is room, a persistent
session that keeps what is published while the agent is away, and -- the point of it
all -- every message the broker accepted from a publisher is in the agent's log after a
SIGKILL of the agent.
"""
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as paho
import pytest
from aiohttp.test_utils import TestServer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeline import codec
from edgeline.log import RingLog
from edgeline_host.agent.config import parse_config
from edgeline_host.agent.mqtt_ingest import STATE_FILE, subscriptions
from edgeline_host.agent.service import Agent
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.jsonrecords import RequestError, record_from_payload
from edgeline_host.transports.mqtt import filter_covers
from mosquitto import Mosquitto, free_port

NODE = "edge-1"
KEY = bytes(range(32))
WAIT_S = 15  # generous: a timeout here is a failure, never a measurement
FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 5}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path / "mosquitto", extra_conf=["max_queued_messages 100000"]) as b:
        yield b


def config(tmp_path, broker, ingest_mqtt, topics=None, edge=None):
    """An EdgeConfig: data in tmp_path/data, HTTP ingest on a free port, ``ingest_mqtt``
    (the mapping under ingest.mqtt) against ``broker``."""
    mq = dict(ingest_mqtt)
    mq.setdefault("broker", "127.0.0.1:%d" % broker.port)
    e = {
        "node_id": NODE,
        "data_dir": str(tmp_path / "data"),
        "sync": {"enabled": False},
        "local_topics": topics or [],
        "ingest": {"http": {"listen": "127.0.0.1:%d" % free_port()}, "mqtt": mq},
    }
    e.update(edge or {})
    return parse_config({"edge": e}, base_dir=str(tmp_path))


async def until(cond, timeout_s=WAIT_S, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


async def with_agent(cfg, fn, **mqtt_options):
    """Run an Agent for cfg until fn(agent) returns (then a clean stop)."""
    agent = Agent(cfg, print_fn=lambda *_: None, mqtt_options=dict(FAST, **mqtt_options))
    task = asyncio.ensure_future(agent.run(install_signals=False))
    try:
        await until(lambda: agent.mqtt is not None and agent.mqtt.subscribed.is_set() or task.done(),
                    what="the MQTT subscription")
        if task.done():
            task.result()
        return await fn(agent)
    finally:
        agent.stop()
        await asyncio.wait_for(task, WAIT_S)


class Publisher:
    """A paho client publishing from the test. ``acked()``: the payloads the broker
    acknowledged (PUBACK), in publishing order."""

    def __init__(self, port, client_id=None):
        self.sent = []  # (payload, MQTTMessageInfo) of QoS 1 publishes
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "pub-%d" % os.getpid())
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            self.sent.append((payload, info))
        return info

    def acked(self):
        return [p for p, info in list(self.sent) if info.is_published()]

    def wait(self, info):
        info.wait_for_publish(WAIT_S)
        assert info.is_published()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def values(agent_or_log, topic=None):
    lg = agent_or_log.topics[topic].log if topic is not None else agent_or_log
    return [(None if r.key is None else r.key.decode(), codec.loads(r.value)) for r in lg.read(1, 1 << 20, 1 << 30)]


# ---------------------------------------------------------------------------- payloads


def test_record_from_payload_json_values_keys_and_bytes():
    assert record_from_payload(b'{"t": 21.5}') == (None, codec.dumps({"t": 21.5}))
    assert record_from_payload(b"[1, 2]") == (None, codec.dumps([1, 2]))  # one message, one record
    assert record_from_payload(b"21.5") == (None, codec.dumps(21.5))
    assert record_from_payload(b'"on"') == (None, codec.dumps("on"))
    assert record_from_payload(b'{"key": "door", "value": "open"}') == (b"door", codec.dumps("open"))
    assert record_from_payload(b'{"key": null, "value": 1}') == (None, codec.dumps(1))
    assert record_from_payload(b'{"key": "k", "value": 1, "x": 2}')[0] is None  # more than key and value: kept whole
    for raw in (b"on", b"", b"\xff\xfe\x00", b"{bad", "é".encode("latin-1"), b"[" * 100000):
        assert record_from_payload(raw) == (None, codec.dumps(raw))
    for bad in (b'{"key": 5, "value": 1}', b'{"key": "\\ud800", "value": 1}', b'"\\ud800"'):
        with pytest.raises(RequestError) as e:
            record_from_payload(bad)
        assert e.value.status == 400 and "\n" not in str(e.value)


def test_an_owed_acknowledgement_is_bound_to_the_log_its_record_went_to():
    """``owed_state``: a seq means something only in the log it was given by. After a
    write error the log is replaced (Agent.recover) and seqs start again where the
    reopened log ends, so a lost record's seq can become durable as another record:
    an entry of a failed or replaced log above that log's durable_seq is LOST."""
    from types import SimpleNamespace as NS

    from edgeline_host.agent.mqtt_ingest import LOST, SETTLED, WAITING, owed_state

    old = NS(durable_seq=3, failure=None, sync="group")
    st = NS(log=old)
    assert [owed_state(st, old, s) for s in (3, 4)] == [SETTLED, WAITING]
    assert owed_state(None, None, 9) == SETTLED  # refused or dropped: nothing to wait for
    old.failure = "ENOSPC"
    assert [owed_state(st, old, s) for s in (3, 4)] == [SETTLED, LOST]
    st.log = NS(durable_seq=9, failure=None, sync="group")  # reopened; seq 4 is durable there: another record
    assert [owed_state(st, old, s) for s in (3, 4)] == [SETTLED, LOST]
    assert owed_state(st, st.log, 4) == SETTLED
    lazy = NS(durable_seq=0, failure=None, sync="none")  # the topic does not wait for the disk
    assert owed_state(NS(log=lazy), lazy, 1) == SETTLED


def test_overlapping_filters_are_subscribed_once():
    assert subscriptions(["a/+/t", "a/#", "a/b/t", "b", "c/+", "c/d", "a/#"]) == ["a/#", "b", "c/+"]
    assert subscriptions(["#", "$SYS/#", "x"]) == ["#", "$SYS/#"]  # '#' does not match $ topics
    assert subscriptions(["+/x", "$a/x", "a/+"]) == ["+/x", "$a/x", "a/+"]
    assert filter_covers("a/+", "a/+") and filter_covers("a/#", "a") and not filter_covers("a/+", "a/#")
    assert not filter_covers("a/b", "a/+") and not filter_covers("a/+/c", "a/b")


# ---------------------------------------------------------------------------- in-process


def test_routing_values_and_refusals(tmp_path, broker):
    cfg = config(tmp_path, broker, {
        "topics": ["sensors/#", "other/#", "sensors/+/temp"],  # overlapping: subscribed once
        "map": {"sensors/+/temp": "temp", "sensors/#": "raw", "sensors/a/temp": "raw"},
    }, topics=["temp", "raw", {"topic": "tiny", "segment_size": "1KiB"}])
    pub = Publisher(broker.port)
    # retained before the agent subscribed: old news, not ingested
    pub.wait(pub.publish("sensors/a/temp", b"-40", retain=True))

    async def fn(agent):
        sent = [
            ("sensors/a/temp", b'{"t": 21.5}', 1),  # the first matching filter wins: temp, not raw
            ("sensors/b/temp", b"\xff\x00binary", 1),
            ("sensors/b/door", b'{"key": "door", "value": "open"}', 1),
            ("sensors/c/hum", b"55", 0),  # QoS 0 is stored too
            ("other/x", b"1", 1),  # subscribed, but no map entry: refused
            ("sensors/b/temp", b'{"key": 5, "value": 1}', 1),  # a bad key: refused
            ("sensors/b/door", b'{"t": NaN}', 1),  # no API could give NaN back as JSON: refused
            ("sensors/b/door", b'"' + b"x" * 70000 + b'"', 1),  # over a segment: refused
            ("sensors/z/temp", b'{"t": 22}', 1),
        ]
        for topic, payload, qos in sent:
            pub.wait(pub.publish(topic, payload, qos=qos))
        await until(lambda: agent.mqtt.received == len(sent), what="every message")
        await until(lambda: agent.mqtt.stats()["unacknowledged"] == 0, what="the acknowledgements")
        assert values(agent, "temp") == [(None, {"t": 21.5}), (None, b"\xff\x00binary"), (None, {"t": 22})]
        assert values(agent, "raw") == [("door", "open"), (None, 55)]
        s = agent.health()["mqtt"]
        assert (s["received"], s["stored"], s["refused"], s["dropped"]) == (9, 5, 4, 0)
        assert s["refusals"] == {"unmapped": 1, "bad_value": 2, "too_large": 1}
        assert "too_large" in s["refusals"] and "does not fit in a segment" in s["last_refusal"]
        assert s["connected"] and s["subscribed"] and s["topics"] == ["sensors/#", "other/#"]
        assert agent.health()["ingested"] == 5
        # the HTTP ingest shares the logs: its record follows the MQTT ones
        st = agent.topics["temp"]
        first, n = agent.append(st, [None], [codec.dumps("http")])
        assert (first, n) == (4, 1)

    asyncio.run(with_agent(cfg, fn))
    pub.close()


def test_without_a_map_the_mqtt_topic_is_the_topic(tmp_path, broker):
    cfg = config(tmp_path, broker, {}, topics=["telemetry", "a/b"], edge={
        "key": KEY.hex(), "cloud_endpoint": "http://127.0.0.1:%d" % free_port(), "sync": {"enabled": True},
        "sync_topics": [{"topic": "setpoints", "direction": "cloud_to_edge"}]})
    assert cfg.ingest.mqtt.topics == ("#",)
    pub = Publisher(broker.port)

    async def fn(agent):
        for topic in ("telemetry", "a/b", "nope", "setpoints", "telemetry"):
            pub.wait(pub.publish(topic, b'{"on": "%s"}' % topic.encode()))
        await until(lambda: agent.mqtt.received == 5 and not agent.mqtt.stats()["unacknowledged"])
        assert values(agent, "telemetry") == [(None, {"on": "telemetry"})] * 2
        assert values(agent, "a/b") == [(None, {"on": "a/b"})]
        assert agent.topics["setpoints"].log.last_seq == 0
        s = agent.mqtt.stats()
        assert s["refusals"] == {"unknown_topic": 1, "cloud_to_edge": 1}

    asyncio.run(with_agent(cfg, fn))
    pub.close()


def test_qos1_is_acknowledged_only_once_durable(tmp_path, broker, monkeypatch):
    """An fsync that does not return (the commit starts at once: the acknowledgements
    wait for it): the records wait for their commit, and so do the PUBACKs -- as
    the broker sees it: a client that takes the agent's session over (same client id)
    is sent all five again. The agent reconnects, gets them again (DUP, same packet ids),
    finds each in the dedupe window -- its record appended, not yet durable -- and stores
    none twice; it owes nothing on the dead connection, and a commit acknowledges them
    all."""
    from edgeline import fastpath
    from edgeline_host.agent import service

    gate = threading.Event()

    def gated_sync(token):
        gate.wait(30)
        fastpath.sync_commit(token)

    monkeypatch.setattr(service, "sync_commit", gated_sync)
    cfg = config(tmp_path, broker, {"map": {"m/#": "slow"}},
                 topics=[{"topic": "slow", "group_ms": "1h", "group_records": 1000000}])
    pub = Publisher(broker.port)

    async def fn(agent):
        try:
            await qos1_fn(agent)
        finally:
            gate.set()

    async def qos1_fn(agent):
        st = agent.topics["slow"]
        for i in range(5):
            pub.wait(pub.publish("m/x", b"%d" % i))
        await until(lambda: agent.mqtt.stored == 5)
        assert st.log.durable_seq == 0 and agent.mqtt.stats()["unacknowledged"] == 5

        resent = []
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        spy = paho.Client(CallbackAPIVersion.VERSION2, client_id=agent.mqtt.client_id, protocol=paho.MQTTv5,
                          manual_ack=True)
        spy.on_message = lambda _c, _u, m: resent.append((m.payload, m.dup))
        spy.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        spy.loop_start()
        try:
            await until(lambda: len(resent) == 5, what="the broker to resend what the agent has not acknowledged")
        finally:
            spy.disconnect()
            await asyncio.to_thread(spy.loop_stop)
        assert resent == [(b"%d" % i, True) for i in range(5)]

        await until(lambda: agent.mqtt.redeliveries_dropped == 5, what="the agent to get them again")
        s = agent.mqtt.stats()
        assert (s["redelivered"], s["acks_lost"], s["unacknowledged"], s["stored"]) == (5, 5, 5, 5)
        gate.set()
        agent.commit_now(st)
        await until(lambda: agent.mqtt.stats()["unacknowledged"] == 0, what="acknowledgements after the commit")
        assert [v for _, v in values(agent, "slow")] == [0, 1, 2, 3, 4]

    asyncio.run(with_agent(cfg, fn, reconnect_min_s=1, reconnect_max_s=1))
    pub.close()


def test_a_full_window_commits_at_once(tmp_path, broker):
    """With group_ms an hour, only the full in-flight window can make the agent commit:
    the broker sends nothing more until it gets acknowledgements."""
    cfg = config(tmp_path, broker, {"map": {"m/#": "slow"}},
                 topics=[{"topic": "slow", "group_ms": "1h", "group_records": 1000000}])
    pub = Publisher(broker.port)

    async def fn(agent):
        for i in range(40):
            pub.publish("m/x", b"%d" % i)
        await until(lambda: agent.mqtt.stored == 40, what="40 messages through a window of 4")
        assert [v for _, v in values(agent, "slow")] == list(range(40))
        # Commits run in a worker thread now: the last ones may still be in flight when the
        # 40th is stored; all 40 become durable well before an hour's group_ms would pass.
        await until(lambda: agent.topics["slow"].log.durable_seq == 40, what="the commits of a full window")
        await until(lambda: agent.mqtt.stats()["unacknowledged"] == 0, what="the acknowledgements")

    asyncio.run(with_agent(cfg, fn, window=4))
    pub.close()


def test_backpressure_holds_messages_until_there_is_room(tmp_path, broker):
    """sync.max_queue_size reached while the gateway is away: the next message is held,
    unacknowledged, and stored once the uplink has made room; nothing is refused."""
    gw_port = free_port()
    cfg = config(tmp_path, broker, {"map": {"m/#": "telemetry"}}, edge={
        "key": KEY.hex(), "cloud_endpoint": "http://127.0.0.1:%d" % gw_port,
        "sync": {"enabled": True, "interval_secs": 1, "max_queue_size": 5,
                 "retry": {"initial_ms": 50, "max_ms": 200}, "circuit_breaker": {"failures": 0}},
        "sync_topics": [{"topic": "telemetry", "direction": "edge_to_cloud", "group_ms": 20}]})
    pub = Publisher(broker.port)

    async def fn(agent):
        for i in range(8):
            pub.wait(pub.publish("m/x", b"%d" % i))
        await until(lambda: agent.mqtt.received == 8 and agent.mqtt.held is not None, what="a held message")
        s = agent.mqtt.stats()
        assert (s["stored"], s["waiting"], s["refused"]) == (5, 3, 0)
        assert "sync.max_queue_size" in s["held"]
        gw = Gateway(str(tmp_path / "gw.db"), {NODE: KEY})
        server = TestServer(GatewayApi(gw).app(), port=gw_port)
        await server.start_server()
        try:
            await until(lambda: agent.mqtt.stored == 8 and not agent.mqtt.stats()["unacknowledged"],
                        what="the held messages stored")
            await until(lambda: len(gw.store.records("telemetry", origin=NODE)) == 8, what="the gateway")
            rows = gw.store.records("telemetry", origin=NODE)
            assert [codec.loads(r["value"]) for r in rows] == list(range(8))
            assert agent.mqtt.held is None and agent.mqtt.refused == 0
        finally:
            await server.close()

    asyncio.run(with_agent(cfg, fn))
    pub.close()


def test_persistent_session_keeps_what_is_published_while_away(tmp_path, broker):
    """Stopped cleanly, the agent has acknowledged everything it stored (no resend
    after the restart); what was published meanwhile is waiting at the broker for it.
    A filter dropped from the config is unsubscribed from the old session."""
    cfg = config(tmp_path, broker, {"map": {"m/#": "t", "old/#": "t"}}, topics=["t"])
    pub = Publisher(broker.port)

    async def first(agent):
        for i in range(10):
            pub.wait(pub.publish("m/x", b"%d" % i))
        await until(lambda: agent.mqtt.stored == 10)

    asyncio.run(with_agent(cfg, first))
    state = json.loads((tmp_path / "data" / STATE_FILE).read_text())
    assert state["filters"] == ["m/#", "old/#"]
    for i in range(10, 30):
        pub.wait(pub.publish("m/x", b"%d" % i))
    pub.wait(pub.publish("old/x", b"-1"))  # queued in the old session, under a filter now gone

    cfg2 = config(tmp_path, broker, {"map": {"m/#": "t"}}, topics=["t"])

    async def second(agent):
        await until(lambda: agent.mqtt.received >= 21, what="the messages published while away")
        await until(lambda: not agent.mqtt.stats()["unacknowledged"])
        s = agent.mqtt.stats()
        assert s["redelivered"] == 0 and s["sessions_lost"] == 0
        assert s["refusals"] == {"unmapped": 1}  # old/x: still queued, then refused
        pub.wait(pub.publish("old/y", b"-2"))  # not subscribed any more: never arrives
        pub.wait(pub.publish("m/x", b"30"))
        await until(lambda: agent.mqtt.stored == 21)
        assert agent.mqtt.received == 22
        assert [v for _, v in values(agent, "t")] == list(range(31))

    asyncio.run(with_agent(cfg2, second))
    assert json.loads((tmp_path / "data" / STATE_FILE).read_text())["filters"] == ["m/#"]
    pub.close()


def test_a_redelivery_of_a_committed_message_is_acknowledged_not_stored(tmp_path, broker):
    """Committed, but the PUBACKs never reach the broker (the agent's acknowledgements are
    swallowed, as a SIGKILL right after the commit would): after the restart the broker
    resends all of them (DUP, same packet ids); each is found in the topic's dedupe window,
    acknowledged and not stored again -- ``redeliveries_dropped`` says exactly how many.
    Then a new message that reuses a packet id with the same payload is stored: the
    window forgot the old one when the id was reused."""
    cfg = config(tmp_path, broker, {"map": {"m/#": "t"}}, topics=[{"topic": "t", "group_ms": 20}])
    pub = Publisher(broker.port)
    n = 25

    async def first(agent):
        client = agent.mqtt._bridge.client
        client.ack = lambda mid, qos: paho.MQTT_ERR_SUCCESS  # the PUBACKs are lost
        for i in range(n):
            pub.wait(pub.publish("m/x", b"%d" % (i % 5)))  # payloads repeat: the packet id tells them apart
        await until(lambda: agent.mqtt.stored == n and agent.topics["t"].log.durable_seq == n)

    asyncio.run(with_agent(cfg, first))

    async def second(agent):
        await until(lambda: agent.mqtt.redeliveries_dropped == n, what="the resends")
        await until(lambda: not agent.mqtt.stats()["unacknowledged"])
        s = agent.mqtt.stats()
        assert s["redelivered"] == n and s["stored"] == 0 and agent.topics["t"].log.last_seq == n
        for i in range(n):  # the same payloads again, new messages (the ids are reused)
            pub.wait(pub.publish("m/x", b"%d" % (i % 5)))
        await until(lambda: agent.mqtt.stored == n)
        assert agent.mqtt.redeliveries_dropped == n
        assert [v for _, v in values(agent, "t")] == [i % 5 for i in range(n)] * 2

    asyncio.run(with_agent(cfg, second))
    pub.close()


def test_broker_killed_the_agent_reconnects_and_says_what_was_lost(tmp_path, broker):
    """The broker SIGKILLed (no persistence: it forgets the session and everything it
    held) and started again: the agent reconnects, subscribes again, warns once that
    the session was lost, and goes on storing."""
    cfg = config(tmp_path, broker, {"map": {"m/#": "t"}}, topics=["t"])

    async def fn(agent):
        pub = Publisher(broker.port)
        pub.wait(pub.publish("m/x", b"1"))
        await until(lambda: agent.mqtt.stored == 1)
        pub.close()
        await asyncio.to_thread(broker.kill)
        await until(lambda: not agent.mqtt.connected, what="the disconnect")
        await asyncio.to_thread(broker.start)
        await until(lambda: agent.mqtt.subscribed.is_set(), what="the new subscription")
        pub = Publisher(broker.port)
        pub.wait(pub.publish("m/x", b"2"))
        await until(lambda: agent.mqtt.stored == 2)
        s = agent.mqtt.stats()
        assert s["connects"] == 2 and s["sessions_lost"] == 1 and "had no session" in s["last_error"]
        pub.close()

    asyncio.run(with_agent(cfg, fn))


def test_a_message_lost_to_a_write_error_is_resent_by_the_broker(tmp_path, broker, monkeypatch):
    """The commit of message 1 fails on a write (ENOSPC: nothing of it reaches the disk).
    Message 2 then reopens the log and gets the seq message 1 had: message 1 must not be
    acknowledged when that seq is durable (it names another record) -- the agent breaks
    the connection instead, and the broker resends it. Each dedupe entry names a seq of
    the reopened log (the log is reopened before the entry is written)."""
    import edgeline.storage as storage
    from edgeline_host.agent.idempotency import DIRECTORY

    armed = []
    real = storage._File.write

    def write(handle, buf, n):  # writes to log files fail while armed (the windows' are spared)
        if armed and os.sep + DIRECTORY + os.sep not in str(getattr(handle._f, "name", "")):
            raise OSError(28, "No space left on device")
        return real(handle, buf, n)

    monkeypatch.setattr(storage._File, "write", write)
    cfg = config(tmp_path, broker, {"map": {"m/#": "t"}},
                 topics=[{"topic": "t", "group_ms": 60000, "group_records": 10000}])
    pub = Publisher(broker.port)

    async def fn(agent):
        st = agent.topics["t"]
        armed.append(1)
        pub.wait(pub.publish("m/x", b"1"))
        await until(lambda: st.log.failure is not None, what="the failed commit")
        armed.pop()  # room on the disk again
        pub.wait(pub.publish("m/x", b"2"))
        await until(lambda: sorted(v for _, v in values(agent, "t")) == [1, 2], what="both messages stored")
        await until(lambda: not agent.mqtt.stats()["unacknowledged"] and agent.mqtt.connected)
        s = agent.mqtt.stats()
        assert s["connects"] == 2 and agent.recovered == 1 and st.log.durable_seq == 2, s
        assert sorted(e[0] for e in st.window._entries.values()) == [1, 2]

    asyncio.run(with_agent(cfg, fn))
    pub.close()


# ---------------------------------------------------------------------------- a real process, SIGKILLed


ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))
ENV.pop("EDGELINE_AGENT", None)


def test_sigkill_stores_every_message_the_broker_accepted_exactly_once(tmp_path, broker):
    """`edgeline agent` ingesting from the broker while a publisher publishes at QoS 1
    as fast as the broker takes it; SIGKILL the agent mid-stream (three times), keep
    publishing while it is down, start it again. Every payload the broker acknowledged to
    the publisher is in the log, once: a record committed whose PUBACK the kill cut off
    is resent by the broker, found in the dedupe window and not stored again."""
    port = free_port()
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(
        "edge:\n  node_id: %s\n  data_dir: ./data\n  sync: {enabled: false}\n"
        "  local_topics:\n    - {topic: t, group_ms: 50}\n    - done\n"
        "  ingest:\n    http: {listen: '127.0.0.1:%d'}\n"
        "    mqtt: {broker: '127.0.0.1:%d', map: {'done/#': done, 'm/#': t}}\n"
        "  sync_topics: []\n" % (NODE, port, broker.port))
    url = "http://127.0.0.1:%d" % port
    argv = [sys.executable, "-m", "edgeline_host.cli", "agent", "--config", str(cfg)]
    log_path = tmp_path / "agent.log"

    def start():
        with open(log_path, "ab") as out:
            p = subprocess.Popen(argv, env=ENV, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(p)
        deadline = time.monotonic() + 4 * WAIT_S  # a loaded machine: the broker resends its backlog first
        while True:
            assert p.poll() is None, log_path.read_text()
            try:
                h = health()
                if h["mqtt"] and h["mqtt"]["subscribed"]:
                    return p
            except OSError:
                pass
            assert time.monotonic() < deadline, "the agent did not come up: " + log_path.read_text()
            time.sleep(0.05)

    def get(path):
        with urllib.request.urlopen(url + path, timeout=5) as r:
            return json.loads(r.read())

    def health():
        return get("/v1/health")

    def queue():
        return get("/v1/queue")

    pub = Publisher(broker.port)
    stop = threading.Event()
    published = [0]

    def produce():
        i = 0
        while not stop.is_set():
            info = pub.publish("m/x", b'{"n": %d}' % i)
            i += 1
            published[0] = i
            if i % 50 == 0:
                info.wait_for_publish(WAIT_S)  # keep paho's queue short: this is about the broker's PUBACKs

    procs = []  # every agent process started, ended by its PID whatever happens
    try:
        proc = start()
        producer = threading.Thread(target=produce)
        producer.start()
        try:
            for _ in range(3):
                deadline = time.monotonic() + WAIT_S
                while health()["mqtt"]["stored"] < 1500:
                    assert time.monotonic() < deadline, "the agent stored too little"
                    time.sleep(0.02)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                killed_at = len(pub.acked())
                time.sleep(0.3)  # the publisher goes on: the broker queues for the agent's session
                proc = start()
                time.sleep(0.3)
        finally:
            stop.set()
            producer.join(WAIT_S)
        # let the publisher's last PUBACKs come in, then the agent drain the broker's queue
        deadline = time.monotonic() + WAIT_S
        while len(pub.acked()) < published[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        acked = [json.loads(p)["n"] for p in pub.acked()]
        assert len(acked) > killed_at > 1000
        # A last message behind all the others: once it is stored, so is everything before it
        # (the broker keeps one publisher's order).
        pub.wait(pub.publish("done/x", b"1"))
        deadline = time.monotonic() + 30
        while True:
            h = health()["mqtt"]
            if h["stored"] and queue()["topics"]["done"]["last_seq"] == 1 and h["unacknowledged"] == 0:
                break
            assert time.monotonic() < deadline, "the agent did not catch up: %s" % h
            time.sleep(0.05)
        cli = subprocess.run([sys.executable, "-m", "edgeline_host.cli", "edge", "health", "--agent", url],
                             env=ENV, capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0 and "mqtt ingest 127.0.0.1:%d: connected" % broker.port in cli.stdout, cli.stdout
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        pub.close()

    lg = RingLog(str(tmp_path / "data" / "t"))
    try:
        got = [codec.loads(r.value)["n"] for r in lg.read(1, 1 << 20, 1 << 30)]
    finally:
        lg.close()
    missing = sorted(set(acked) - set(got))
    assert not missing, "%d acknowledged messages lost, first %s" % (len(missing), missing[:10])
    dups = len(got) - len(set(got))
    assert dups == 0, (dups, h)
    print("published %d, acknowledged by the broker %d, in the log %d (%d duplicates; last run: %d marked "
          "resent, %d of them dropped as already stored)"
          % (published[0], len(acked), len(got), dups, h["redelivered"], h["redeliveries_dropped"]))
