"""The emulated Pi Zero's SD card: a raw image holding one ext4 file system.

``mkfs.ext4 -d DIR`` fills the file system from a host directory while creating it, so
no loop mount (and no root) is needed. QEMU's SD card model wants a power-of-two size.
The guest mounts the whole card (``/dev/mmcblk0``, no partition table) at ``/sd``.
``fsck`` runs ``e2fsck -fn`` (read-only, forced) on the image: after the guest has
unmounted cleanly, it must find nothing to repair.
"""
import os
import shutil
import subprocess
from pathlib import Path

from tools.pizero.kernel import PiZeroError, run_tool


def e2fs_tool(name):
    """Path of an e2fsprogs tool; Debian puts them in /sbin, which a user's PATH may lack."""
    path = shutil.which(name)
    for d in ("/usr/sbin", "/sbin"):
        if path is None and os.access(os.path.join(d, name), os.X_OK):
            path = os.path.join(d, name)
    if path is None:
        raise PiZeroError("%s not found (apt-get install e2fsprogs)" % name)
    return path


def make_sd_image(path, size_mib=64, contents=None, label="edgeline"):
    """Create `path` as a `size_mib` MiB ext4 card (4 KiB blocks, like a real card's),
    holding the host directory `contents` if given."""
    if size_mib < 8 or size_mib & (size_mib - 1):
        raise PiZeroError("SD card size must be a power of two of at least 8 MiB, not %d" % size_mib)
    path = Path(path)
    with open(str(path), "wb") as f:
        f.truncate(size_mib << 20)
    argv = [e2fs_tool("mkfs.ext4"), "-q", "-F", "-b", "4096", "-L", label,
            "-E", "lazy_itable_init=0,lazy_journal_init=0"]
    if contents is not None:
        argv += ["-d", str(contents)]
    run_tool(argv + [str(path)], "making the SD card image")
    return path


def fsck(path):
    """(clean, report) from a forced read-only e2fsck of the image."""
    p = subprocess.run([e2fs_tool("e2fsck"), "-fn", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return p.returncode == 0, p.stdout.decode(errors="replace")
