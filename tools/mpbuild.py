"""Compile core/ (and the MicroPython-run tests and emulator) to .mpy with mpy-cross.

    python tools/mpbuild.py OUT_DIR [--arch ARCH] [--romfs IMAGE]

The compiler and ROMFS helpers live in host/ (edgeline_host.firmware.mpy, also behind
`edgeline firmware build|romfs|manifest`); this script keeps the test-tree build: OUT_DIR
receives edgeline/*.mpy, emulator/*.mpy, the test modules of tests/core and tests/mp,
and the runner (mptest.mpy; start it with `micropython -c "import sys; sys.path.insert(0,
OUT); import mptest; mptest.main([...])"`). With --romfs IMAGE the tree is also packed
into a ROMFS image, which the MicroPython test runs mount so code executes in place, as
from a board's flash (tests/host/test_micropython.py).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "host"))

from edgeline_host.firmware.mpy import build_romfs, compile_file, compile_tree, mpy_cross, rom_boot  # noqa: E402,F401


def build(out, arch=None):
    compile_tree(os.path.join(ROOT, "core", "edgeline"), os.path.join(out, "edgeline"), arch)
    compile_tree(os.path.join(ROOT, "emulator"), os.path.join(out, "emulator"), arch)
    compile_tree(os.path.join(ROOT, "tests", "core"), out, arch)
    if os.path.isdir(os.path.join(ROOT, "tests", "mp")):
        compile_tree(os.path.join(ROOT, "tests", "mp"), out, arch)
    # The runner too: compiling it from source at start-up would leave the parse tree's
    # garbage scattered over a 64 KB heap before the first test runs.
    compile_file(os.path.join(ROOT, "tools", "mptest.py"), os.path.join(out, "mptest.mpy"), arch)
    return out


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
