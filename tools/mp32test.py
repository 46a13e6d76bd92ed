"""Run core test files under a 32-bit MicroPython: MicroPython's WebAssembly port, by node.

    python tools/mp32test.py [--heap 1m] [-kNAME] [-v] tests/core/test_log.py ...

The boards are 32-bit (small ints stop at 2**30 - 1); the unix port of the other lane
(tools/mptest.py, tests/mp/micropython_test.py) is 64-bit. This driver compiles the test
tree to .mpy (tools/mpbuild.py), and runs the product's runner of that lane
(edgeline_host/firmware/mp32/run.mjs, through edgeline_host.firmware.wasmport), which loads
the port (npm package @micropython/micropython-webassembly-pyscript, pinned by the lock
beside run.mjs; installed in $EDGELINE_MP32_DIR, by default tools/mp32 here, which
`make venv` prepares -- or on first use when npm exists), copies the tree to
/mpy and tests/golden to /tests/golden in the port's in-memory file system, and runs
tools/mptest.py one test per call from JavaScript (the port collects garbage only
between such calls). The core reaches the files through its storage interface
(edgeline.storage.FileStorage over the port's os module). Output as the unix-port
runner's: one line per failure, then "N passed, N failed"; exit status 1 on failure.
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "host"))  # a checkout's tool: the product from its source
from edgeline_host.firmware import wasmport  # noqa: E402
from edgeline_host.firmware.mpy import ToolMissing  # noqa: E402

# The checkout's install of the npm package (make venv), unless $EDGELINE_MP32_DIR says another.
MP32 = os.environ.get("EDGELINE_MP32_DIR") or os.path.join(ROOT, "tools", "mp32")
DEFAULT_HEAP = wasmport.DEFAULT_HEAP


def missing():
    """Why the lane cannot run here (a one-line reason), or None; installs the npm package
    into MP32 first if it is not there yet and npm is (one line on stderr)."""
    try:
        wasmport.ensure(MP32)
    except ToolMissing as e:
        return str(e)
    return None


def build_tree(out):
    """The .mpy tree the lane runs (the unix lane's, tools/mpbuild.py)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import mpbuild
    finally:
        sys.path.pop(0)
    return mpbuild.build(out)


def command(tree, code, loop=None, heap=DEFAULT_HEAP, copies=()):
    """The node command running code (then loop, see run.mjs) with tree at /mpy."""
    copies = [(tree, "/mpy"), (os.path.join(ROOT, "tests", "golden"), "/tests/golden")] + list(copies)
    return wasmport.command(code, loop, heap, copies, MP32)


def test_command(tree, files, heap=DEFAULT_HEAP, flags=()):
    """Command running the test files (repository paths) with mptest's flags (-kNAME, -v)."""
    argv = ["mptest", "--path", "/mpy"] + list(flags)
    argv += ["/mpy/" + os.path.basename(f)[:-3] + ".py" for f in files]
    code = "import sys\nsys.path.insert(0, '/mpy')\nimport mptest\nmptest.start(%r)\n" % (argv,)
    return command(tree, code, "mptest.step()", heap)


def run(cmd, timeout=600):
    """(returncode, stdout + stderr) of a command from command()/test_command()."""
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def main(argv):
    heap = DEFAULT_HEAP
    flags = []
    files = []
    args = argv[1:]
    i = 0
    while i < len(args):
        if args[i] == "--heap":
            heap = args[i + 1]
            i += 1
        elif args[i].startswith("-"):
            flags.append(args[i])
        else:
            files.append(args[i])
        i += 1
    if not files:
        sys.exit("usage: python tools/mp32test.py [--heap 1m] [-kNAME] [-v] tests/core/test_*.py ...")
    why = missing()
    if why:
        sys.exit(why)
    with tempfile.TemporaryDirectory(prefix="edgeline-mp32-") as tmp:
        tree = build_tree(os.path.join(tmp, "mpy"))
        p = subprocess.run(test_command(tree, files, heap, flags), cwd=ROOT)
    return p.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
