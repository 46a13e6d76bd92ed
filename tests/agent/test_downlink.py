"""Cloud-to-edge topics as real processes: records published at an `edgeline gateway`
(`edgeline publish`, `POST /v1/topics/{topic}/publish`) reach every subscribed `edgeline
agent` once, in order -- agents that were offline, cut off behind a fault proxy, or
SIGKILLed mid-downlink included -- and bad input at the publish API stores nothing.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from test_agent import EDGELINE, ENV, ROOT, AgentProc, edgeline, free_port, http, wait_for  # noqa: E402

from edgeline import codec  # noqa: E402
from edgeline.log import RingLog  # noqa: E402

TOPICS = """\
setpoints: {direction: cloud_to_edge, max_record_bytes: 2KiB}
alarms: bidirectional
firmware: {direction: cloud_to_edge, nodes: [edge-2]}
telemetry: edge_to_cloud
"""

CONFIG = """\
edge:
  node_id: %(node)s
  data_dir: ./%(node)s-data
  key_file: ./%(node)s.key
  cloud_endpoint: http://127.0.0.1:%(gw_port)d
  sync:
    interval_secs: %(interval)s
    batch_size: %(batch)d
    retry: {initial_ms: 50, max_ms: 300, jitter: 0.2}
    circuit_breaker: {failures: 0}
  sync_topics:
    - {topic: telemetry, direction: edge_to_cloud, group_ms: 20}
    - {topic: alarms, direction: bidirectional, sync: every}
    - {topic: setpoints, direction: cloud_to_edge}
    - {topic: firmware, direction: cloud_to_edge}
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
"""


class Gateway:
    """`edgeline gateway --topics ...` as a process."""

    def __init__(self, tmp_path, keys, token=None):
        keys = dict({"edge-2": "11" * 32}, **keys)  # the topics file names edge-2
        self.keys = tmp_path / "keys.yaml"
        self.keys.write_text("".join("%s: \"%s\"\n" % kv for kv in keys.items()))
        self.topics = tmp_path / "topics.yaml"
        self.topics.write_text(TOPICS)
        self.token_file = None
        if token is not None:
            self.token_file = tmp_path / "publish.token"
            self.token_file.write_text(token + "\n")
        self.db = tmp_path / "gw.db"
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = None

    def start(self):
        argv = EDGELINE + ["gateway", "--keys", str(self.keys), "--db", str(self.db), "--listen",
                           "127.0.0.1:%d" % self.port, "--topics", str(self.topics)]
        if self.token_file is not None:
            argv += ["--publish-token-file", str(self.token_file)]
        self.proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def up():
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                return self.get("/healthz")
            except OSError:
                return None

        wait_for(up, what="the gateway")
        return self

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def publish(self, topic, body, token=None):
        """(status, JSON answer) of a publish request."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request("%s/v1/topics/%s/publish" % (self.url, topic), data=data, method="POST")
        if token is not None:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def downlinks(self):
        return {(d["node"], d["topic"]): d for d in self.get("/v1/status")["downlinks"]}

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        self.proc = None


