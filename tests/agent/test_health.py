"""Health that tells the truth (issue 9, hole 7): the agent's and the gateway's health say
ok, degraded or failing with the reasons, and `edgeline edge|gateway health` exit 0, 1,
2 or 3 on it. The rules (edgeline_host.health), the agent in-process (corrupt records,
lock lost, disk and storage), the agent and gateway as processes (uplink failing past
its threshold, keys refused), the gateway's counting and rate-limited logging of refused
nodes (with an injected clock), and the log format (logsetup)."""
import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from edgeline import sync
from edgeline.logformat import SEGMENT_HEADER_BYTES
from edgeline.store import topic_dirname
from edgeline_host import health as H
from edgeline_host import logsetup
from edgeline_host.agent.config import parse_config
from edgeline_host.agent.service import Agent
from edgeline_host.gateway.gateway import REFUSAL_LOG_EVERY_S, Gateway

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_agent import CONFIG, EDGELINE, ENV, NODE, AgentProc, edgeline, free_port, wait_for  # noqa: E402

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


# ---------------------------------------------------------------------------- the rules


def test_rules_and_summary():
    assert H.summarize([]) == {"status": "ok", "reasons": []}
    assert H.uplink_failing(None, 0) == [] and H.uplink_failing(299, 300) == []
    r = H.uplink_failing(600, 300, "cannot reach the gateway")
    assert [x["code"] for x in r] == ["uplink_failing"] and r[0]["severity"] == "degraded"
    assert "10 min" in r[0]["line"] and "cannot reach the gateway" in r[0]["line"]
    assert H.auth_refused(None) == []
    assert H.auth_refused("bad_proof")[0]["severity"] == "failing"
    assert "keys file" in H.auth_refused("unknown_node")[0]["line"]
    assert H.corrupt_records({"a": 0}) == []
    assert "3 corrupt record(s)" in H.corrupt_records({"a": 2, "b": 1, "c": 0})[0]["line"]
    assert H.storage_nearly_full(90, 100) == [] and H.storage_nearly_full(91, 100)[0]["code"] == "storage_full"
    assert H.disk_low(None, 10) == [] and H.disk_low(10, 10) == [] and H.disk_low(9, 10)[0]["code"] == "disk_low"
    assert H.lock_lost(None) == [] and H.lock_lost(lambda: False) == []
    assert H.lock_lost(lambda: True)[0]["severity"] == "failing"
    assert H.failed_topics(["a"])[0]["severity"] == "failing"
    assert H.store_errors(0, 600) == [] and H.store_errors(2, 600)[0]["severity"] == "degraded"
    assert H.store_errors(2, 600, "disk I/O error", failing_now=True)[0]["severity"] == "failing"
    assert H.refused_nodes({"n1": "bad_proof"}, 600)[0]["severity"] == "degraded"
    both = H.summarize(H.corrupt_records({"a": 1}) + H.auth_refused("bad_proof"))
    assert both["status"] == "failing" and len(both["reasons"]) == 2
    assert [H.exit_code(s) for s in ("ok", "degraded", "failing")] == [0, 1, 2] and H.EXIT_UNREACHABLE == 3
    assert H.lines(both)[0] == "failing" and H.lines(both)[2].startswith("failing: the gateway refuses")


def test_board_reasons_from_its_status_and_its_lines():
    """A board's health as the host reads it, with no byte more of the board's RAM."""
    st = {"storage_budget_bytes": 1000, "topics": {"t": {"size_bytes": 950, "corrupt": 0}}}
    assert [r["code"] for r in H.board_reasons(st)] == ["storage_full"]
    st["topics"]["t"]["size_bytes"] = 10
    assert H.board_reasons(st) == []
    lines = ["edgeline: sync failed: gateway sent ERROR bad_proof: AUTH proof for node 'b1' is wrong; retry in 500 ms",
             "edgeline warning: log /data/telemetry: corrupt data in segment 00000001 at byte 40; "
             "records 3..5 are lost"]
    r = H.summarize(H.board_reasons(st, lines))
    assert r["status"] == "failing" and [x["code"] for x in r["reasons"]] == ["auth_refused", "corrupt_records"]
    assert "3 corrupt record(s) skipped in telemetry (3)" in r["reasons"][1]["line"]
    assert H.board_reasons(None, lines[:1] + ["ACKED 7"]) == []  # accepted since
    assert H.board_reasons(None, ["RETRY gateway sent ERROR unknown_node: no key for node 'b1'"])[0]["code"] == \
        "auth_refused"


