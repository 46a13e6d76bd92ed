"""GET /metrics of a running agent and gateway (issue 13): scraped over HTTP, parsed with
Prometheus' own text parser, the values checked against the JSON APIs after appending
and syncing; and docs/metrics.md lists exactly the families each exposes."""
import asyncio
import os
import re
import time

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from edgeline_host.agent.config import parse_config
from edgeline_host.agent.service import Agent
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.gateway.topics import parse_topics

NODE = "edge-1"
KEY_HEX = "11" * 32
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAIT_S = 20  # generous: a timeout here is a failure, never a measurement


def agent_config(tmp_path, gateway_url, key_hex=KEY_HEX, node=NODE, topics=()):
    e = {"node_id": node, "data_dir": str(tmp_path / ("data-" + node)), "key": key_hex, "cloud_endpoint": gateway_url,
         "sync": {"interval_secs": 0.05},
         "sync_topics": [{"topic": "t", "direction": "edge_to_cloud", "sync": "group"},
                         {"topic": "cmds", "direction": "cloud_to_edge"}] + list(topics),
         "ingest": {"http": {"listen": "127.0.0.1:0"}}}
    return parse_config({"edge": e}, base_dir=str(tmp_path))


def make_gateway(tmp_path):
    keys = {NODE: bytes.fromhex(KEY_HEX)}
    return Gateway(str(tmp_path / "gw.db"), keys,
                   topics=parse_topics({"cmds": {"direction": "cloud_to_edge"}}, keys, "topics.yaml"))


async def until(cond, what, timeout_s=WAIT_S):
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.02)


class Scrape:
    """One /metrics answer, parsed: ``families`` name -> type (counters named with
    ``_total``, as exposed and documented); ``value(sample, **labels)``."""

    def __init__(self, text):
        self.text = text
        self.families = {}
        self.samples = []
        self.labels = {}  # name -> label names, of the families with samples
        for fam in text_string_to_metric_families(text):
            name = fam.name + "_total" if fam.type == "counter" else fam.name
            self.families[name] = fam.type
            self.samples += fam.samples
            if fam.samples:
                self.labels[name] = {k for s in fam.samples for k in s.labels if k != "le"}

    def value(self, name, **labels):
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def has(self, name, **labels):
        return any(s.name == name and s.labels == labels for s in self.samples)


async def scrape(http, url):
    async with http.get(url) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return Scrape(await r.text())


async def get_json(http, url):
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def post(http, url, body, **headers):
    async with http.post(url, data=body, headers=headers) as r:
        return r.status, await r.json()


async def fleet(tmp_path, fn, topics=()):
    """A gateway (in process, over HTTP) and a running agent syncing to it; fn(agent,
    agent_base, gateway_base, http)."""
    gw = make_gateway(tmp_path)
    server = TestServer(GatewayApi(gw).app())
    await server.start_server()
    gbase = str(server.make_url("")).rstrip("/")
    agent = Agent(agent_config(tmp_path, gbase + "/v1/sync", topics=topics), print_fn=lambda *_: None)
    runner = aiohttp.web.AppRunner(agent.app())
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    abase = "http://127.0.0.1:%d" % runner.addresses[0][1]
    task = asyncio.ensure_future(agent.uplink.run())
    try:
        async with aiohttp.ClientSession() as http:
            return await fn(agent, abase, gbase, http)
    finally:
        agent.uplink.stop()
        await asyncio.wait_for(task, WAIT_S)
        await runner.cleanup()
        agent.close()
        await server.close()


