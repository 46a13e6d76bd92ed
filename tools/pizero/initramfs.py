"""The initramfs of the emulated Pi Zero: busybox, the armel CPython sysroot, the ext4
modules and an init that mounts the SD card and runs one command.

Theory of operation
-------------------
The initrd QEMU loads is two newc archives back to back (tools/pizero/cpio.py): a large
*base* built once per (kernel, sysroot, init) and cached, and a small *boot* archive
written for every boot. The base holds busybox, ``/init``, the kernel modules and the
sysroot (CPython 3.11 for armel with its libraries). The boot archive holds the current
``core/`` (so an edited checkout needs no rebuild), the files a caller adds, and
``/edgeline/run.sh``: the command to run.

``/init`` (busybox sh) mounts proc, sysfs and devtmpfs, loads the modules, waits for
``/dev/mmcblk0``, mounts it as ext4 on ``/sd`` and runs ``run.sh`` in ``/sd`` with
``python3`` (3.11, armel) on the PATH and ``core/`` on PYTHONPATH. It speaks to the host
over the serial console in lines that start with ``@EL init``:

    @EL init fs <message>           the kernel's ext4 messages for the card (after a
                                    power cut: "recovery complete", the journal replayed)
    @EL init ready uptime_ms=<ms>   the SD card is mounted, the command starts
    @EL init exit <status>          the command returned
    @EL init error <reason>         init could not get that far
    @EL init halt                   the card is unmounted; the machine resets next

Then it unmounts the card (a clean shutdown, unlike the power cuts the tests inflict by
killing QEMU) and resets the machine, which QEMU, started with ``-no-reboot``, turns into
its exit. Lines of the command's own output go to the same console.
"""
import hashlib
import io
import os
import py_compile
import shlex
import sys
import tempfile
from pathlib import Path

from tools.pizero.cpio import CpioWriter
from tools.pizero.kernel import PiZeroError, cache_root, ensure_busybox, ensure_kernel

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
say() { echo "@EL init $*"; }
die() { say "error $*"; sync; reboot -f; sleep 5; exit 1; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
ver=$(cat /lib/modules/version)
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$ver/$m" || die "insmod $m failed"
done
n=0
while [ ! -b /dev/mmcblk0 ]; do
    n=$((n + 1))
    [ $n -gt 300 ] && die "no /dev/mmcblk0 after 30 s (start QEMU with -drive if=sd)"
    sleep 0.1
done
mount -t ext4 /dev/mmcblk0 /sd || die "mount -t ext4 /dev/mmcblk0 failed"
dmesg | grep 'EXT4-fs (mmcblk0)' | while read -r line; do say "fs ${line#*] }"; done
read up rest < /proc/uptime
say "ready uptime_ms=$(echo $up | tr -d .)0"
cd /sd
env PYTHONPATH=/edgeline/core PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
    sh /edgeline/run.sh < /dev/null
say "exit $?"
cd /
sync
umount /sd || die "umount /sd failed"
say halt
reboot -f
"""


# Bumped when the base archive's contents change other than through its inputs.
_BASE_BUILD = 1


def _key(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode() + b"\0")
    return h.hexdigest()[:16]


def _sysroot_identity(sysroot):
    st = os.stat(os.path.join(sysroot, "usr", "bin", "python3.11"))
    return "%s:%d:%d" % (os.path.realpath(sysroot), st.st_size, int(st.st_mtime))


def ensure_base(sysroot, cache=None):
    """Path of the cached base archive for this kernel, sysroot and init."""
    cache = Path(cache) if cache is not None else cache_root()
    sysroot = Path(sysroot)
    if not (sysroot / "usr" / "bin" / "python3.11").exists():
        raise PiZeroError("%s is not an armel CPython sysroot (no usr/bin/python3.11)" % sysroot)
    kdir = ensure_kernel(cache)
    busybox = ensure_busybox(cache)
    path = cache / ("initramfs-base-%s.cpio" % _key(kdir.name, _sysroot_identity(sysroot), INIT, _BASE_BUILD))
    if path.exists():
        return path
    version = (kdir / "version").read_text().strip()
    order = (kdir / "modules.order").read_text().split()
    tmp = path.with_name(path.name + ".%d.tmp" % os.getpid())
    try:
        with open(str(tmp), "wb") as f:
            w = CpioWriter(f)
            for d in ("proc", "sys", "dev", "sd", "tmp", "edgeline", "bin"):
                w.mkdir(d)
            w.chardev("dev/console", 5, 1)
            w.chardev("dev/null", 1, 3, 0o666)
            w.tree(str(sysroot))
            w.symlink("usr/bin/python3", "python3.11")
            with open(str(busybox), "rb") as b:
                w.file("bin/busybox", b.read(), 0o755)
            w.file("init", INIT.encode(), 0o755)
            w.file("lib/modules/version", (version + "\n").encode())
            w.file("lib/modules/order", ("\n".join(order) + "\n").encode())
            for rel in order:
                w.file("lib/modules/%s/%s" % (version, rel), (kdir / "modules" / rel).read_bytes())
            w.close()
        os.replace(str(tmp), str(path))
    finally:
        if tmp.exists():
            tmp.unlink()
    # Older bases (another kernel, sysroot or init) are 50 MB each; a boot that is
    # copying one keeps reading it after the unlink.
    for old in cache.glob("initramfs-base-*.cpio"):
        if old != path:
            old.unlink()
    return path


def _compiled(src, guest_name, tmpdir):
    """Unchecked-hash bytecode of host file `src` when this host's Python makes 3.11
    bytecode (the guest's), else None: the guest then compiles in memory, only slower."""
    if sys.version_info[:2] != (3, 11):
        return None
    cfile = os.path.join(tmpdir, "out.pyc")
    py_compile.compile(str(src), cfile=cfile, dfile=guest_name, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    with open(cfile, "rb") as f:
        return f.read()


def boot_archive(command, files=None, core_dir=None):
    """The per-boot archive: core/ (with 3.11 bytecode when possible), `files`
    ({guest path: bytes}) and /edgeline/run.sh running `command` (an argv list, or a
    shell line as a string)."""
    core_dir = Path(core_dir) if core_dir is not None else Path(__file__).resolve().parents[2] / "core"
    buf = io.BytesIO()
    w = CpioWriter(buf)
    pkg = core_dir / "edgeline"
    if not (pkg / "log.py").exists():
        raise PiZeroError("%s does not hold the edgeline core package" % core_dir)
    with tempfile.TemporaryDirectory() as tmpdir:
        for src in sorted(pkg.glob("*.py")):
            w.file("edgeline/core/edgeline/" + src.name, src.read_bytes())
            pyc = _compiled(src, "/edgeline/core/edgeline/" + src.name, tmpdir)
            if pyc is not None:
                w.file("edgeline/core/edgeline/__pycache__/%s.cpython-311.pyc" % src.stem, pyc)
    for guest_path, data in sorted((files or {}).items()):
        w.file(guest_path, data)
    line = command if isinstance(command, str) else shlex.join(command)
    w.file("edgeline/run.sh", (line + "\n").encode(), 0o755)
    w.close()
    return buf.getvalue()


def write_initrd(path, sysroot, command, files=None, cache=None, core_dir=None):
    """The base archive followed by a boot archive, at `path`."""
    base = ensure_base(sysroot, cache)
    with open(str(path), "wb") as out, open(str(base), "rb") as b:
        while True:
            chunk = b.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
        out.write(boot_archive(command, files, core_dir))
    return Path(path)
