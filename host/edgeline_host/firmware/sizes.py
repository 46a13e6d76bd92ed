"""The size checks: compiled core against its 64 KB target, RAM against each profile.

For every MicroPython/CircuitPython profile: the library is compiled for the profile's
architecture and its bytes counted (the core's ``.mpy`` must stay within
``CORE_MPY_BUDGET_BYTES``), and the RAM the library holds at rest -- imported, logs,
outboxes and uplink of the default settings open -- and the most live heap while it
syncs are measured by ramprobe.py, on both word sizes:

* **64-bit**: the MicroPython unix port with the profile's heap, the library loaded the
  way the profile deploys it (.mpy files in RAM; ROMFS in place; frozen: in place with
  its names interned before the baseline, as a frozen firmware keeps them in flash);
* **32-bit**: MicroPython's WebAssembly port by node (wasmport.py; the test suite's
  32-bit lane), the boards' word size; the library always as .mpy loaded into RAM (that port has neither
  ROMFS nor a native emitter), names static for a frozen profile. Or, when
  ``$EDGELINE_MICROPYTHON32`` names a 32-bit build of the unix port, that: every mode.

Which figure the budget check uses, said in each verdict: the 32-bit one when the
32-bit lane ran the profile's own way of loading (``deploy: mpy``; every mode on a
32-bit unix-port build); otherwise both figures are upper bounds of the board's (64-bit
objects with code in place; 32-bit objects with code in RAM) and the check takes the
smaller; without node the
64-bit one, with the reason -- an upper bound, so where only it is over a budget the
verdict is UNVERIFIED (``ok`` None), not OVER: pico-w and esp32s3, whose budgets rest on
their 32-bit figures, get it without the 32-bit lane. Checked: RAM at rest <= ``memory.core_ram_budget_bytes``,
and the most a sync round can hold (``sync_round_bytes``) <= ``memory.heap_bytes``.
CircuitPython does not run here: its profile gets sizes but no RAM figure (its verdict
says so).
"""
import os
import tempfile

from . import build, ramprobe
from .mpy import ToolMissing
from .profiles import MCU_RUNTIMES, load_all, load_profile

CORE_MPY_BUDGET_BYTES = 65536
_FIGURES = ("code_bytes", "rest_bytes", "sync_live_bytes", "sync_round_bytes")


def ram_mode(profile):
    """How the profile's deploy method loads code, as unixport's run modes (rom: ROMFS,
    which the emulated board also uses for frozen code)."""
    d = profile["firmware"]["deploy"]
    return {"frozen": "rom", "romfs": "rom", "mpy": "mpy", "py": "py"}[d]


def probe_mode(profile):
    """The profile's deploy method as ramprobe.measure's mode."""
    d = profile["firmware"]["deploy"]
    return {"frozen": "frozen", "romfs": "rom", "mpy": "mpy", "py": "py"}[d]


def _pick(row, deploy):
    """(figures, which) the checks use; see the module doc."""
    r64, r32 = row["ram64"], row["ram32"]
    if r32 is None:
        return r64, "64-bit upper bound (no 32-bit figure: %s)" % row["lane32"]
    if r32["mode"] == row["mode"]:
        return r32, "32-bit"
    if r32["rest_bytes"] < r64["rest_bytes"]:
        return r32, "32-bit, code in RAM: the smaller upper bound"
    return r64, "64-bit, code in place: the smaller upper bound"


def measure(names=None, word_sizes=(64, 32)):
    """One row per MCU profile: sizes, RAM per word size, the figures checked, budgets,
    ok and a verdict. ``word_sizes``: the lanes to run (the 32-bit one is skipped, with
    its reason in ``lane32``, where node, or npm to install the WebAssembly port on first
    use, is missing: wasmport.py)."""
    profs = [load_profile(n) for n in names] if names else load_all(runtimes=MCU_RUNTIMES)
    lane32 = ramprobe.lane32_missing() if 32 in word_sizes else "not asked for"
    rows = []
    for p in profs:
        if p["runtime"] not in MCU_RUNTIMES:
            raise ValueError("%s is a %s profile: sizes are for microcontroller profiles" % (p["name"], p["runtime"]))
        with tempfile.TemporaryDirectory() as tmp:
            # Always count .mpy bytes (what frozen/ROMFS/mpy deploys carry), even for
            # CircuitPython, whose boards get sources: the same bytecode, another format.
            sizes = build.compile_library(dict(p, runtime="micropython", firmware=dict(
                p["firmware"], mpy_arch=p["firmware"]["mpy_arch"] or "armv6m")), os.path.join(tmp, "lib"))
        rep = build.size_report(p, sizes)
        row = {"profile": p["name"], "deploy": p["firmware"]["deploy"], "mode": None, "core_bytes": rep["core_bytes"],
               "core_budget_bytes": CORE_MPY_BUDGET_BYTES, "library_bytes": rep["library_bytes"],
               "heap_bytes": p["memory"]["heap_bytes"], "budget_bytes": p["memory"]["core_ram_budget_bytes"],
               "ram64": None, "ram32": None, "lane32": lane32, "checked": None}
        for k in _FIGURES:
            row[k] = None
        problems = []
        if rep["core_bytes"] > CORE_MPY_BUDGET_BYTES:
            problems.append("core .mpy %d > %d" % (rep["core_bytes"], CORE_MPY_BUDGET_BYTES))
        if p["runtime"] == "micropython":
            mode = row["mode"] = probe_mode(p)
            if 64 in word_sizes:
                row["ram64"] = ramprobe.measure(p, mode, 64)
            if 32 in word_sizes and lane32 is None:
                try:
                    row["ram32"] = ramprobe.measure(p, mode, 32)
                except ToolMissing as e:  # e.g. its npm install failed: not tried again per profile
                    row["lane32"] = lane32 = str(e)
            if row["ram64"] is None and row["ram32"] is None:
                raise ValueError("no word size to measure RAM on: %s" % row["lane32"])
            if row["ram64"] is None:
                figures, which = row["ram32"], "32-bit"
            else:
                figures, which = _pick(row, p["firmware"]["deploy"])
            for k in _FIGURES:
                row[k] = figures[k]
            row["checked"] = which
            if row["rest_bytes"] > row["budget_bytes"]:
                problems.append("RAM at rest %d > budget %d" % (row["rest_bytes"], row["budget_bytes"]))
            if row["sync_round_bytes"] > row["heap_bytes"]:
                problems.append("a sync round may hold %d > heap %d" % (row["sync_round_bytes"], row["heap_bytes"]))
            if not problems:
                verdict = "ok (%s)" % which
            elif row["ram32"] is None and rep["core_bytes"] <= CORE_MPY_BUDGET_BYTES:
                # Only an upper bound is over: the boards' own word size may fit (32-bit
                # figures run 0.71-0.76x of 64-bit ones), so this cannot be called over.
                verdict = "UNVERIFIED (%s): %s" % (which, "; ".join(problems))
                problems = None
            else:
                verdict = "OVER (%s): %s" % (which, "; ".join(problems))
        else:
            verdict = ("RAM not measured: CircuitPython does not run here" if not problems
                       else "OVER: " + "; ".join(problems))
        row["ok"] = None if problems is None else not problems
        row["verdict"] = verdict
        rows.append(row)
    return rows
