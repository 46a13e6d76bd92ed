"""Power cuts on the emulated Pi Zero: an edge process appends to a ring log on the SD
card, QEMU is SIGKILLed at a random moment, and the next boot says what survived.

    python -m tools.pizero.powercut [--seed N] [--keep DIR]   # the scenario, with figures

Theory of operation
-------------------
``edge_writer.py`` (the guest program, copied into each boot's initramfs) prints a line
per durable record; ``cut_boot`` waits for a random number of them, waits a random
fraction of a second more, and kills QEMU. Lines already on their way are still read
(QEMU wrote them to the pipe before it died), so the set of acknowledged seqs is exactly
what the guest acknowledged. A line cut in half by the kill is not a whole line and is
never counted. ``final_boot`` lets the guest run to its end and halt cleanly.

``BootLog`` parses one boot's console. ``check_recovered`` states what must hold after
a cut (docs/spec/log.md, G1-G3), in terms of what the host saw:

* every acknowledged seq is held, with the ts, key and value its seq determines;
* the log holds exactly seqs 1..last, no record is corrupt and nothing was warned;
* nothing was invented: last <= the highest acknowledged + the records one commit can
  cover that were not yet acknowledged (1 under ``every``, the group size under
  ``group``);
* the log is durable up to last on reopening, and the ext4 journal was replayed (the
  cut was a real, unclean power loss);
* the next boot's appends continue at last + 1.

``unsafe_ack_control`` is the control experiment: the same cut, with a writer that
acknowledges records it wrote but never fsynced; they must be missing afterwards, or
the "power cut" is not one and the scenario would prove nothing.

The scenario (``run_scenario``): boot 1 appends under sync ``every`` and is cut; boot 2
recovers, checks, appends under group commit and is cut again; boot 3 recovers, checks,
appends a few records, closes the log and halts, and ``e2fsck -fn`` finds the card clean.
"""
import argparse
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

from tools.pizero import edge_writer, sdcard
from tools.pizero.kernel import PiZeroError
from tools.pizero.machine import PiZero

GUEST = "/edgeline/edge_writer.py"
LOG_DIR = "/sd/log"

_OPEN = re.compile(r"@EL open first=(\d+) last=(\d+) durable=(\d+) segments=(\d+) corrupt=(\d+) open_ms=([\d.]+)$")
_REC = re.compile(r"@EL rec (\d+) (\d+) (-|[0-9a-f]*) ([0-9a-f]*)$")
_DUMPED = re.compile(r"@EL dumped n=(\d+) corrupt=(\d+) read_ms=([\d.]+)$")
_ACK = re.compile(r"@EL ack (\d+) ([\d.]+)$")
_CLOSED = re.compile(r"@EL closed last=(\d+)$")


class BootLog:
    """What one boot's console says (only whole lines count)."""

    def __init__(self, console, boot_s=None, cut=False, stamps=None):
        self.console = console
        self.stamps = stamps or [None] * len(console)  # host arrival time of each line
        self.boot_s = boot_s  # host seconds from QEMU start to "@EL init ready"
        self.cut = cut
        self.opened = None
        self.records = []  # (seq, ts, key, value)
        self.dumped = None
        self.acks = []  # (seq, guest ms after the first append)
        self.ack_stamps = []  # host arrival time of each ack line
        self.warnings = []
        self.closed_last = None
        self.open_s = None  # host seconds from "opening" to "open": recovery
        self.read_s = None  # host seconds from "open" to "dumped": reading and printing all
        opening = None
        opened_at = None
        self.fs = [line[len("@EL init fs "):] for line in console if line.startswith("@EL init fs ")]
        for line, stamp in zip(console, self.stamps):
            if line == "@EL opening":
                opening = stamp
                continue
            m = _OPEN.match(line)
            if m:
                opened_at = stamp
                if opening is not None and stamp is not None:
                    self.open_s = stamp - opening
                g = m.groups()
                self.opened = dict(first=int(g[0]), last=int(g[1]), durable=int(g[2]), segments=int(g[3]),
                                   corrupt=int(g[4]), open_ms=float(g[5]))
                continue
            m = _REC.match(line)
            if m:
                seq, ts, key, value = m.groups()
                self.records.append((int(seq), int(ts), None if key == "-" else bytes.fromhex(key),
                                     bytes.fromhex(value)))
                continue
            m = _DUMPED.match(line)
            if m:
                self.dumped = dict(n=int(m.group(1)), corrupt=int(m.group(2)), read_ms=float(m.group(3)))
                if opened_at is not None and stamp is not None:
                    self.read_s = stamp - opened_at
                continue
            m = _ACK.match(line)
            if m:
                self.acks.append((int(m.group(1)), float(m.group(2))))
                self.ack_stamps.append(stamp)
                continue
            m = _CLOSED.match(line)
            if m:
                self.closed_last = int(m.group(1))
                continue
            if line.startswith("@EL warn "):
                self.warnings.append(line[len("@EL warn "):])

    @property
    def acked(self):
        return [seq for seq, _ in self.acks]

    def appends_per_s(self):
        """Durable appends per second, from the host's arrival times of the first and
        last ack lines. (The guest's own clock runs on QEMU's instruction count, see
        machine.py, and is only roughly real time over a few seconds.)"""
        if len(self.acks) < 2 or self.ack_stamps[0] is None or self.ack_stamps[-1] <= self.ack_stamps[0]:
            return None
        return (len(self.acks) - 1) / (self.ack_stamps[-1] - self.ack_stamps[0])

    def tail(self, n=30):
        return "\n".join(self.console[-n:])


