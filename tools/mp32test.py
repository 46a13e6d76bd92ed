"""Run core test files under a 32-bit MicroPython: MicroPython's WebAssembly port, by node.

    python tools/mp32test.py [--heap 1m] [-kNAME] [-v] tests/core/test_log.py ...

The boards are 32-bit (small ints stop at 2**30 - 1); the unix port of the other lane
(tools/mptest.py, tests/mp/micropython_test.py) is 64-bit. This driver compiles the test
tree to .mpy (tools/mpbuild.py), and runs tools/mp32/run.mjs, which loads the port
(npm package @micropython/micropython-webassembly-pyscript, pinned in
tools/mp32/package-lock.json; `npm ci` there, which `make venv` does), copies the tree to
/mpy and tests/golden to /tests/golden in the port's in-memory file system, and runs
tools/mptest.py one test per call from JavaScript (the port collects garbage only
between such calls). The core reaches the files through its storage interface
(edgeline.storage.FileStorage over the port's os module). Output as the unix-port
runner's: one line per failure, then "N passed, N failed"; exit status 1 on failure.
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MP32 = os.path.join(ROOT, "tools", "mp32")
RUN_MJS = os.path.join(MP32, "run.mjs")
PACKAGE = os.path.join(MP32, "node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs")
DEFAULT_HEAP = "1m"


def node_exe():
    return shutil.which("node")


def missing():
    """Why the lane cannot run here (a one-line reason), or None."""
    if node_exe() is None:
        return "node not found: the 32-bit lane runs MicroPython's WebAssembly port with node (>= 16)"
    if not os.path.exists(PACKAGE):
        return "tools/mp32/node_modules is not installed: run `npm ci` in tools/mp32 (make venv does)"
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
    cmd = [node_exe(), RUN_MJS, "--heap", heap, "--copy", "%s:/mpy" % tree,
           "--copy", "%s:/tests/golden" % os.path.join(ROOT, "tests", "golden")]
    for host, target in copies:
        cmd += ["--copy", "%s:%s" % (host, target)]
    cmd += ["-c", code]
    if loop:
        cmd += ["--loop", loop]
    return cmd


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
