"""The agent as an MQTT endpoint (host/edgeline_host/agent/mqtt_endpoint.py): the agent in
process (or as a process, SIGKILLed) on a free port, producers on paho clients (MQTT 3.1.1
and 5), mosquitto_pub, and raw sockets for what a well-behaved client never sends.

What is checked: routing through the bridge's ``map``, QoS 0 and 1, the PUBACK only once
the record is durable, refusals acknowledged with MQTT 5 reason codes, QoS 2 refused
(DISCONNECT 0x9B / closed), SUBSCRIBE refused, logins (``ingest.mqtt.users``), persistent
sessions remembered across a restart, keepalive, and a SIGKILL that loses no
acknowledged message.
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeline import codec
from edgeline.errors import ConfigError
from edgeline.log import RingLog
from edgeline_host.agent import mqtt_packets as mp
from edgeline_host.agent.config import parse_config
from edgeline_host.agent.mqtt_endpoint import STATE_FILE
from edgeline_host.agent.service import Agent
from mosquitto import free_port

NODE = "edge-1"
WAIT_S = 15  # generous: a timeout here is a failure, never a measurement
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(tmp_path, mqtt=None, topics=("t",), port=None):
    mq = {"listen": "127.0.0.1:%d" % (port or free_port()), "map": {"m/#": "t"}}
    mq.update(mqtt or {})
    e = {
        "node_id": NODE,
        "data_dir": str(tmp_path / "data"),
        "sync": {"enabled": False},
        "local_topics": list(topics),
        "ingest": {"http": {"listen": "127.0.0.1:%d" % free_port()}, "mqtt": mq},
    }
    return parse_config({"edge": e}, base_dir=str(tmp_path))


async def until(cond, timeout_s=WAIT_S, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


async def with_agent(cfg, fn):
    agent = Agent(cfg, print_fn=lambda *_: None, mqtt_endpoint_options={"connect_timeout_s": 2})
    task = asyncio.ensure_future(agent.run(install_signals=False))
    try:
        await until(lambda: agent.mqtt_endpoint is not None and agent.mqtt_endpoint.port or task.done(),
                    what="the endpoint")
        if task.done():
            task.result()
        return await fn(agent)
    finally:
        agent.stop()
        await asyncio.wait_for(task, WAIT_S)


def values(agent, topic="t"):
    lg = agent.topics[topic].log
    return [codec.loads(r.value) for r in lg.read(1, 1 << 20, 1 << 30)]


class Client:
    """A paho publisher (``protocol`` 3.1.1 or 5) run by its own thread."""

    def __init__(self, port, protocol=paho.MQTTv311, client_id="pub", clean=True, **connect):
        kw = {"clean_session": clean} if protocol != paho.MQTTv5 else {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kw)
        self.connack = None
        self.client.on_connect = lambda c, u, flags, rc, props: setattr(self, "connack", (flags, rc))
        self.client.max_inflight_messages_set(100)
        if connect.get("username"):
            self.client.username_pw_set(connect.pop("username"), connect.pop("password", None))
        self.client.connect("127.0.0.1", port, **connect)
        self.client.loop_start()

    def publish(self, topic, payload, qos=1):
        return self.client.publish(topic, payload, qos=qos)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def raw(port, version, client_id="raw", keepalive_s=60):
    """A socket that has sent CONNECT and read the CONNACK: (socket, CONNACK bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    s.sendall(mp.encode_connect(version, client_id, True, keepalive_s))
    return s, read_packet(s)


def _recv(s, n):
    d = b""
    while len(d) < n:
        try:
            chunk = s.recv(n - len(d))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        d += chunk
    return d


def read_packet(s):
    """One packet's bytes from a socket (b"" once it is closed)."""
    d = _recv(s, 1)
    if not d:
        return d
    n, shift = 0, 0
    while True:
        b = _recv(s, 1)
        if not b:
            return d
        d += b
        n |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            return d + _recv(s, n)


def test_paho_v311_and_v5_qos0_and_qos1_routed_by_the_map(tmp_path):
    cfg = config(tmp_path, {"map": {"m/#": "t", "n/+": "u"}}, topics=("t", "u"))

    async def fn(agent):
        def produce():
            for proto, cid in ((paho.MQTTv311, "p3"), (paho.MQTTv5, "p5")):
                c = Client(agent.mqtt_endpoint.port, proto, cid)
                infos = [c.publish("m/%d" % i, b'{"n": %d, "p": "%s"}' % (i, cid.encode())) for i in range(50)]
                infos.append(c.publish("n/x", b"7"))
                for info in infos:
                    info.wait_for_publish(WAIT_S)
                    assert info.is_published()
                c.publish("m/q0", b'"zero"', qos=0).wait_for_publish(WAIT_S)
                c.close()

        await asyncio.to_thread(produce)
        await until(lambda: agent.mqtt_endpoint.received == 104, what="every publish")
        await until(lambda: agent.mqtt_endpoint.stored == 104, what="every record")
        got = values(agent)
        assert [v for v in got if v != "zero"] == [{"n": i, "p": p} for p in ("p3", "p5") for i in range(50)]
        assert got.count("zero") == 2 and values(agent, "u") == [7, 7]
        s = agent.health()["mqtt_endpoint"]
        assert (s["acked"], s["refused"], s["connects"], s["redeliveries_dropped"]) == (102, 0, 2, 0)
        assert agent.health()["mqtt"] is None  # listen alone: no bridge
        from click.testing import CliRunner

        from edgeline_host.cli import cli as cli_main

        url = "http://%s" % agent.cfg.ingest.http.listen
        out = await asyncio.to_thread(CliRunner().invoke, cli_main, ["edge", "health", "--agent", url])
        assert "mqtt endpoint 127.0.0.1:%d: 0 connected, received 104, stored 104, acked 102" % (
            agent.mqtt_endpoint.port) in out.output, out.output

    asyncio.run(with_agent(cfg, fn))


def test_puback_only_once_the_record_is_durable(tmp_path, monkeypatch):
    """The fsync of the endpoint's commit held back (group of 10,000 records or 60 s, so
    only that commit can cover the record): nothing is acknowledged while it runs; the
    PUBACK leaves as the commit ends, by itself -- the publisher sends nothing more
    (keepalive 0: no PINGREQ wakes the connection)."""
    from edgeline import fastpath
    from edgeline_host.agent import service

    gate = threading.Event()

    def gated_sync(token):
        gate.wait(30)
        fastpath.sync_commit(token)

    monkeypatch.setattr(service, "sync_commit", gated_sync)
    cfg = config(tmp_path, topics=({"topic": "t", "group_ms": 60000, "group_records": 10000},))

    async def fn(agent):
        try:
            c = Client(agent.mqtt_endpoint.port, paho.MQTTv5, "slow", keepalive=0)
            info = c.publish("m/x", b"1")
            await until(lambda: agent.mqtt_endpoint.stored == 1)
            st = agent.topics["t"]
            await until(lambda: st.commit is not None, what="the endpoint's commit")
            await asyncio.sleep(0.3)
            assert st.log.durable_seq == 0 and not info.is_published() and agent.mqtt_endpoint.acked == 0
            gate.set()
            await until(info.is_published, what="the PUBACK after the commit")
            assert st.log.durable_seq == 1 and agent.mqtt_endpoint.commits == 1
            c.close()
        finally:
            gate.set()

    asyncio.run(with_agent(cfg, fn))


def test_mosquitto_pub_both_versions_and_v5_reason_codes(tmp_path):
    binary = shutil.which("mosquitto_pub")
    if binary is None:
        pytest.skip("mosquitto_pub is missing (apt-get install mosquitto-clients)")
    async def fn(agent):
        port = str(agent.mqtt_endpoint.port)

        def pub(topic, payload, *args):
            argv = [binary, "-p", port, "-t", topic, "-m", payload, "-q", "1"] + list(args)
            return asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=WAIT_S)

        assert (await pub("m/a", '{"v": 1}', "-V", "mqttv311")).returncode == 0
        assert (await pub("m/b", '{"v": 2}', "-V", "mqttv5")).returncode == 0
        r = await pub("x/y", '{"v": 3}', "-V", "mqttv5")  # no filter of the map: refused, with its reason
        assert "Topic Name invalid" in r.stderr and "ingest.mqtt.map" in r.stderr
        r = await pub("m/d", '{"v": 4}', "-V", "mqttv5", "-q", "2")  # the CONNACK said Maximum QoS 1
        assert r.returncode != 0 or "QoS" in r.stderr
        await until(lambda: agent.mqtt_endpoint.stored == 2)
        assert values(agent) == [{"v": 1}, {"v": 2}]
        assert agent.mqtt_endpoint.refusals == {"unmapped": 1}

    cfg = parse_config({"edge": {"node_id": NODE, "data_dir": str(tmp_path / "data"), "sync": {"enabled": False},
                                 "local_topics": ["t"],
                                 "ingest": {"mqtt": {"listen": "127.0.0.1:0", "map": {"m/#": "t"}}}}},
                       base_dir=str(tmp_path))
    asyncio.run(with_agent(cfg, fn))


