"""The size checks: compiled core against its 64 KB target, RAM at rest against each profile.

For every MicroPython/CircuitPython profile: the library is compiled for the profile's
architecture and its bytes counted (the core's ``.mpy`` must stay within
``CORE_MPY_BUDGET_BYTES``), and the RAM the library holds at rest -- imported, logs,
outboxes and uplink of the default settings open -- is measured on the MicroPython unix
port with the profile's heap, loaded the way the profile deploys it (.mpy files in RAM,
or frozen/ROMFS in place), and checked against ``memory.core_ram_budget_bytes``.

The unix port is 64-bit, so these RAM figures are upper bounds for 32-bit boards.
CircuitPython does not run here: its profile gets sizes but no RAM figure (its verdict
says so) -- and the MicroPython stand-in, compiling the sources on a heap of its size,
runs out of memory (docs/boards.md).
"""
import os
import tempfile

from . import build, unixport
from .profiles import MCU_RUNTIMES, load_all, load_profile

CORE_MPY_BUDGET_BYTES = 65536


def ram_mode(profile):
    """How the profile's deploy method loads code, as unixport.measure_ram's mode."""
    d = profile["firmware"]["deploy"]
    return {"frozen": "rom", "romfs": "rom", "mpy": "mpy", "py": "py"}[d]


def measure(names=None):
    """One row per MCU profile: sizes, RAM at rest, budgets, ok and a verdict."""
    profs = [load_profile(n) for n in names] if names else load_all(runtimes=MCU_RUNTIMES)
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
        row = {"profile": p["name"], "deploy": p["firmware"]["deploy"], "core_bytes": rep["core_bytes"],
               "core_budget_bytes": CORE_MPY_BUDGET_BYTES, "library_bytes": rep["library_bytes"],
               "heap_bytes": p["memory"]["heap_bytes"], "budget_bytes": p["memory"]["core_ram_budget_bytes"],
               "code_bytes": None, "rest_bytes": None}
        problems = []
        if rep["core_bytes"] > CORE_MPY_BUDGET_BYTES:
            problems.append("core .mpy %d > %d" % (rep["core_bytes"], CORE_MPY_BUDGET_BYTES))
        if p["runtime"] == "micropython":
            ram = unixport.measure_ram(p, ram_mode(p))
            row.update(ram)
            if ram["rest_bytes"] > row["budget_bytes"]:
                problems.append("RAM at rest %d > budget %d" % (ram["rest_bytes"], row["budget_bytes"]))
            verdict = "ok (64-bit upper bound)" if not problems else "OVER: " + "; ".join(problems)
        else:
            verdict = ("RAM not measured: CircuitPython does not run here" if not problems
                       else "OVER: " + "; ".join(problems))
        row["ok"] = not problems
        row["verdict"] = verdict
        rows.append(row)
    return rows
