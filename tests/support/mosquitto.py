"""A real Mosquitto broker for integration tests: started on a free port, stopped by PID.

``Mosquitto(tmp_dir).start()`` writes a minimal config (one listener on 127.0.0.1, no
authentication, no persistence; ``set_tcp_nodelay``, as a gateway's broker should have
it, see transports/mqtt.py), starts ``mosquitto -c`` as a subprocess and waits until the
port accepts connections. ``stop()`` sends SIGTERM, then SIGKILL if the
broker lingers; ``kill()`` is SIGKILL straight away (a crash: no persistence, so every
session and in-flight message is gone); ``start()`` again reuses the same port, so
clients reconnect to where they were. ``extra_conf`` adds lines to the config (say,
``max_queued_messages 100000`` for a persistent session that must hold more than
Mosquitto's default 1000 messages while its client is away). A test module's fixture:

    @pytest.fixture
    def broker(tmp_path):
        with Mosquitto(tmp_path / "mosquitto") as b:
            yield b

A missing binary skips the test (or fails it under EDGELINE_REQUIRE_INTEGRATION=1).
"""
import os
import shutil
import signal
import socket
import subprocess
import time

from integration import need_binary


def mosquitto_binary():
    """Debian and Ubuntu install the broker in /usr/sbin, which a user's PATH may lack."""
    path = shutil.which("mosquitto")
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if path is None and os.access(candidate, os.X_OK):
            path = candidate
    return path or need_binary("mosquitto", "the MQTT tests need a real broker (apt-get install mosquitto)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    def __init__(self, directory, port=None, extra_conf=()):
        self.binary = mosquitto_binary()
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.log_path = os.path.join(self.dir, "mosquitto.log")
        with open(self.conf, "w") as f:
            f.write("listener %d 127.0.0.1\n" % self.port)
            f.write("allow_anonymous true\npersistence false\nset_tcp_nodelay true\n")
            for line in extra_conf:
                f.write(line + "\n")
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout_s=10):
        assert self.proc is None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", self.conf], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError("mosquitto exited at start: %s" % self.log_tail())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("mosquitto not accepting on port %d: %s" % (self.port, self.log_tail()))
                time.sleep(0.02)

    def stop(self, grace_s=5):
        """SIGTERM, then SIGKILL after grace_s."""
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        except ProcessLookupError:
            p.wait()

    def kill(self):
        """SIGKILL: the broker dies with everything it held."""
        p, self.proc = self.proc, None
        if p is not None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()

    def log_tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