def test_qos2_and_subscribe_are_refused_cleanly(tmp_path):
    cfg = config(tmp_path)

    async def fn(agent):
        port = agent.mqtt_endpoint.port

        def talk():
            # 3.1.1: SUBSCRIBE answered with a failure (0x80), a QoS 2 PUBLISH closes the connection.
            s, connack = raw(port, 4)
            assert connack == bytes([0x20, 2, 0, 0])
            s.sendall(mp.encode_subscribe(4, 1, [("m/#", 1)]))
            assert read_packet(s) == bytes([0x90, 3, 0, 1, 0x80])
            s.sendall(mp.encode_publish(4, "m/x", b"1", 1, 5) + mp.encode_publish(4, "m/x", b"2", 2, 6))
            assert read_packet(s) == bytes([0x40, 2, 0, 5])  # the QoS 1 one before it is stored and acknowledged
            assert read_packet(s) == b""
            s.close()
            # MQTT 5: the CONNACK says Maximum QoS 1; a QoS 2 PUBLISH gets DISCONNECT 0x9B.
            s, connack = raw(port, 5, "raw5")
            assert connack[3] == 0 and b"\x24\x01" in connack  # Maximum QoS 1
            s.sendall(mp.encode_publish(5, "m/x", b"3", 2, 1))
            assert read_packet(s)[2] == 0x9B  # DISCONNECT: QoS not supported
            assert read_packet(s) == b""
            s.close()

        await asyncio.to_thread(talk)
        await until(lambda: agent.mqtt_endpoint.refusals.get("qos2") == 2, what="both QoS 2 refusals")
        assert values(agent) == [1]

    asyncio.run(with_agent(cfg, fn))



