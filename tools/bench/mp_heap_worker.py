# The MicroPython side of bench_heap.py: append and acknowledge records while measuring
# the heap, then print one JSON line. Runs from the .mpy tree (see bench_heap.py).
#
# Method, per operation (each append, each peek, each ack):
#   gc.collect(); live = gc.mem_alloc(); gc.disable(); <operation>; peak = gc.mem_alloc(); gc.enable()
# With the collector off nothing is freed during the operation (bar explicit reallocs),
# so `peak` is the heap in use at the end of the operation plus all its garbage: what the
# heap must hold if collections happen only between operations. The real need is no
# larger (a collection inside the operation can only lower it). `live` is what stays
# allocated between operations. Both are reported above the idle heap measured after
# the imports (and after allocating the one value the application appends).
#
# Mode "plain" runs the same workload without instrumentation: bench_heap.py searches for
# the smallest -X heapsize in which it completes, the heap actually needed.
import gc
import json
import sys


def plain(lg, ob, value, records, chunk, peek_records, peek_bytes):
    # The same workload without instrumentation (for the smallest-heap search).
    append = lg.append
    n = 0
    last = 0
    while n < records:
        k = 0
        while k < chunk and n < records:
            append(value)
            n += 1
            k += 1
        while True:
            recs = ob.peek(peek_records, peek_bytes)
            if not recs:
                break
            last = recs[-1].seq
            ob.ack(last)
            recs = None
    return last


def main(argv):
    lib, path, records, chunk, peek_records, peek_bytes = argv[:6]
    mode = argv[6] if len(argv) > 6 else "measure"
    sys.path.insert(0, lib)
    gc.collect()
    pre = gc.mem_alloc()
    from edgeline.log import RingLog
    from edgeline.outbox import Outbox
    from edgeline import storage  # noqa: F401 -- RingLog(path) opens with it (imported at open since the logformat split)

    records = int(records)
    chunk = int(chunk)
    peek_records = int(peek_records)
    peek_bytes = int(peek_bytes)
    value = bytes(range(64))
    collect = gc.collect
    mem_alloc = gc.mem_alloc
    disable = gc.disable
    enable = gc.enable
    # Everything the loop below uses is allocated before the idle measurement.
    # Counters live in one preallocated list (small ints never allocate).
    OPEN, APP_PEAK, PEEK_PEAK, PEEK_LIVE, ACK_PEAK, LIVE_MAX = 0, 1, 2, 3, 4, 5
    APPENDS_ALLOC, APPEND_MAX_ALLOC, WORST_APPEND_SEQ, STEADY_ALLOC = 6, 7, 8, 9
    APPENDS_DONE, ACKED, PEEKS, LAST_ROT, OTHER_DMIN, OTHER_DMAX = 10, 11, 12, 13, 14, 15
    ALLOC_COMMIT, ALLOC_ROTATION = 16, 17
    st = [0] * 18
    st[OTHER_DMIN] = 1 << 29
    collect()
    idle = mem_alloc()
    total = idle + gc.mem_free()  # usable heap (the -X heapsize less the GC's tables)
    if mode == "plain":
        try:
            lg = RingLog(path)
            ob = Outbox(lg, "uplink")
            acked = plain(lg, ob, value, records, chunk, peek_records, peek_bytes)
            ob.close()
            lg.close()
            print(json.dumps({"pre": pre, "idle": idle, "total": total, "acked": acked, "error": None}))
        except MemoryError:
            print(json.dumps({"pre": pre, "idle": idle, "total": total, "error": "MemoryError"}))
        return
    failed = None
    config = (0, 0, 0, 0)
    try:
        lg = RingLog(path)  # the defaults a board gets
        ob = Outbox(lg, "uplink")
        config = (lg.segment_bytes, lg.budget_bytes, len(getattr(lg, "_wbuf", b"")), lg.group_records)
        # A new segment's file is opened when its first buffer is written out, up to
        # one buffer of records after the rotation: that allocation belongs to rotation.
        window = config[2] // (26 + len(value)) + 1
        collect()
        st[OPEN] = mem_alloc() - idle
        st[LIVE_MAX] = st[OPEN]
        append = lg.append
        peek = ob.peek
        ack = ob.ack
        n = 0
        while n < records:
            k = 0
            while k < chunk and n < records:
                segs = lg.segment_count
                durable = lg.durable_seq
                collect()
                before = mem_alloc()
                disable()
                seq = append(value)
                after = mem_alloc()
                enable()
                n += 1
                k += 1
                if after - idle > st[APP_PEAK]:
                    st[APP_PEAK] = after - idle
                if before - idle > st[LIVE_MAX]:
                    st[LIVE_MAX] = before - idle
                rotated = lg.segment_count != segs  # a new segment, or one reclaimed
                if rotated:
                    st[LAST_ROT] = seq
                if after > before:
                    st[APPENDS_ALLOC] += 1
                    d = seq - st[LAST_ROT]
                    if rotated or d <= window:
                        st[ALLOC_ROTATION] += 1
                    elif lg.durable_seq != durable:
                        st[ALLOC_COMMIT] += 1
                    else:
                        # neither a commit nor a segment rotation: should never allocate
                        st[STEADY_ALLOC] += 1
                        if d < st[OTHER_DMIN]:
                            st[OTHER_DMIN] = d
                        if d > st[OTHER_DMAX]:
                            st[OTHER_DMAX] = d
                    if after - before > st[APPEND_MAX_ALLOC]:
                        st[APPEND_MAX_ALLOC] = after - before
                        st[WORST_APPEND_SEQ] = seq
            st[APPENDS_DONE] = n
            while True:
                collect()
                before = mem_alloc()
                disable()
                recs = peek(peek_records, peek_bytes)
                after = mem_alloc()
                enable()
                if after - idle > st[PEEK_PEAK]:
                    st[PEEK_PEAK] = after - idle
                if before - idle > st[LIVE_MAX]:
                    st[LIVE_MAX] = before - idle
                if not recs:
                    break
                collect()
                if mem_alloc() - idle > st[PEEK_LIVE]:
                    st[PEEK_LIVE] = mem_alloc() - idle
                st[PEEKS] += 1
                last = recs[-1].seq
                collect()
                disable()
                ack(last)  # the records are still referenced, as a sender holds them
                after = mem_alloc()
                enable()
                if after - idle > st[ACK_PEAK]:
                    st[ACK_PEAK] = after - idle
                recs = None
                st[ACKED] = last
        ob.close()
        lg.close()
    except MemoryError:
        failed = "MemoryError after %d appends, %d acked" % (st[APPENDS_DONE], st[ACKED])
        recs = None
    collect()
    out = {
        "pre": pre, "idle": idle, "total": total, "open": st[OPEN], "live_max": st[LIVE_MAX],
        "append_peak": st[APP_PEAK], "peek_peak": st[PEEK_PEAK], "peek_live": st[PEEK_LIVE], "ack_peak": st[ACK_PEAK],
        "appends": st[APPENDS_DONE], "acked": st[ACKED], "peeks": st[PEEKS],
        "appends_allocating": st[APPENDS_ALLOC], "append_max_alloc": st[APPEND_MAX_ALLOC],
        "worst_append_seq": st[WORST_APPEND_SEQ], "alloc_commit": st[ALLOC_COMMIT],
        "alloc_rotation": st[ALLOC_ROTATION], "appends_allocating_steady": st[STEADY_ALLOC],
        "other_dmin": st[OTHER_DMIN], "other_dmax": st[OTHER_DMAX], "config": list(config), "error": failed,
    }
    print(json.dumps(out))
