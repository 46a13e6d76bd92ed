"""Issue 9's proof, black-box: every record a producer was told is durable reaches the
gateway exactly once -- counting the producers' own retries and the brokers'
redeliveries -- while the agent, the local broker and the gateway are SIGKILLed at
random (seeded) moments and the uplink runs through a lossy link.

Only public interfaces: `edgeline agent` and `edgeline gateway` processes, Mosquitto,
HTTP, MQTT (paho clients) and the gateway's records API. The producers:

* HTTP with ``Edgeline-Producer-Id`` + ``Edgeline-Request-Seq`` (two, on ``orders``,
  ``sync: every``) and with ``Idempotency-Key`` (one, on ``telemetry``, group commit):
  each request is retried, unchanged, until it is answered durable -- a request whose
  answer a SIGKILL cut off is stored once, and the retry's answer names the original
  seqs;
* MQTT QoS 1 to the agent's own endpoint (``ingest.mqtt.listen``), a persistent session:
  paho resends what was not PUBACKed (DUP, same packet id) after the agent restarts; two
  publishers, one with keepalive 0 -- it never sends a PINGREQ, so a PUBACK the endpoint
  owes it must leave by itself once the record is durable;
* MQTT QoS 1 to Mosquitto, bridged by the agent (``ingest.mqtt.broker``): the broker
  redelivers what the agent had not acknowledged. Mosquitto's PUBACK is the broker's,
  not the agent's: a broker SIGKILLed loses what it held in RAM (issue 9, hole 4), so for
  this producer the proof is "never doubled" and the report counts what the broker lost.

The run is reproducible in its choices (EDGELINE_CHAOS_SEED picks another), not in its
timing. A failure prints the seed and what happened.
"""
import asyncio
import json
import os
import random
import sys
import threading
import time
import uuid

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from emulator.httpproxy import HttpFaultProxy
from mosquitto import Mosquitto
from procs import Proc, free_port, gateway_records, process_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = process_env(ROOT)
EDGELINE = [sys.executable, "-m", "edgeline_host.cli"]
NODE = "edge-1"
SEED = int(os.environ.get("EDGELINE_CHAOS_SEED", "20261207"))
WAIT_S = 90  # for the dust to settle; a timeout is a failure, never a measurement

CONFIG = """\
edge:
  node_id: %(node)s
  data_dir: %(data)s
  key_file: %(key)s
  cloud_endpoint: %(endpoint)s
  sync:
    interval_secs: 1
    retry: {initial_ms: 50, max_ms: 300, jitter: 0.3}
    circuit_breaker: {failures: 0}
  sync_topics:
    - {topic: orders, direction: edge_to_cloud, sync: every}
    - {topic: telemetry, direction: edge_to_cloud, group_ms: 20}
    - {topic: sensors, direction: edge_to_cloud, group_ms: 20}
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
    mqtt:
      broker: "127.0.0.1:%(broker)d"
      listen: "127.0.0.1:%(mqtt)d"
      map: {"ep/#": telemetry, "bridge/#": sensors}
"""