def test_logins_from_ingest_mqtt_users(tmp_path):
    cfg = config(tmp_path, {"users": {"sensor": "s3cret"}})

    async def fn(agent):
        port = agent.mqtt_endpoint.port

        def talk():
            for proto in (paho.MQTTv311, paho.MQTTv5):
                for who in ({"username": "sensor", "password": "wrong"}, {"username": "nobody", "password": "x"}, {}):
                    c = Client(port, proto, "p", **who)
                    deadline = time.monotonic() + WAIT_S
                    while c.connack is None and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert c.connack is not None and str(c.connack[1]) == "Bad user name or password", (proto, who)
                    c.close()
                c = Client(port, proto, "p", username="sensor", password="s3cret")
                info = c.publish("m/x", b"1")
                info.wait_for_publish(WAIT_S)
                assert info.is_published()
                c.close()

        await asyncio.to_thread(talk)
        assert agent.mqtt_endpoint.connects_refused == 6 and values(agent) == [1, 1]

    asyncio.run(with_agent(cfg, fn))


def test_config_listen_users_and_the_bridge(tmp_path):
    cfg = config(tmp_path)
    assert cfg.ingest.mqtt.broker is None and cfg.ingest.mqtt.listen.port > 0
    both = config(tmp_path, {"broker": "127.0.0.1:1999"})
    assert both.ingest.mqtt.broker.port == 1999 and both.ingest.mqtt.listen is not None
    e = {"node_id": NODE, "data_dir": str(tmp_path / "d"), "sync": {"enabled": False}, "local_topics": ["t"]}
    bridge = parse_config({"edge": dict(e, ingest={"mqtt": {"map": {"m/#": "t"}}})}, base_dir=str(tmp_path))
    assert bridge.ingest.mqtt.listen is None and bridge.ingest.mqtt.broker.port == 1883
    for mq, words in (({"users": {"a": "b"}}, "ingest.mqtt.users: only the agent's own endpoint"),
                      ({"listen": "127.0.0.1:1884", "users": {"a": ""}}, "ingest.mqtt.users.a: the password"),
                      ({"listen": "127.0.0.1:1884", "users": ["a"]}, "ingest.mqtt.users: must be a mapping"),
                      ({"listen": "nowhere:x"}, "ingest.mqtt.listen")):
        with pytest.raises(ConfigError) as err:
            parse_config({"edge": dict(e, ingest={"mqtt": mq})}, base_dir=str(tmp_path))
        assert words in str(err.value), str(err.value)


def test_persistent_sessions_are_remembered_across_a_restart(tmp_path):
    """3.1.1 clean session 0 and MQTT 5 clean start 0 with a session expiry: the CONNACK's
    session present flag is set when the client comes back, also to a new agent process
    (the endpoint keeps the client ids in data_dir); a clean session forgets it."""
    port = free_port()
    cfg = config(tmp_path, port=port)

    def connack(version, cid, clean, props=None):
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        s.sendall(mp.encode_connect(version, cid, clean, 60, properties=props))
        got = read_packet(s)
        s.sendall(mp.encode_simple(mp.DISCONNECT))
        s.close()
        return got

    async def first(agent):
        assert (await asyncio.to_thread(connack, 4, "keep3", False))[2] == 0
        assert (await asyncio.to_thread(connack, 5, "keep5", False, {"session_expiry_interval": 600}))[2] == 0
        assert (await asyncio.to_thread(connack, 5, "gone5", False))[2] == 0  # expiry 0: ends at disconnect
        assert (await asyncio.to_thread(connack, 4, "keep3", False))[2] == 1

    async def second(agent):
        assert (await asyncio.to_thread(connack, 4, "keep3", False))[2] == 1
        assert (await asyncio.to_thread(connack, 5, "keep5", False, {"session_expiry_interval": 600}))[2] == 1
        assert (await asyncio.to_thread(connack, 5, "gone5", False))[2] == 0
        assert (await asyncio.to_thread(connack, 4, "keep3", True))[2] == 0  # clean: forgotten
        assert (await asyncio.to_thread(connack, 4, "keep3", False))[2] == 0

    asyncio.run(with_agent(cfg, first))
    assert set(json.loads((tmp_path / "data" / STATE_FILE).read_text())["sessions"]) == {"keep3", "keep5"}
    asyncio.run(with_agent(cfg, second))


