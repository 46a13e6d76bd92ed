"""The log demo: append sensor records, SIGKILL the writer mid-stream, reopen, report.

Until the sync demo exists this is the README's main command (`make demo`). It shows the
two promises of the core on a real file system and a real crash:

* every record the writer had been told was durable (its commit returned) is there after
  the kill, intact, and the log continues with the next seq;
* the outbox knows exactly what the (simulated) uplink had acknowledged and what it still
  owes, and any record the ring buffer had to evict unsent is reported as a gap.

The writer is a separate process (`python -m edgeline_host.demo writer DIR`) so the kill is
a real SIGKILL, not an exception: nothing gets to run cleanup code.
"""
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from edgeline import codec
from edgeline.clock import HybridClock
from edgeline.log import RingLog
from edgeline.outbox import Outbox

LOG_OPTIONS = {
    "segment_bytes": 16384,
    "budget_bytes": 256 * 1024,
    "full_policy": "drop_oldest",
    "sync": "group",
    "group_records": 200,
    "group_ms": 50,
}
SENSORS = ("temp-1", "temp-2", "humidity-1", "pressure-1")


def now_ms():
    return int(time.time() * 1000)


def writer(data_dir):
    """Append sensor readings forever; report each commit and each uplink ack on stdout."""
    log = RingLog(data_dir, **LOG_OPTIONS)
    uplink = Outbox(log, "uplink")
    clock = HybridClock(last_ts=log.last_ts)
    rnd = random.Random(7)
    durable = log.durable_seq
    n = 0
    # The run's clock starts now, not when the process did: on a slow device (a Pi Zero)
    # starting Python and importing takes longer than the whole demo runs.
    print(json.dumps({"ready": durable}), flush=True)
    while True:
        t = now_ms()
        sensor = SENSORS[n % len(SENSORS)]
        value = codec.dumps({"sensor": sensor, "value": round(20 + rnd.random() * 5, 2), "n": n})
        log.append(value, ts=clock.now(t), now_ms=t)
        n += 1
        if log.durable_seq != durable:
            durable = log.durable_seq
            print(json.dumps({"durable": durable}), flush=True)
        # A slow, flaky uplink: every ~300 records it acknowledges a batch of up to 250, so the
        # ring buffer fills and evicts; evicted records are reported as a gap first.
        if n % 300 == 0 and rnd.random() < 0.8:
            gap = uplink.gap()
            if gap:
                uplink.ack(gap[1])
                print(json.dumps({"gap": list(gap)}), flush=True)
                continue
            batch = uplink.peek(250)
            if batch:
                uplink.ack(batch[-1].seq)
                print(json.dumps({"acked": batch[-1].seq}), flush=True)
        if n % 50 == 0:
            time.sleep(0.002)


class _WriterReport:
    """What the writer has said so far: durable through, acknowledged through, gaps."""

    def __init__(self):
        self.durable = 0
        self.acked = 0
        self.gaps = []

    def take(self, line):
        msg = json.loads(line)
        self.durable = msg.get("durable", self.durable)
        self.acked = msg.get("acked", self.acked)
        if "gap" in msg:
            self.gaps.append(msg["gap"])
            self.acked = msg["gap"][1]