class HttpProducer:
    """Posts requests of 1..max_batch unique values to one topic, each retried unchanged
    until answered durable (a refused or timed-out answer is retried; 409/422 fail)."""

    def __init__(self, ident, topic, url, rng, max_batch, keyed_by):
        self.ident = ident
        self.topic = topic
        self.url = "%s/v1/topics/%s/records" % (url, topic)
        self.rng = rng
        self.max_batch = max_batch
        self.keyed_by = keyed_by  # "producer" or "key"
        self.requests = []  # (values, answer) of every request answered durable
        self.retries = 0
        self.duplicate_answers = 0
        self.cut_requests = 0  # requests a crash cut and other records overtook (409)

    def headers(self, n):
        if self.keyed_by == "producer":
            return {"Edgeline-Producer-Id": "http-%d" % self.ident, "Edgeline-Request-Seq": str(n)}
        return {"Idempotency-Key": str(uuid.UUID(int=self.rng.getrandbits(128)))}

    async def run(self, http, stop):
        timeout = aiohttp.ClientTimeout(total=10)
        n = 0
        while not stop.is_set():
            n += 1
            k = self.rng.randint(1, self.max_batch)
            values = [{"p": self.ident, "r": n, "i": i} for i in range(k)]
            headers = self.headers(n)
            while True:  # the same request until it is answered durable
                try:
                    async with http.post(self.url, json=values, headers=headers, timeout=timeout) as r:
                        status = r.status
                        answer = await r.json()
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                    status, answer = None, None  # the agent is down or was killed mid-request
                if status == 200 and answer.get("durable") is True:
                    break
                if status == 409 and "stored_records" in answer:
                    # A crash kept a prefix of the request and other records followed it
                    # (docs/agent.md, "Retries"): that part is stored; the rest goes as a
                    # new request, under a new key.
                    have = answer["stored_records"]
                    self.requests.append((values[:have], {"first_seq": answer["stored_first_seq"],
                                                          "last_seq": answer["stored_last_seq"]}))
                    self.cut_requests += 1
                    values = values[have:]
                    n += 1
                    headers = self.headers(n)
                    continue
                assert status in (None, 503), "%s request %d: %s %s" % (self.topic, n, status, answer)
                self.retries += 1
                await asyncio.sleep(0.05)
            assert answer["last_seq"] - answer["first_seq"] + 1 == len(values), answer
            if answer.get("duplicate"):
                self.duplicate_answers += 1
            self.requests.append((values, answer))
            await asyncio.sleep(self.rng.uniform(0.005, 0.03))

    def acked(self):
        """{seq: value} of every value answered durable."""
        out = {}
        for values, answer in self.requests:
            for i, v in enumerate(values):
                out[answer["first_seq"] + i] = v
        return out


class MqttProducer:
    """A paho client (MQTT 3.1.1, persistent session) publishing unique QoS 1 values from
    a thread while it is connected; paho reconnects by itself and resends, DUP set, what
    was not acknowledged. ``acked()``: the values whose PUBACK came (``on_publish``)."""

    def __init__(self, name, port, topic, rate_per_s, keepalive_s=5):
        self.name = name
        self.topic = topic
        self.interval_s = 1.0 / rate_per_s
        self.sent = {}  # mid -> value
        self.acked_mids = set()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self.acked_mids.add(mid)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.max_inflight_messages_set(20)
        self.client.connect_async("127.0.0.1", port, keepalive=keepalive_s)
        self.client.loop_start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._publish, daemon=True)
        self.thread.start()

    def _publish(self):
        n = 0
        while not self.stop.is_set():
            if self.client.is_connected():
                value = {"m": self.name, "n": n}
                n += 1
                info = self.client.publish(self.topic, json.dumps(value), qos=1)
                self.sent[info.mid] = value
            time.sleep(self.interval_s)

    def unacked(self):
        return [v for mid, v in list(self.sent.items()) if mid not in self.acked_mids]

    def acked(self):
        return [v for mid, v in list(self.sent.items()) if mid in self.acked_mids]

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()


