"""`edgeline board deploy` and `edgeline board status` on the emulated board, with a real
`edgeline gateway --tcp`: the board runs its profile's main.py, its records reach the
gateway exactly once, status reads the queue back, and interrupting the board -- soft
resets, status reads, hard resets, power cuts, at moments nobody picks -- loses nothing
it had acknowledged. Two profiles, two ways the library gets there: the Pico's .mpy
files copied to /lib, and the ESP32's frozen into its firmware (a ROMFS image the
emulator mounts, as its flash). The emulator is emulator/ptyboard.py
(tests/emulator/test_board_emulator.py)."""
import json
import os
import random
import re
import subprocess
import sys
import time

import pytest

from emuboard import ROOT, EmulatedBoard, Terminal, mpremote, need_board_tools  # noqa: E402
from test_board_uplink import CliGateway  # noqa: E402

from edgeline_host import deploy  # noqa: E402
from edgeline_host.firmware import build  # noqa: E402
from edgeline_host.firmware.profiles import board_config, load_profile  # noqa: E402

KEY = bytes(range(32))


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


@pytest.fixture(scope="module")
def esp32_firmware(tmp_path_factory):
    """The ESP32's library frozen into its firmware: a ROMFS image for the emulator."""
    need_board_tools()
    image = str(tmp_path_factory.mktemp("esp32-fw") / "edgeline.romfs")
    build.build_romfs_image(load_profile("esp32"), image)
    return image


@pytest.fixture
def pico(tmp_path):
    b = EmulatedBoard(tmp_path, "--profile", "pico", flash_size=None)
    yield b
    b.stop()


@pytest.fixture
def esp32(tmp_path, esp32_firmware):
    b = EmulatedBoard(tmp_path, "--profile", "esp32", "--frozen", esp32_firmware, flash_size=None)
    yield b
    b.stop()


@pytest.fixture
def gateway(tmp_path):
    need_board_tools()
    g = CliGateway(tmp_path, {"board-1": KEY})
    yield g
    g.stop()


