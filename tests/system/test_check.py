"""``edgeline agent --check`` and ``edgeline gateway --check`` (issue 13): a config and
its files checked without starting anything -- no lock taken, nothing created, nothing
bound; exit 0, or 2 with one line per problem."""
import os
import socket
import subprocess
import sys

import pytest

from edgeline_host.configcheck import check_agent, check_gateway

EXE = os.path.join(os.path.dirname(sys.executable), "edgeline")
KEY_HEX = "11" * 32


def run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)


def write(path, text):
    path.write_text(text)
    return str(path)


def edge_yaml(tmp_path, extra="", data_dir="data"):
    return write(tmp_path / "edge.yaml", (
        "edge:\n"
        "  node_id: n1\n"
        "  data_dir: %s\n"
        "  cloud_endpoint: http://127.0.0.1:8700/v1/sync\n"
        "  key_file: node.key\n"
        "  sync_topics:\n"
        "    - {topic: t, direction: edge_to_cloud}\n"
        "  ingest:\n"
        "    http: {listen: '127.0.0.1:18080'}\n" % data_dir) + extra)


def test_agent_check_ok_creates_and_locks_nothing(tmp_path):
    write(tmp_path / "node.key", KEY_HEX + "\n")
    cfg = edge_yaml(tmp_path)
    r = run("agent", "--config", cfg, "--check")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith("edgeline agent --check: %s: OK: node n1, 1 topic(s) (1 sync)" % cfg)
    assert sorted(os.listdir(tmp_path)) == ["edge.yaml", "node.key"]  # no data dir, no LOCK


def test_agent_check_beside_a_running_agent_takes_no_lock(tmp_path):
    from edgeline_host.agent.config import load_config
    from edgeline_host.agent.service import Agent

    write(tmp_path / "node.key", KEY_HEX + "\n")
    cfg = edge_yaml(tmp_path)
    agent = Agent(load_config(cfg), print_fn=lambda *_: None)  # holds data/LOCK
    try:
        problems, notes = check_agent(cfg)
        assert problems == [] and notes[-1].startswith(cfg + ": OK")
    finally:
        agent.close()


def test_agent_check_lists_each_problem(tmp_path):
    blocker = write(tmp_path / "blocker", "a file where the data directory's parent should be\n")
    cfg = edge_yaml(tmp_path, data_dir=os.path.join(blocker, "data"),
                    extra="    mqtt: {listen: 'no-such-host.invalid:1883'}\n")
    r = run("agent", "--config", cfg, "--check")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("edgeline agent --check: %s: " % cfg) for line in lines)
    assert "edge.key_file" in lines[0] and "does not exist" in lines[0]
    assert "edge.data_dir" in lines[1] and "is not a directory" in lines[1]
    assert "edge.ingest.mqtt.listen" in lines[2] and "does not resolve" in lines[2]


def test_agent_check_refuses_a_bad_config_in_one_line(tmp_path):
    cfg = write(tmp_path / "edge.yaml", "edge:\n  node_id: n1\n  sync_topics: [{topic: t, direction: up}]\n")
    r = run("agent", "--config", cfg, "--check")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "sync_topics[0].direction" in r.stderr, r.stderr
    r = run("agent", "--config", str(tmp_path / "missing.yaml"), "--check")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.yaml" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_agent_check_a_data_dir_it_cannot_write(tmp_path):
    write(tmp_path / "node.key", KEY_HEX + "\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        problems, _ = check_agent(edge_yaml(tmp_path, data_dir=str(ro / "data")))
    finally:
        ro.chmod(0o700)
    assert len(problems) == 1 and "cannot be created" in problems[0] and "not writable" in problems[0]


def test_gateway_check(tmp_path):
    keys = write(tmp_path / "keys.yaml", "n1: '%s'\n" % KEY_HEX)
    topics = write(tmp_path / "topics.yaml", "cmds: {direction: cloud_to_edge}\n")
    db = str(tmp_path / "gw.db")
    r = run("gateway", "--keys", keys, "--db", db, "--topics", topics, "--listen", "127.0.0.1:18700", "--check")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "edgeline gateway --check: gateway: OK: 1 node(s), store %s (to be created), HTTP on " \
                       "127.0.0.1:18700\n" % db
    assert sorted(os.listdir(tmp_path)) == ["keys.yaml", "topics.yaml"]  # no store, no lock

    bad_topics = write(tmp_path / "bad-topics.yaml", "cmds: {direction: sideways}\n")
    not_db = write(tmp_path / "not.db", "hello, not a database\n")
    r = run("gateway", "--keys", keys, "--db", not_db, "--topics", bad_topics, "--listen", "nonsense",
            "--tcp", "127.0.0.1:18700", "--publish-token-file", str(tmp_path / "no-token"), "--check")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 4, lines
    assert "bad-topics.yaml" in lines[0]
    assert "no-token" in lines[1]
    assert "--listen must be host:port" in lines[2]
    assert "not an SQLite database" in lines[3]

    problems, _ = check_gateway(None, db, "127.0.0.1:8700")
    assert problems == ["--keys (or EDGELINE_GATEWAY_KEYS) is required"]
    problems, _ = check_gateway(keys, db, "127.0.0.1:8700", tcp="127.0.0.1:8700")
    assert problems == ["--tcp 127.0.0.1:8700: the same address as another listener"]


def test_gateway_check_an_existing_store(tmp_path):
    from edgeline_host.gateway.store import GatewayStore

    keys = write(tmp_path / "keys.yaml", "n1: '%s'\n" % KEY_HEX)
    db = str(tmp_path / "gw.db")
    GatewayStore(db).close()
    problems, notes = check_gateway(keys, db, "127.0.0.1:8700")
    assert problems == [] and notes == ["gateway: OK: 1 node(s), store %s, HTTP on 127.0.0.1:8700" % db]


def test_check_binds_nothing(tmp_path):
    """An address in use by another process is no problem for --check: it binds nothing
    (the service, started later, is the one to find out)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        keys = write(tmp_path / "keys.yaml", "n1: '%s'\n" % KEY_HEX)
        problems, _ = check_gateway(keys, str(tmp_path / "gw.db"), "127.0.0.1:%d" % port)
        assert problems == []
