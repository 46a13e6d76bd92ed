"""The edge agent as real processes: `edgeline agent` ingesting over HTTP, syncing to an
`edgeline gateway` process, killed with SIGKILL, cut off from the gateway, driven by the
`edgeline edge ...` CLI."""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from edgeline_host.jsonrecords import RequestError, parse_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))
ENV.pop("EDGELINE_AGENT", None)
EDGELINE = [sys.executable, "-m", "edgeline_host.cli"]
NODE = "edge-1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgeline(*args, check=False):
    p = subprocess.run(EDGELINE + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def http(method, url, body=None, timeout=10):
    """(status, headers, JSON answer) -- errors included."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


class GatewayProc:
    """`edgeline gateway` on a fixed port; can be started again on the same db."""

    def __init__(self, tmp_path, key_hex, port=None):
        self.keys = tmp_path / "keys.yaml"
        self.keys.write_text("%s: %s\n" % (NODE, key_hex))
        self.db = tmp_path / "gw.db"
        self.port = port or free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(EDGELINE + ["gateway", "--keys", str(self.keys), "--db", str(self.db),
                                                 "--listen", "127.0.0.1:%d" % self.port],
                                     env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def up():
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                return self.get("/healthz")
            except OSError:
                return None

        wait_for(up, what="the gateway")
        return self

    def get(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path), timeout=10) as r:
            return json.loads(r.read())

    def records(self, topic):
        return self.get("/v1/records?topic=%s&origin=%s&limit=100000" % (topic, NODE))["records"]

    def stop(self):
        """Stop it; its output."""
        out = ""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                out, _ = self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
        self.proc = None
        return out or ""


class AgentProc:
    def __init__(self, config, port):
        self.config = config
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(EDGELINE + ["agent", "--config", str(self.config)], env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def up():
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                return http("GET", self.url + "/v1/health")[2]
            except OSError:
                return None

        wait_for(up, what="the agent")
        return self

    def post(self, topic, body):
        return http("POST", "%s/v1/topics/%s/records" % (self.url, topic), body)

    def get(self, path):
        return http("GET", self.url + path)[2]

    def cli(self, *args):
        return edgeline(*(list(args) + ["--agent", self.url]))

    def stop(self, sig=signal.SIGTERM):
        out = ""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                out, _ = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
        self.proc = None
        return out


CONFIG = """\
edge:
  node_id: %(node)s
  data_dir: ./data
  key_file: ./node.key
  cloud_endpoint: http://127.0.0.1:%(gw_port)d
  sync:
    interval_secs: 1
    retry: {initial_ms: 50, max_ms: 300, jitter: 0.2}
    circuit_breaker: {failures: 0}
  sync_topics:
    - {topic: telemetry, direction: edge_to_cloud, group_ms: 20}
    - {topic: alarms, direction: bidirectional, sync: every}
    - {topic: setpoints, direction: cloud_to_edge}
  local_topics:
    - debug.raw
    - {topic: tiny, full_policy: reject, segment_size: 1KiB, budget: 2KiB, sync: every}
    - {topic: scratch, sync: none}
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
"""


@pytest.fixture
def node(tmp_path):
    """(config path, key hex, gateway (not started), agent (not started))."""
    key_hex = edgeline("keygen", tmp_path / "node.key", check=True).stdout.strip()
    gw = GatewayProc(tmp_path, key_hex)
    port = free_port()
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(CONFIG % {"node": NODE, "gw_port": gw.port, "port": port})
    agent = AgentProc(cfg, port)
    yield cfg, key_hex, gw, agent
    agent.stop(signal.SIGKILL)
    gw.stop()


def values(records):
    return [r["value"] for r in records]


def test_parse_records_shapes():
    assert parse_records(b'{"t": 1}') == ([None], [b"\xa1at\x01"])
    keys, vals = parse_records(b'[{"key": "k", "value": 1}, 2]')
    assert keys == [b"k", None] and vals == [b"\x01", b"\x02"]
    assert parse_records(b'{"records": [true, null]}') == ([None, None], [b"\xf5", b"\xf6"])
    # An object with more than key and value is a bare value, kept whole.
    assert parse_records(b'{"key": "k", "value": 1, "x": 2}')[0] == [None]
    for bad in (b"{bad", b"[]", b'{"records": 3}', b'{"key": 5, "value": 1}', b"\xff",
                b'{"key": "\\ud800", "value": 1}', b'"\\ud800"'):
        with pytest.raises(RequestError) as e:
            parse_records(bad)
        assert e.value.status == 400


def test_keygen_writes_a_private_key_once(tmp_path):
    p = edgeline("keygen", tmp_path / "k", check=True)
    key = p.stdout.strip()
    assert len(key) == 64 and int(key, 16) >= 0
    assert (tmp_path / "k").read_text().strip() == key
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    again = edgeline("keygen", tmp_path / "k")
    assert again.returncode != 0 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert (tmp_path / "k").read_text().strip() == key


def test_ingest_syncs_each_record_exactly_once_and_local_stays(node):
    _, _, gw, agent = node
    gw.start()
    agent.start()
    s, _, a = agent.post("telemetry", {"t": 21.5})
    assert s == 200 and a == {"topic": "telemetry", "first_seq": 1, "last_seq": 1, "durable": True}
    s, _, a = agent.post("telemetry", [{"t": 1}, {"t": 2}, {"t": 3}])
    assert s == 200 and (a["first_seq"], a["last_seq"], a["durable"]) == (2, 4, True)
    s, _, a = agent.post("alarms", {"records": [{"key": "door", "value": "open"}, {"key": "door", "value": "shut"}]})
    assert s == 200 and (a["first_seq"], a["last_seq"], a["durable"]) == (1, 2, True)
    s, _, a = agent.post("debug.raw", [1, 2, 3])
    assert s == 200 and (a["first_seq"], a["last_seq"], a["durable"]) == (1, 3, True)
    s, _, a = agent.post("scratch", "x")
    assert s == 200 and a["durable"] is False  # sync: none says so

    wait_for(lambda: len(gw.records("telemetry")) == 4 and len(gw.records("alarms")) == 2, what="sync")
    wait_for(lambda: agent.get("/v1/queue")["pending"] == 0, what="acks")
    tel = gw.records("telemetry")
    assert [r["seq"] for r in tel] == [1, 2, 3, 4]
    assert values(tel) == [{"t": 21.5}, {"t": 1}, {"t": 2}, {"t": 3}]
    assert [r["ts"] for r in tel] == sorted(set(r["ts"] for r in tel))  # HLC: strictly increasing
    al = gw.records("alarms")
    assert [(r["seq"], r["key"], r["value"]) for r in al] == [(1, "door", "open"), (2, "door", "shut")]
    assert gw.records("debug.raw") == [] and gw.records("scratch") == []
    assert {s["topic"] for s in gw.get("/v1/status?origin=" + NODE)["streams"]} == {"telemetry", "alarms"}
    q = agent.get("/v1/queue")["topics"]
    assert q["debug.raw"]["last_seq"] == 3 and q["debug.raw"]["acked"] is None
    assert q["telemetry"]["acked"] == 4

    # A clean stop, a restart: seqs continue, nothing is sent twice.
    out = agent.stop(signal.SIGTERM)
    assert "stopped" in out
    agent.start()
    s, _, a = agent.post("telemetry", {"t": 4})
    assert (a["first_seq"], a["durable"]) == (5, True)
    wait_for(lambda: len(gw.records("telemetry")) == 5, what="sync after restart")
    assert [r["seq"] for r in gw.records("telemetry")] == [1, 2, 3, 4, 5]


def test_sigkill_loses_nothing_acknowledged(node):
    _, _, gw, agent = node
    gw.start()
    agent.start()
    acked = {"telemetry": [], "alarms": []}
    stop = threading.Event()

    def producer(topic):
        n = 0
        while not stop.is_set():
            body = [{"topic": topic, "n": n + i} for i in range(5)]
            try:
                s, _, a = agent.post(topic, body)
            except OSError:
                return  # the agent died mid-request: this batch was not acknowledged
            if s == 200 and a["durable"]:
                acked[topic].extend(range(n, n + 5))
            n += 5

    threads = [threading.Thread(target=producer, args=(t,)) for t in acked]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked["telemetry"]) >= 300 and len(acked["alarms"]) >= 50, what="acknowledged records")
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    agent.proc = None

    agent.start()
    wait_for(lambda: agent.get("/v1/queue")["pending"] == 0, timeout=60, what="the queue to drain")
    for topic, ns in acked.items():
        recs = gw.records(topic)
        seqs = [r["seq"] for r in recs]
        assert seqs == list(range(1, len(seqs) + 1))  # each seq once, none missing
        got = [v["n"] for v in values(recs)]
        assert len(got) == len(set(got))  # each record once
        assert set(ns) <= set(got), "acknowledged records lost: %s" % sorted(set(ns) - set(got))[:10]
        assert agent.get("/v1/queue")["topics"][topic]["last_seq"] == len(seqs)
    # Appends continue after the recovered tail.
    before = len(gw.records("telemetry"))
    s, _, a = agent.post("telemetry", {"after": True})
    assert a["first_seq"] == before + 1


def test_gateway_down_store_and_forward(node):
    _, _, gw, agent = node
    agent.start()  # the gateway is not running
    for i in range(20):
        s, _, a = agent.post("telemetry", [{"i": i, "j": j} for j in range(10)])
        assert s == 200 and a["durable"] is True
    assert agent.post("alarms", {"key": "k", "value": 1})[0] == 200
    p = agent.cli("edge", "queue", "--json")
    assert p.returncode == 0, p.stderr
    q = json.loads(p.stdout)
    assert q["pending"] == 201 and q["topics"]["telemetry"]["pending"] == 200
    h = agent.get("/v1/health")
    assert h["ok"] is True and h["uplink"] in ("backing_off", "connecting", "open") and h["last_error"]
    human = agent.cli("edge", "sync", "status").stdout
    assert "last error:" in human

    gw.start()
    agent.cli("edge", "sync", "now")
    wait_for(lambda: agent.get("/v1/queue")["pending"] == 0, timeout=60, what="the queue to drain")
    recs = gw.records("telemetry")
    assert [r["seq"] for r in recs] == list(range(1, 201))
    assert values(recs)[:2] == [{"i": 0, "j": 0}, {"i": 0, "j": 1}]
    assert json.loads(agent.cli("edge", "queue", "--json").stdout)["pending"] == 0


def test_cli_against_a_running_agent(node):
    _, _, gw, agent = node
    gw.start()
    agent.start()
    agent.post("telemetry", [1, 2, 3])
    wait_for(lambda: agent.get("/v1/queue")["pending"] == 0, what="sync")

    p = agent.cli("edge", "health")
    assert p.returncode == 0 and p.stdout.startswith("ok: node edge-1,") and "uplink connected" in p.stdout
    h = json.loads(agent.cli("edge", "health", "--json").stdout)
    assert h["ok"] and h["storage"]["budget_bytes"] == 1 << 30 and h["storage"]["used_bytes"] > 0
    q = agent.cli("edge", "queue").stdout.splitlines()
    assert q[0].split()[:5] == ["topic", "direction", "last_seq", "acked", "pending"]
    tel = [line for line in q if line.startswith("telemetry ")][0].split()
    assert tel[:5] == ["telemetry", "edge_to_cloud", "3", "3", "0"]
    st = json.loads(agent.cli("edge", "sync", "status", "--json").stdout)
    assert st["state"] == "connected" and st["topics"]["telemetry"]["acked"] == 3
    # sync.compression's default (zstd), as the gateway accepted it (wire.md, "Compressed batches")
    assert st["compression"] == "zstd" and st["encoding"] == "zstd-columnar-1"
    human = agent.cli("edge", "sync", "status").stdout
    assert "uplink connected" in human and "batches zstd-columnar-1" in human

    # Pause: records accumulate; resume: they leave.
    p = agent.cli("edge", "sync", "pause")
    assert p.returncode == 0 and p.stdout.strip() == "sync pause: uplink paused"
    agent.post("telemetry", [4, 5])
    time.sleep(1.5)  # longer than interval_secs: a running uplink would have sent them
    assert len(gw.records("telemetry")) == 3
    assert json.loads(agent.cli("edge", "sync", "status", "--json").stdout)["state"] == "paused"
    assert json.loads(agent.cli("edge", "queue", "--json").stdout)["topics"]["telemetry"]["pending"] == 2
    r = json.loads(agent.cli("edge", "sync", "resume", "--json").stdout)
    assert r["ok"] and r["action"] == "resume" and r["state"] != "paused"
    wait_for(lambda: len(gw.records("telemetry")) == 5, what="sync after resume")
    assert agent.cli("edge", "sync", "now").returncode == 0

    # $EDGELINE_AGENT is the default address.
    p = subprocess.run(EDGELINE + ["edge", "health"], env=dict(ENV, EDGELINE_AGENT=agent.url), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("ok:")


def test_unreachable_agent_is_one_line():
    port = free_port()
    for args in (["edge", "health"], ["edge", "queue", "--json"], ["edge", "sync", "now"]):
        p = edgeline(*(args + ["--agent", "http://127.0.0.1:%d" % port]))
        # edge health: 3 (health's exit codes: 0 ok, 1 degraded, 2 failing, 3 unreachable)
        assert p.returncode == (3 if args[1] == "health" else 1) and p.stdout == ""
        assert p.stderr == "edgeline: error: cannot reach the agent at http://127.0.0.1:%d: connection refused\n" % port


def test_bad_input_is_refused_and_nothing_is_stored(node):
    _, _, gw, agent = node
    gw.start()
    agent.start()
    cases = [
        ("nope", {"x": 1}, 404, "unknown topic 'nope'"),
        ("telemetry", b"{not json", 400, "not valid JSON"),
        ("telemetry", b"[]", 400, "no records"),
        ("telemetry", {"key": 7, "value": 1}, 400, "key"),
        ("telemetry", b'[1, {"t": NaN}]', 400, "record 1: NaN is not a finite number"),
        ("telemetry", b'[{"t": 1e999}]', 400, "record 0: 1e999 is not a finite number"),
        ("setpoints", {"x": 1}, 409, "cloud_to_edge"),
        ("telemetry", b'"' + b"x" * (1 << 20) + b'"', 413, "over 1048576 bytes"),
        ("tiny", [1, "y" * 2000], 413, "does not fit in a segment"),
    ]
    for topic, body, status, text in cases:
        s, _, a = agent.post(topic, body)
        assert s == status and text in a["error"], (topic, s, a)
        assert list(a) == ["error"] and "\n" not in a["error"]
    q = agent.get("/v1/queue")["topics"]
    assert all(t["last_seq"] == 0 for t in q.values())

    # reject: the producer sees backpressure (503, Retry-After) once the topic is full.
    statuses = []
    for i in range(40):
        s, headers, a = agent.post("tiny", "z" * 100)
        statuses.append(s)
        if s == 503:
            assert headers["Retry-After"] == "1" and "full" in a["error"]
            break
    assert statuses[-1] == 503 and set(statuses[:-1]) == {200}

    # The agent keeps serving.
    s, _, a = agent.post("telemetry", {"ok": True})
    assert s == 200 and a["first_seq"] == 1
    h = agent.get("/v1/health")
    assert h["ok"] and h["rejected"] == len(cases) + 1
    wait_for(lambda: len(gw.records("telemetry")) == 1, what="sync")


def test_invalid_config_exits_2_naming_the_field(tmp_path):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("edge:\n  node_id: e1\n  sync_topics:\n    - {topic: a, direction: up}\n")
    p = edgeline("agent", "--config", cfg)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "edge.sync_topics[0].direction" in p.stderr
    assert p.stderr.startswith("edgeline: error: ")


def test_missing_key_file_says_how_to_make_one(tmp_path):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(CONFIG % {"node": NODE, "gw_port": free_port(), "port": free_port()})
    p = edgeline("agent", "--config", cfg)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "edge.key_file" in p.stderr and "edgeline keygen" in p.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_keygen_creates_parent_directories(tmp_path):
    """The agent's hint names key_file wherever it is (/etc/edgeline/node.key on a fresh
    device): `edgeline keygen` makes the directories it needs, private."""
    cfg = tmp_path / "edge.yaml"
    cfg.write_text((CONFIG % {"node": NODE, "gw_port": free_port(), "port": free_port()})
                   .replace("key_file: ./node.key", "key_file: ./etc/edgeline/node.key"))
    p = edgeline("agent", "--config", cfg)
    hint = p.stderr.split("create it with `", 1)[1].split("`", 1)[0]
    assert hint.startswith("edgeline keygen ")
    p = edgeline(*hint.split()[1:], check=True)
    assert (tmp_path / "etc/edgeline/node.key").read_text().strip() == p.stdout.strip()
    assert stat.S_IMODE(os.stat(tmp_path / "etc/edgeline").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "etc/edgeline/node.key").st_mode) == 0o600


def _one_line_refusal(p, holder_pid, what):
    assert p.returncode not in (0, None), p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("edgeline: %s is in use by pid %d (started " % (what, holder_pid)), lines[0]
    assert lines[0].endswith("; stop it first"), lines[0]


def test_two_agents_on_one_data_dir(node):
    """Issue 9, hole 1: the second agent is refused before it opens a log; the first keeps
    working, nothing is corrupt; a SIGKILLed holder's lock never blocks the next start."""
    cfg, _, gw, agent = node
    gw.start()
    agent.start()
    s, _, a = agent.post("telemetry", [{"n": 1}, {"n": 2}])
    assert (s, a["last_seq"], a["durable"]) == (200, 2, True)
    wait_for(lambda: agent.get("/v1/queue")["pending"] == 0, what="acks")  # the first agent's writes are done
    data = str(cfg.parent / "data")
    before = {f: os.path.getsize(os.path.join(data, "telemetry", f)) for f in os.listdir(os.path.join(data, "telemetry"))}

    second = cfg.parent / "edge2.yaml"
    second.write_text(cfg.read_text().replace("127.0.0.1:%d\"" % agent.port, "127.0.0.1:%d\"" % free_port()))
    p = edgeline("agent", "--config", second)
    _one_line_refusal(p, agent.proc.pid, data)
    after = {f: os.path.getsize(os.path.join(data, "telemetry", f)) for f in os.listdir(os.path.join(data, "telemetry"))}
    assert after == before  # it touched nothing

    # Inspecting the log with the CLI recovers it (a write): refused as well while the agent runs.
    p = edgeline("log", "stat", os.path.join(data, "telemetry"))
    _one_line_refusal(p, agent.proc.pid, data)

    s, _, a = agent.post("telemetry", [{"n": 3}, {"n": 4}])
    assert (s, a["first_seq"], a["last_seq"], a["durable"]) == (200, 3, 4, True)
    wait_for(lambda: len(gw.records("telemetry")) == 4, what="sync")
    assert values(gw.records("telemetry")) == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    assert agent.get("/v1/queue")["topics"]["telemetry"]["corrupt"] == 0

    agent.proc.send_signal(signal.SIGKILL)  # a stale LOCK file now names a dead pid
    agent.proc.wait(10)
    agent.proc = None
    agent.start()
    s, _, a = agent.post("telemetry", {"n": 5})
    assert (s, a["first_seq"]) == (200, 5)
    agent.stop(signal.SIGTERM)
    p = edgeline("log", "stat", os.path.join(data, "telemetry"), "--json", check=True)
    st = json.loads(p.stdout)
    assert (st["last_seq"], st["corrupt"]) == (5, 0)