def writer_command(*args):
    return ["python3", GUEST, "--dir", LOG_DIR] + list(args)


def _files():
    with open(edge_writer.__file__, "rb") as f:
        return {GUEST: f.read()}


def cut_boot(sd_image, args, acks_before_cut, extra_delay_s, timeout_s=300, **kw):
    """Boot, run the writer with `args`, SIGKILL QEMU `extra_delay_s` after the
    `acks_before_cut`-th acknowledgement. The BootLog of everything the guest said."""
    m = PiZero(sd_image, writer_command(*args), files=_files(), **kw).start()
    try:
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < acks_before_cut:
            line = m.next_line(max(1.0, deadline - time.monotonic()))
            if line is None or line.startswith("@EL init exit") or line.startswith("@EL init error"):
                raise PiZeroError("the writer stopped before the power cut. Console ends:\n%s" % m.tail())
            if _ACK.match(line):
                seen += 1
        time.sleep(extra_delay_s)
    finally:
        m.power_cut()
    m.drain()  # the lines QEMU wrote before it died
    return BootLog(m.console, m.result().boot_s, cut=True, stamps=m.stamps)


def final_boot(sd_image, args, timeout_s=300, **kw):
    """Boot, run the writer with `args` to its end, halt cleanly."""
    m = PiZero(sd_image, writer_command(*args), files=_files(), **kw).start()
    r = m.wait(timeout_s)
    if r.status != 0:
        raise PiZeroError("the writer exited with status %s. Console ends:\n%s" % (r.status, m.tail()))
    return BootLog(r.console, r.boot_s, stamps=m.stamps)


def check_recovered(boot, acked, slack):
    """A list of problems (empty when everything holds) after reopening a log cut
    while its writer had acknowledged the seqs `acked`; `slack` is how many records
    beyond the last acknowledged one a commit in flight may have made durable."""
    problems = []
    o = boot.opened
    if o is None or boot.dumped is None:
        return ["the log did not open and dump. Console ends:\n" + boot.tail()]
    held = [r[0] for r in boot.records]
    last = o["last"]
    top = max(acked) if acked else 0
    if held != list(range(1, last + 1)):
        gaps = sorted(set(range(1, last + 1)) - set(held))
        problems.append("the log does not hold exactly seqs 1..%d (missing %s, %d records read)"
                        % (last, gaps[:10], len(held)))
    lost = sorted(set(acked) - set(held))
    if lost:
        problems.append("%d acknowledged records lost, e.g. %s" % (len(lost), lost[:10]))
    bad = [r[0] for r in boot.records if r[1:] != edge_writer.record(r[0])]
    if bad:
        problems.append("%d records read back with wrong contents, e.g. seqs %s" % (len(bad), bad[:10]))
    if o["corrupt"] or boot.dumped["corrupt"]:
        problems.append("the log reported corrupt records (%d at open, %d reading)"
                        % (o["corrupt"], boot.dumped["corrupt"]))
    if boot.warnings:
        problems.append("the log warned: %s" % boot.warnings[0])
    if boot.dumped["n"] != len(held):
        problems.append("dumped n=%d but %d records came through" % (boot.dumped["n"], len(held)))
    if not top <= last <= top + slack:
        problems.append("last seq %d after the cut, but the highest acknowledged was %d (allowed up to %d)"
                        % (last, top, top + slack))
    if o["durable"] != last:
        problems.append("reopened log is durable to %d, not to its last seq %d" % (o["durable"], last))
    if not any("recovery complete" in line for line in boot.fs):
        problems.append("ext4 did not replay its journal: the previous boot was not cut (fs: %s)" % boot.fs)
    if boot.acks and boot.acks[0][0] != last + 1:
        problems.append("appending resumed at seq %d, not at last + 1 = %d" % (boot.acks[0][0], last + 1))
    if boot.acked != list(range(last + 1, last + 1 + len(boot.acks))):
        problems.append("acknowledgements after reopening are not consecutive from %d" % (last + 1))
    return problems