def test_agent_and_gateway_metrics_match_their_apis(tmp_path):
    async def fn(agent, abase, gbase, http):
        await post(http, abase + "/v1/sync/pause", b"")
        status, _ = await post(http, abase + "/v1/topics/t/records", b"[1, 2, 3, 4, 5]")
        assert status == 200
        for _ in range(2):  # the second is answered from the dedupe window
            status, answer = await post(http, abase + "/v1/topics/t/records", b'["a", "b"]',
                                        **{"Idempotency-Key": "k1"})
            assert status == 200
        assert answer["duplicate"] is True
        status, _ = await post(http, abase + "/v1/topics/t/records", b"[1, NaN]")
        assert status == 400
        status, _ = await post(http, abase + "/v1/topics/nope/records", b"[1]")
        assert status == 404
        await asyncio.sleep(0.05)  # the oldest unsent record ages

        m = await scrape(http, abase + "/metrics")
        q = await get_json(http, abase + "/v1/queue")
        assert q["topics"]["t"]["pending"] == 7
        assert m.value("edgeline_agent_records_appended_total", topic="t") == q["topics"]["t"]["last_seq"] == 7
        assert m.value("edgeline_agent_queue_records", topic="t") == 7
        assert m.value("edgeline_agent_records_synced_total", topic="t") == 0
        assert m.value("edgeline_agent_oldest_unsent_age_seconds", topic="t") >= 0.05
        assert m.value("edgeline_agent_uplink_state", state="paused") == 1
        assert m.value("edgeline_agent_uplink_state", state="connected") == 0
        assert m.value("edgeline_agent_http_ingest_requests_total", outcome="ok") == 2
        assert m.value("edgeline_agent_http_ingest_requests_total", outcome="duplicate") == 1
        assert m.value("edgeline_agent_http_ingest_requests_total", outcome="400") == 1
        assert m.value("edgeline_agent_http_ingest_requests_total", outcome="404") == 1
        assert m.value("edgeline_agent_dedupe_duplicates_total") == 1
        assert m.value("edgeline_agent_dedupe_hits_total", topic="t") == 1
        assert m.value("edgeline_agent_ingested_records_total") == 7
        # group commits answered the two stored requests: each is one observation or more
        commits = m.value("edgeline_agent_commit_duration_seconds_count", topic="t")
        assert commits >= 1
        assert m.value("edgeline_agent_commit_duration_seconds_bucket", topic="t", le="+Inf") == commits
        h = await get_json(http, abase + "/v1/health")
        assert m.value("edgeline_agent_storage_used_bytes") == h["storage"]["used_bytes"]
        assert m.value("edgeline_agent_log_size_bytes", topic="t") == q["topics"]["t"]["size_bytes"]

        await post(http, abase + "/v1/sync/resume", b"")

        async def synced():
            return (await get_json(http, abase + "/v1/queue"))["topics"]["t"]["acked"] == 7

        await until(synced, "the uplink to sync topic t")
        status, _ = await post(http, gbase + "/v1/topics/cmds/publish", b'["go", "stop", "go"]')
        assert status == 200

        async def received():
            return (await get_json(http, abase + "/v1/queue"))["topics"]["cmds"]["received_seq"] == 3

        await until(received, "the downlink to bring topic cmds")

        m = await scrape(http, abase + "/metrics")
        up = await get_json(http, abase + "/v1/sync/status")
        assert m.value("edgeline_agent_records_synced_total", topic="t") == 7
        assert m.value("edgeline_agent_records_sent_total", topic="t") == up["topics"]["t"]["records_sent"] == 7
        assert m.value("edgeline_agent_queue_records", topic="t") == 0
        assert m.value("edgeline_agent_oldest_unsent_age_seconds", topic="t") == 0
        assert m.value("edgeline_agent_records_received_total", topic="cmds") == 3
        assert m.value("edgeline_agent_uplink_sessions_total") == up["sessions"] >= 1
        assert m.value("edgeline_agent_uplink_state", state=up["state"]) == 1
        assert sum(s.value for s in m.samples if s.name == "edgeline_agent_uplink_state") == 1
        assert m.value("edgeline_agent_uplink_refused") == 0

        g = await scrape(http, gbase + "/metrics")
        streams = [s for s in (await get_json(http, gbase + "/v1/status"))["streams"] if s["origin"] == NODE]
        assert [(s["topic"], s["records"], s["mark"]) for s in streams] == [("t", 7, 7)]
        assert g.value("edgeline_gateway_records_stored_total", node=NODE, topic="t") == 7
        assert g.value("edgeline_gateway_stream_seq", node=NODE, topic="t") == 7
        assert g.value("edgeline_gateway_records_lost_total", node=NODE, topic="t") == 0
        assert 0 <= g.value("edgeline_gateway_stream_updated_age_seconds", node=NODE, topic="t") < WAIT_S
        # the newest record (seq 7) was stamped before the sync: it is at least as old as the sync is
        lag = g.value("edgeline_gateway_newest_record_age_seconds", node=NODE, topic="t")
        assert lag >= g.value("edgeline_gateway_stream_updated_age_seconds", node=NODE, topic="t") - 0.01
        assert lag >= 0.05 and lag < WAIT_S  # the uplink was paused after they were appended
        assert g.value("edgeline_gateway_records_published_total") == 3
        assert not g.has("edgeline_gateway_records_stored_total", node="cloud", topic="cmds")

        async def delivered():
            g = await scrape(http, gbase + "/metrics")
            return g.value("edgeline_gateway_downlink_delivered_seq", node=NODE, topic="cmds") == 3

        await until(delivered, "the node's PULL to acknowledge the cloud's records")
        g = await scrape(http, gbase + "/metrics")
        assert g.value("edgeline_gateway_downlink_pending_records", node=NODE, topic="cmds") == 0
        hz = await get_json(http, gbase + "/healthz")
        assert g.value("edgeline_gateway_commits_total") == hz["commits"] >= 1
        assert g.value("edgeline_gateway_health", status=hz["status"]) == 1
        assert g.value("edgeline_gateway_http_sessions") >= 1
        return m, g

    asyncio.run(fleet(tmp_path, fn))