class Proxy:
    """edgeline_host/faultlink.py as a process between the agents and the gateway: SIGUSR1
    cuts the link (every connection reset, new ones refused), SIGUSR2 restores it."""

    def __init__(self, target_port, delay_ms=0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeline_host.faultlink", "--listen", "127.0.0.1:0", "--target",
             "127.0.0.1:%d" % target_port, "--delay-ms", str(delay_ms)],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        self.port = int(json.loads(line)["listening"].rsplit(":", 1)[1])

    def cut(self):
        self.proc.send_signal(signal.SIGUSR1)

    def restore(self):
        self.proc.send_signal(signal.SIGUSR2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


def keygen(tmp_path, node):
    return edgeline("keygen", tmp_path / ("%s.key" % node), check=True).stdout.strip()


def make_agent(tmp_path, node, gw_port, interval="0.3", batch=1000):
    """An agent (not started) for node, whose key keygen() made, syncing with gw_port."""
    port = free_port()
    cfg = tmp_path / ("%s.yaml" % node)
    cfg.write_text(CONFIG % {"node": node, "gw_port": gw_port, "port": port, "interval": interval, "batch": batch})
    return AgentProc(cfg, port)


@pytest.fixture
def procs():
    """Everything a test starts, stopped at its end (agents SIGKILLed)."""
    started = []
    yield started
    for p in reversed(started):
        if isinstance(p, AgentProc):
            p.stop(signal.SIGKILL)
        else:
            p.stop()


def read(agent, topic, after=0, limit=10000, **q):
    q.update(after=after, limit=limit)
    qs = "&".join("%s=%s" % kv for kv in q.items())
    s, _, a = http("GET", "%s/v1/topics/%s/records?%s" % (agent.url, topic, qs), timeout=70)
    assert s == 200, a
    return a


def values_of(answer):
    return [(r["seq"], r["key"], r["value"]) for r in answer["records"]]


def cloud_log(path):
    lg = RingLog(str(path), budget_bytes=1 << 40, segment_bytes=65536)
    try:
        return [(r.seq, codec.loads(r.value)) for r in lg.read(1, 10 ** 6, 1 << 40)]
    finally:
        lg.close()


def test_offline_edge_gets_everything_once_in_order_then_live(tmp_path, procs):
    gw = Gateway(tmp_path, {"edge-1": keygen(tmp_path, "edge-1")}).start()
    procs.append(gw)
    proxy = Proxy(gw.port)
    procs.append(proxy)
    agent = make_agent(tmp_path, "edge-1", proxy.port)  # the agent reaches the gateway through the proxy

    # Published while the agent does not run: with the CLI (a file), and over HTTP.
    first = [{"key": "zone-%d" % (i % 4), "value": {"temp": 18 + i % 7, "i": i}} for i in range(250)]
    (tmp_path / "first.json").write_text(json.dumps(first))
    p = edgeline("publish", "setpoints", "--file", tmp_path / "first.json", "--gateway", gw.url)
    assert p.returncode == 0
    assert p.stdout == "published 250 record(s) to setpoints: seq 1..250 (origin cloud), durable\n"
    p = edgeline("publish", "setpoints", '{"temp": 21.5}', "--gateway", gw.url, "--json")
    assert json.loads(p.stdout) == {"topic": "setpoints", "origin": "cloud", "first_seq": 251, "last_seq": 251,
                                    "durable": True}
    assert gw.publish("alarms", [{"silence": 1}, {"silence": 2}, {"silence": 3}])[1]["last_seq"] == 3
    expected = [(i + 1, r["key"], r["value"]) for i, r in enumerate(first)] + [(251, None, {"temp": 21.5})]

    procs.append(agent)
    agent.start()
    got = wait_for(lambda: (lambda a: a if len(a["records"]) == 251 else None)(read(agent, "setpoints")),
                   what="the backlog to come down")
    assert got["origin"] == "cloud" and values_of(got) == expected
    assert [r["ts"] for r in got["records"]] == sorted(set(r["ts"] for r in got["records"]))  # the gateway's HLC

    # Bidirectional: the node's own records go up, the cloud's come down, neither comes back.
    s, _, a = agent.post("alarms", [{"door": "open"}, {"door": "shut"}])
    assert s == 200 and (a["first_seq"], a["last_seq"]) == (1, 2)
    wait_for(lambda: len(read(agent, "alarms")["records"]) == 3, what="the cloud's alarms")
    wait_for(lambda: gw.get("/v1/status?origin=edge-1")["streams"], what="the node's alarms at the gateway")
    assert values_of(read(agent, "alarms")) == [(1, None, {"silence": 1}), (2, None, {"silence": 2}),
                                                (3, None, {"silence": 3})]
    assert values_of(read(agent, "alarms", origin="edge-1")) == [(1, None, {"door": "open"}),
                                                                 (2, None, {"door": "shut"})]
    streams = {(s["origin"], s["topic"]): s["records"] for s in gw.get("/v1/status")["streams"]}
    assert streams == {("cloud", "setpoints"): 251, ("cloud", "alarms"): 3, ("edge-1", "alarms"): 2}

    # Live, through an outage: published while the link is cut, delivered after it.
    proxy.cut()
    assert gw.publish("setpoints", [{"live": i} for i in range(20)])[1]["first_seq"] == 252
    time.sleep(0.8)  # a few pull intervals: nothing gets through
    assert len(read(agent, "setpoints", after=251)["records"]) == 0
    st = json.loads(agent.cli("edge", "sync", "status", "--json").stdout)
    assert st["downlink"]["setpoints"]["last_seq"] == 251 and st["last_error"]
    proxy.restore()
    assert agent.cli("edge", "sync", "now").returncode == 0
    waited = read(agent, "setpoints", after=251, wait_ms=20000)  # a long poll: answers when they arrive
    more = waited["records"]
    while more[-1]["seq"] < 271:
        more += read(agent, "setpoints", after=more[-1]["seq"], wait_ms=20000)["records"]
    assert [(r["seq"], r["value"]) for r in more] == [(252 + i, {"live": i}) for i in range(20)]

    st = json.loads(agent.cli("edge", "sync", "status", "--json").stdout)
    assert st["downlink"]["setpoints"]["last_seq"] == 271 and st["downlink"]["setpoints"]["error"] is None
    human = agent.cli("edge", "sync", "status").stdout
    row = [ln for ln in human.splitlines() if ln.startswith("setpoints ")]
    assert "from the cloud" in human and row[0].split()[1] == "271"
    lines = agent.cli("edge", "records", "setpoints", "--after", "269").stdout.splitlines()
    assert [json.loads(ln)["seq"] for ln in lines] == [270, 271]
    wait_for(lambda: gw.downlinks()[("edge-1", "setpoints")]["pending"] == 0, what="the gateway to see the ack")
    d = gw.downlinks()[("edge-1", "setpoints")]
    assert (d["published"], d["delivered"]) == (271, 271)

    # The topic the gateway serves only to edge-2: refused, said so, and the rest goes on.
    assert "unknown_topic" not in st["downlink"]["firmware"]["error"]  # the gateway's own words
    assert "firmware" in st["downlink"]["firmware"]["error"] and "edge-1" in st["downlink"]["firmware"]["error"]
    assert agent.post("telemetry", {"t": 1})[0] == 200
    wait_for(lambda: ("edge-1", "telemetry") in {(s["origin"], s["topic"]) for s in gw.get("/v1/status")["streams"]},
             what="telemetry at the gateway")
    assert agent.get("/v1/health")["ok"]

    # What is on disk: the topic's log holds the cloud's records, under their seqs.
    agent.stop(signal.SIGTERM)
    assert cloud_log(tmp_path / "edge-1-data" / "setpoints") == [(s, v) for s, _, v in expected] + [
        (252 + i, {"live": i}) for i in range(20)]
    assert [s for s, _ in cloud_log(tmp_path / "edge-1-data" / "alarms~cloud")] == [1, 2, 3]


def test_sigkill_mid_downlink_every_record_once_in_order(tmp_path, procs):
    gw = Gateway(tmp_path, {"edge-1": keygen(tmp_path, "edge-1")}).start()
    procs.append(gw)
    proxy = Proxy(gw.port, delay_ms=5)  # a slower link: the kills land mid-downlink
    procs.append(proxy)
    agent = make_agent(tmp_path, "edge-1", proxy.port, batch=25)  # 25 records per DATA
    n = 1500
    values = [{"i": i, "pad": "p" * (i % 50)} for i in range(n)]
    for k in range(0, n, 500):
        assert gw.publish("setpoints", values[k:k + 500])[0] == 200
    procs.append(agent)
    data_dir = tmp_path / "edge-1-data" / "setpoints"
    for kill_at in (200, 700, 1100):
        agent.start()
        held = wait_for(lambda: (lambda q: q if q >= kill_at else None)(
            agent.get("/v1/queue")["topics"]["setpoints"]["received_seq"]), timeout=60, what="records coming down")
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        agent.proc = None
        got = cloud_log(data_dir)  # what survived: a prefix of the published records, each once
        assert held <= len(got) < n, (kill_at, held, len(got))
        assert got == [(s + 1, values[s]) for s in range(len(got))]
    agent.start()
    wait_for(lambda: agent.get("/v1/queue")["topics"]["setpoints"]["received_seq"] == n, timeout=60,
             what="the rest")
    recs = read(agent, "setpoints")["records"]
    assert [(r["seq"], r["value"]) for r in recs] == [(s + 1, values[s]) for s in range(n)]
    agent.stop(signal.SIGTERM)
    assert cloud_log(data_dir) == [(s + 1, values[s]) for s in range(n)]
    wait_for(lambda: gw.downlinks()[("edge-1", "setpoints")]["delivered"] == n, what="the last ack")


def test_two_agents_both_get_everything(tmp_path, procs):
    keys = {}
    agents = []
    gw_port = free_port()
    for node in ("edge-1", "edge-2"):
        keys[node] = keygen(tmp_path, node)
        agents.append(make_agent(tmp_path, node, gw_port))
    gw = Gateway(tmp_path, keys)
    gw.port, gw.url = gw_port, "http://127.0.0.1:%d" % gw_port
    gw.start()
    procs.append(gw)
    assert gw.publish("setpoints", [{"n": i} for i in range(100)])[0] == 200
    assert gw.publish("firmware", {"version": "1.2.3"})[0] == 200
    agents[0].start()
    procs.append(agents[0])
    wait_for(lambda: len(read(agents[0], "setpoints")["records"]) == 100, what="edge-1's backlog")
    agents[1].start()  # a late subscriber gets the whole topic too
    procs.append(agents[1])
    assert gw.publish("setpoints", [{"n": i} for i in range(100, 150)])[0] == 200
    want = [(s + 1, {"n": s}) for s in range(150)]
    for a in agents:
        wait_for(lambda: len(read(a, "setpoints")["records"]) == 150, what="both agents")
        assert [(r["seq"], r["value"]) for r in read(a, "setpoints")["records"]] == want
    # firmware is served to edge-2 only
    wait_for(lambda: len(read(agents[1], "firmware")["records"]) == 1, what="edge-2's firmware")
    assert read(agents[0], "firmware")["records"] == []
    wait_for(lambda: all(gw.downlinks()[(node, "setpoints")]["delivered"] == 150 for node in keys),
             what="both acks at the gateway")
    dl = gw.downlinks()
    assert (dl[("edge-2", "firmware")]["delivered"], ("edge-1", "firmware") in dl) == (1, False)
    assert gw.get("/healthz")["refused_pulls"] >= 1  # edge-1 asked for firmware


def test_publish_bad_input_stores_nothing(tmp_path, procs):
    token = "t0k3n-" + os.urandom(12).hex()
    gw = Gateway(tmp_path, {"edge-1": "00" * 32}, token=token).start()
    procs.append(gw)
    cases = [
        ("setpoints", {"x": 1}, None, 401, "Authorization"),
        ("setpoints", {"x": 1}, "wrong-token-0123456789", 401, "publish token"),
        ("setpoints", b"{not json", token, 400, "not valid JSON"),
        ("setpoints", b"[]", token, 400, "no records"),
        ("setpoints", {"key": 7, "value": 1}, token, 400, "key"),
        ("nope", {"x": 1}, token, 404, "unknown topic 'nope'"),
        ("telemetry", {"x": 1}, token, 409, "edge_to_cloud"),
        ("setpoints", [1, "y" * 3000], token, 413, "record 1 is 3003 bytes"),
        ("setpoints", b'"' + b"x" * (1 << 20) + b'"', token, 413, "over 1048576 bytes"),
        ("setpoints", list(range(10001)), token, 413, "at most 10000"),
    ]
    for topic, body, tok, status, text in cases:
        s, a = gw.publish(topic, body, tok)
        assert s == status and text in a["error"], (topic, s, a)
        assert list(a) == ["error"] and "\n" not in a["error"]
    assert gw.get("/v1/status")["streams"] == [] and gw.get("/healthz")["published"] == 0
    # the CLI: one line, exit 1
    p = edgeline("publish", "nope", "1", "--gateway", gw.url, "--token-file", gw.token_file)
    assert p.returncode == 1 and p.stderr == ("edgeline: error: the gateway at %s answered 404: unknown topic 'nope': "
                                              "the gateway publishes only the topics of its topics file (--topics)\n"
                                              % gw.url)
    p = edgeline("publish", "setpoints", "{bad", "--gateway", gw.url, "--token-file", gw.token_file)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "not valid JSON" in p.stderr
    p = edgeline("publish", "setpoints", "1", "--gateway", gw.url)
    assert p.returncode == 1 and "answered 401" in p.stderr
    p = edgeline("publish", "setpoints", "1", "--gateway", "http://127.0.0.1:%d" % free_port())
    assert p.returncode == 1 and "cannot reach the gateway" in p.stderr and p.stderr.count("\n") == 1
    # nothing was stored, and nothing took a seq: the first good record is seq 1
    assert gw.get("/v1/status")["streams"] == []
    s, a = gw.publish("setpoints", {"ok": True}, token)
    assert s == 200 and (a["first_seq"], a["last_seq"]) == (1, 1)
    p = edgeline("publish", "setpoints", '[{"key": "k", "value": 2}]', "--gateway", gw.url, "--token-file",
                 gw.token_file)
    assert p.returncode == 0 and "seq 2 (origin cloud)" in p.stdout


def test_gateway_refuses_bad_topics_and_reserved_node(tmp_path):
    from edgeline.errors import ConfigError
    from edgeline_host.gateway.topics import parse_topics

    keys = {"edge-1": b"k" * 32}
    for data, why in [({"a": {"direction": "up"}}, "a.direction: must be one of"),
                      ({"a": {"nodes": ["edge-9"]}}, "'edge-9' is not in the keys file"),
                      ({"a": {"nodes": "edge-1"}}, "a.nodes: must be a non-empty list"),
                      ({"a": {"max_record_bytes": "2MiB"}}, "must be 1 B to 1 MiB"),
                      ({"a": {"colour": "red"}}, "unknown key 'colour'"),
                      ({"": None}, "1-128 characters"),
                      (["a"], "must be a mapping")]:
        with pytest.raises(ConfigError) as e:
            parse_topics(data, keys, "t.yaml")
        assert why in str(e.value) and str(e.value).startswith("t.yaml: ") and "\n" not in str(e.value)
    t = parse_topics({"a": None, "b": "bidirectional", "c": {"nodes": ["edge-1"], "max_record_bytes": "1KiB"},
                      "d": "edge_to_cloud"}, keys)
    assert [(n, x.direction, x.may_pull("edge-1"), x.may_pull("edge-2"), x.max_record_bytes) for n, x in t.items()] == [
        ("a", "cloud_to_edge", True, True, 16384), ("b", "bidirectional", True, True, 16384),
        ("c", "cloud_to_edge", True, False, 1024), ("d", "edge_to_cloud", False, False, 16384)]
    # as the process sees it: exit 2, one line naming the file and the field
    kf = tmp_path / "keys.yaml"
    kf.write_text("edge-1: \"%s\"\n" % ("00" * 32))
    (tmp_path / "topics.yaml").write_text("a: {nodes: [edge-9]}\n")
    p = edgeline("gateway", "--keys", kf, "--topics", tmp_path / "topics.yaml", "--db", tmp_path / "gw.db")
    assert p.returncode == 2 and p.stderr == ("edgeline: error: %s: a.nodes: 'edge-9' is not in the keys file\n"
                                              % (tmp_path / "topics.yaml"))
    kf.write_text("cloud: \"%s\"\n" % ("00" * 32))
    p = edgeline("gateway", "--keys", kf, "--db", tmp_path / "gw.db")
    assert p.returncode == 2 and "'cloud' is reserved" in p.stderr and p.stderr.count("\n") == 1


# ------------------------------------------------------------- in process: the uplink loop

def test_uplink_loop_pulls_refusals_full_logs_and_bad_data(tmp_path):
    """The Uplink with a Downlink against an in-process gateway: pulls at start and at the
    interval; a topic the gateway refuses is set aside (and said so) while the uplink and
    the other topics go on, and tried again at sync_now(); a full `reject` log keeps what
    fits and gets the rest once there is room; a DATA that would leave a hole is a
    failed exchange that stores nothing."""
    import asyncio

    from edgeline.outbox import Outbox
    from edgeline.sync import Data
    from edgeline_host.agent.config import CircuitBreaker, RetryPolicy
    from edgeline_host.agent.downlink import Downlink
    from edgeline_host.agent.uplink import Uplink
    from edgeline_host.gateway.topics import parse_topics
    from test_uplink import GatewayProc, until

    key = bytes(range(32))

    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port(),
                               topics=parse_topics({"cmd": None, "big": None}, {"edge-1": key})).start()
        await gw.gw.publish("cmd", [codec.dumps(i) for i in range(10)])
        await gw.gw.publish("big", [codec.dumps("x" * 200) for _ in range(30)])
        cmd = RingLog(str(tmp_path / "cmd"), sync="none")
        nope = RingLog(str(tmp_path / "nope"), sync="none")
        big = RingLog(str(tmp_path / "big"), sync="none", full_policy="reject", segment_bytes=1024,
                      budget_bytes=2048)
        up_log = RingLog(str(tmp_path / "up"))
        ob = Outbox(up_log)
        seen = []
        down = Downlink({"cmd": cmd, "nope": nope, "big": big}, interval_ms=100, max_records=4,
                        on_records=lambda t, lg, n: seen.append((t, n)), refused_retry_ms=60000)
        up = Uplink("edge-1", key, gw.url, {"up": (up_log, ob)}, retry=RetryPolicy(initial_ms=20, max_ms=100),
                    breaker=CircuitBreaker(failures=0), interval_ms=100, downlink=down)
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: cmd.last_seq == 10, what="cmd")
            assert [codec.loads(r.value) for r in cmd.read(1, 100)] == list(range(10))
            assert ("cmd", 4) in seen and cmd.durable_seq == 10
            await until(lambda: up.status()["downlink"]["big"]["error"], what="big to fill up")
            st = up.status()["downlink"]
            assert "gateway refused" in st["nope"]["error"] and "nope" in st["nope"]["error"]
            assert nope.last_seq == 0 and up.failures == 0  # a refusal is not a link failure
            assert "full" in st["big"]["error"] and 0 < big.last_seq < 30
            # the uplink still sends, in the session started again after the refusal
            up_log.append(codec.dumps("up"), ts=1)
            up_log.flush()
            up.notify()
            await until(lambda: ob.acked == 1, what="the uplink")
            # live: published now, pulled at the next interval
            await gw.gw.publish("cmd", [codec.dumps(10)])
            await until(lambda: cmd.last_seq == 11, what="a live record")
            # room in the full log (its oldest segment goes): the rest comes
            held = big.last_seq
            big.full_policy = "drop_oldest"
            up.sync_now()
            await until(lambda: big.last_seq == 30, what="the rest of big")
            assert [r.seq for r in big.read(big.first_seq, 100)] == list(range(big.first_seq, 31))
            assert held < 30 and up.status()["downlink"]["big"]["error"] is None
            # sync_now() tries the refused topic again: still refused, still said so
            n = gw.gw.refused_pulls
            up.sync_now()
            await until(lambda: gw.gw.refused_pulls > n, what="the refused topic tried again")
            # a gateway that sends a DATA with a hole: a failed exchange, nothing stored
            real = gw.gw._pull

            async def hole(conn, ev):
                if ev.topic == "cmd":
                    return conn.send(Data("cmd", ev.after_seq + 5, 0, [[0, None, b"\x01"]])), None
                return await real(conn, ev)

            gw.gw._pull = hole
            up.sync_now()
            await until(lambda: up.total_failures >= 1, what="the failed exchange")
            assert "starts at seq 16, past 12" in up.status()["last_error"] and cmd.last_seq == 11
            gw.gw._pull = real
        finally:
            up.stop()
            await asyncio.wait_for(task, 10)
            await gw.stop()
            for lg in (cmd, nope, big, up_log):
                lg.close()

    asyncio.run(main())


