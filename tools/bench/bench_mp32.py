"""Appends on the 32-bit MicroPython lane against the 64-bit unix port: bytes and rate.

    python tools/bench/bench_mp32.py [--records 2000] [--rate-records 20000] [--reps 3] [--json]

The boards are 32-bit; the unix port the other benchmarks use is 64-bit, where the CRC
of a frame and a hybrid-clock timestamp are small ints and append allocates nothing. One
worker (tools/bench/mp32_worker.py, compiled to .mpy with the core) runs under both
ports: MicroPython's WebAssembly port by node (tools/mp32/run.mjs, sys.maxsize 2**31-1)
and the unix port (sys.maxsize 2**63-1).

* Bytes allocated per append (gc.mem_alloc() around --records appends, collector off,
  after warm-up): sync none and group (1000); timestamps small (1000 + i), real
  hybrid-clock values precomputed ((epoch ms << 16) + i, about 2**56), and made by
  HybridClock.now(now_ms) per record (the application's clock included); 9-byte and
  64-byte values, and 64 bytes with an 8-byte key. Target (issue 16): 0 on both ports.
* Bytes allocated per record by the outbox's drain, peek(16 records) + ack(last), small
  and hybrid-clock timestamps (no target: peek returns a Record per record).
* Bytes allocated per record by the sync session's per-record work on the edge
  (tools/bench/mp32_sync_worker.py): building BATCH messages from peeked records, and
  decoding DATA messages and appending their records (inbox.append_data). No target:
  the entries and decoded values are the API's objects.
* Bytes allocated per record read: RingLog.read 16 records at a time (the Records and
  their values are the API's objects), and per frame FrameScanner.frame checks (its
  header tuple; the CRC is checked in place, issue 16). No target.
* Bytes allocated per append across seq 2**30 and 2**32 (a log opened there), sync none
  and group (50), clock-stamped: returning the seq (a heap object on 32-bit past 2**30:
  32 B) and with seq=False, target 0 on both ports (docs/design-alloc-free-32bit.md, fix 3).
* Appends/s, sync none (one flush at the end: no fsync in the loop on either port),
  64-byte values, 1 MiB segments: the 32-bit port as a ratio of the 64-bit port measured
  in the same run (median of the per-repetition ratios). The WebAssembly port's files
  are in memory (emscripten MEMFS) and its interpreter is WebAssembly under node's JIT,
  the unix port's native code writing to the page cache: the ratio is the cost of the
  lane, not a board's speed.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

sys.path.insert(0, os.path.join(harness.ROOT, "tools"))
import mp32test  # noqa: E402

WORKER = os.path.join(harness.HERE, "mp32_worker.py")
SYNC_WORKER = os.path.join(harness.HERE, "mp32_sync_worker.py")
SYNC_BATCHES = 20


def run_sync(mpy, path):
    """(32-bit, 64-bit) results of mp32_sync_worker: bytes per record of BATCH build and DATA apply."""
    rc, out, err = harness.run_micropython(mpy, "mp32_sync_worker", [mpy[-1], path, SYNC_BATCHES], heap="4m")
    if rc:
        raise RuntimeError("unix port sync worker failed:\n" + out + err)
    r64 = harness.last_json_line(out)
    code = ("import sys\nsys.path.insert(0, '/mpy')\nimport mp32_sync_worker\n"
            "mp32_sync_worker.main(['/mpy', '/tmp/sync', %r])\n" % str(SYNC_BATCHES))
    rc, out = mp32test.run(mp32test.command(mpy[0], code, heap="8m"))
    if rc:
        raise RuntimeError("WebAssembly port sync worker failed:\n" + out)
    return harness.last_json_line(out), r64


def run_64(mpy, path, a):
    rc, out, err = harness.run_micropython(mpy, "mp32_worker", [mpy[-1], path, a.records, a.rate_records])
    if rc:
        raise RuntimeError("unix port worker failed:\n" + out + err)
    return harness.last_json_line(out)


def run_32(tree, a):
    code = ("import sys\nsys.path.insert(0, '/mpy')\nimport mp32_worker\n"
            "mp32_worker.main(['/mpy', '/tmp/bench', %r, %r])\n" % (str(a.records), str(a.rate_records)))
    rc, out = mp32test.run(mp32test.command(tree, code))
    if rc:
        raise RuntimeError("WebAssembly port worker failed:\n" + out)
    return harness.last_json_line(out)


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--records", type=int, default=2000, help="appends per allocation case (default 2000)")
    ap.add_argument("--rate-records", type=int, default=20000, help="appends in the rate run (default 20000)")
    a = ap.parse_args(argv)
    res = harness.Result(
        "bench_mp32",
        "append on the 32-bit lane (WebAssembly port) vs the 64-bit unix port",
        {"records": a.records, "rate_records": a.rate_records, "reps": a.reps},
    )
    why = mp32test.missing() or (None if harness.micropython_exe() else "micropython (the unix port) is not installed")
    if why:
        res.note(why + ": nothing measured")
        res.emit(a.json)
        return 0
    r32 = []
    r64 = []
    with harness.scratch_dir() as base:
        mpy = harness.mpy_tree(base, [WORKER, SYNC_WORKER])
        for rep in range(a.reps):
            harness.progress("rep %d/%d" % (rep + 1, a.reps))
            r64.append(run_64(mpy, harness.fresh_subdir(base, "log64"), a))
            r32.append(run_32(mpy[0], a))
        s32, s64 = run_sync(mpy, harness.fresh_subdir(base, "sync64"))
    assert r32[0]["maxsize"] == 2 ** 31 - 1 and r64[0]["maxsize"] == 2 ** 63 - 1, (r32[0]["maxsize"], r64[0]["maxsize"])
    for c32, c64 in zip(r32[0]["alloc"], r64[0]["alloc"]):
        case = "sync %s, ts %s, value %s" % (c32["sync"], c32["ts"], c32["value"])
        res.add(case + ": 32-bit", c32["bytes"], "B/append", target=("value", "<=", 0))
        res.add(case + ": 64-bit", c64["bytes"], "B/append", target=("value", "<=", 0))
    for c32, c64 in zip(r32[0]["drain"], r64[0]["drain"]):
        case = "drain: peek(16) + ack, ts %s" % c32["ts"]
        res.add(case + ": 32-bit", c32["bytes"], "B/record")
        res.add(case + ": 64-bit", c64["bytes"], "B/record")
    for c32, c64 in zip(r32[0]["read"], r64[0]["read"]):
        case = "read: RingLog.read(16), ts %s" % c32["ts"]
        res.add(case + ": 32-bit", c32["bytes"], "B/record")
        res.add(case + ": 64-bit", c64["bytes"], "B/record")
        case = "read: FrameScanner.frame (header + CRC check), ts %s" % c32["ts"]
        res.add(case + ": 32-bit", c32["frame_bytes"], "B/frame")
        res.add(case + ": 64-bit", c64["frame_bytes"], "B/frame")
        if not (c32["ok"] and c64["ok"]):
            res.note("a frame check failed in the read case")
    for c32, c64 in zip(r32[0]["big_seqs"], r64[0]["big_seqs"]):
        case = "append across seq %s, sync %s, clock-stamped 9 B" % (c32["start"], c32["sync"])
        res.add(case + ": 32-bit", c32["bytes"], "B/append")
        res.add(case + ": 64-bit", c64["bytes"], "B/append", target=("value", "<=", 0))
        if c32["quiet_bytes"] is not None:
            res.add(case + ", seq=False: 32-bit", c32["quiet_bytes"], "B/append", target=("value", "<=", 0))
            res.add(case + ", seq=False: 64-bit", c64["quiet_bytes"], "B/append", target=("value", "<=", 0))
        if not (c32["ok"] and c64["ok"]):
            res.note("a big-seq run ended with wrong seqs")
    for what, label in (("build", "sync: BATCH build (batch_from_records + send), 16 x 64 B"),
                        ("build_view", "sync: BATCH build with send_into (a board's uplink)"),
                        ("apply", "sync: DATA apply (receive + decode + inbox.append_data)")):
        res.add(label + ": 32-bit", s32[what], "B/record")
        res.add(label + ": 64-bit", s64[what], "B/record")
    if not (s32["ok"] and s64["ok"]):
        res.note("a sync run applied the wrong number of records")
    rates32 = [r["rate"] for r in r32]
    rates64 = [r["rate"] for r in r64]
    base64 = "64-bit unix port, sync none"
    res.add(base64, harness.median(rates64), "rec/s", rates64)
    res.add("32-bit WebAssembly port, sync none", harness.median(rates32), "rec/s", rates32, baseline=base64,
            ratio=harness.median([x / y for x, y in zip(rates32, rates64)]))
    if not all(r["rate_ok"] for r in r32 + r64):
        res.note("a rate run ended with wrong seqs")
    res.note("allocation figures are from the first repetition (they do not vary)")
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
