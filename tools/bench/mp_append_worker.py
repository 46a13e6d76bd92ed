# The append workload bench_micropython.py runs, unchanged, under CPython and under
# MicroPython's unix port (compiled to .mpy there). Plain code both runtimes accept:
# no argparse, no f-strings with format specs, time through ticks_us where it exists.
#
#   python tools/bench/mp_append_worker.py LIB_DIR LOG_DIR RECORDS GROUP SEGMENT_BYTES BUFFER_BYTES
#
# LIB_DIR goes first on sys.path (core/ for CPython, the .mpy tree for MicroPython).
# Prints one JSON line: {"impl": ..., "records": N, "seconds": S}.
import sys

try:
    from time import ticks_diff, ticks_us

    def _start():
        return ticks_us()

    def _seconds(t0):
        return ticks_diff(ticks_us(), t0) / 1000000.0

except ImportError:
    from time import perf_counter

    def _start():
        return perf_counter()

    def _seconds(t0):
        return perf_counter() - t0


def main(argv):
    lib, path, records, group, segment, buffer_bytes = argv[:6]
    sys.path.insert(0, lib)
    from edgeline.log import RingLog

    records = int(records)
    group = int(group)
    segment = int(segment)
    buffer_bytes = int(buffer_bytes) if int(buffer_bytes) > 0 else None
    lg = RingLog(path, segment_bytes=segment, budget_bytes=1 << 40, sync="group", group_records=group,
                 buffer_bytes=buffer_bytes)
    value = bytes(range(64))
    append = lg.append
    t0 = _start()
    for _ in range(records):
        append(value)
    lg.flush()
    dt = _seconds(t0)
    ok = lg.last_seq == records and lg.durable_seq == records
    lg.close()
    print('{"impl": "%s", "records": %d, "seconds": %.6f, "ok": %s, "buffer_bytes": %d}'
          % (sys.implementation.name, records, dt, "true" if ok else "false", len(lg._wbuf)))


if __name__ == "__main__":
    main(sys.argv[1:])
