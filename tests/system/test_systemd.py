"""The systemd side (issue 13): the shipped units (``edgeline systemd-unit``) are valid
for systemd, and the agent and gateway processes speak sd_notify -- READY=1 once they
serve, WATCHDOG=1 while they run, STOPPING=1 at SIGTERM -- through a $NOTIFY_SOCKET the
test binds, as systemd would."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeline_host.sdnotify import Notifier
from edgeline_host.systemdunits import unit

EXE = os.path.join(os.path.dirname(sys.executable), "edgeline")
KEY_HEX = "11" * 32
WAIT_S = 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifySocket:
    """The datagram socket systemd listens on for a Type=notify service."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got = []

    def wait_for(self, line, timeout_s=WAIT_S):
        deadline = time.monotonic() + timeout_s
        while True:
            for msg in self.got:
                if line in msg.split("\n"):
                    self.got.remove(msg)
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s in %r" % (line, self.got))
            self.sock.settimeout(left)
            try:
                self.got.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


def test_notifier_sends_to_a_path_and_an_abstract_socket(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    try:
        n = Notifier({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "3000000"})
        assert n.notify("READY=1", "STATUS=hello")
        assert ns.wait_for("READY=1") == "READY=1\nSTATUS=hello"
        assert n.watchdog_s() == 1.5
    finally:
        ns.close()
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = "edgeline-test-%d" % os.getpid()
    abstract.bind("\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("WATCHDOG=1")
        abstract.settimeout(5)
        assert abstract.recv(100) == b"WATCHDOG=1"
    finally:
        abstract.close()
    assert not Notifier({}).notify("READY=1")  # not under systemd: nothing, no error
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify("READY=1")  # never raises
    assert Notifier({"NOTIFY_SOCKET": "x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s() is None


def _service(tmp_path, args, port, health_path):
    ns = NotifySocket(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=ns.path, WATCHDOG_USEC="200000", EDGELINE_LOG_LEVEL="warning")
    proc = subprocess.Popen([EXE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        msg = ns.wait_for("READY=1")
        assert "STATUS=serving on http://127.0.0.1:%d" % port in msg
        # READY means serving: the first request after it is answered
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, health_path), timeout=10) as r:
            assert r.status == 200
        # and the real process serves its metrics (docs/metrics.md)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            names = {f.name for f in text_string_to_metric_families(r.read().decode())}
        assert {"edgeline_agent_uplink_state", "edgeline_gateway_health"} & names
        ns.wait_for("WATCHDOG=1")
        ns.wait_for("WATCHDOG=1")  # again: it keeps the watchdog fed, every 0.1 s here
        proc.send_signal(signal.SIGTERM)
        ns.wait_for("STOPPING=1")
        out, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, err
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        ns.close()


def test_agent_notifies_ready_watchdog_stopping(tmp_path):
    port = free_port()
    (tmp_path / "edge.yaml").write_text(
        "edge:\n  node_id: n1\n  data_dir: data\n  sync: {enabled: false}\n  local_topics: [t]\n"
        "  ingest: {http: {listen: '127.0.0.1:%d'}}\n" % port)
    _service(tmp_path, ["agent", "--config", str(tmp_path / "edge.yaml")], port, "/v1/health")


def test_gateway_notifies_ready_watchdog_stopping(tmp_path):
    port = free_port()
    (tmp_path / "keys.yaml").write_text("n1: '%s'\n" % KEY_HEX)
    _service(tmp_path, ["gateway", "--keys", str(tmp_path / "keys.yaml"), "--db", str(tmp_path / "gw.db"),
                        "--listen", "127.0.0.1:%d" % port], port, "/healthz")


def test_units_are_valid_for_systemd(tmp_path):
    analyze = shutil.which("systemd-analyze")
    for service in ("agent", "gateway"):
        r = subprocess.run([EXE, "systemd-unit", service], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        text = r.stdout
        assert text == unit(service)
        for line in ("Type=notify", "WatchdogSec=30", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "StateDirectory=edgeline", "CapabilityBoundingSet="):
            assert line in text.splitlines(), (service, line)
        check = [ln for ln in text.splitlines() if ln.startswith("ExecStartPre=")]
        assert check and check[0].endswith("--check")
        if analyze is None:
            continue
        path = tmp_path / ("edgeline-%s.service" % service)
        path.write_text(text)
        # systemd-analyze warns about a bad directive (and goes on): no line about our file
        v = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60,
                           cwd=str(tmp_path))
        assert str(path) not in v.stderr + v.stdout, v.stderr
    if analyze is None:
        pytest.skip("systemd-analyze not installed: the units' text was checked, not systemd's reading of it")


def test_unit_refuses_paths_systemd_would_split():
    with pytest.raises(ValueError):
        unit("agent", config="/etc/my edge.yaml")
    with pytest.raises(ValueError):
        unit("agent", exe="edgeline")
    with pytest.raises(ValueError):
        unit("nope")
    r = subprocess.run([EXE, "systemd-unit", "agent", "--config", "relative.yaml"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "absolute path" in r.stderr


def test_gateway_reloads_its_keys_on_sighup(tmp_path):
    """systemctl reload (ExecReload: SIGHUP): a node added to the keys file is served at
    once, without a restart; a broken keys file changes nothing."""
    import json

    port = free_port()
    keys = tmp_path / "keys.yaml"
    keys.write_text("n1: '%s'\n" % KEY_HEX)
    (tmp_path / "topics.yaml").write_text("cmds: {direction: cloud_to_edge}\n")
    ns = NotifySocket(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=ns.path)
    proc = subprocess.Popen([EXE, "gateway", "--keys", str(keys), "--db", str(tmp_path / "gw.db"), "--topics",
                             str(tmp_path / "topics.yaml"), "--listen", "127.0.0.1:%d" % port], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def nodes():
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/status" % port, timeout=10) as r:
            return sorted(d["node"] for d in json.load(r)["downlinks"])

    try:
        ns.wait_for("READY=1")
        assert nodes() == ["n1"]
        keys.write_text("n1: '%s'\nn2: '%s'\n" % (KEY_HEX, "22" * 32))
        proc.send_signal(signal.SIGHUP)
        ns.wait_for("RELOADING=1")
        ns.wait_for("READY=1")
        assert nodes() == ["n1", "n2"]
        keys.write_text("n1: not a key\n")
        proc.send_signal(signal.SIGHUP)
        ns.wait_for("RELOADING=1")
        ns.wait_for("READY=1")
        assert nodes() == ["n1", "n2"]  # kept
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, err
        text = out + err
        assert "keys reloaded: 2 node(s); added n2" in text
        assert "the keys were not reloaded (the 2 node(s) stay)" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        ns.close()
