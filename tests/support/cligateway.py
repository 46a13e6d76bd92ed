"""`edgeline gateway --listen ... --tcp ... --topics ...` as a real process on free ports,
for the tests that sync a MicroPython board to it (test_board_uplink, test_mcu_profiles).
The topics file declares one cloud-to-edge topic, ``cmd``, for the downlink tests."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliGateway:
    """`edgeline gateway --listen ... --tcp ...` as a real process on free ports."""

    def __init__(self, tmp_path, keys):
        kf = tmp_path / "keys.yaml"
        kf.write_text("".join("%s: %s\n" % (n, k.hex()) for n, k in keys.items()))
        tf = tmp_path / "topics.yaml"
        tf.write_text("cmd: {max_record_bytes: 512}\n")
        self.http_port = _free_port()
        self.tcp_port = _free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeline_host.cli", "gateway", "--keys", str(kf), "--db", str(tmp_path / "gw.db"),
             "--listen", "127.0.0.1:%d" % self.http_port, "--tcp", "127.0.0.1:%d" % self.tcp_port,
             "--topics", str(tf)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                self.get("/healthz")
                socket.create_connection(("127.0.0.1", self.tcp_port), 1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.05)

    def get(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.http_port, path), timeout=10) as r:
            return json.loads(r.read())

    def records(self, node, topic):
        return self.get("/v1/records?topic=%s&origin=%s&limit=100000" % (topic, node))["records"]

    def publish(self, topic, values):
        req = urllib.request.Request("http://127.0.0.1:%d/v1/topics/%s/publish" % (self.http_port, topic),
                                     data=json.dumps(values).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out
