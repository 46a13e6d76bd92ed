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
# Read: per record of RingLog.read (16 at a time), and per frame FrameScanner.frame checks.
# Big seqs: per append across 2**30 and 2**32 (a log opened there: an empty tail segment
# named and headed by the seq), returning the seq and with seq=False.
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


def read(RingLog, path, records, ts_kind):
    # Bytes allocated per record read: RingLog.read(16 records at a time) over records
    # already durable (the Records and their values are the API's; the frame checks,
    # CRC included, are what issue 16 made allocation-free), and per frame checked by
    # the scanner alone (FrameScanner.frame: recovery's and every read's per-frame work).
    lg = _log(RingLog, path, "none")
    base = 1000 if ts_kind == "small" else EPOCH_MS << 16
    for i in range(records + 16):
        lg.append(VALUE64, base + i, None, 0)
    lg.flush()
    lg.read(2, 16, 4096)  # warm-up: the scanner and its buffer
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    n = 0
    s = 18
    while n < records:
        r = lg.read(s, 16, 4096)
        n += len(r)
        s += len(r)
    after = gc.mem_alloc()
    r = None
    gc.enable()
    flen = 26 + len(VALUE64)
    tail = lg._segs[-1]
    h = lg.storage.open_read(lg._seg_path(tail[0]))
    sc = lg._scanner(h, tail[1], tail[3] - 32)
    off = 32 + 26 + len(VALUE9)  # past the warm-up record of _log
    sc.frame(off)
    gc.collect()
    gc.disable()
    b2 = gc.mem_alloc()
    ok = True
    for i in range(records):
        if sc.frame(off) is None:
            ok = False
        off += flen
    a2 = gc.mem_alloc()
    gc.enable()
    h.close()
    lg.close()
    return (after - before) / n, (a2 - b2) / records, ok


def big_seqs(RingLog, HybridClock, path, records, start, sync):
    # Bytes allocated per append across seq ``start`` (2**30 - records/2 ...), the clock
    # stamping, returning the seq or (seq=False, where append takes it) not.
    import os
    try:
        os.mkdir(path)
    except OSError:
        pass
    from edgeline.logformat import pack_segment_header, segment_name
    f = open(path + "/" + segment_name(start), "wb")
    f.write(pack_segment_header(start, 0, 1 << 20))
    f.close()
    lg = RingLog(path, segment_bytes=1 << 20, budget_bytes=1 << 30, sync=sync, group_records=50, group_ms=1 << 29)
    clock = HybridClock(0)
    clock.now(EPOCH_MS)
    lg.append(VALUE9, clock, None, 0)
    lg.flush()
    out = []
    for quiet in (False, True):
        try:
            if quiet:
                lg.append(VALUE9, clock, None, 0, False)
            else:
                lg.append(VALUE9, clock, None, 0)
        except TypeError:  # an append without the seq parameter (before issue 16's fix 3)
            out.append(None)
            continue
        gc.collect()
        gc.disable()
        before = gc.mem_alloc()
        if quiet:
            for i in range(records):
                clock.tick(1)
                lg.append(VALUE9, clock, None, 0, False)
        else:
            for i in range(records):
                clock.tick(1)
                lg.append(VALUE9, clock, None, 0)
        after = gc.mem_alloc()
        gc.enable()
        out.append((after - before) / records)
    runs = 2 if out[1] is not None else 1
    ok = lg.last_seq == start + runs * (records + 1)  # the first append, then each run's
    lg.close()
    return out, ok


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
    reads = []
    for ts_kind in ("small", "hlc"):
        n += 1
        b, fb, fok = read(RingLog, "%s/r%d" % (path, n), records, ts_kind)
        reads.append('{"ts": "%s", "bytes": %.2f, "frame_bytes": %.2f, "ok": %s}' % (ts_kind, b, fb, "true" if fok else "false"))
    bigs = []
    for start in (1 << 30, 1 << 32):
        for sync in ("none", "group"):
            n += 1
            (b, bq), bok = big_seqs(RingLog, HybridClock, "%s/b%d" % (path, n), records, start - records // 2, sync)
            bigs.append('{"start": "2**%d", "sync": "%s", "bytes": %.2f, "quiet_bytes": %s, "ok": %s}'
                        % (30 if start == 1 << 30 else 32, sync, b, "null" if bq is None else "%.2f" % bq, "true" if bok else "false"))
    r, ok = rate(RingLog, path + "/rate", rate_records)
    print('{"maxsize": %d, "alloc": [%s], "drain": [%s], "read": [%s], "big_seqs": [%s], "rate": %.1f, "rate_ok": %s}'
          % (sys.maxsize, ", ".join(out), ", ".join(drains), ", ".join(reads), ", ".join(bigs), r, "true" if ok else "false"))