def test_an_mqtt5_session_expires_its_interval_after_its_client_went(tmp_path):
    """MQTT 5 Session Expiry Interval, timed by the endpoint's sweep: a session is kept
    while its client is connected and for the interval after it went, then forgotten
    (session present 0, gone from data_dir); 3.1.1's and longer intervals stay."""
    port = free_port()
    cfg = config(tmp_path, port=port)

    def connect(version, cid, props=None):
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        s.sendall(mp.encode_connect(version, cid, False, 60, properties=props))
        return s, read_packet(s)[2]

    def bye(s):
        s.sendall(mp.encode_simple(mp.DISCONNECT))
        s.close()

    async def fn(agent):
        ep = agent.mqtt_endpoint
        one = {"session_expiry_interval": 1}
        s, present = await asyncio.to_thread(connect, 5, "short", one)
        assert present == 0
        for cid, version, props in (("long", 5, {"session_expiry_interval": 600}), ("v311", 4, None)):
            c, _ = await asyncio.to_thread(connect, version, cid, props)
            bye(c)
        await asyncio.sleep(1.5)  # connected all along: not expired
        assert "short" in ep.sessions and ep.stats()["sessions_expired"] == 0
        bye(s)
        s, present = await asyncio.to_thread(connect, 5, "short", one)  # back within the interval
        assert present == 1
        bye(s)
        await until(lambda: ep.stats()["sessions_expired"] == 1, what="the session to expire")
        assert set(json.loads((tmp_path / "data" / STATE_FILE).read_text())["sessions"]) == {"long", "v311"}
        s, present = await asyncio.to_thread(connect, 5, "short", one)
        assert present == 0  # forgotten by the expiry, not by a clean start
        bye(s)
        for cid, version in (("long", 5), ("v311", 4)):
            c, present = await asyncio.to_thread(connect, version, cid,
                                                 {"session_expiry_interval": 600} if version == 5 else None)
            assert present == 1, cid
            bye(c)

    agent = Agent(cfg, print_fn=lambda *_: None,
                  mqtt_endpoint_options={"connect_timeout_s": 2, "session_sweep_s": 0.05})

    async def main():
        task = asyncio.ensure_future(agent.run(install_signals=False))
        try:
            await until(lambda: agent.mqtt_endpoint is not None and agent.mqtt_endpoint.port or task.done(),
                        what="the endpoint")
            if task.done():
                task.result()
            await fn(agent)
        finally:
            agent.stop()
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(main())


def test_keepalive_garbage_and_a_silent_socket_are_closed(tmp_path):
    cfg = config(tmp_path)

    async def fn(agent):
        port = agent.mqtt_endpoint.port

        def talk():
            s, connack = raw(port, 4, "sleepy", keepalive_s=1)  # silent past 1.5 s: closed
            assert connack == bytes([0x20, 2, 0, 0])
            assert read_packet(s) == b""
            s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)  # never sends CONNECT
            assert read_packet(s) == b""
            s, connack = raw(port, 5, "bad")
            s.sendall(bytes([0x30, 3, 0, 5]) + b"a")  # a topic that runs past the packet
            assert read_packet(s)[2] == mp.RC_MALFORMED and read_packet(s) == b""
            s, _ = raw(port, 4, "pinger")
            for b in mp.encode_simple(mp.PINGREQ) + mp.encode_publish(4, "m/x", b"9", 1, 3):  # one byte at a time
                s.sendall(bytes([b]))
            assert read_packet(s) == bytes([0xD0, 0]) and read_packet(s) == bytes([0x40, 2, 0, 3])
            s.close()
            s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)  # MQTT 3.1
            s.sendall(bytes([0x10, 12, 0, 6]) + b"MQIsdp" + bytes([3, 2, 0, 60]))
            assert read_packet(s) == bytes([0x20, 2, 0, 1]) and read_packet(s) == b""

        await asyncio.to_thread(talk)
        s = agent.mqtt_endpoint.stats()
        assert s["protocol_errors"] == 1 and s["connects_refused"] == 1 and values(agent) == [9]

    asyncio.run(with_agent(cfg, fn))