def test_gateway_counts_refused_authentications(tmp_path):
    """A node with the wrong key: the gateway counts bad_proof per node, the agent's
    uplink says it is refused."""
    async def main():
        gw = make_gateway(tmp_path)
        server = TestServer(GatewayApi(gw).app())
        await server.start_server()
        gbase = str(server.make_url("")).rstrip("/")
        agent = Agent(agent_config(tmp_path, gbase + "/v1/sync", key_hex="22" * 32), print_fn=lambda *_: None)
        runner = aiohttp.web.AppRunner(agent.app())
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        abase = "http://127.0.0.1:%d" % runner.addresses[0][1]
        task = asyncio.ensure_future(agent.uplink.run())
        try:
            async with aiohttp.ClientSession() as http:
                async def refused():
                    return agent.uplink.refused is not None

                await until(refused, "the gateway to refuse the node")
                g = await scrape(http, gbase + "/metrics")
                m = await scrape(http, abase + "/metrics")
                hz = await get_json(http, gbase + "/healthz")
        finally:
            agent.uplink.stop()
            await asyncio.wait_for(task, WAIT_S)
            await runner.cleanup()
            agent.close()
            await server.close()
        assert g.value("edgeline_gateway_protocol_errors_total", reason="bad_proof") == hz["errors_by_reason"][
            "bad_proof"] >= 1
        assert g.value("edgeline_gateway_refused_total", node=NODE, reason="bad_proof") >= 1
        assert not g.has("edgeline_gateway_records_stored_total", node=NODE, topic="t")  # nothing taken
        assert m.value("edgeline_agent_uplink_refused") == 1
        assert m.value("edgeline_agent_uplink_failures_total") >= 1

    asyncio.run(main())


def documented(prefix):
    """name -> (type, labels) of the tables in docs/metrics.md whose names start with ``prefix``."""
    with open(os.path.join(ROOT, "docs", "metrics.md")) as f:
        rows = re.findall(r"^\| `(edgeline_[a-z_]+)` \| (counter|gauge|histogram) \|([a-z_, ]*)\|", f.read(), re.M)
    return {name: (kind, {x.strip() for x in labels.split(",") if x.strip()})
            for name, kind, labels in rows if name.startswith(prefix)}


