"""Boot the emulated Raspberry Pi Zero: ``qemu-system-arm -M raspi0`` with Debian's Pi
kernel, the patched device tree, an initramfs and an SD card image.

Theory of operation
-------------------
``PiZero(sd_image, command).start()`` writes the initrd (tools/pizero/initramfs.py) and
starts QEMU with the serial console on its stdout. A reader thread splits the console
into lines (carriage returns dropped), keeps them all (``console``) and queues them for
``next_line``. The guest's init reports ``@EL init ...`` lines (see initramfs.py); the
command reports whatever it likes.

``power_cut()`` is SIGKILL of QEMU: the guest gets no warning, and what its kernel had
not yet written to the SD card is gone, as when a Pi loses power. Whatever QEMU
had written to the image file is kept (the host's page cache holds it), as the card's
flash would. ``wait(timeout_s)`` lets the guest finish on its own: init runs the
command, unmounts the card and resets, which ``-no-reboot`` makes QEMU's exit; a kernel
panic does the same (``panic=-1``). Every wait has a timeout, after which QEMU is
killed and PiZeroError carries the end of the console.

The machine: an ARM1176 (ARMv6), 512 MB of RAM (the model's fixed size; 430 MB usable),
the SD card on the SDHOST controller as /dev/mmcblk0. Its speed depends on the host's
load; docs/pizero-system.md has figures. Guest time runs on QEMU's instruction count
(``-icount``, see ``start``), so time things by the arrival of console lines
(``stamps``), not by the guest's clock.
"""
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tools.pizero.initramfs import write_initrd
from tools.pizero.kernel import PiZeroError, cache_root, ensure_kernel, run_tool

# quiet loglevel=3: only critical kernel messages (ext4's errors among them) reach the
# console; init reports the kernel's ext4 messages about the card itself.
# panic=-1: a panic resets at once, and -no-reboot makes that QEMU's exit.
# cryptomgr.notests: the crypto API's boot-time self-tests take 3-8 s of emulated time
# and test the kernel, not us.
CMDLINE = "console=ttyAMA0,115200 rdinit=/init quiet loglevel=3 panic=-1 cryptomgr.notests"


def qemu_binary():
    return shutil.which("qemu-system-arm")


def default_sysroot():
    """The armel CPython 3.11 sysroot tools/qemu_user.py builds and caches (shared with
    the QEMU user-mode runs of the test suite)."""
    from tools import qemu_user

    try:
        return qemu_user.ensure_sysroot(profile="pizero")
    except qemu_user.QemuUserError as e:
        raise PiZeroError("the armel CPython sysroot: %s" % e) from None


def seeded_dtb(src, dest):
    """A copy of the device tree with 32 fresh random bytes in /chosen/rng-seed.

    The kernel credits a boot loader's seed (CONFIG_RANDOM_TRUST_BOOTLOADER, as a Pi's
    firmware provides one), so its random pool is ready at once. Without it the first
    getrandom() — CPython asks at every start — spins for seconds of emulated time
    gathering jitter entropy."""
    shutil.copyfile(str(src), dest)
    seed = ["%02x" % b for b in os.urandom(32)]
    run_tool(["fdtput", "-t", "bx", dest, "/chosen", "rng-seed"] + seed, "seeding the device tree")
    return dest


class BootResult:
    def __init__(self, status, console, boot_s):
        self.status = status  # the command's exit status; None if it never finished
        self.console = console  # every console line
        self.boot_s = boot_s  # start() to "@EL init ready", host clock; None if never ready

    def lines(self, prefix):
        return [line for line in self.console if line.startswith(prefix)]