def test_a_resend_of_a_stored_message_is_acknowledged_not_stored_again(tmp_path):
    """A PUBLISH resent with DUP, the same packet id and payload by the same client (its
    PUBACK was lost) is acknowledged and not stored -- also by the next agent process;
    the same packet id without DUP, or with another payload, is a new message."""
    port = free_port()
    cfg = config(tmp_path, port=port)

    def session(steps):
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        s.sendall(mp.encode_connect(4, "dup-client", False, 60))
        assert read_packet(s)[:2] == bytes([0x20, 2])
        for payload, dup in steps:
            s.sendall(mp.encode_publish(4, "m/x", payload, 1, 7, dup=dup))
            assert read_packet(s) == bytes([0x40, 2, 0, 7])
        s.sendall(mp.encode_simple(mp.DISCONNECT))
        s.close()

    async def first(agent):
        await asyncio.to_thread(session, [(b"1", False), (b"1", True), (b"1", True)])
        assert values(agent) == [1]
        assert agent.mqtt_endpoint.redeliveries_dropped == 2 and agent.mqtt_endpoint.redelivered == 2

    async def second(agent):
        await asyncio.to_thread(session, [(b"1", True),  # still known after a restart
                                          (b"2", True),  # DUP, another payload: a new message
                                          (b"2", False),  # packet id used again: a new message
                                          (b"2", True)])
        assert values(agent) == [1, 2, 2]
        s = agent.health()["mqtt_endpoint"]
        assert s["redeliveries_dropped"] == 2 and s["stored"] == 2 and s["acked"] == 4

    asyncio.run(with_agent(cfg, first))
    asyncio.run(with_agent(cfg, second))


ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))
ENV.pop("EDGELINE_AGENT", None)