# ---------------------------------------------------------------------------- agent, in-process


def _agent(tmp_path, max_storage=None, **health):
    edge = {"node_id": NODE, "data_dir": str(tmp_path / "data"), "sync": {"enabled": False},
            "local_topics": [{"topic": "t", "segment_size": "1KiB", "sync": "every"}]}
    if health:
        edge["health"] = health
    if max_storage:
        edge["resources"] = {"max_storage": max_storage}
    return Agent(parse_config({"edge": edge}), print_fn=lambda s: None)


def test_corrupt_records_make_the_agent_degraded(tmp_path):
    a = _agent(tmp_path)
    st = a.topics["t"]
    a.append(st, [None] * 100, [b"\x18\x2a" * 20] * 100)  # many segments of 1 KiB
    h = a.health()
    assert (h["status"], h["reasons"], h["ok"]) == ("ok", [], True)
    a.close()
    d = tmp_path / "data" / topic_dirname("t")
    first = sorted(p for p in os.listdir(d) if not p.endswith(".cur"))[0]
    with open(d / first, "r+b") as f:  # rot inside a sealed segment's first record
        f.seek(SEGMENT_HEADER_BYTES + 8)
        b = f.read(1)
        f.seek(SEGMENT_HEADER_BYTES + 8)
        f.write(bytes([b[0] ^ 0xFF]))
    a = _agent(tmp_path)
    try:
        recs = a.topics["t"].log.read(1, 1000, 1 << 20)  # a reader meets the rot: counted
        assert len(recs) < 100
        h = a.health()
        assert h["status"] == "degraded" and not h["ok"]
        assert [r["code"] for r in h["reasons"]] == ["corrupt_records"]
        assert "corrupt record(s) skipped in t" in h["reasons"][0]["line"]
    finally:
        a.close()


def test_lost_lock_is_failing_and_disk_and_storage_thresholds_act(tmp_path):
    # min_free_disk above any disk's free space, storage_full_percent at 1 % of 64 KiB
    a = _agent(tmp_path, "64KiB", min_free_disk=1 << 60, storage_full_percent=1)
    try:
        a.append(a.topics["t"], [None] * 40, [b"\x18\x2a" * 20] * 40)
        h = a.health()
        assert h["status"] == "degraded"
        assert sorted(r["code"] for r in h["reasons"]) == ["disk_low", "storage_full"]
        a.lock_lost = lambda: True
        h = a.health()
        assert h["status"] == "failing" and "lock_lost" in [r["code"] for r in h["reasons"]]
    finally:
        a.close()
    a = _agent(tmp_path)  # the defaults: 90 % of 1 GiB, 64 MiB free
    try:
        assert a.health()["status"] == "ok"
    finally:
        a.close()


# ---------------------------------------------------------------------------- processes


class Gw:
    """`edgeline --log-format json gateway` with the keys given; its log lines kept."""

    def __init__(self, tmp_path, keys):
        self.keys = tmp_path / "keys.yaml"
        self.keys.write_text("".join("%s: %s\n" % (n, k.hex()) for n, k in keys.items()))
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = subprocess.Popen(EDGELINE + ["--log-format", "json", "gateway", "--keys", str(self.keys),
                                                 "--db", str(tmp_path / "gw.db"), "--listen",
                                                 "127.0.0.1:%d" % self.port],
                                     env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: self.health() is not None, what="the gateway")

    def health(self):
        assert self.proc.poll() is None, self.proc.stdout.read()
        p = edgeline("gateway", "health", "--json", "--gateway", self.url)
        return json.loads(p.stdout) if p.returncode != 3 else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out = self.proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out = self.proc.communicate()[0]
        return out


def _agent_proc(tmp_path, gw_port, key=KEY, health=None):
    (tmp_path / "node.key").write_text(key.hex() + "\n")
    port = free_port()
    cfg = tmp_path / "edge.yaml"
    text = CONFIG % {"node": NODE, "gw_port": gw_port, "port": port}
    if health:
        text += "  health:\n" + "".join("    %s: %s\n" % kv for kv in health.items())
    cfg.write_text(text)
    return AgentProc(cfg, port)