class HealthWatch:
    """Polls the agent's /v1/health; the counters of each agent run at their last reading,
    summed over runs (a counter read just before a SIGKILL may miss the last few)."""

    KEYS = (("duplicates",), ("mqtt_endpoint", "redeliveries_dropped"), ("mqtt", "redeliveries_dropped"))

    def __init__(self, url):
        self.url = url + "/v1/health"
        self.done_runs = {k: 0 for k in self.KEYS}
        self.this_run = {k: 0 for k in self.KEYS}

    def new_run(self):
        for k in self.KEYS:
            self.done_runs[k] += self.this_run[k]
            self.this_run[k] = 0

    async def run(self, http):
        while True:
            try:
                async with http.get(self.url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    h = await r.json()
                for k in self.KEYS:
                    v = h
                    for part in k:
                        v = (v or {}).get(part)
                    if isinstance(v, int) and v >= self.this_run[k]:
                        self.this_run[k] = v
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                pass
            await asyncio.sleep(0.2)

    def total(self, k):
        return self.done_runs[k] + self.this_run[k]


async def until(cond, what, context, timeout_s=WAIT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        assert time.monotonic() < deadline, "timed out: %s; %s" % (what, context())
        await asyncio.sleep(0.1)


def test_producers_exactly_once_through_kills_of_agent_broker_and_gateway(tmp_path):
    asyncio.run(asyncio.wait_for(_run(tmp_path), 300))


async def _run(tmp_path):
    rng = random.Random(SEED)
    key_hex = os.urandom(32).hex()
    (tmp_path / "node.key").write_text(key_hex + "\n")
    (tmp_path / "keys.yaml").write_text("%s: %s\n" % (NODE, key_hex))
    gw_port, agent_port, mqtt_port = free_port(), free_port(), free_port()
    gw_base = "http://127.0.0.1:%d" % gw_port
    gateway = Proc("gateway", EDGELINE + ["gateway", "--keys", str(tmp_path / "keys.yaml"), "--db",
                                          str(tmp_path / "gw.db"), "--listen", "127.0.0.1:%d" % gw_port],
                   gw_port, "/healthz", str(tmp_path / "gateway.log"), ENV)
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=["max_queued_messages 100000"])
    proxy = HttpFaultProxy(gw_base, seed=SEED, drop_request=0.05, drop_response=0.08, duplicate=0.1, delay=0.2,
                           delay_ms=100)
    await proxy.start()
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(CONFIG % dict(node=NODE, data=tmp_path / "data", key=tmp_path / "node.key",
                                 endpoint=proxy.url, port=agent_port, broker=broker.port, mqtt=mqtt_port))
    agent = Proc("agent", EDGELINE + ["agent", "--config", str(cfg)], agent_port, "/v1/health",
                 str(tmp_path / "agent.log"), ENV)
    agent_url = "http://127.0.0.1:%d" % agent_port
    http_producers = [HttpProducer(0, "orders", agent_url, random.Random(rng.random()), 5, "producer"),
                      HttpProducer(1, "orders", agent_url, random.Random(rng.random()), 3, "producer"),
                      HttpProducer(2, "telemetry", agent_url, random.Random(rng.random()), 8, "key")]
    mqtt_producers = []
    watch = HealthWatch(agent_url)
    kills = {"agent": 0, "gateway": 0, "broker": 0, "outage": 0}

    def context():
        return "seed %d; kills %s; proxy %s; http retries %s; mqtt unacked %s" % (
            SEED, kills, json.dumps(proxy.stats()), [p.retries for p in http_producers],
            [len(p.unacked()) for p in mqtt_producers])

    stop = asyncio.Event()
    tasks = []
    watch_task = None
    try:
        async with aiohttp.ClientSession() as http:
            broker.start()
            await gateway.start(http)
            await agent.start(http)
            watch_task = asyncio.ensure_future(watch.run(http))
            mqtt_producers = [MqttProducer("ep-pub", mqtt_port, "ep/line-1", 40),
                              MqttProducer("ep-pub-k0", mqtt_port, "ep/line-3", 40, keepalive_s=0),
                              MqttProducer("bridge-pub", broker.port, "bridge/line-2", 40)]
            tasks = [asyncio.ensure_future(p.run(http, stop)) for p in http_producers]

            events = ["agent"] * 3 + ["gateway"] * 2 + ["broker"] * 2 + ["outage"] * 2
            rng.shuffle(events)
            for what in events:
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                for t in tasks:
                    if t.done():
                        t.result()  # a producer's assertion: raise it now
                kills[what] += 1
                if what == "agent":
                    agent.kill()
                    watch.new_run()
                    await asyncio.sleep(rng.uniform(0.05, 0.5))
                    await agent.start(http)
                elif what == "gateway":
                    gateway.kill()
                    await asyncio.sleep(rng.uniform(0.05, 0.8))
                    await gateway.start(http)
                elif what == "broker":
                    broker.kill()
                    await asyncio.sleep(rng.uniform(0.05, 0.5))
                    broker.start()
                else:
                    await proxy.outage(rng.uniform(0.3, 1.0))
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
            for p in mqtt_producers:
                p.stop.set()

            # The dust settles: every MQTT message acknowledged by whom it was sent to, the
            # broker's queue for the agent empty, the agent owing the gateway nothing.
            await until(lambda: not any(p.unacked() for p in mqtt_producers), "MQTT PUBACKs", context)

            async def settled():
                async with http.get(agent_url + "/v1/queue") as r:
                    queue = await r.json()
                async with http.get(agent_url + "/v1/health") as r:
                    health = await r.json()
                mq = health.get("mqtt") or {}
                return queue["pending"] == 0 and not mq.get("unacknowledged") and not mq.get("held")
            await until(settled, "the agent to drain", context)
            await asyncio.sleep(1.0)  # what the broker still had queued for the agent's session
            await until(settled, "the agent to drain", context)
            while proxy._background:
                await asyncio.sleep(0.05)
            records = {t: await gateway_records(http, gw_base, t, NODE) for t in ("orders", "telemetry", "sensors")}
            watch_task.cancel()
            watch_task = None
        assert agent.stop() == 0, agent.log_tail()
    finally:
        stop.set()
        for t in tasks + ([watch_task] if watch_task is not None else []):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in mqtt_producers:
            p.close()
        agent.stop()
        gateway.stop()
        broker.stop()
        await proxy.stop()

    def value_of(row):
        v = row["value"]
        return json.dumps(v, sort_keys=True)

    # Per topic: seqs in order without repeats, no value stored twice.
    stored = {}
    for topic, rows in records.items():
        seqs = [r["seq"] for r in rows]
        assert seqs == sorted(set(seqs)), (topic, context())
        values = [value_of(r) for r in rows]
        doubled = len(values) - len(set(values))
        assert not doubled, "%s: %d values stored twice; %s" % (topic, doubled, context())
        stored[topic] = {r["seq"]: value_of(r) for r in rows}

    # HTTP: every request answered durable is there once, at the seqs its answer named.
    for p in http_producers:
        for seq, v in p.acked().items():
            assert stored[p.topic].get(seq) == json.dumps(v, sort_keys=True), (
                "%s seq %d: answered %r, stored %r; %s" % (p.topic, seq, v, stored[p.topic].get(seq), context()))
    # MQTT to the agent: every PUBACKed message is there once.
    at_gateway = set(stored["telemetry"].values()) | set(stored["sensors"].values())
    *eps, bridge = mqtt_producers
    for ep in eps:
        missing = [v for v in ep.acked() if json.dumps(v, sort_keys=True) not in at_gateway]
        assert not missing, "%s: PUBACKed by the agent, not at the gateway: %s; %s" % (ep.name, missing[:10],
                                                                                       context())
    # MQTT through Mosquitto: never doubled (above); what the broker lost at its SIGKILLs, counted.
    broker_lost = [v for v in bridge.acked() if json.dumps(v, sort_keys=True) not in at_gateway]

    assert kills == {"agent": 3, "gateway": 2, "broker": 2, "outage": 2}, context()
    for p in http_producers:
        assert len(p.requests) >= 10, (p.topic, len(p.requests), context())
    assert all(len(ep.acked()) >= 100 for ep in eps) and len(bridge.acked()) >= 100, context()
    for p in (gateway, agent):
        text = p.log_text()
        assert "Traceback" not in text and "Error handling request" not in text, p.log_tail()
    print("producers exactly once, seed %d: HTTP %d requests (%d records) answered durable after %d retries, %d "
          "answered as duplicates of a stored request, %d cut by a crash and completed under a new key; MQTT to the agent %d PUBACKed, %d redeliveries dropped; "
          "MQTT via Mosquitto %d PUBACKed by the broker, %d redeliveries dropped, %d lost by the broker's SIGKILLs; "
          "at the gateway %s records; kills %s; proxy %s" % (
              SEED, sum(len(p.requests) for p in http_producers), sum(len(p.acked()) for p in http_producers),
              sum(p.retries for p in http_producers), sum(p.duplicate_answers for p in http_producers),
              sum(p.cut_requests for p in http_producers),
              sum(len(ep.acked()) for ep in eps), watch.total(("mqtt_endpoint", "redeliveries_dropped")), len(bridge.acked()),
              watch.total(("mqtt", "redeliveries_dropped")), len(broker_lost),
              {t: len(v) for t, v in stored.items()}, kills, json.dumps(proxy.stats())))