class Link:
    """edgeline_host.faultlink.FaultLink (200 ms each way) on an event loop of its own thread."""

    def __init__(self, target_port):
        from edgeline_host.faultlink import FaultLink

        self.loop = asyncio.new_event_loop()
        self.link = FaultLink(0, "127.0.0.1", target_port, delay_ms=200)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.link.start())

    def call(self, coro_or_fn):
        if asyncio.iscoroutine(coro_or_fn):
            return asyncio.run_coroutine_threadsafe(coro_or_fn, self.loop).result(WAIT_S)
        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (coro_or_fn(), done.set()))
        done.wait(WAIT_S)

    def close(self):
        self.call(self.link.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.close()


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5])
def test_sigkill_loses_nothing_acknowledged_and_stores_no_resend_twice(tmp_path, protocol):
    """`edgeline agent` with its endpoint, paho publishing at QoS 1 (100 in flight, a
    persistent session) through a link with 200 ms of latency each way; the publisher
    pauses, and once the agent stored everything sent, the link is cut and the agent
    SIGKILLed at once, then started again. The PUBACKs on the link are lost, so paho
    resends (DUP) messages the agent had stored: each is acknowledged and counted in
    redeliveries_dropped, none stored again. Afterwards every payload is in the log
    exactly once."""
    port, http_port = free_port(), free_port()
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(
        "edge:\n  node_id: %s\n  data_dir: ./data\n  sync: {enabled: false}\n"
        "  local_topics:\n    - {topic: t}\n"
        "  ingest:\n    http: {listen: '127.0.0.1:%d'}\n"
        "    mqtt: {listen: '127.0.0.1:%d', map: {'m/#': t}}\n" % (NODE, http_port, port))
    argv = [sys.executable, "-m", "edgeline_host.cli", "agent", "--config", str(cfg)]
    log_path = tmp_path / "agent.log"
    procs = []

    def get(path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (http_port, path), timeout=5) as r:
            return json.loads(r.read())

    def start():
        with open(log_path, "ab") as out:
            p = subprocess.Popen(argv, env=ENV, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(p)
        deadline = time.monotonic() + WAIT_S
        while True:
            assert p.poll() is None, log_path.read_text()
            try:
                if get("/v1/health")["mqtt_endpoint"] is not None:
                    return p
            except OSError:
                pass
            assert time.monotonic() < deadline, "the agent did not come up: " + log_path.read_text()
            time.sleep(0.05)

    kw = {"clean_session": False} if protocol != paho.MQTTv5 else {}
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="killer", protocol=protocol, **kw)
    client.max_inflight_messages_set(100)
    client.reconnect_delay_set(0.05, 0.2)
    sent = []
    acked = set()  # mids paho saw acknowledged (is_published() raises for what was queued while disconnected)
    client.on_publish = lambda _c, _u, mid, _rc, _p: acked.add(mid)
    stop = threading.Event()
    go = threading.Event()
    go.set()
    paused = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            if not go.is_set():
                paused.set()
                go.wait(0.05)
                continue
            paused.clear()
            info = client.publish("m/x", b'{"n": %d}' % i, qos=1)
            sent.append((i, info))
            i += 1
            if i % 100 == 0:
                deadline = time.monotonic() + WAIT_S
                while info.mid not in acked and time.monotonic() < deadline and go.is_set():
                    time.sleep(0.002)  # keep paho's queue short

    link = Link(port)
    try:
        proc = start()
        if protocol == paho.MQTTv5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            client.connect("127.0.0.1", link.link.port, clean_start=False, properties=props)
        else:
            client.connect("127.0.0.1", link.link.port)
        client.loop_start()
        producer = threading.Thread(target=produce)
        producer.start()
        try:
            caught = dropped = 0
            for _ in range(8):  # until two kills caught PUBACKs on the link (the first almost always does)
                if caught >= 2:
                    break
                target = len(sent) + 300
                deadline = time.monotonic() + WAIT_S
                while get("/v1/health")["mqtt_endpoint"]["stored"] < 200 or len(sent) < target:
                    assert time.monotonic() < deadline, "too little stored"
                    time.sleep(0.01)
                go.clear()  # the publisher stops, with up to 100 messages unacknowledged
                assert paused.wait(WAIT_S)
                n = len(sent)
                while get("/v1/queue")["topics"]["t"]["durable_seq"] < n:  # all stored, PUBACKs on their way
                    assert time.monotonic() < deadline + WAIT_S, "the agent did not store everything sent"
                    time.sleep(0.002)
                link.call(link.link.cut)  # the PUBACKs on the link are lost...
                proc.send_signal(signal.SIGKILL)  # ...and the agent dies
                proc.wait(10)
                in_flight = not {info.mid for _, info in sent} <= set(acked)  # paho missed some PUBACKs
                proc = start()
                link.call(link.link.restore)
                deadline = time.monotonic() + 30
                while not {info.mid for _, info in sent} <= set(acked):  # paho resent them and got PUBACKs
                    assert time.monotonic() < deadline, "paho has unacknowledged messages left"
                    time.sleep(0.02)
                s = get("/v1/health")["mqtt_endpoint"]
                assert s["redelivered"] >= s["redeliveries_dropped"] and (s["redeliveries_dropped"] > 0) == in_flight, \
                    json.dumps(s)
                dropped += s["redeliveries_dropped"]
                caught += in_flight
                go.set()
            assert caught and dropped, "no kill caught a PUBACK on the link (200 ms of latency): nothing was resent"
        finally:
            stop.set()
            producer.join(WAIT_S)
        deadline = time.monotonic() + 30
        while not {info.mid for _, info in sent} <= set(acked):
            assert time.monotonic() < deadline, "paho has unacknowledged messages left"
            time.sleep(0.05)
        client.disconnect()
        client.loop_stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(WAIT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        link.close()
    lg = RingLog(str(tmp_path / "data" / "t"))
    try:
        got = [codec.loads(r.value)["n"] for r in lg.read(1, 1 << 20, 1 << 30)]
    finally:
        lg.close()
    assert sorted(got) == list(range(len(sent))), "lost %s, doubled %s" % (
        sorted(set(range(len(sent))) - set(got)), sorted(n for n in set(got) if got.count(n) > 1)[:20])


def test_a_will_is_stored_when_its_client_vanishes(tmp_path):
    cfg = config(tmp_path)

    async def fn(agent):
        port = agent.mqtt_endpoint.port

        def talk():
            for version, cid in ((4, "w3"), (5, "w5")):
                s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
                will = mp.Publish("m/status", b'"gone %s"' % cid.encode(), 1)
                s.sendall(mp.encode_connect(version, cid, True, 60, will=will))
                assert read_packet(s)[3] == 0
                s.close()  # no DISCONNECT: the will is published
            s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)  # a DISCONNECT first: no will
            s.sendall(mp.encode_connect(4, "polite", True, 60, will=mp.Publish("m/status", b'"polite"', 1)))
            assert read_packet(s)[3] == 0
            s.sendall(mp.encode_simple(mp.DISCONNECT))
            assert read_packet(s) == b""
            s.close()

        await asyncio.to_thread(talk)
        await until(lambda: agent.mqtt_endpoint.stored == 2, what="both wills")
        assert sorted(values(agent)) == ["gone w3", "gone w5"]

    asyncio.run(with_agent(cfg, fn))


class LogWriteFails:
    """Arms ENOSPC on the next write to a topic's log file (edgeline.storage's file
    handles; the dedupe windows' files are spared): the write stores nothing and the log
    fails, as on a full disk."""

    def __init__(self, monkeypatch):
        import edgeline.storage as storage
        from edgeline_host.agent.idempotency import DIRECTORY

        self.armed = 0
        real = storage._File.write

        def write(handle, buf, n):
            if self.armed and os.sep + DIRECTORY + os.sep not in str(getattr(handle._f, "name", "")):
                self.armed -= 1
                raise OSError(28, "No space left on device")
            return real(handle, buf, n)

        monkeypatch.setattr(storage._File, "write", write)