def test_uplink_failing_past_its_threshold_is_degraded_then_ok_again(tmp_path):
    gw_port = free_port()  # nothing listens there yet
    agent = _agent_proc(tmp_path, gw_port, health={"uplink_failing_secs": 0}).start()
    gw = None
    try:
        assert agent.post("telemetry", [1, 2, 3])[0] == 200
        h = wait_for(lambda: (lambda h: h if h["status"] != "ok" else None)(agent.get("/v1/health")),
                     what="health to leave ok")
        assert h["status"] == "degraded" and h["ok"] is False
        assert [r["code"] for r in h["reasons"]] == ["uplink_failing"]
        p = agent.cli("edge", "health")
        assert p.returncode == 1, p.stderr
        lines = p.stdout.splitlines()
        assert lines[0].startswith("degraded: node %s," % NODE)
        assert lines[1].startswith("degraded: uplink failing for ") and lines[1].endswith("[uplink_failing]")
        assert json.loads(agent.cli("edge", "health", "--json").stdout)["reasons"][0]["code"] == "uplink_failing"

        # The gateway comes up: the next exchange succeeds and the reason goes.
        keys = tmp_path / "gwkeys.yaml"
        keys.write_text("%s: %s\n" % (NODE, KEY.hex()))
        gw = subprocess.Popen(EDGELINE + ["gateway", "--keys", str(keys), "--db", str(tmp_path / "gw.db"),
                                          "--listen", "127.0.0.1:%d" % gw_port],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: edgeline("gateway", "health", "--gateway", "127.0.0.1:%d" % gw_port).returncode == 0,
                 what="the gateway")
        agent.cli("edge", "sync", "now")
        wait_for(lambda: agent.get("/v1/health")["status"] == "ok", what="health to be ok again")
        p = agent.cli("edge", "health")
        assert p.returncode == 0 and p.stdout.startswith("ok: node")
    finally:
        agent.stop(signal.SIGKILL)
        if gw is not None:
            gw.send_signal(signal.SIGINT)
            gw.wait(15)


def test_default_threshold_keeps_a_short_outage_ok(tmp_path):
    agent = _agent_proc(tmp_path, free_port()).start()
    try:
        agent.post("telemetry", [1])
        wait_for(lambda: json.loads(agent.cli("edge", "sync", "status", "--json").stdout)["failures"] >= 2,
                 what="failed exchanges")
        h = agent.get("/v1/health")
        assert h["status"] == "ok" and h["ok"] is True  # failing for far less than 300 s
    finally:
        agent.stop(signal.SIGKILL)


@pytest.mark.parametrize("refusal", ["bad_proof", "unknown_node"])
def test_refused_key_is_failing_and_the_gateway_counts_and_logs_it(tmp_path, refusal):
    keys = {NODE: OTHER_KEY} if refusal == "bad_proof" else {"someone-else": OTHER_KEY}
    started = time.monotonic()
    gw = Gw(tmp_path, keys)
    agent = _agent_proc(tmp_path, gw.port).start()
    try:
        agent.post("telemetry", [1])
        h = wait_for(lambda: (lambda h: h if h["status"] == "failing" else None)(agent.get("/v1/health")),
                     what="the agent to say failing")
        assert [r["code"] for r in h["reasons"]] == ["auth_refused"]
        assert "(%s)" % refusal in h["reasons"][0]["line"]
        p = agent.cli("edge", "health")
        assert p.returncode == 2 and p.stdout.startswith("failing: node")
        assert "failing: the gateway " in p.stdout and "[auth_refused]" in p.stdout

        # The gateway counts every refusal by reason, and names the node.
        g = wait_for(lambda: (lambda g: g if g["errors_by_reason"].get(refusal, 0) >= 3 else None)(gw.health()),
                     what="three refusals")
        assert g["status"] == "degraded" and [r["code"] for r in g["reasons"]] == ["nodes_refused"]
        assert [(r["node"], r["reason"]) for r in g["refused_nodes"]] == [(NODE, refusal)]
        assert g["refused_nodes"][0]["count"] >= 3
        p = edgeline("gateway", "health", "--gateway", gw.url)
        assert p.returncode == 1
        assert p.stdout.startswith("degraded: ") and "refused node %s: %s" % (NODE, refusal) in p.stdout
    finally:
        agent.stop(signal.SIGKILL)
        out = gw.stop()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # --log-format json: every line
    assert all(set(d) == {"ts", "level", "logger", "msg"} for d in lines), out
    refused = [d for d in lines if "refused node" in d["msg"]]
    # once a minute per node, however often it was refused
    assert 1 <= len(refused) <= 1 + int(time.monotonic() - started) // REFUSAL_LOG_EVERY_S, refused
    assert refused[0]["level"] == "warning" and refused[0]["logger"] == "edgeline.gateway"
    assert NODE in refused[0]["msg"] and refusal in refused[0]["msg"]
    assert any("listening on" in d["msg"] and d["level"] == "info" for d in lines)