def test_docs_list_every_metric(tmp_path):
    """docs/metrics.md lists exactly the families /metrics exposes, with their types (a
    family is listed even while it has no samples: the same names on every node)."""
    async def fn(agent, abase, gbase, http):
        await post(http, abase + "/v1/topics/t/records", b"[1]")
        return await scrape(http, abase + "/metrics"), await scrape(http, gbase + "/metrics")

    agent, gw = asyncio.run(fleet(tmp_path, fn))
    for scraped, prefix in ((agent, "edgeline_agent_"), (gw, "edgeline_gateway_")):
        docs = documented(prefix)
        assert {n: t for n, t in scraped.families.items()} == {n: t for n, (t, _) in docs.items()}
        for name, labels in scraped.labels.items():  # the families with samples: their labels too
            assert labels == docs[name][1], name


def test_an_agent_without_uplink_or_http_ingest_serves_metrics(tmp_path):
    cfg = parse_config({"edge": {"node_id": "n1", "data_dir": "data", "sync": {"enabled": False},
                                 "local_topics": [{"topic": "l", "sync": "every"}]}}, base_dir=str(tmp_path))

    async def main():
        agent = Agent(cfg, print_fn=lambda *_: None)
        server = TestServer(agent.app())
        await server.start_server()
        try:
            await agent.ingest("l", [None], [b"\x01"])
            async with aiohttp.ClientSession() as http:
                return await scrape(http, str(server.make_url("/metrics")))
        finally:
            await server.close()
            agent.close()

    m = asyncio.run(main())
    assert m.value("edgeline_agent_uplink_state", state="disabled") == 1
    assert m.value("edgeline_agent_records_appended_total", topic="l") == 1
    assert not m.has("edgeline_agent_queue_records", topic="l")  # a local topic owes nothing
    assert not m.has("edgeline_agent_uplink_sessions_total")


def test_commit_latency_buckets_are_cumulative_and_inclusive():
    from edgeline_host.agent.metrics import CommitLatency

    c = CommitLatency((0.1, 1.0))
    for s in (0.1, 0.5, 9.0):
        c.observe("t", s)
    got = {(s.name, s.labels.get("le")): s.value for s in c.family().samples}
    assert got == {("edgeline_agent_commit_duration_seconds_bucket", "0.1"): 1,
                   ("edgeline_agent_commit_duration_seconds_bucket", "1.0"): 2,
                   ("edgeline_agent_commit_duration_seconds_bucket", "+Inf"): 3,
                   ("edgeline_agent_commit_duration_seconds_count", None): 3,
                   ("edgeline_agent_commit_duration_seconds_sum", None): 9.6}