def write_config(tmp_path, profile, gw, samples, sample_ms=20, interval_ms=100):
    p = load_profile(profile)
    wifi = {"ssid": "lab", "password": "not-used-here"} if p["network"]["kind"] == "wlan" else None
    cfg = board_config(p, "board-1", KEY.hex(), ("127.0.0.1", gw.tcp_port), wifi=wifi, samples=samples,
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
    assert all(set(r["value"]) == {"temp_c"} for r in rows)
    s = gateway_mark(gw)
    assert (s["mark"], s["records"], s["lost"]) == (last, last, 0)


def test_deploy_runs_main_and_its_records_reach_the_gateway_exactly_once(pico, gateway, tmp_path):
    board = pico
    config = write_config(tmp_path, "pico", gateway, samples=60)
    proc = edgeline("board", "deploy", "--port", board.port, "--profile", "pico", "--config", config)
    out = ok(proc)
    assert proc.stderr == ""  # no warning: the settings are there
    m = re.search(r"deployed pico to (\S+): (\d+) files copied, 0 unchanged \(.*\); soft reset, main.py running", out)
    assert m and m.group(1) == board.port, out
    files = int(m.group(2))  # the core's .mpy files, the board's modules, main.py, edgeline.json
    assert files > 10
    # main.py takes its 60 readings, sends them and stops
    wait_mark(gateway, 60)
    check_exactly_once(gateway, 60)
    st = json.loads(ok(edgeline("board", "status", "--port", board.port, "--json", "--no-restart")))
    t = st["topics"]["telemetry"]
    assert st["node_id"] == "board-1" and st["pending"] == 0
    assert (st["status"], st["reasons"]) == ("ok", [])  # health.board_reasons: nothing wrong
    assert (t["last_seq"], t["acked"], t["pending"], t["gap"]) == (60, 60, 0, None)
    assert 0 < st["board"]["heap_free"] <= 209936 and st["board"]["flash_free_bytes"] < st["board"]["flash_bytes"]
    # what is on the board: the core compiled for the Pico (.mpy in /lib), main.py, the settings
    listing = mpremote(board.port, "resume", "exec", "import os; print(sorted(os.listdir('/lib/edgeline')),"
                       " sorted(os.listdir('/')))").stdout
    assert "'log.mpy'" in listing and "'outbox.mpy'" in listing and "'sync.mpy'" in listing
    assert "'edgeline.json'" in listing and "'main.py'" in listing and "'data'" in listing
    # the human form; it starts main.py again, which takes 60 more readings
    text = ok(edgeline("board", "status", "--port", board.port))
    assert text.startswith("board-1 on %s: 1 topic, " % board.port)
    assert "telemetry" in text and "heap " in text and " free; flash " in text
    assert "\nhealth: ok\n" in text
    wait_mark(gateway, 120)
    check_exactly_once(gateway, 120)
    # deploying again copies nothing that is already there (mpremote compares SHA-256)
    again = ok(edgeline("board", "deploy", "--port", board.port, "--profile", "pico", "--config", config))
    assert ": 0 files copied, %d unchanged" % files in again, again


def test_interrupting_the_board_loses_nothing_acknowledged(esp32, gateway, tmp_path):
    board = esp32  # the smallest heap of the profiles (111,936 bytes); edgeline frozen in
    config = write_config(tmp_path, "esp32", gateway, samples=0)  # samples for ever
    out = ok(edgeline("board", "deploy", "--port", board.port, "--profile", "esp32", "--config", config))
    assert ": 2 files copied, 0 unchanged" in out and "the library is in the firmware" in out, out
    rnd = random.Random(3)
    acked = 0
    actions = ["status", "soft-reset", "status", "reset", "power", "status", "soft-reset", "status"]
    for what in actions:
        time.sleep(0.3 + rnd.random())
        if what == "status":
            # stops main.py wherever it is (Ctrl-C), reads the queue, starts it again
            t = deploy.status(board.port)["topics"]["telemetry"]
            assert t["acked"] >= acked, "the cursor went back"
            assert gateway_mark(gateway)["mark"] >= t["acked"], "acknowledged, but not at the gateway"
            assert t["last_seq"] >= t["acked"] and t["pending"] == t["last_seq"] - t["acked"]
            acked = t["acked"]
        elif what == "soft-reset":
            mpremote(board.port, "soft-reset")  # Ctrl-C, then a soft reset into the raw REPL
            deploy.soft_reset(board.port)  # and one from the friendly REPL: main.py again
        elif what == "reset":
            mpremote(board.port, "reset")  # machine.reset(): the interpreter is killed
        else:
            board.power_cut()
    assert acked > 0
    # stop it; start it again until all it held has reached the gateway; stop it again
    last = deploy.status(board.port, restart=False)["topics"]["telemetry"]["last_seq"]
    deploy.soft_reset(board.port)
    wait_mark(gateway, last)
    final = deploy.status(board.port, restart=False)["topics"]["telemetry"]
    # (its cursor may trail the gateway: stopped between an ACK and the cursor write, it
    # catches up from the gateway's marks when it next connects)
    assert final["acked"] <= gateway_mark(gateway)["mark"] and final["last_seq"] >= last
    check_exactly_once(gateway, gateway_mark(gateway)["mark"])
    assert "micropython exited" not in board.errors()  # no crash: only the resets asked for


def test_board_commands_fail_in_one_line(pico, tmp_path):
    board = pico
    # a board without edgeline
    assert "edgeline is not on the board on %s (edgeline board deploy)" % board.port in one_line_error(
        edgeline("board", "status", "--port", board.port))
    assert "no such port: /dev/does-not-exist" in one_line_error(
        edgeline("board", "status", "--port", "/dev/does-not-exist"))
    assert "unknown profile 'nope'" in one_line_error(
        edgeline("board", "deploy", "--port", board.port, "--profile", "nope"))
    # the ESP32's edgeline is frozen into its firmware: this board's firmware has none
    err = one_line_error(edgeline("board", "deploy", "--port", board.port, "--profile", "esp32"))
    assert "esp32 runs edgeline frozen into its firmware, and the board on %s cannot import it" % board.port in err
    assert "no module named 'edgeline_app'" in err and "--code mpy" in err
    assert "pi-zero is a cpython profile" in one_line_error(
        edgeline("board", "deploy", "--port", board.port, "--profile", "pi-zero"))
    # no settings given, none on the board: it is deployed, and the user told
    plain = edgeline("board", "deploy", "--port", board.port, "--profile", "pico")
    assert plain.returncode == 0 and "deployed pico to" in plain.stdout
    assert plain.stderr.strip() == ("warning: the board has no edgeline.json, so main.py stops at once: give --config"
                                    " (edgeline firmware config)")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json: invalid JSON" in one_line_error(
        edgeline("board", "deploy", "--port", board.port, "--profile", "pico", "--config", str(bad)))
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
    # status of a board without its settings: the board's own one line
    assert "/edgeline.json: not found" in one_line_error(edgeline("board", "status", "--port", board.port))
