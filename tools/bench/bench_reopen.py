"""Time to reopen (recover) a 64 MB ring log after a crash.

    python tools/bench/bench_reopen.py [--mbytes 64] [--reps R] [--json]

For each segment size (64 KiB, the default, and 1 MiB):

1. A writer subprocess appends 64-byte records with group commit (1000) until the log
   holds --mbytes MiB, stopping one record short of a full tail segment (the worst
   case: recovery scans the tail frame by frame), flushes, reports, and waits.
2. It is killed with SIGKILL (no close()).
3. A torn write is simulated: the first 40 bytes of the next frame are appended to the
   tail segment, as a power cut in the middle of that write would leave them.
4. ``RingLog(path, ...)`` is timed: list, check every segment header, scan the tail,
   truncate the torn frame (with its fsync). The log must come back with every record.
5. Steps 3-4 are repeated --reps times; the median is reported, with the first
   recovery and a clean reopen (no torn frame) beside it.

Baselines from the same run: ``os.listdir`` of the directory (the least any open can
do), and listdir + read every 32-byte segment header (what the spec's step 2 needs).
Caches are warm (the files were just written; dropping the page cache needs root).
Target: < 100 ms.
"""
import argparse
import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.use_core()
from edgeline.log import RingLog  # noqa: E402
from edgeline.logformat import encode_frame  # noqa: E402

VALUE = bytes(range(64))
FRAME = 26 + len(VALUE)
SEG_HDR = 32
TORN = 40
BUDGET = 1 << 40


def frames_per_segment(segment_bytes):
    return (segment_bytes - SEG_HDR) // FRAME


def writer(path, segment_bytes, records):
    """Subprocess side: write, flush, report, wait to be killed."""
    lg = RingLog(path, segment_bytes=segment_bytes, budget_bytes=BUDGET, sync="group", group_records=1000)
    append = lg.append
    for _ in range(records):
        append(VALUE)
    lg.flush()
    sys.stdout.write(json.dumps({"last_seq": lg.last_seq, "size_bytes": lg.size_bytes, "segments": lg.segment_count}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # wait; the parent kills us
    lg.close()  # never reached


def crash_write(path, segment_bytes, records):
    p = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--writer", path, str(segment_bytes), str(records)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = p.stdout.readline()
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdin.close()
    p.stdout.close()
    if not line:
        raise RuntimeError("writer died before reporting")
    return json.loads(line)


def tail_path(path):
    return os.path.join(path, max(n for n in os.listdir(path) if n.endswith(".seg")))


def tear(path, next_seq):
    with open(tail_path(path), "ab") as f:
        f.write(encode_frame(next_seq, 0, None, VALUE)[:TORN])


def time_open(path, segment_bytes, expect_last):
    t0 = harness.now()
    lg = RingLog(path, segment_bytes=segment_bytes, budget_bytes=BUDGET)
    dt = harness.now() - t0
    ok = lg.last_seq == expect_last and lg.first_seq == 1
    lg.close()
    if not ok:
        raise RuntimeError("recovery lost records: last_seq %d, expected %d" % (lg.last_seq, expect_last))
    return dt * 1e3


def time_listdir(path):
    t0 = harness.now()
    os.listdir(path)
    return (harness.now() - t0) * 1e3


def time_headers(path):
    t0 = harness.now()
    for n in sorted(os.listdir(path)):
        if n.endswith(".seg"):
            with open(os.path.join(path, n), "rb", buffering=0) as f:
                f.read(SEG_HDR)
    return (harness.now() - t0) * 1e3


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--writer":
        writer(argv[1], int(argv[2]), int(argv[3]))
        return 0
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.set_defaults(reps=5)
    ap.add_argument("--mbytes", type=int, default=64, help="log size in MiB (default 64)")
    a = ap.parse_args(argv)
    res = harness.Result(
        "bench_reopen",
        "reopen (crash recovery) of a %d MiB log, torn frame at the end of a nearly full tail" % a.mbytes,
        {"log_mib": a.mbytes, "value_bytes": 64, "reps": a.reps, "cache": "warm"},
    )
    with harness.scratch_dir() as base:
        for seg in (65536, 1 << 20):
            label = "%d KiB segments" % (seg >> 10)
            fps = frames_per_segment(seg)
            nseg = -(-(a.mbytes << 20) // seg)
            records = nseg * fps - 1
            path = harness.fresh_subdir(base, "seg%d" % seg)
            harness.progress("%s: writing %d records, then SIGKILL" % (label, records))
            info = crash_write(path, seg, records)
            last = info["last_seq"]
            if last != records:
                raise RuntimeError("writer reported last_seq %d, expected %d" % (last, records))
            size = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
            tear(path, last + 1)
            first = time_open(path, seg, last)
            torn, clean, ls, hdrs = [], [], [], []
            for _ in range(a.reps):
                ls.append(time_listdir(path))
                hdrs.append(time_headers(path))
                tear(path, last + 1)
                torn.append(time_open(path, seg, last))
                clean.append(time_open(path, seg, last))
            base_ls = "%s: os.listdir" % label
            base_hdr = "%s: listdir + read every header" % label
            res.add(base_ls, harness.median(ls), "ms", ls)
            res.add(base_hdr, harness.median(hdrs), "ms", hdrs)
            tm = harness.median(torn)
            res.add("%s: RingLog open after crash" % label, tm, "ms", torn, baseline=base_ls, target=("value", "<", 100.0),
                    note="%d segments, %.1f MiB, tail %d frames + %d torn bytes; first recovery after SIGKILL %.1f ms"
                    % (info["segments"], size / 1048576.0, fps - 1, TORN, first))
            res.add("%s: RingLog open vs header reads" % label, tm, "ms", torn, baseline=base_hdr)
            cm = harness.median(clean)
            res.add("%s: RingLog open, clean" % label, cm, "ms", clean, baseline=base_ls, target=("value", "<", 100.0))
            harness.fresh_subdir(base, "seg%d" % seg)
    res.note("ratios here are times (lower is better): open time / baseline time")
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
