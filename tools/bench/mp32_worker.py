# The MicroPython side of bench_mp32.py: bytes allocated per append and the append rate,
# run unchanged under the 64-bit unix port and the 32-bit WebAssembly port.
#
#   main([LIB_DIR, LOG_DIR, RECORDS, RATE_RECORDS])   prints one JSON line
#
# Allocation: gc.mem_alloc() before and after RECORDS appends with the collector off
# (the WebAssembly port never collects inside a call anyway), divided by RECORDS, after
# a warm-up (the segment begun, its file open). Timestamps and values are made before
# the measurement, so only append's own allocations count -- except in the "clock.now"
# case, which adds what the application's HybridClock.now(now_ms) allocates per record,
# and "clock.stamp", where append is given the clock (advanced 1 ms a record), which
# stamps the timestamp into the frame: the allocation-free way on 32-bit.
# Drain: the same count over an Outbox's peek(16 records) + ack(last) per record read.
import gc
import sys

try:
    from time import ticks_diff, ticks_us
except ImportError:  # pragma: no cover - both MicroPython ports have them
    ticks_us = None

VALUE9 = b"23.5;61.2"  # 9 bytes: a sensor reading (the measurement)
VALUE64 = bytes(range(64))
KEY = b"sensor-7"
EPOCH_MS = 1733600000000  # 2024-12-07: an HLC timestamp is epoch ms << 16, about 2**56


def _log(RingLog, path, sync):
    lg = RingLog(path, segment_bytes=1 << 20, budget_bytes=1 << 30, sync=sync, group_records=1000, group_ms=1 << 29)
    lg.append(VALUE9, 1, None, 0)
    lg.flush()
    return lg


def per_record(RingLog, HybridClock, path, records, sync, ts_kind, value, key):
    lg = _log(RingLog, path, sync)
    if ts_kind == "small":
        tss = [1000 + i for i in range(records)]
    else:
        tss = [(EPOCH_MS << 16) + i for i in range(records)]
    clock = HybridClock(0)
    if ts_kind == "clock.stamp":
        clock.now(EPOCH_MS)
    nows = [EPOCH_MS + i for i in range(records)]
    append = lg.append
    for i in range(8):  # warm-up
        append(value, tss[0] + i, key, 0)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    if ts_kind == "clock.now":
        now = clock.now
        for i in range(records):
            append(value, now(nows[i]), key, 0)
    elif ts_kind == "clock.stamp":
        for i in range(records):
            clock.tick(1)
            append(value, clock, key, 0)
    else:
        for i in range(records):
            append(value, tss[i], key, 0)
    after = gc.mem_alloc()
    gc.enable()
    lg.close()
    return (after - before) / records


def drain(RingLog, Outbox, path, records, ts_kind):
    # Bytes allocated per record by the outbox's drain: peek(16 records) + ack(last), the
    # sender's per-record work before encoding (the Records peek returns are the API's).
    lg = _log(RingLog, path, "none")
    base = 1000 if ts_kind == "small" else EPOCH_MS << 16
    for i in range(records + 16):
        lg.append(VALUE64, base + i, None, 0)
    lg.flush()
    ob = Outbox(lg, "uplink")
    recs = ob.peek(16, 4096)  # warm-up
    ob.ack(recs[-1].seq)
    recs = None
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    n = 0
    while True:
        recs = ob.peek(16, 4096)
        if not recs:
            break
        n += len(recs)
        ob.ack(recs[-1].seq)
    after = gc.mem_alloc()
    recs = None
    gc.enable()
    ob.close()
    lg.close()
    return (after - before) / n


def rate(RingLog, path, records):
    lg = RingLog(path, segment_bytes=1 << 20, budget_bytes=1 << 40, sync="none")
    append = lg.append
    t0 = ticks_us()
    for _ in range(records):
        append(VALUE64)
    lg.flush()
    dt = ticks_diff(ticks_us(), t0) / 1000000.0
    ok = lg.last_seq == records and lg.durable_seq == records
    lg.close()
    return records / dt, ok


def main(argv):
    lib, path, records, rate_records = argv[:4]
    sys.path.insert(0, lib)
    from edgeline.clock import HybridClock
    from edgeline.log import RingLog
    from edgeline.outbox import Outbox

    records = int(records)
    rate_records = int(rate_records)
    try:
        import os
        os.mkdir(path)
    except OSError:
        pass
    out = []
    n = 0
    for sync in ("none", "group"):
        kinds = ("small", "hlc", "clock.now", "clock.stamp") if hasattr(HybridClock, "stamp_into") else ("small", "hlc", "clock.now")
        for ts_kind in kinds:
            for vname, value, key in (("9 B", VALUE9, None), ("64 B", VALUE64, None), ("64 B + key", VALUE64, KEY)):
                n += 1
                b = per_record(RingLog, HybridClock, "%s/a%d" % (path, n), records, sync, ts_kind, value, key)
                out.append('{"sync": "%s", "ts": "%s", "value": "%s", "bytes": %.2f}' % (sync, ts_kind, vname, b))
    drains = []
    for ts_kind in ("small", "hlc"):
        n += 1
        b = drain(RingLog, Outbox, "%s/d%d" % (path, n), records, ts_kind)
        drains.append('{"ts": "%s", "bytes": %.2f}' % (ts_kind, b))
    r, ok = rate(RingLog, path + "/rate", rate_records)
    print('{"maxsize": %d, "alloc": [%s], "drain": [%s], "rate": %.1f, "rate_ok": %s}'
          % (sys.maxsize, ", ".join(out), ", ".join(drains), r, "true" if ok else "false"))