def child_env():
    """The environment for a child ``python -m edgeline_host...`` (both demos start their
    processes so): it runs the very packages this process imported -- an installed
    edgeline finds itself anyway; a checkout that a test runner put on sys.path is handed
    on through PYTHONPATH."""
    import edgeline
    import edgeline_host

    env = dict(os.environ)
    dirs = []
    for package in (edgeline, edgeline_host):
        d = os.path.dirname(os.path.dirname(os.path.abspath(package.__file__)))
        if d not in dirs:
            dirs.append(d)
    env["PYTHONPATH"] = os.pathsep.join(dirs + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run(out=print, data_dir=None, seconds=1.5):
    """Run the demo; return a dict of what it found (also printed)."""
    own_dir = data_dir is None
    if own_dir:
        data_dir = tempfile.mkdtemp(prefix="edgeline-demo-")
    env = child_env()
    out("edgeline demo: a crash-proof ring log on this machine")
    out("  log directory: %s" % data_dir)
    out("  segments %d KiB, budget %d KiB, policy %s, group commit every %d records or %d ms"
        % (LOG_OPTIONS["segment_bytes"] // 1024, LOG_OPTIONS["budget_bytes"] // 1024,
           LOG_OPTIONS["full_policy"], LOG_OPTIONS["group_records"], LOG_OPTIONS["group_ms"]))
    out("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeline_host.demo", "writer", data_dir],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    seen = _WriterReport()
    durable, acked, gaps = 0, 0, []
    ready = proc.stdout.readline()
    if not ready:
        proc.wait()
        raise RuntimeError("the demo's writer exited (status %s) before it opened the log" % proc.returncode)
    seen.take(ready)
    kill_at = time.monotonic() + seconds
    last_print = 0.0
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < kill_at:
        for _key, _ in sel.select(timeout=0.05):
            line = proc.stdout.readline()
            if not line:
                break
            seen.take(line)
        durable, acked, gaps = seen.durable, seen.acked, seen.gaps
        if time.monotonic() - last_print > 0.25:
            last_print = time.monotonic()
            out("  writing... durable through seq %7d, uplink acknowledged through %7d, gaps reported %d"
                % (durable, acked, len(gaps)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Anything the writer printed before dying still counts as acknowledged.
    for line in proc.stdout.read().splitlines():
        seen.take(line)
    durable, acked, gaps = seen.durable, seen.acked, seen.gaps
    sel.close()
    out("")
    out("  SIGKILL sent to the writer (pid %d) mid-stream." % proc.pid)
    out("")

    t0 = time.perf_counter()
    log = RingLog(data_dir, **LOG_OPTIONS)
    reopen_ms = (time.perf_counter() - t0) * 1000
    uplink = Outbox(log, "uplink")
    missing = []
    bad = 0
    seq = max(log.first_seq, 1)
    checked = 0
    while seq <= log.last_seq:
        recs = log.read(seq, 500)
        if not recs:
            break
        for r in recs:
            if r.seq != seq:
                missing.extend(range(seq, r.seq))
            try:
                v = codec.loads(r.value)
                assert v["sensor"] in SENSORS
            except Exception:  # noqa: BLE001 - any undecodable value is a failure here
                bad += 1
            seq = r.seq + 1
            checked += 1
    durable_lost = [s for s in missing if s <= durable and s >= log.first_seq]
    if durable > log.last_seq:
        durable_lost.extend(range(log.last_seq + 1, durable + 1))
    gap = uplink.gap()
    result = {
        "reopen_ms": round(reopen_ms, 2),
        "durable_acknowledged": durable,
        "survived_last_seq": log.last_seq,
        "first_seq": log.first_seq,
        "records_checked": checked,
        "durable_lost": len(durable_lost),
        "corrupt_returned": bad,
        "uplink_acked": uplink.acked,
        "uplink_owes": uplink.depth,
        "uplink_gap": list(gap) if gap else None,
        "evicted_unsent": log.evicted,
        "gaps_reported_before_kill": gaps,
        "uplink_acked_before_kill": acked,
    }
    out("  reopened in %.1f ms (recovery reads only the tail segment)" % reopen_ms)
    out("  writer had been told durable through seq  %d" % durable)
    out("  log holds seqs                              %d..%d (%d records, each checked)"
        % (log.first_seq, log.last_seq, checked))
    out("  durable records lost                        %d" % len(durable_lost))
    out("  torn or corrupt records returned            %d" % bad)
    out("  uplink acknowledged through seq             %d (cursor survived the kill: %s)"
        % (uplink.acked, "yes" if uplink.acked >= acked else "NO"))
    out("  gaps the uplink reported (evicted unsent)   %d ranges, %d records"
        % (len(gaps), sum(g[1] - g[0] + 1 for g in gaps)))
    out("  outbox still owes                           %d records" % uplink.depth)
    if gap:
        out("  of which evicted since (the next gap)       seqs %d..%d" % gap)
    nxt = log.append(codec.dumps({"sensor": "temp-1", "value": 0.0, "n": -1}), ts=HybridClock(log.last_ts).now(now_ms()))
    log.flush()
    out("  appending continues at seq                  %d" % nxt)
    result["next_seq"] = nxt
    log.close()
    ok = not durable_lost and not bad and nxt == result["survived_last_seq"] + 1 and uplink.acked >= acked
    out("")
    out("  RESULT: %s" % ("every acknowledged record survived the SIGKILL" if ok else "FAILED"))
    result["ok"] = ok
    if own_dir:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "writer":
        writer(sys.argv[2])
    else:
        sys.exit("usage: python -m edgeline_host.demo writer DIR")
