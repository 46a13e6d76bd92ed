"""Run every edgeline benchmark and print their tables and a summary of the targets.

    python tools/bench/run_all.py [--json] [--quick] [--only NAME ...]

Each benchmark runs in its own process (so one's page cache and heap do not leak into
the next) with --json; this script prints each table, then one summary line per target.
--quick runs every benchmark with small sizes and one repetition (a smoke test of the
benchmarks themselves, in well under a minute; its figures are not the ones to quote).
Targets are reported, never asserted: the exit status is 1 only if a benchmark failed
to run.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BENCHES = [
    ("bench_append", [], ["--records", "20000", "--every-records", "200", "--reps", "1"]),
    ("bench_peers", [], ["--records", "10000", "--every-records", "100", "--reps", "1"]),
    ("bench_micropython", [], ["--records", "10000", "--reps", "1"]),
    ("bench_reopen", [], ["--mbytes", "8", "--reps", "2"]),
    ("bench_heap", [], ["--records", "10000", "--search-records", "0"]),
    ("bench_mp32", [], ["--records", "500", "--rate-records", "10000", "--reps", "1"]),
    ("bench_gateway", [], ["--records", "20000", "--reps", "1"]),
    ("bench_sync", [], ["--seconds", "2", "--backlog", "20000", "--records", "5000", "--reps", "1"]),
    ("bench_downlink", [], ["--backlog", "20000", "--reps", "1"]),
    ("bench_mqtt_ingest", [], ["--records", "2000", "--reps", "1"]),
    ("bench_idempotency", [], ["--requests", "640", "--every-requests", "100", "--reps", "1"]),
    ("bench_producers", ["--seconds", "2", "--reps", "2"], ["--seconds", "0.5", "--reps", "1"]),
    ("bench_tables", [], ["--writes", "1000", "--updates", "4000", "--reps", "1"]),
    ("bench_mqtt_endpoint", ["--reps", "1"], ["--records", "1000", "--reps", "1", "--inflight", "20", "--backlog", "0"]),
    ("bench_columnar", [], ["--records", "200", "--reps", "1"]),
    ("bench_wire", [], ["--records", "200", "--reps", "1"]),
    ("bench_table_catchup", [], ["--writes", "2000", "--keys", "100", "--reps", "1"]),
]


def summary(results):
    lines = ["summary of targets", "=================="]
    rows = []
    for d in results:
        for r in d["rows"]:
            if r["target"]:
                ratio = "" if r["ratio"] is None else "%.2fx" % r["ratio"]
                rows.append([d["bench"], r["case"], harness._fmt_value(r["value"], r["unit"]) + " " + r["unit"], ratio,
                             harness._fmt_target(r["target"]), "yes" if r["met"] else "NO"])
    if not rows:
        return ""
    head = ["bench", "case", "value", "ratio", "target", "met"]
    table = [head] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for n, row in enumerate(table):
        lines.append("  ".join(row[i].ljust(widths[i]) for i in range(len(head))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    met = sum(1 for r in rows if r[-1] == "yes")
    lines.append("%d of %d targets met" % (met, len(rows)))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print all results as one JSON list instead of tables")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition: check the benchmarks run")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. bench_heap)")
    a = ap.parse_args(argv)
    results = []
    failed = []
    t_all = time.perf_counter()
    for name, args, quick in BENCHES:
        if a.only and name not in a.only and name.replace("bench_", "") not in a.only:
            continue
        cmd = [sys.executable, os.path.join(harness.HERE, name + ".py"), "--json"] + args + (quick if a.quick else [])
        sys.stderr.write("== %s\n" % name)
        sys.stderr.flush()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t0
        try:
            d = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
        except (ValueError, IndexError):
            d = None
        if d is None:
            failed.append(name)
            sys.stderr.write("%s FAILED (exit %d)\n%s\n" % (name, p.returncode, p.stdout[-2000:]))
            continue
        d["seconds"] = round(dt, 1)
        results.append(d)
        if not a.json:
            print(harness.render(d).rstrip())
            print("(%s took %.1f s)\n" % (name, dt))
            sys.stdout.flush()
    if a.json:
        print(json.dumps(results))
    else:
        print(summary(results))
        print("all benchmarks took %.1f s%s" % (time.perf_counter() - t_all, "; FAILED: " + ", ".join(failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
