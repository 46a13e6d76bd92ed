"""`edgeline board deploy` and `edgeline board status` on the emulated board, with a real
`edgeline gateway --tcp`: the board runs its profile's main.py, its records reach the
gateway exactly once, status reads the queue back, and interrupting the board -- soft
resets, status reads, hard resets, power cuts, at moments nobody picks -- loses nothing
it had acknowledged. The emulator is emulator/board.py (tests/host/test_board_emulator.py)."""
import json
import os
import random
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from emuboard import ROOT, EmulatedBoard, Terminal, mpremote, need_board_tools  # noqa: E402
from test_board_uplink import CliGateway  # noqa: E402

from edgeline_host import board as board_mod  # noqa: E402
from edgeline_host.firmware.profiles import board_config, load_profile  # noqa: E402

KEY = bytes(range(32))
PROFILE = "esp32"  # the smallest heap of the MicroPython profiles (111,936 bytes)


def edgeline(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgeline_host.cli"] + list(args), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("edgeline: error: "), proc.stderr
    return lines[0]


@pytest.fixture
def board(tmp_path):
    b = EmulatedBoard(tmp_path, "--profile", PROFILE, flash_size=None)
    yield b
    b.stop()


@pytest.fixture
def gateway(tmp_path):
    need_board_tools()
    g = CliGateway(tmp_path, {"board-1": KEY})
    yield g
    g.stop()


def write_config(tmp_path, gw, samples, sample_ms=20, interval_ms=100):
    cfg = board_config(load_profile(PROFILE), "board-1", KEY.hex(), ("127.0.0.1", gw.tcp_port),
                       wifi={"ssid": "lab", "password": "not-used-here"}, samples=samples,
                       overrides={"sample_ms": sample_ms, "sync": {"interval_ms": interval_ms}})
    path = tmp_path / "edgeline.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def gateway_mark(gw):
    st = gw.get("/v1/status?origin=board-1")["streams"]
    return st[0] if st else {"mark": 0, "records": 0, "lost": 0}


def wait_mark(gw, at_least, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        s = gateway_mark(gw)
        if s["mark"] >= at_least:
            return s
        assert time.monotonic() < deadline, "the gateway's mark stayed at %d, waiting for %d" % (s["mark"], at_least)
        time.sleep(0.1)


def check_exactly_once(gw, last):
    rows = gw.records("board-1", "telemetry")
    assert [r["seq"] for r in rows] == list(range(1, last + 1))
    assert all(set(r["value"]["cbor"]) == {"temp_c"} for r in rows)
    s = gateway_mark(gw)
    assert (s["mark"], s["records"], s["lost"]) == (last, last, 0)


def test_deploy_runs_main_and_its_records_reach_the_gateway_exactly_once(board, gateway, tmp_path):
    config = write_config(tmp_path, gateway, samples=60)
    out = ok(edgeline("board", "deploy", "--port", board.port, "--profile", PROFILE, "--config", config))
    m = re.search(r"deployed esp32 to (\S+): (\d+) files copied, 0 unchanged \(.*\); soft reset, main.py running", out)
    assert m and m.group(1) == board.port, out
    files = int(m.group(2))  # the core's .mpy files, the board's modules, main.py, edgeline.json
    assert files > 10
    # main.py takes its 60 readings, sends them and stops
    wait_mark(gateway, 60)
    check_exactly_once(gateway, 60)
    st = json.loads(ok(edgeline("board", "status", "--port", board.port, "--json", "--no-restart")))
    t = st["topics"]["telemetry"]
    assert st["node_id"] == "board-1" and st["pending"] == 0
    assert (t["last_seq"], t["acked"], t["pending"], t["gap"]) == (60, 60, 0, None)
    assert 0 < st["board"]["heap_free"] <= 111936 and st["board"]["flash_free_bytes"] < st["board"]["flash_bytes"]
    # the human form; it starts main.py again, which takes 60 more readings
    text = ok(edgeline("board", "status", "--port", board.port))
    assert text.startswith("board-1 on %s: 1 topic, " % board.port)
    assert "telemetry" in text and "heap " in text and " free; flash " in text
    wait_mark(gateway, 120)
    check_exactly_once(gateway, 120)
    # deploying again copies nothing that is already there (mpremote compares SHA-256)
    again = ok(edgeline("board", "deploy", "--port", board.port, "--profile", PROFILE, "--config", config))
    assert ": 0 files copied, %d unchanged" % files in again, again


def test_interrupting_the_board_loses_nothing_acknowledged(board, gateway, tmp_path):
    config = write_config(tmp_path, gateway, samples=0)  # samples for ever
    ok(edgeline("board", "deploy", "--port", board.port, "--profile", PROFILE, "--config", config))
    rnd = random.Random(3)
    acked = 0
    actions = ["status", "soft-reset", "status", "reset", "power", "status", "soft-reset", "status"]
    for what in actions:
        time.sleep(0.3 + rnd.random())
        if what == "status":
            # stops main.py wherever it is (Ctrl-C), reads the queue, starts it again
            t = board_mod.status(board.port)["topics"]["telemetry"]
            assert t["acked"] >= acked, "the cursor went back"
            assert gateway_mark(gateway)["mark"] >= t["acked"], "acknowledged, but not at the gateway"
            assert t["last_seq"] >= t["acked"] and t["pending"] == t["last_seq"] - t["acked"]
            acked = t["acked"]
        elif what == "soft-reset":
            mpremote(board.port, "soft-reset")  # Ctrl-C, then a soft reset into the raw REPL
            board_mod.soft_reset(board.port)  # and one from the friendly REPL: main.py again
        elif what == "reset":
            mpremote(board.port, "reset")  # machine.reset(): the interpreter is killed
        else:
            board.power_cut()
    assert acked > 0
    # stop it, then let it send everything it holds, and stop it again
    last = board_mod.status(board.port, restart=False)["topics"]["telemetry"]["last_seq"]
    board_mod.soft_reset(board.port)
    wait_mark(gateway, last)
    final = board_mod.status(board.port, restart=False)["topics"]["telemetry"]
    assert final["acked"] >= last
    wait_mark(gateway, final["acked"])
    check_exactly_once(gateway, gateway_mark(gateway)["mark"])
    assert "micropython exited" not in board.errors()  # no crash: only the resets asked for


def test_board_commands_fail_in_one_line(board, tmp_path):
    need_board_tools()
    assert "no such port: /dev/does-not-exist" in one_line_error(
        edgeline("board", "status", "--port", "/dev/does-not-exist"))
    assert "unknown profile 'nope'" in one_line_error(
        edgeline("board", "deploy", "--port", board.port, "--profile", "nope"))
    assert "pi-zero is a cpython profile" in one_line_error(
        edgeline("board", "deploy", "--port", board.port, "--profile", "pi-zero"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json: invalid JSON" in one_line_error(
        edgeline("board", "deploy", "--port", board.port, "--profile", PROFILE, "--config", str(bad)))
    # a port no MicroPython answers on
    master, slave = os.openpty()
    try:
        err = one_line_error(edgeline("board", "status", "--port", os.ttyname(slave), "--timeout", "0.5"))
        assert "no MicroPython REPL answered on %s" % os.ttyname(slave) in err
    finally:
        os.close(slave)
        os.close(master)
    # a port another program holds
    t = Terminal(board.port)
    try:
        assert "%s is busy: another program has it open" % board.port in one_line_error(
            edgeline("board", "status", "--port", board.port))
    finally:
        t.close()
    # a board without edgeline
    assert "edgeline is not on the board on %s (edgeline board deploy)" % board.port in one_line_error(
        edgeline("board", "status", "--port", board.port))
