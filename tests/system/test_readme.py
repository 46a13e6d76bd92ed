"""README.md's set-up, run as written: keygen, the gateway's keys file, edge.yaml, the
gateway, the agent, a record posted -- and the record reaches the gateway (issue 9: the
README paired a keygen'd key with a different random key in keys.yaml: ``bad_proof``)."""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def section_shell(readme, title):
    """The first ```sh block under the heading ``## title``."""
    part = readme.split("\n## %s\n" % title, 1)[1]
    return part.split("```sh\n", 1)[1].split("```", 1)[0]


def commands(block):
    """The block's commands: comments cut, continuation lines joined, heredocs kept whole."""
    out = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.search(r"<<'(\w+)'", line)
        if m:
            end = lines.index(m.group(1), i)
            out.append("\n".join(lines[i:end + 1]))
            i = end + 1
            continue
        while line.endswith("\\"):
            i += 1
            line = line[:-1] + lines[i]
        out.append(line)
        i += 1
    return out


def test_readme_agent_and_gateway_steps(tmp_path):
    readme = open(os.path.join(ROOT, "README.md")).read()
    ports = {"8080": str(free_port()), "8700": str(free_port()), "8701": str(free_port())}
    cmds = commands(section_shell(readme, "An edge agent")) + commands(section_shell(readme, "The gateway"))
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"])
    env.pop("EDGELINE_AGENT", None)
    procs = []
    agent_url = "http://127.0.0.1:%s" % ports["8080"]
    try:
        for cmd in cmds:
            for old, new in ports.items():
                cmd = cmd.replace(":" + old, ":" + new)
            if cmd.startswith(("curl", "edgeline edge")):
                continue  # run below, once both processes are up
            if cmd.startswith(("edgeline agent", "edgeline gateway")):
                cmd = re.sub(r"\s*\[.*?\]", "", cmd.split("#", 1)[0])  # [optional] parts left out
                procs.append(subprocess.Popen(shlex.split(cmd), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True))
                continue
            p = subprocess.run(["bash", "-ec", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=60)
            assert p.returncode == 0, (cmd, p.stderr)
        assert len(procs) == 2, cmds
        key = (tmp_path / "edge-1.key").read_text().strip()
        assert "edge-1: %s" % key in (tmp_path / "keys.yaml").read_text()

        post = [c for c in cmds if c.startswith("curl -XPOST")][0]
        for old, new in ports.items():
            post = post.replace(":" + old, ":" + new)
        deadline = time.monotonic() + 30
        while True:
            for p in procs:
                assert p.poll() is None, p.stdout.read()
            p = subprocess.run(["bash", "-c", post.replace("curl ", "curl -sf ", 1)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=30)
            if p.returncode == 0:
                break
            assert time.monotonic() < deadline, "the agent did not answer"
            time.sleep(0.1)
        assert json.loads(p.stdout)["durable"] is True

        url = "http://127.0.0.1:%s/v1/records?topic=pos.transactions&origin=edge-1" % ports["8700"]
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    recs = json.loads(r.read())["records"]
            except OSError:  # the gateway, started after the agent, may not listen yet
                recs = []
            if recs:
                break
            assert time.monotonic() < deadline, "the record never reached the gateway"
            time.sleep(0.1)
        assert len(recs) == 1 and recs[0]["seq"] == 1
        status = subprocess.run(["edgeline", "edge", "sync", "status", "--json", "--agent", agent_url], env=env,
                                capture_output=True, text=True, timeout=30)
        assert "bad_proof" not in status.stdout, status.stdout
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