def test_prometheus_client_is_imported_at_the_first_scrape_only(tmp_path):
    """A node nobody scrapes (a Pi Zero) pays neither its import time nor its memory."""
    import subprocess
    import sys

    code = ("import sys, asyncio\n"
            "from edgeline_host.agent.config import parse_config\n"
            "from edgeline_host.agent.service import Agent\n"
            "import edgeline_host.gateway.api\n"
            "cfg = parse_config({'edge': {'node_id': 'n1', 'data_dir': %r, 'sync': {'enabled': False},"
            " 'local_topics': [{'topic': 'l', 'sync': 'group'}]}})\n"
            "agent = Agent(cfg, print_fn=lambda *_: None)\n"
            "agent.app()\n"
            "asyncio.run(agent.ingest('l', [None], [b'\\x01']))\n"
            "agent.close()\n"
            "assert 'prometheus_client' not in sys.modules, 'prometheus_client loaded'\n" % str(tmp_path / "d"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_mqtt_endpoint_metrics_count_what_its_stats_say(tmp_path):
    """The agent as an MQTT endpoint: publishes from a real paho client, then the
    endpoint's metrics equal its counters in /v1/health."""
    import socket

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    http_port = port()
    cfg = parse_config({"edge": {"node_id": NODE, "data_dir": str(tmp_path / "data"), "sync": {"enabled": False},
                                 "local_topics": ["t"],
                                 "ingest": {"http": {"listen": "127.0.0.1:%d" % http_port},
                                            "mqtt": {"listen": "127.0.0.1:%d" % port(), "map": {"m/#": "t"}}}}},
                       base_dir=str(tmp_path))

    async def main():
        agent = Agent(cfg, print_fn=lambda *_: None)
        task = asyncio.ensure_future(agent.run(install_signals=False))
        client = None
        try:
            async def serving():
                return (agent.mqtt_endpoint is not None and agent.mqtt_endpoint.port) or task.done()

            await until(serving, "the endpoint")
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pub")
            client.connect("127.0.0.1", agent.mqtt_endpoint.port)
            client.loop_start()
            infos = [client.publish("m/x", b"%d" % i, qos=1) for i in range(5)]

            async def acked():
                return all(i.is_published() for i in infos)

            await until(acked, "the PUBACKs")
            base = "http://127.0.0.1:%d" % http_port
            async with aiohttp.ClientSession() as http:
                m = await scrape(http, base + "/metrics")
                stats = (await get_json(http, base + "/v1/health"))["mqtt_endpoint"]
            return m, stats
        finally:
            if client is not None:
                client.disconnect()
                client.loop_stop()
            agent.stop()
            await asyncio.wait_for(task, WAIT_S)

    m, stats = asyncio.run(main())
    assert m.value("edgeline_agent_mqtt_endpoint_stored_total") == stats["stored"] == 5
    assert m.value("edgeline_agent_mqtt_endpoint_received_total") == stats["received"] == 5
    assert m.value("edgeline_agent_mqtt_endpoint_connects_total") == stats["connects"] == 1
    assert m.value("edgeline_agent_records_appended_total", topic="t") == 5
    assert not m.has("edgeline_agent_mqtt_ingest_received_total")  # no broker ingest configured


def test_evictions_and_gaps_on_both_sides(tmp_path):
    """A small drop_oldest topic filled while the uplink is paused: the agent counts what
    it evicted and the gaps it reported, the gateway the gaps and the records lost --
    each equal to the JSON APIs."""
    small = {"topic": "small", "direction": "edge_to_cloud", "sync": "every", "segment_size": "1KB",
             "budget": "4KB", "full_policy": "drop_oldest"}

    async def fn(agent, abase, gbase, http):
        await post(http, abase + "/v1/sync/pause", b"")
        body = ("[" + ", ".join('"%s"' % ("x" * 100) for _ in range(10)) + "]").encode()
        for _ in range(10):
            status, _ = await post(http, abase + "/v1/topics/small/records", body)
            assert status == 200
        q = (await get_json(http, abase + "/v1/queue"))["topics"]["small"]
        assert q["evicted"] > 0
        m = await scrape(http, abase + "/metrics")
        assert m.value("edgeline_agent_records_evicted_total", topic="small") == q["evicted"]
        assert m.value("edgeline_agent_queue_records", topic="small") == q["pending"]
        await post(http, abase + "/v1/sync/resume", b"")

        async def synced():
            return (await get_json(http, abase + "/v1/queue"))["topics"]["small"]["acked"] == 100

        await until(synced, "the uplink to sync topic small")
        m = await scrape(http, abase + "/metrics")
        g = await scrape(http, gbase + "/metrics")
        gaps = (await get_json(http, gbase + "/v1/gaps?origin=%s&topic=small" % NODE))["gaps"]
        up = (await get_json(http, abase + "/v1/sync/status"))["topics"]["small"]
        return m, g, gaps, up

    m, g, gaps, up = asyncio.run(fleet(tmp_path, fn, topics=[small]))
    assert gaps and up["gaps_sent"] >= 1
    assert m.value("edgeline_agent_gaps_sent_total", topic="small") == up["gaps_sent"]
    by_reason = {}
    for gap in gaps:
        by_reason[gap["reason"]] = by_reason.get(gap["reason"], 0) + 1
    for reason, n in by_reason.items():
        assert g.value("edgeline_gateway_gaps_total", node=NODE, topic="small", reason=reason) == n
    lost = sum(gap["last"] - gap["first"] + 1 for gap in gaps)
    assert g.value("edgeline_gateway_records_lost_total", node=NODE, topic="small") == lost
    assert g.value("edgeline_gateway_records_stored_total", node=NODE, topic="small") == 100 - lost
