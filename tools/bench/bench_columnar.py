"""Bytes per record of the columnar batch encoding vs JSON and vs today's CBOR BATCH, and
its CPU cost per record on CPython and MicroPython.

    python tools/bench/bench_columnar.py [--records N] [--reps R] [--mpy DIR] [--json]

Data sets (tools/datasets/, seeded, the same every run): the demo's sensor records as an
agent receives them (``sensors``: {"sensor", "value", "unit", "n"} maps, four sensors per
200 ms tick), the fleet demo board's records (``board``: [seq, "soil-moisture", float]),
and POS transactions (``pos``: one sale a record, keyed by its transaction id, 1-6 line
items). N records of each (default 1000) are cut into batches of 1, 10 and 100; a size is
the total over all batches divided by N.

* ``JSON``: the batch as a JSON array of {"seq", "ts", "key", "value"} objects, compact
  separators (no spaces), the key as text -- what a REST ingest of the same records
  would carry. The baseline of the ratios.
* ``CBOR BATCH``: the sync protocol's BATCH message today (docs/spec/wire.md): CBOR
  [5, topic, first_seq, base_ts, [[ts_delta, key, value], ...]], topic "t".
* ``columnar``: edgeline.columnar.encode of the batch (docs/spec/columnar.md) alone,
  without a message around it.

Target (issue 11): columnar >= 8x smaller than JSON at batch 100, on both data sets (the
sensor records and the POS transactions), on MicroPython too: MicroPython's encoder must
write the very bytes CPython's does (checked: same total), so its ratio is the same.

CPU: tools/bench/mp_columnar_worker.py runs under both interpreters (MicroPython: .mpy,
-X heapsize=16m, for the data sets the worker holds), batch 100: microseconds per record to encode and decode columnar, and the
same for the CBOR BATCH as the baseline (best of --reps).
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_core()
sys.path.insert(0, os.path.join(harness.ROOT, "tools", "datasets"))
import pos  # noqa: E402
import sensors  # noqa: E402

from edgeline import codec  # noqa: E402
from edgeline.columnar import decode, encode  # noqa: E402

WORKER = os.path.join(harness.HERE, "mp_columnar_worker.py")
BATCHES = (1, 10, 100)


def datasets(n):
    return {"sensors": sensors.records(n, 1, "agent"), "board": sensors.records(n, 1, "board"), "pos": pos.records(n, 1)}


def json_bytes(batch):
    docs = [{"seq": s, "ts": ts, "key": None if k is None else k.decode("utf-8"), "value": codec.loads(v)}
            for s, ts, k, v in batch]
    return len(json.dumps(docs, separators=(",", ":")).encode())


def wire_bytes(batch):
    base = batch[0][1]
    return len(codec.dumps([5, "t", batch[0][0], base, [[r[1] - base, r[2], r[3]] for r in batch]]))


def sizes(recs, size):
    out = {"JSON": 0, "CBOR BATCH": 0, "columnar": 0}
    for i in range(0, len(recs), size):
        b = recs[i:i + size]
        out["JSON"] += json_bytes(b)
        out["CBOR BATCH"] += wire_bytes(b)
        data = encode(b)
        if decode(data) != b:
            raise RuntimeError("columnar round trip failed")
        out["columnar"] += len(data)
    return dict((k, v / float(len(recs))) for k, v in out.items())


def run_worker(cmd, timeout=900):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError("worker failed:\n" + p.stdout[-2000:] + p.stderr[-2000:])
    return harness.last_json_line(p.stdout)


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--records", type=int, default=1000, help="records of each data set (default 1000)")
    ap.add_argument("--mpy", help="use an existing .mpy build of the core (tools/mpbuild.py build/mpy)")
    a = ap.parse_args(argv)
    n = a.records
    res = harness.Result("bench_columnar", "bytes/record: columnar vs JSON vs CBOR BATCH; CPU/record on both runtimes",
                         {"records": n, "reps": a.reps, "batches": list(BATCHES)})
    data = datasets(n)
    for name in ("sensors", "board", "pos"):
        for size in BATCHES:
            s = sizes(data[name], size)
            base = "%s, batch %d: JSON" % (name, size)
            res.add(base, s["JSON"], "B/rec")
            res.add("%s, batch %d: CBOR BATCH" % (name, size), s["CBOR BATCH"], "B/rec", baseline=base)
            target = ("ratio", "<=", 0.125) if size == 100 and name in ("sensors", "pos") else None
            res.add("%s, batch %d: columnar" % (name, size), s["columnar"], "B/rec", baseline=base, target=target,
                    note="JSON/columnar = %.1fx" % (s["JSON"] / s["columnar"]))
    with harness.scratch_dir() as base:
        path = os.path.join(base, "datasets.cbor")
        with open(path, "wb") as f:
            f.write(codec.dumps(dict((k, [list(r) for r in v]) for k, v in data.items())))
        args = [path, 100, a.reps]
        cp = run_worker([sys.executable, "-c", "import sys\nsys.path[0:0] = %r\nimport mp_columnar_worker as w\nw.main(%r)"
                         % ([harness.HERE, harness.CORE], [str(x) for x in args])])
        mp = None
        if harness.micropython_exe() is None:
            res.note("micropython is not installed: the MicroPython figures are missing")
        else:
            mpy = harness.mpy_tree(base, [WORKER], a.mpy)
            # 16 MB: the worker holds all three data sets (about 0.5 MB of CBOR) -- the
            # CPU per record is measured here; a board's heap is tests/core's business
            rc, out, err = harness.run_micropython(mpy, "mp_columnar_worker", args, heap="16m", timeout=900)
            if rc:
                res.note("MicroPython worker failed: " + (out + err).strip().splitlines()[-1])
            else:
                mp = harness.last_json_line(out)
    for name in ("sensors", "board", "pos"):
        c = cp["datasets"][name]
        if not c["ok"]:
            res.note("%s: CPython round trip FAILED" % name)
        runs = [("CPython", c)]
        if mp is not None:
            m = mp["datasets"][name]
            if not m["ok"]:
                res.note("%s: MicroPython round trip FAILED" % name)
            same = m["col_bytes"] == c["col_bytes"]
            res.note("%s: MicroPython's columnar bytes %s CPython's (%d vs %d B for %d records at batch 100)"
                     % (name, "equal" if same else "DIFFER FROM", m["col_bytes"], c["col_bytes"], c["records"]))
            runs.append(("MicroPython", m))
        for impl, r in runs:
            enc_base = "%s %s: CBOR BATCH encode" % (name, impl)
            res.add(enc_base, r["cbor_enc"], "us/rec")
            res.add("%s %s: columnar encode" % (name, impl), r["col_enc"], "us/rec", baseline=enc_base)
            dec_base = "%s %s: CBOR BATCH decode" % (name, impl)
            res.add(dec_base, r["cbor_dec"], "us/rec")
            res.add("%s %s: columnar decode" % (name, impl), r["col_dec"], "us/rec", baseline=dec_base)
    res.note("sizes: the total over all batches / records; ratio = case / JSON (target: <= 0.125, i.e. >= 8x smaller)")
    res.note("CPU: batch 100, best of %d, us per record; ratio = columnar / CBOR BATCH (the wire's codec today)" % a.reps)
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
