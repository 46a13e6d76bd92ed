"""Real processes for the system tests: an `edgeline agent` or `edgeline gateway` on a
fixed port, started, SIGKILLed and started again, its output (every run) in one file.

    gateway = Proc("gateway", argv, port, "/healthz", log_path, env)
    await gateway.start(http)   # waits until the health URL answers 200
    rows = await gateway_records(http, base_url, "telemetry", "edge-1")
    gateway.kill()              # SIGKILL, reaped
    gateway.stop()              # SIGTERM (SIGKILL if it lingers): the exit status
"""
import asyncio
import os
import signal
import socket
import subprocess
import time

import aiohttp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def gateway_records(http, base, topic, origin):
    """Every record of ``origin``'s ``topic`` at the gateway (``/v1/records``, paged by seq)."""
    out = []
    while True:
        params = {"topic": topic, "origin": origin, "from": (out[-1]["seq"] + 1) if out else 1, "limit": 100000}
        async with http.get(base + "/v1/records", params=params) as r:
            rows = (await r.json())["records"]
        if not rows:
            return out
        out += rows


def process_env(root):
    """The environment for child processes: this checkout's core and host first on the
    path, and no EDGELINE_AGENT of the caller's."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(root, "core"), os.path.join(root, "host")]))
    env.pop("EDGELINE_AGENT", None)
    return env


class Proc:
    def __init__(self, name, argv, port, health_path, log_path, env):
        self.name = name
        self.argv = argv
        self.port = port
        self.health = "http://127.0.0.1:%d%s" % (port, health_path)
        self.log_path = log_path
        self.env = env
        self.proc = None
        self.starts = 0
        self.kills = 0

    async def start(self, http):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("%s exited at start: %s" % (self.name, self.log_tail()))
            try:
                async with http.get(self.health, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            assert time.monotonic() < deadline, "%s did not come up: %s" % (self.name, self.log_tail())
            await asyncio.sleep(0.05)

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.kills += 1

    def stop(self):
        """SIGTERM (SIGKILL if it lingers); the exit status, or None if not running."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=3000):
        return self.log_text()[-n:]