# ---------------------------------------------------------------------------- gateway, in-process


def test_gateway_rate_limits_refusal_lines_and_forgets_old_refusals(tmp_path, caplog):
    t = [1000.0]
    gw = Gateway(str(tmp_path / "gw.db"), {NODE: KEY}, monotonic=lambda: t[0], health_window_s=600)

    async def refused_once():
        conn = gw.new_connection()
        edge = sync.EdgeConnection(NODE, OTHER_KEY, os.urandom)
        out, done = await gw.process(conn, edge.send(sync.Hello()))
        edge.receive_data(out)
        assert type(edge.next_event()) is sync.Challenge
        out, done = await gw.process(conn, edge.send(sync.Auth()))
        assert done

    async def main():
        await gw.start()
        try:
            with caplog.at_level(logging.WARNING, logger="edgeline.gateway"):
                await refused_once()
                t[0] += REFUSAL_LOG_EVERY_S - 1
                await refused_once()
                await refused_once()
                t[0] += 2
                await refused_once()
        finally:
            await gw.close()

    asyncio.run(main())
    logged = [r for r in caplog.records if "refused node" in r.getMessage()]
    assert len(logged) == 2 and "4 time(s)" in logged[1].getMessage()
    h = gw.health()
    assert h["status"] == "degraded" and h["errors_by_reason"] == {"bad_proof": 4}
    assert h["refused_nodes"][0]["count"] == 4
    t[0] += 601  # out of the window: ok again, the count stays
    h = gw.health()
    assert h["status"] == "ok" and h["reasons"] == [] and h["errors_by_reason"] == {"bad_proof": 4}
    gw.store_failed(OSError("disk I/O error"))
    h = gw.health()
    assert h["status"] == "failing" and h["reasons"][0]["code"] == "store_failing"
    gw.store_ok = True  # a commit succeeded since
    assert gw.health()["status"] == "degraded"


# ---------------------------------------------------------------------------- logging


def test_log_json_format_and_level_filter():
    out = io.StringIO()
    try:
        logsetup.setup("warning", "json", stream=out, environ={})
        lg = logging.getLogger("edgeline.test")
        lg.info("not shown")
        lg.warning("node %s refused", "n1")
        lg.error("boom")
        lines = [json.loads(x) for x in out.getvalue().splitlines()]
        assert [(d["level"], d["logger"], d["msg"]) for d in lines] == [
            ("warning", "edgeline.test", "node n1 refused"), ("error", "edgeline.test", "boom")]
        assert all(set(d) == {"ts", "level", "logger", "msg"} and d["ts"].endswith("Z") for d in lines)

        logsetup.setup("info", "json", stream=out, environ={})
        logging.getLogger("aiohttp.access").info("GET /v1/health 200")  # a line per request: debug only
        assert out.getvalue().count("\n") == 2

        out2 = io.StringIO()
        logsetup.setup(stream=out2, environ={"EDGELINE_LOG_LEVEL": "debug"})  # text, the environment's level
        lg.debug("fine detail")
        line = out2.getvalue().strip()
        assert line.endswith(" DEBUG edgeline.test: fine detail") and line[:4].isdigit() and "T" in line[:11]
        assert out.getvalue().count("\n") == 2  # the old handler is gone
        for bad in ({"EDGELINE_LOG_LEVEL": "loud"}, {"EDGELINE_LOG_FORMAT": "xml"}):
            with pytest.raises(ValueError) as e:
                logsetup.setup(stream=io.StringIO(), environ=bad)
            assert list(bad)[0] in str(e.value)
    finally:
        logsetup.reset()


def test_cli_log_level_is_checked():
    p = edgeline("--log-level", "loud", "edge", "health")
    assert p.returncode == 2 and "loud" in p.stderr
    p = subprocess.run(EDGELINE + ["gateway", "--keys", "/nonexistent"], capture_output=True, text=True, timeout=60,
                       env=dict(ENV, EDGELINE_LOG_LEVEL="loud"))
    assert p.returncode != 0 and "EDGELINE_LOG_LEVEL" in p.stderr and p.stderr.count("\n") == 1