def test_a_message_lost_to_a_write_error_is_never_acknowledged(tmp_path, monkeypatch):
    """Publisher A's message is lost: the commit's write fails (nothing of it reaches the
    disk). A is closed without a PUBACK (keepalive 0: nothing else would tell it). B's
    message then reopens the log and gets the same seq A's had: A's PUBACK must not leave
    when that seq is durable (it is another record), and B's dedupe entry names the seq of
    the reopened log (a resend of it is not stored twice). A reconnects and resends."""
    disk = LogWriteFails(monkeypatch)
    cfg = config(tmp_path, topics=({"topic": "t", "group_ms": 60000, "group_records": 10000},))

    async def fn(agent):
        port = agent.mqtt_endpoint.port
        ep = agent.mqtt_endpoint

        def talk():
            a = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            a.sendall(mp.encode_connect(4, "a", False, 0))
            assert read_packet(a) == bytes([0x20, 2, 0, 0])
            disk.armed = 1
            a.sendall(mp.encode_publish(4, "m/x", b'"a"', 1, 1))
            b, _ = raw(port, 4, "b", keepalive_s=0)
            deadline = time.monotonic() + WAIT_S
            while disk.armed or ep.stats()["connections"] > 1:
                assert time.monotonic() < deadline, "A's commit to fail and A to be closed"
                time.sleep(0.01)
            b.sendall(mp.encode_publish(4, "m/x", b'"b"', 1, 1))
            assert read_packet(b) == bytes([0x40, 2, 0, 1])
            b.sendall(mp.encode_publish(4, "m/x", b'"b"', 1, 1, dup=True))  # B's PUBACK was lost: a resend
            assert read_packet(b) == bytes([0x40, 2, 0, 1])
            try:
                a.sendall(mp.encode_simple(mp.PINGREQ))
            except OSError:
                pass
            assert read_packet(a) == b""  # closed, and never a PUBACK for the lost message
            a.close()
            a = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            a.sendall(mp.encode_connect(4, "a", False, 0))
            assert read_packet(a) == bytes([0x20, 2, 1, 0])  # session present
            a.sendall(mp.encode_publish(4, "m/x", b'"a"', 1, 1, dup=True))
            assert read_packet(a) == bytes([0x40, 2, 0, 1])
            a.close()
            b.close()

        await asyncio.to_thread(talk)
        assert values(agent) == ["b", "a"]
        s = ep.stats()
        assert (s["stored"], s["redeliveries_dropped"], s["acked"]) == (3, 1, 3)
        assert agent.recovered == 1 and "lost to a write error" in (s["last_error"] or "")

    asyncio.run(with_agent(cfg, fn))


def read_pubacks(s, n):
    """The next n packets, each a PUBACK: [(packet id, reason code)]."""
    out = []
    for _ in range(n):
        d = read_packet(s)
        assert d[:1] == bytes([0x40]), d
        out.append((d[2] << 8 | d[3], d[4] if len(d) > 4 else 0))
    return out


@pytest.mark.parametrize("version", [4, 5])
def test_a_burst_in_one_read_is_stored_as_one_by_one(tmp_path, version):
    """Many packets in one read are appended as one burst: the PUBACKs still leave in
    arrival order, a resend (DUP) of a message earlier in the same burst is acknowledged
    and not stored, a message no topic takes and one too large for a segment are refused
    in their place (MQTT 5: their reason codes) while those around them are stored, and
    QoS 0 goes in between."""
    cfg = config(tmp_path, topics=({"topic": "t", "segment_size": "1 KiB"},))
    big = json.dumps("x" * 2000).encode()
    burst = [("m/a", b"1", 1, 1, False), ("m/a", b"2", 1, 2, False), ("m/a", b"1", 1, 1, True),
             ("z/unmapped", b"3", 1, 3, False), ("m/a", b"4", 0, None, False), ("m/a", big, 1, 5, False),
             ("m/b", b"6", 1, 6, False), ("m/a", b"6", 1, 6, True), ("m/a", b"7", 1, 7, True)]

    async def fn(agent):
        ep = agent.mqtt_endpoint

        def talk():
            s, connack = raw(ep.port, version, "burst")
            assert connack[3 if version == 4 else 3] == 0
            s.sendall(b"".join(mp.encode_publish(version, topic, payload, qos, pid, dup=dup)
                               for topic, payload, qos, pid, dup in burst))
            acks = read_pubacks(s, 8)
            s.close()
            return acks

        acks = await asyncio.to_thread(talk)
        v5 = version == 5
        assert acks == [(1, 0), (2, 0), (1, 0), (3, mp.RC_TOPIC_NAME_INVALID if v5 else 0), (5, mp.RC_QUOTA_EXCEEDED
                        if v5 else 0), (6, 0), (6, 0), (7, 0)]
        assert values(agent) == [1, 2, 4, 6, 7]  # "1" once; "6" resent with DUP once; "7": DUP but never seen
        s = ep.stats()
        assert (s["received"], s["stored"], s["redeliveries_dropped"], s["acked"]) == (9, 5, 2, 8)
        assert s["refusals"] == {"unmapped": 1, "too_large": 1}

    asyncio.run(with_agent(cfg, fn))