def test_two_gateways_on_one_store(node):
    _, _, gw, _ = node
    gw.start()
    p = edgeline("gateway", "--keys", gw.keys, "--db", gw.db, "--listen", "127.0.0.1:%d" % free_port())
    _one_line_refusal(p, gw.proc.pid, str(gw.db))
    assert gw.get("/healthz")["ok"]
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    gw.proc = None
    gw.start()  # the dead holder's lock does not block
    assert gw.get("/healthz")["ok"]


def test_gateway_reads_its_edgeline_gateway_variables(tmp_path):
    """The settings boards/x86-gateway/gateway.env documents work with `edgeline gateway`
    itself (systemd EnvironmentFile=); an option given on the command line wins."""
    keys = tmp_path / "keys.yaml"
    keys.write_text("%s: \"%s\"\n" % (NODE, "ab" * 32))
    port = free_port()
    env = dict(ENV, EDGELINE_GATEWAY_KEYS=str(keys), EDGELINE_GATEWAY_DB=str(tmp_path / "env.db"),
               EDGELINE_GATEWAY_LISTEN="127.0.0.1:%d" % free_port(), EDGELINE_GATEWAY_TCP="127.0.0.1:%d" % free_port())
    proc = subprocess.Popen(EDGELINE + ["gateway", "--listen", "127.0.0.1:%d" % port], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up():
            assert proc.poll() is None, proc.stdout.read()
            try:
                return http("GET", "http://127.0.0.1:%d/healthz" % port)[2]
            except OSError:
                return None

        assert wait_for(up, what="the gateway")["ok"]
        assert os.path.exists(tmp_path / "env.db")  # EDGELINE_GATEWAY_DB
        socket.create_connection(("127.0.0.1", int(env["EDGELINE_GATEWAY_TCP"].rsplit(":", 1)[1])), 5).close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert "1 node(s), store %s" % (tmp_path / "env.db") in out
    p = edgeline("gateway", "--help", check=True)
    assert "EDGELINE_GATEWAY_KEYS" in p.stdout


def test_a_wiped_data_dir_is_a_new_incarnation_and_its_records_are_stored(node, tmp_path):
    # A Pi whose SD card was replaced: the agent's data directory is gone, the gateway
    # keeps its store. The new logs restart at seq 1 under new incarnations; the gateway
    # stores their records (it took them for duplicates before) and reports it.
    import shutil

    _, _, gw, agent = node
    gw.start()
    agent.start()
    s, _, a = agent.post("telemetry", [{"old": i} for i in range(20)])
    assert s == 200 and a["last_seq"] == 20
    wait_for(lambda: agent.get("/v1/queue")["pending"] == 0, what="the first log to sync")
    agent.stop()
    shutil.rmtree(str(tmp_path / "data"))
    agent.start()
    s, _, a = agent.post("telemetry", [{"new": i} for i in range(5)])
    assert s == 200 and (a["first_seq"], a["last_seq"]) == (1, 5)
    wait_for(lambda: agent.get("/v1/queue")["pending"] == 0, what="the new log to sync")
    recs = gw.records("telemetry")
    old_inc, new_inc = recs[0]["incarnation"], recs[-1]["incarnation"]
    assert old_inc != new_inc
    assert [(r["incarnation"], r["seq"], r["value"]) for r in recs] == \
        [(old_inc, i + 1, {"old": i}) for i in range(20)] + [(new_inc, i + 1, {"new": i}) for i in range(5)]
    st = gw.get("/v1/status?origin=%s" % NODE)
    rep = [x for x in st["incarnations"] if x["topic"] == "telemetry"][0]
    assert [(i["incarnation"], i["current"], i["last_seq_seen"], i["unknown_after"]) for i in rep["incarnations"]] \
        == [(old_inc, False, 20, 20), (new_inc, True, 5, None)]
    assert gw.get("/healthz")["new_incarnations"] >= 1
    one = gw.get("/v1/records?topic=telemetry&origin=%s&incarnation=%s&from=4" % (NODE, new_inc))["records"]
    assert [r["seq"] for r in one] == [4, 5]
    out = gw.stop()
    assert out.count("new log incarnation %s" % new_inc) == 1, out[-3000:]
    assert "previous incarnation %s ended at seq 20" % old_inc in out
