"""python -m tools.pizero build | run | powercut (see --help of each)."""
import argparse
import os
import sys
import tempfile
import time

from tools.pizero.kernel import PiZeroError


def _build(a):
    from tools.pizero.initramfs import ensure_base
    from tools.pizero.kernel import ensure_busybox, ensure_kernel
    from tools.pizero.machine import default_sysroot

    t0 = time.monotonic()
    kdir = ensure_kernel()
    print("kernel      %s (%s)" % (kdir, (kdir / "version").read_text().strip()))
    print("busybox     %s" % ensure_busybox())
    sysroot = default_sysroot()
    print("sysroot     %s" % sysroot)
    base = ensure_base(sysroot)
    print("initramfs   %s (%.0f MB)" % (base, os.path.getsize(str(base)) / 1e6))
    print("ready in %.1f s" % (time.monotonic() - t0))
    return 0


def _run(a):
    from tools.pizero import machine, sdcard

    if not a.command:
        print("run: give a command after --", file=sys.stderr)
        return 2
    tmp = None
    sd = a.sd
    if sd is None:
        tmp = tempfile.mkdtemp(prefix="pizero-run-")
        sd = os.path.join(tmp, "sd.img")
    if not os.path.exists(sd):
        sdcard.make_sd_image(sd, a.size_mib, contents=a.contents)
    files = {}
    for spec in a.file:
        host, _, guest = spec.partition(":")
        with open(host, "rb") as f:
            files[guest or "/edgeline/" + os.path.basename(host)] = f.read()
    command = a.command[1:] if a.command[0] == "--" else a.command
    m = machine.PiZero(sd, command if len(command) > 1 else command[0], files=files).start()
    try:
        while True:
            line = m.next_line(a.timeout)
            if line is None:
                break
            print(line, flush=True)
    finally:
        m.power_cut()
    r = m.result()
    print("# ready %.1f s after start; card image %s" % (r.boot_s or -1, sd), file=sys.stderr)
    return r.status if r.status is not None else 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.pizero", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="fetch and build everything a boot needs (cached)")
    r = sub.add_parser("run", help="boot, run a command in /sd with python3 and core/, halt")
    r.add_argument("--sd", help="SD card image (made if missing; default: a fresh one)")
    r.add_argument("--size-mib", type=int, default=64)
    r.add_argument("--contents", help="host directory to put on a new card")
    r.add_argument("--file", action="append", default=[], metavar="HOST[:GUEST]",
                   help="add a file to the initramfs (default guest path /edgeline/NAME)")
    r.add_argument("--timeout", type=float, default=300, help="seconds without console output before giving up")
    r.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("powercut", help="the power-cut scenario with figures (its own --help)", add_help=False)
    args, rest = p.parse_known_args(argv)
    try:
        if args.cmd == "powercut":
            from tools.pizero import powercut

            return powercut.main(rest)
        if rest:
            p.error("unrecognized arguments: %s" % " ".join(rest))
        return _build(args) if args.cmd == "build" else _run(args)
    except PiZeroError as e:
        print("pizero: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