def test_a_burst_that_fills_a_reject_topic_acknowledges_exactly_what_was_stored(tmp_path):
    """A burst that fills a ``reject`` topic part way: the messages appended are
    acknowledged, the first one that did not fit and all after it wait unacknowledged,
    and their dedupe entries are gone (so a resend once there is room stores them)."""
    cfg = config(tmp_path, topics=({"topic": "t", "segment_size": "1 KiB", "budget": "2 KiB",
                                    "full_policy": "reject"},))

    async def fn(agent):
        ep = agent.mqtt_endpoint
        n = 200

        def talk():
            s, _ = raw(ep.port, 4, "filler")
            s.sendall(b"".join(mp.encode_publish(4, "m/a", json.dumps({"i": i}).encode(), 1, i + 1)
                               for i in range(n)))
            deadline = time.monotonic() + WAIT_S
            while ep.stats()["stored"] == 0 or ep.stats()["acked"] < ep.stats()["stored"]:
                assert time.monotonic() < deadline, "the stored messages to be acknowledged"
                time.sleep(0.01)
            k = ep.stats()["stored"]
            acks = read_pubacks(s, k)
            assert ep.stats()["unacknowledged"] == 0  # the rest wait unread, owed nothing: none took a seq
            s.close()
            return k, acks

        k, acks = await asyncio.to_thread(talk)
        assert 0 < k < n and acks == [(i + 1, 0) for i in range(k)]
        assert values(agent) == [{"i": i} for i in range(k)]
        window = agent.topics["t"].window
        ids = [i + 1 for i in range(n) if window.lookup(b"c:" + (i + 1).to_bytes(2, "big") + b"filler") is not None]
        assert ids == list(range(1, k + 1))

    asyncio.run(with_agent(cfg, fn))


def test_a_burst_over_the_queue_limit_stores_what_fits(tmp_path):
    """``sync.max_queue_size`` leaves room for fewer records than a burst has: the burst
    goes on one message at a time, as without bursts -- what fits is stored and
    acknowledged, the rest waits -- never a burst that waits for room it can never get."""
    e = {"node_id": NODE, "data_dir": str(tmp_path / "data"), "cloud_endpoint": "http://127.0.0.1:9/edge",
         "key": "00" * 32, "sync": {"max_queue_size": 5},
         "sync_topics": [{"topic": "t", "direction": "edge_to_cloud"}],
         "ingest": {"http": {"listen": "127.0.0.1:%d" % free_port()},
                    "mqtt": {"listen": "127.0.0.1:%d" % free_port(), "map": {"m/#": "t"}}}}
    cfg = parse_config({"edge": e}, base_dir=str(tmp_path))

    async def fn(agent):
        ep = agent.mqtt_endpoint

        def talk():
            s, _ = raw(ep.port, 4, "queued")
            s.sendall(b"".join(mp.encode_publish(4, "m/a", b"%d" % i, 1, i + 1) for i in range(8)))
            acks = read_pubacks(s, 5)
            s.close()
            return acks

        assert await asyncio.to_thread(talk) == [(i + 1, 0) for i in range(5)]
        assert values(agent) == [0, 1, 2, 3, 4] and ep.stats()["stored"] == 5

    asyncio.run(with_agent(cfg, fn))


def test_a_write_error_inside_a_burst_acknowledges_none_of_what_it_lost(tmp_path, monkeypatch):
    """A commit by count inside a burst fails its write: the records the failed log took
    are never acknowledged (the connection closes, as when they were appended one at a
    time), the rest of the burst is not stored; the publisher's resend (DUP) after the
    log is reopened stores each message once."""
    disk = LogWriteFails(monkeypatch)
    cfg = config(tmp_path, topics=({"topic": "t", "group_ms": 60000, "group_records": 3},))

    async def fn(agent):
        ep = agent.mqtt_endpoint

        def talk():
            a = socket.create_connection(("127.0.0.1", ep.port), timeout=WAIT_S)
            a.sendall(mp.encode_connect(4, "w", False, 0))
            assert read_packet(a) == bytes([0x20, 2, 0, 0])
            disk.armed = 1
            a.sendall(b"".join(mp.encode_publish(4, "m/x", b"%d" % i, 1, i + 1) for i in range(6)))
            assert read_packet(a) == b""  # closed without a PUBACK
            a.close()
            a = socket.create_connection(("127.0.0.1", ep.port), timeout=WAIT_S)
            a.sendall(mp.encode_connect(4, "w", False, 0))
            assert read_packet(a) == bytes([0x20, 2, 1, 0])
            a.sendall(b"".join(mp.encode_publish(4, "m/x", b"%d" % i, 1, i + 1, dup=True) for i in range(6)))
            acks = read_pubacks(a, 6)
            a.close()
            return acks

        assert await asyncio.to_thread(talk) == [(i + 1, 0) for i in range(6)]
        assert values(agent) == [0, 1, 2, 3, 4, 5] and agent.recovered == 1
        assert ep.stats()["redeliveries_dropped"] == 0 and ep.stats()["acks_lost"] == 3

    asyncio.run(with_agent(cfg, fn))
