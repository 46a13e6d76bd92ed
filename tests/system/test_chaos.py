"""Issue 3's proof, end to end with real processes: producers post to an `edgeline agent`
whose uplink reaches an `edgeline gateway` through emulator/httpproxy.py -- requests
dropped, responses lost after the gateway committed, requests duplicated, delayed and
replayed late, outages -- while the agent and the gateway are SIGKILLed at random
(seeded) moments and started again. When the dust settles, the gateway holds every
record the agent answered durable at ingest exactly once, per (origin, topic) in seq
order, its value intact, and gaps only where the edge evicted records and said so.

The run is reproducible in its choices (EDGELINE_CHAOS_SEED picks another), not in its
timing: the processes run on a shared machine. A failure prints the seed, the proxy's
counters and its latest faults.
"""
import asyncio
import json
import os
import random
import sys
import time

import aiohttp

from edgeline.log import RingLog

from emulator.httpproxy import HttpFaultProxy
from procs import Proc, free_port, gateway_records, process_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = process_env(ROOT)
EDGELINE = [sys.executable, "-m", "edgeline_host.cli"]
NODE = "edge-1"
SEED = int(os.environ.get("EDGELINE_CHAOS_SEED", "20240611"))
TELEMETRY = {"segment_size": "4KiB", "budget": "16KiB"}  # small: a long outage evicts

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
    - {topic: telemetry, direction: edge_to_cloud, group_ms: 20, full_policy: drop_oldest,
       segment_size: %(segment_size)s, budget: %(budget)s}
  local_topics:
    - local.debug
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
"""


class Producer:
    """Posts records ({"p": id, "n": counter}) to one topic; never resends (a request
    that got no answer may or may not be stored: the next one carries new values), so
    every value is unique. ``acked`` maps each seq answered durable to its value."""

    def __init__(self, ident, topic, url, rng, max_batch):
        self.ident = ident
        self.topic = topic
        self.url = "%s/v1/topics/%s/records" % (url, topic)
        self.rng = rng
        self.max_batch = max_batch
        self.n = 0
        self.acked = {}
        self.unanswered = 0
        self.refused = 0

    async def run(self, http, stop):
        timeout = aiohttp.ClientTimeout(total=10)
        while not stop.is_set():
            k = self.rng.randint(1, self.max_batch)
            values = [{"p": self.ident, "n": self.n + i} for i in range(k)]
            self.n += k
            try:
                async with http.post(self.url, json=values, timeout=timeout) as r:
                    answer = await r.json()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                self.unanswered += 1  # the agent is down or was killed mid-request
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                self.refused += 1
                raise AssertionError("ingest of %s refused: %s %s" % (self.topic, status, answer))
            assert answer["durable"] is True and answer["last_seq"] - answer["first_seq"] + 1 == k, answer
            for i, v in enumerate(values):
                seq = answer["first_seq"] + i
                assert seq not in self.acked, "seq %d of %s answered twice" % (seq, self.topic)
                self.acked[seq] = v
            await asyncio.sleep(self.rng.uniform(0.005, 0.03))


async def evicting_outage(http, proxy, agent_url):
    """Cut the link until the agent's telemetry log has evicted records it still owed
    (however fast this machine produces them); returns how long that took."""
    t0 = time.monotonic()
    proxy.cut()
    try:
        while True:
            async with http.get(agent_url + "/v1/queue") as r:
                if (await r.json())["topics"]["telemetry"]["gap"]:  # evicted before it was sent
                    return time.monotonic() - t0
            assert time.monotonic() - t0 < 30, "the telemetry topic never filled"
            await asyncio.sleep(0.1)
    finally:
        proxy.restore()


async def gateway_state(http, base):
    async with http.get(base + "/v1/status", params={"origin": NODE}) as r:
        streams = {s["topic"]: s for s in (await r.json())["streams"]}
    async with http.get(base + "/v1/gaps", params={"origin": NODE}) as r:
        gaps = (await r.json())["gaps"]
    records = {t: await gateway_records(http, base, t, NODE) for t in ("orders", "telemetry", "local.debug")}
    return streams, gaps, records


def test_agent_and_gateway_sigkilled_behind_a_message_level_fault_proxy(tmp_path):
    asyncio.run(asyncio.wait_for(_chaos(tmp_path), 240))


async def _chaos(tmp_path):
    rng = random.Random(SEED)
    key_hex = os.urandom(32).hex()
    (tmp_path / "node.key").write_text(key_hex + "\n")
    (tmp_path / "keys.yaml").write_text("%s: %s\n" % (NODE, key_hex))
    gw_port, agent_port = free_port(), free_port()
    gw_base = "http://127.0.0.1:%d" % gw_port
    gateway = Proc("gateway", EDGELINE + ["gateway", "--keys", str(tmp_path / "keys.yaml"), "--db",
                                          str(tmp_path / "gw.db"), "--listen", "127.0.0.1:%d" % gw_port],
                   gw_port, "/healthz", str(tmp_path / "gateway.log"), ENV)
    proxy = HttpFaultProxy(gw_base, seed=SEED, drop_request=0.05, drop_response=0.08, duplicate=0.1, delay=0.2,
                           delay_ms=150, hold=0.15, replay=0.1)
    await proxy.start()
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(CONFIG % dict(TELEMETRY, node=NODE, data=tmp_path / "data", key=tmp_path / "node.key",
                                 endpoint=proxy.url, port=agent_port))
    agent = Proc("agent", EDGELINE + ["agent", "--config", str(cfg)], agent_port, "/v1/health",
                 str(tmp_path / "agent.log"), ENV)
    agent_url = "http://127.0.0.1:%d" % agent_port
    producers = [Producer(0, "orders", agent_url, random.Random(rng.random()), 5),
                 Producer(1, "orders", agent_url, random.Random(rng.random()), 3),
                 Producer(2, "telemetry", agent_url, random.Random(rng.random()), 10),
                 Producer(3, "telemetry", agent_url, random.Random(rng.random()), 10),
                 Producer(4, "local.debug", agent_url, random.Random(rng.random()), 2)]
    outages = []

    def context():
        return "seed %d; proxy %s; latest faults %s; kills: agent %d, gateway %d; outages %s" % (
            SEED, json.dumps(proxy.stats()), list(proxy.faults)[-12:], agent.kills, gateway.kills,
            ["%.1f s" % s for s in outages])

    stop = asyncio.Event()
    tasks = []
    try:
        async with aiohttp.ClientSession() as http:
            await gateway.start(http)
            await agent.start(http)
            tasks = [asyncio.ensure_future(p.run(http, stop)) for p in producers]

            # The chaos: each kind of event three times, in a seeded order, at seeded
            # moments while the producers post. The first outage lasts until the small
            # telemetry topic has evicted records the gateway never got.
            events = ["agent", "gateway", "outage"] * 3
            rng.shuffle(events)
            for what in events:
                await asyncio.sleep(rng.uniform(0.4, 1.6))
                for t in tasks:
                    if t.done():
                        t.result()  # a producer's assertion: raise it now
                if what == "agent":
                    agent.kill()
                    await asyncio.sleep(rng.uniform(0.05, 0.5))
                    await agent.start(http)
                elif what == "gateway":
                    gateway.kill()
                    await asyncio.sleep(rng.uniform(0.05, 0.8))
                    await gateway.start(http)
                elif outages:
                    outages.append(rng.uniform(0.3, 1.2))
                    await proxy.outage(outages[-1])
                else:
                    outages.append(await evicting_outage(http, proxy, agent_url))
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)

            # The dust settles: no more kills or outages (the proxy's other faults stay
            # on) until the agent owes the gateway nothing.
            deadline = time.monotonic() + 90
            while True:
                async with http.get(agent_url + "/v1/queue") as r:
                    queue = await r.json()
                if queue["pending"] == 0:
                    break
                assert time.monotonic() < deadline, "the agent still owes %s; %s" % (queue, context())
                await asyncio.sleep(0.1)
            while proxy._background:
                await asyncio.sleep(0.05)

            streams, gaps, records = await gateway_state(http, gw_base)
            # Stale copies still held by the proxy arrive now, late: they change nothing.
            replayed_at_end = await proxy.replay_held()
            assert await gateway_state(http, gw_base) == (streams, gaps, records), context()
            async with http.get(gw_base + "/healthz") as r:
                health = await r.json()

        assert agent.stop() == 0, agent.log_tail()
        agent_log = RingLog(str(tmp_path / "data" / "telemetry"), segment_bytes=4096, budget_bytes=16384)
        telemetry_first_seq = agent_log.first_seq
        agent_log.close()
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        agent.stop()
        gateway.stop()
        await proxy.stop()

    # Every fault happened, several times.
    st = proxy.stats()
    for fault in ("dropped_requests", "dropped_responses", "duplicated", "delayed", "replayed"):
        assert st[fault] >= 3, "too few %s: %s" % (fault, context())
    assert st["refused"] + st["cut_in_flight"] >= 1 and st["cuts"] == len(outages) == 3, context()
    assert agent.kills == 3 and gateway.kills == 3, context()
    for p in producers:
        # each producer got through (a floor, not a rate: the local one posts 2 records at a
        # time and a loaded machine with three agent restarts leaves it few turns)
        assert len(p.acked) >= 10 and p.refused == 0, (p.topic, len(p.acked), context())

    # Local records never leave the node.
    assert records["local.debug"] == [] and "local.debug" not in streams

    gap_seqs = {}
    for g in gaps:
        assert g["reason"] == "evicted", (g, context())
        # ... and the edge really no longer holds them: evicted, not skipped
        assert g["topic"] == "telemetry" and g["last"] < telemetry_first_seq, (g, telemetry_first_seq, context())
        gap_seqs.setdefault(g["topic"], []).append((g["first"], g["last"]))
    assert gap_seqs.get("telemetry"), "the long outage evicted nothing: " + context()

    for topic in ("orders", "telemetry"):
        rows = records[topic]
        seqs = [r["seq"] for r in rows]
        s = streams[topic]
        # exactly once, in seq order, every seq up to the mark a record or inside a gap
        assert seqs == sorted(set(seqs)), context()
        lost = set()
        for first, last in gap_seqs.get(topic, []):
            lost.update(range(first, last + 1))
        assert not lost & set(seqs), context()
        assert sorted(lost | set(seqs)) == list(range(1, s["mark"] + 1)), "hole in %s: %s" % (topic, context())
        assert (s["records"], s["lost"]) == (len(seqs), len(lost)), (s, context())
        stored_ms = [r["stored_ms"] for r in rows]
        assert stored_ms == sorted(stored_ms), "%s stored out of seq order: %s" % (topic, context())
        # every record answered durable is there with its value, or was evicted and reported
        by_seq = {r["seq"]: r["value"] for r in rows}
        values = [json.dumps(v, sort_keys=True) for v in by_seq.values()]
        assert len(values) == len(set(values)), "a value stored twice in %s: %s" % (topic, context())
        missing = []
        for p in producers:
            if p.topic != topic:
                continue
            for seq, v in p.acked.items():
                if seq in by_seq:
                    assert by_seq[seq] == v, "%s seq %d: stored %r, answered %r; %s" % (topic, seq, by_seq[seq], v,
                                                                                        context())
                elif seq not in lost:
                    missing.append(seq)
        assert not missing, "%s: acknowledged at ingest, never stored: %s; %s" % (topic, missing[:20], context())
    assert not gap_seqs.get("orders")

    # Nothing crashed on the way: no traceback, no HTTP 500 in either process's output.
    for p in (gateway, agent):
        text = p.log_text()
        assert "Traceback" not in text and "Error handling request" not in text, p.log_tail()
    print("chaos seed %d: %d orders, %d telemetry acked at ingest; %d telemetry seqs evicted and reported; "
          "%d stale copies replayed at the end; gateway health %s; proxy %s; agent killed %d, gateway killed %d, "
          "outages %s" % (SEED, sum(len(p.acked) for p in producers if p.topic == "orders"),
                          sum(len(p.acked) for p in producers if p.topic == "telemetry"),
                          streams["telemetry"]["lost"], replayed_at_end, json.dumps(health), json.dumps(st),
                          agent.kills, gateway.kills, ["%.1f s" % s for s in outages]))
