"""The MicroPython test tree: core/, the emulator and the tests compiled to .mpy.

    python tools/mpbuild.py OUT_DIR [--arch ARCH] [--romfs IMAGE]

The compiler and ROMFS helpers are the product's (edgeline_host.firmware.mpy: compile_tree,
compile_file, mpy_cross, build_romfs, rom_boot; also behind `edgeline firmware
build|romfs|manifest`); callers use them from there. This script is only the test-tree
build, which the product never needs: OUT_DIR receives edgeline/*.mpy, emulator/*.mpy,
flashfile.mpy (the board's flash, edgeline_host/firmware/flashfile.py), the test modules of
tests/core and tests/mp, and the runner (mptest.mpy; start it with `micropython -c "import sys; sys.path.insert(0,
OUT); import mptest; mptest.main([...])"`). With --romfs IMAGE the tree is also packed
into a ROMFS image, which the MicroPython test runs mount so code executes in place, as
from a board's flash (tests/mp/micropython_test.py).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "host"))

from edgeline_host.firmware import flashfile  # noqa: E402
from edgeline_host.firmware.mpy import build_romfs, compile_file, compile_tree  # noqa: E402


def build(out, arch=None):
    compile_tree(os.path.join(ROOT, "core", "edgeline"), os.path.join(out, "edgeline"), arch)
    compile_tree(os.path.join(ROOT, "emulator"), os.path.join(out, "emulator"), arch)
    compile_file(flashfile.__file__, os.path.join(out, "flashfile.mpy"), arch)
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