def run_scenario(workdir, rng, report=print, group=8, **kw):
    """Three boots, two power cuts (see the module doc). Returns the three BootLogs;
    raises AssertionError naming every problem found."""
    sd = sdcard.make_sd_image(os.path.join(str(workdir), "sd.img"), 64)
    k1, d1 = rng.randint(20, 120), rng.uniform(0, 0.3)
    report("boot 1: sync every, power cut after %d acks + %.2f s" % (k1, d1))
    b1 = cut_boot(sd, ["--sync", "every", "--forever"], k1, d1, **kw)
    problems = []
    if b1.opened is None or b1.opened["last"] != 0:
        problems.append("boot 1 did not open an empty log")
    if b1.acked != list(range(1, len(b1.acks) + 1)) or len(b1.acks) < k1:
        problems.append("boot 1's acknowledgements are not 1..n with n >= %d" % k1)

    k2, d2 = rng.randint(3, 15) * group, rng.uniform(0, 0.3)
    report("boot 2: recover, sync group of %d, power cut after %d acks + %.2f s" % (group, k2, d2))
    b2 = cut_boot(sd, ["--sync", "group", "--group", str(group), "--dump", "--forever"], k2, d2, **kw)
    problems += ["after cut 1: " + p for p in check_recovered(b2, b1.acked, 1)]

    report("boot 3: recover, append 20, close, halt")
    b3 = final_boot(sd, ["--sync", "every", "--dump", "--append", "20", "--close"], **kw)
    problems += ["after cut 2: " + p for p in check_recovered(b3, b1.acked + b2.acked, group)]
    if b3.opened is not None and b3.closed_last != b3.opened["last"] + 20:
        problems.append("boot 3 closed at %s, not at %d + 20" % (b3.closed_last, b3.opened["last"]))
    clean, fsck_out = sdcard.fsck(sd)
    if not clean:
        problems.append("e2fsck found the card unclean after the final halt:\n" + fsck_out)
    assert not problems, "\n".join(problems)
    return b1, b2, b3


def unsafe_ack_control(workdir, rng, report=print, **kw):
    """The control experiment: a writer that acknowledges records written to the file
    but never fsynced, cut like the others. Returns (acknowledged seqs, BootLog of the
    recovery boot); on a real power cut the acknowledged records are gone."""
    sd = sdcard.make_sd_image(os.path.join(str(workdir), "control.img"), 64)
    k, d = rng.randint(50, 150), rng.uniform(0, 0.3)
    report("control: acknowledge before fsync, power cut after %d acks + %.2f s" % (k, d))
    # One big segment: no seal (which fsyncs) happens to save the records by the way.
    seg = ["--segment-bytes", str(1 << 20)]
    b1 = cut_boot(sd, ["--sync", "none", "--unsafe-ack", "--forever"] + seg, k, d, **kw)
    b2 = final_boot(sd, ["--dump"] + seg, **kw)
    return b1.acked, b2


def figures(boots, group=8):
    """The measured figures of a scenario run, as text lines (host clock throughout)."""
    b1, b2, b3 = boots
    out = []
    for i, b in enumerate(boots, 1):
        o = b.opened
        line = "boot %d: ready %.1f s after QEMU start; log opened in %.0f ms (%d records, %d segments)" % (
            i, b.boot_s or -1, (b.open_s or 0) * 1000, o["last"], o["segments"])
        if b.read_s is not None:
            line += "; all read and printed in %.1f s" % b.read_s
        out.append(line)
    for b, what in ((b1, "fsync per record (sync every)"), (b2, "group commit of %d" % group)):
        out.append("durable appends/s, %s: %.0f (%d acknowledged)" % (what, b.appends_per_s() or 0, len(b.acks)))
    out.append("survived cut 1: %d acknowledged, %d held; cut 2: %d acknowledged in all, %d held"
               % (len(b1.acks), b2.opened["last"], len(b1.acks) + len(b2.acks), b3.opened["last"]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.pizero.powercut", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="random seed of the cut moments")
    p.add_argument("--keep", metavar="DIR", help="keep the SD image and console logs in DIR")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    print("seed %d" % seed)
    workdir = a.keep or tempfile.mkdtemp(prefix="pizero-powercut-")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.monotonic()
    try:
        boots = run_scenario(workdir, random.Random(seed), console_log=Path(workdir) / "console.log")
    except (PiZeroError, AssertionError) as e:
        print("FAILED: %s" % e, file=sys.stderr)
        return 1
    finally:
        if not a.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    for line in figures(boots):
        print(line)
    print("scenario: %.0f s" % (time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