def test_interval_zero_waits_for_records_instead_of_spinning(tmp_path):
    """sync.interval_secs 0 means "send as soon as records are durable" (notify), and a
    pull once a second: an idle uplink must sleep, not spin its loop."""
    import asyncio

    from edgeline.outbox import Outbox
    from edgeline_host.agent.downlink import Downlink
    from edgeline_host.agent.uplink import Uplink
    from edgeline_host.gateway.topics import parse_topics
    from test_uplink import GatewayProc, until

    key = bytes(range(32))

    class Counting(Uplink):
        waits = 0

        async def _wait(self, ms):
            self.waits += 1
            await Uplink._wait(self, ms)

    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port(),
                               topics=parse_topics({"cmd": None}, {"edge-1": key})).start()
        lg = RingLog(str(tmp_path / "up"))
        ob = Outbox(lg)
        cmd = RingLog(str(tmp_path / "cmd"), sync="none")
        ups = [Counting("edge-1", key, gw.url, {"up": (lg, ob)}, interval_ms=0),
               Counting("edge-1", key, gw.url, {}, interval_ms=0, downlink=Downlink({"cmd": cmd}, interval_ms=0))]
        try:
            for up in ups:
                task = asyncio.create_task(up.run())
                await asyncio.sleep(0.6)
                assert up.waits <= 3, up.waits  # a spinning loop waits thousands of times
                if up.downlink is None:
                    lg.append(codec.dumps(1), ts=1)
                    up.notify()
                    await until(lambda: ob.acked == 1, what="the record, at once")
                else:
                    await gw.gw.publish("cmd", [codec.dumps(1)])
                    await until(lambda: cmd.last_seq == 1, timeout_s=5, what="the pull a second later")
                up.stop()
                await asyncio.wait_for(task, 10)
        finally:
            await gw.stop()
            lg.close()
            cmd.close()

    asyncio.run(main())