class PiZero:
    """One boot. `command` runs in /sd with python3 (armel 3.11) and core/ importable;
    `files` ({guest path: bytes}) are added to the initramfs."""

    def __init__(self, sd_image, command, files=None, sysroot=None, cache=None, workdir=None, console_log=None):
        self.binary = qemu_binary()
        if self.binary is None:
            raise PiZeroError("qemu-system-arm not found (apt-get install qemu-system-arm)")
        self.sd_image = Path(sd_image)
        if not self.sd_image.exists():
            raise PiZeroError("SD card image %s does not exist" % sd_image)
        self.command = command
        self.files = files or {}
        self.sysroot = sysroot
        self.cache = Path(cache) if cache is not None else cache_root()
        self.workdir = workdir
        self.console_log = console_log
        self.console = []
        self.stamps = []  # host monotonic time each console line arrived
        self.proc = None
        self.started = None
        self.ready_at = None
        self.status = None
        self._lines = queue.Queue()
        self._tmp = None

    # ------------------------------------------------------------------ lifecycle

    def start(self):
        self.started = time.monotonic()
        if self.sysroot is None:
            self.sysroot = default_sysroot()
        kdir = ensure_kernel(self.cache)
        self._tmp = tempfile.mkdtemp(prefix="pizero-", dir=self.workdir)
        try:
            initrd = write_initrd(os.path.join(self._tmp, "initrd"), self.sysroot, self.command, self.files,
                                  self.cache)
            dtb = seeded_dtb(kdir / "pizero.dtb", os.path.join(self._tmp, "pizero.dtb"))
            argv = [
                self.binary, "-M", "raspi0",
                "-kernel", str(kdir / "uImage"), "-dtb", dtb,
                "-initrd", str(initrd), "-append", CMDLINE,
                "-drive", "file=%s,if=sd,format=raw" % self.sd_image,
                "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
                # Guest time advances with the instructions executed, not with the
                # host's clock. Without it a loaded host can stall the vCPU between the
                # kernel's read of the BCM2835 system timer and its write of the next
                # compare value (15 us ahead at least): the compare is then already in
                # the past, the tick never comes and the idle guest sleeps for the 71
                # minutes the 32-bit counter takes to wrap. Seen in about 1 boot in 10
                # on a busy 2-core host (the CPU idle in WFI, the compare register
                # behind the counter); none in 30 with icount. "auto" keeps guest time
                # within seconds of real time, so time things from the host.
                "-icount", "shift=auto",
            ]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT)
        except BaseException:
            self._cleanup()
            raise
        threading.Thread(target=self._read, name="pizero-console", daemon=True).start()
        return self

    def _read(self):
        log = open(str(self.console_log), "a") if self.console_log else None
        try:
            partial = b""
            out = self.proc.stdout
            while True:
                chunk = out.read1(65536)
                if not chunk:
                    break
                partial += chunk
                *whole, partial = partial.split(b"\n")
                for raw in whole:
                    line = raw.replace(b"\r", b"").decode(errors="replace")
                    self._got(line, log)
            if partial:  # the last line, cut off mid-way by a power cut: kept, marked
                self._got(partial.replace(b"\r", b"").decode(errors="replace"), log, whole=False)
        finally:
            if log:
                log.close()
            self._lines.put(None)

    def _got(self, line, log, whole=True):
        if whole and line.startswith("@EL init ready") and self.ready_at is None:
            self.ready_at = time.monotonic()
        if whole and line.startswith("@EL init exit "):
            self.status = int(line.split()[3])
        self.console.append(line if whole else line + " <cut>")
        self.stamps.append(time.monotonic())
        if log:
            log.write(line + ("\n" if whole else " <cut>\n"))
            log.flush()
        if whole:
            self._lines.put(line)

    def next_line(self, timeout_s):
        """The next whole console line; None once QEMU has exited and all are read.
        PiZeroError (QEMU killed) if none comes within timeout_s."""
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            self.power_cut()
            raise PiZeroError("no console output for %.0f s; QEMU killed. Console ends:\n%s"
                              % (timeout_s, self.tail())) from None

    def power_cut(self):
        """SIGKILL QEMU (a power cut) and reap it; the console is read to its end."""
        p = self.proc
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        if p is not None:
            p.wait()
        self._cleanup()

    def drain(self, timeout_s=10):
        """After QEMU ended: every line not yet taken by next_line."""
        out = []
        while True:
            line = self.next_line(timeout_s)
            if line is None:
                return out
            out.append(line)

    def wait(self, timeout_s):
        """Let the guest finish; its BootResult. Lines not taken are in `console`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.power_cut()
                raise PiZeroError("the Pi did not finish within %.0f s; QEMU killed. Console ends:\n%s"
                                  % (timeout_s, self.tail()))
            if self.next_line(left) is None:
                break
        self.proc.wait()
        self._cleanup()
        errors = [line for line in self.console if line.startswith("@EL init error")]
        if errors:
            raise PiZeroError("the Pi's init failed: %s" % errors[0][len("@EL init error "):])
        if not any(line == "@EL init halt" for line in self.console):
            raise PiZeroError("the Pi stopped before a clean halt. Console ends:\n%s" % self.tail())
        return self.result()

    def result(self):
        ready = None if self.ready_at is None else self.ready_at - self.started
        return BootResult(self.status, list(self.console), ready)

    def tail(self, n=25):
        return "\n".join(self.console[-n:])

    def _cleanup(self):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.power_cut()


def run(sd_image, command, timeout_s=300, **kw):
    """Boot, run `command` to its end, halt cleanly: the BootResult."""
    return PiZero(sd_image, command, **kw).start().wait(timeout_s)
