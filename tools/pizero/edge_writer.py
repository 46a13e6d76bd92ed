"""An edge process for the emulated Pi Zero: append to a ring log on the SD card and
report, over the serial console, each record as it becomes durable.

    python3 edge_writer.py --dir /sd/log [--sync every|group] [--group N] [--dump]
                           [--append COUNT | --forever] [--close]

It runs on the Pi (CPython 3.11, armel) with core/ on PYTHONPATH; the host reads its
lines. Opening the log is recovery after whatever happened before (a power cut). Then:

    @EL opening                   just before the log is opened
    @EL open first=F last=L durable=D segments=S corrupt=C open_ms=T
    @EL rec SEQ TS KEY VALUE      with --dump: every record held (KEY, VALUE in hex; - for no key)
    @EL dumped n=N corrupt=C read_ms=T
    @EL ack SEQ T_MS              SEQ is durable (the commit covering it returned), T_MS
                                  after the first append (the guest's monotonic clock,
                                  which under QEMU's -icount is only roughly real time:
                                  the host times the lines' arrival instead)
    @EL warn MESSAGE              the log warned (a corrupt record skipped, ...)
    @EL closed last=L             after --append COUNT with --close

Under ``--sync every`` each append returns once it is durable; under ``--sync group``
the log commits every ``--group`` appends, and a seq is acknowledged only once
``durable_seq`` has reached it — never on the strength of an append alone.
``--sync none --unsafe-ack`` is the deliberate exception: it acknowledges records the
kernel holds only in its page cache, so that a test can show a power cut loses them.

Record contents are a function of the seq (``record(seq)``), so the host can check
every byte read back without being told what was written.
"""
import sys
import time

SEGMENT_BYTES = 4096  # small segments: power cuts land on segment seals too
BUDGET_BYTES = 32 << 20  # far above what a test writes: nothing is evicted


def record(seq):
    """(ts, key, value) of the record with this seq: 9..200 value bytes, a key on every
    third record."""
    n = 9 + (seq * 37) % 192
    unit = b"pizero record %d|" % seq
    value = (unit * (n // len(unit) + 1))[:n]
    key = b"sensor-%d" % (seq % 7) if seq % 3 == 0 else None
    return 1000 * seq + seq % 997, key, value


def _hex(b):
    return "-" if b is None else b.hex()


def say(line):
    # One write per line: the host takes only whole lines, so a line cut by a power cut
    # is never mistaken for a shorter one.
    sys.stdout.write("@EL " + line + "\n")
    sys.stdout.flush()


def main(argv):
    import argparse

    from edgeline.log import RingLog

    p = argparse.ArgumentParser(description="append to a ring log, report durable seqs")
    p.add_argument("--dir", required=True)
    p.add_argument("--sync", choices=("every", "group", "none"), default="every")
    p.add_argument("--group", type=int, default=8, help="records per group commit")
    p.add_argument("--segment-bytes", type=int, default=SEGMENT_BYTES)
    p.add_argument("--dump", action="store_true", help="report every record held after opening")
    p.add_argument("--append", type=int, default=0, metavar="COUNT")
    p.add_argument("--forever", action="store_true", help="append until the power goes")
    p.add_argument("--close", action="store_true")
    p.add_argument("--unsafe-ack", action="store_true",
                   help="with --sync none: acknowledge each record once written to the file, "
                        "before any fsync (the mistake the power-cut tests must catch)")
    a = p.parse_args(argv)
    if a.unsafe_ack and a.sync != "none":
        p.error("--unsafe-ack goes with --sync none")

    import os

    parent = os.path.dirname(a.dir.rstrip("/")) or "/"
    if not os.path.isdir(a.dir):
        os.mkdir(a.dir)
        fd = os.open(parent, os.O_RDONLY)  # the new directory itself must survive a cut
        os.fsync(fd)
        os.close(fd)

    say("opening")
    t0 = time.monotonic()
    log = RingLog(a.dir, segment_bytes=a.segment_bytes, budget_bytes=BUDGET_BYTES, sync=a.sync,
                  group_records=a.group, group_ms=1 << 30, warn=lambda m: say("warn " + m))
    open_ms = (time.monotonic() - t0) * 1000
    s = log.stats()
    say("open first=%d last=%d durable=%d segments=%d corrupt=%d open_ms=%.1f"
        % (s["first_seq"], s["last_seq"], s["durable_seq"], s["segments"], s["corrupt"], open_ms))

    if a.dump:
        t0 = time.monotonic()
        n = 0
        nxt = 1
        while True:
            batch = log.read(nxt, max_records=64)
            if not batch:
                break
            for r in batch:
                say("rec %d %d %s %s" % (r.seq, r.ts, _hex(r.key), r.value.hex()))
            n += len(batch)
            nxt = batch[-1].seq + 1
        say("dumped n=%d corrupt=%d read_ms=%.1f" % (n, log.corrupt, (time.monotonic() - t0) * 1000))

    acked = log.durable_seq
    left = a.append
    t0 = None
    while a.forever or left > 0:
        ts, key, value = record(log.next_seq)
        seq = log.append(value, ts=ts, key=key)
        if t0 is None:
            t0 = time.monotonic()
        t_ms = (time.monotonic() - t0) * 1000
        if a.unsafe_ack:
            log._write_out()  # the kernel's page cache has it; the card may not
            acked = seq
            say("ack %d %.1f" % (acked, t_ms))
        while acked < log.durable_seq:
            acked += 1
            say("ack %d %.1f" % (acked, t_ms))
        left -= 1
        if seq != acked and a.sync == "every":
            say("warn append returned seq %d but durable_seq is %d" % (seq, log.durable_seq))
    if a.close:
        log.close()
        while acked < log.durable_seq:
            acked += 1
            say("ack %d %.1f" % (acked, (time.monotonic() - t0) * 1000 if t0 else 0.0))
        say("closed last=%d" % log.last_seq)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
