"""MicroPython's WebAssembly port, run by node: the 32-bit lane.

Theory of operation
-------------------
The boards are 32-bit; the unix port (unixport.py) is 64-bit. The only 32-bit MicroPython
on a registry this project can reach is the WebAssembly port, the npm package
``@micropython/micropython-webassembly-pyscript`` (``sys.maxsize == 2**31 - 1``). It is
run by node through one runner script, ``mp32/run.mjs`` beside this module (shipped in
the wheel with the ``package.json`` and ``package-lock.json`` that pin the npm package):
like ``micropython -X heapsize=N -c CODE``, with host folders copied into the port's
in-memory file system (run.mjs's header says how its garbage collection and heap differ).

The npm package is not in the wheel. It lives in a *modules folder*, a per-user cache:
``$EDGELINE_MP32_DIR`` when set, else ``$XDG_CACHE_HOME/edgeline/mp32``, else
``~/.cache/edgeline/mp32``. ``ensure`` installs it there on first use, when node and npm
exist: it copies the shipped package.json and lock there and runs ``npm ci`` (one line on
stderr says so); the folder is up to date when its lock is the shipped one and the
package is in its node_modules, so an edgeline upgrade that pins another version
installs that one. Without node or npm, ``missing`` gives the reason in one line and the
callers fall back (``edgeline firmware sizes``: the 64-bit figures, verdict UNVERIFIED).

A source checkout sets ``EDGELINE_MP32_DIR`` to tools/mp32 (``make venv`` prepares it
with ``ensure``; the tests default to it), so the suite, tools/mp32test.py and the
product share one install and CI downloads the package once.
"""
import filecmp
import os
import shutil
import subprocess
import sys

from .mpy import ToolMissing

RUNNER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mp32")
RUN_MJS = os.path.join(RUNNER_DIR, "run.mjs")
_SHIPPED = ("package.json", "package-lock.json")
PACKAGE = "@micropython/micropython-webassembly-pyscript"
_ENTRY = ("node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs")
DEFAULT_HEAP = "1m"


def modules_dir():
    """Where the npm package is installed (module doc): $EDGELINE_MP32_DIR, else the
    per-user cache."""
    d = os.environ.get("EDGELINE_MP32_DIR")
    if d:
        return os.path.abspath(d)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "edgeline", "mp32")


def installed(modules=None):
    """True when ``modules`` holds the package of the shipped lock."""
    d = modules or modules_dir()
    lock = os.path.join(d, "package-lock.json")
    return (os.path.exists(os.path.join(d, *_ENTRY)) and os.path.exists(os.path.join(d, "node_modules",
                                                                                      ".package-lock.json"))
            and os.path.exists(lock) and filecmp.cmp(lock, os.path.join(RUNNER_DIR, "package-lock.json"),
                                                     shallow=False))


def missing(modules=None):
    """Why the lane cannot run here (one line), or None. None also when the package is
    not installed yet but npm is there to install it (``ensure`` does)."""
    d = modules or modules_dir()
    if not all(os.path.exists(os.path.join(RUNNER_DIR, n)) for n in ("run.mjs",) + _SHIPPED):
        return "no 32-bit lane in this installation (%s lacks run.mjs or its npm lock)" % RUNNER_DIR
    if shutil.which("node") is None:
        return "node not found: the 32-bit lane runs MicroPython's WebAssembly port with node (>= 16)"
    if not installed(d) and shutil.which("npm") is None:
        return "npm not found: the 32-bit lane installs %s into %s with npm on first use" % (PACKAGE, d)
    return None


def ensure(modules=None):
    """The modules folder, with the package installed (``npm ci`` from the shipped lock on
    first use, one line on stderr). ToolMissing (one line) when it cannot be."""
    d = modules or modules_dir()
    why = missing(d)
    if why:
        raise ToolMissing(why)
    if installed(d):
        return d
    os.makedirs(d, exist_ok=True)
    with _Lock(os.path.join(d, ".edgeline-install.lock")):
        if installed(d):  # another process did it meanwhile
            return d
        version = _pinned_version()
        print("edgeline: installing %s %s for the 32-bit lane into %s (npm ci, once)" % (PACKAGE, version, d),
              file=sys.stderr, flush=True)
        for name in _SHIPPED:
            shutil.copyfile(os.path.join(RUNNER_DIR, name), os.path.join(d, name))
        try:
            p = subprocess.run([shutil.which("npm"), "ci", "--no-audit", "--no-fund", "--prefer-offline",
                                "--loglevel=error"], cwd=d, capture_output=True, text=True, timeout=600)
            ok, out = p.returncode == 0, (p.stderr or p.stdout).strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, out = False, str(e)
        if not ok or not installed(d):
            os.remove(os.path.join(d, "package-lock.json"))  # not up to date: the next use tries again
            last = out.splitlines()[-1] if out else "no output"
            raise ToolMissing("npm ci of %s in %s failed: %s" % (PACKAGE, d, last))
    return d


def _pinned_version():
    import json

    with open(os.path.join(RUNNER_DIR, "package.json")) as f:
        return json.load(f)["dependencies"][PACKAGE]


class _Lock:
    """An exclusive lock on a file (two processes installing at once); none without fcntl."""

    def __init__(self, path):
        self.path = path
        self.f = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()  # closing releases the lock


def command(code, loop=None, heap=DEFAULT_HEAP, copies=(), modules=None):
    """The node command running ``code`` (then ``loop`` again and again until SystemExit;
    run.mjs) on a ``heap``, each (host folder, port folder) of ``copies`` copied into the
    port's file system first. Call ``ensure`` before running it."""
    cmd = [shutil.which("node") or "node", RUN_MJS, "--modules", modules or modules_dir(), "--heap", heap]
    for host, target in copies:
        cmd += ["--copy", "%s:%s" % (host, target)]
    cmd += ["-c", code]
    if loop:
        cmd += ["--loop", loop]
    return cmd


def main(argv):
    """python -m edgeline_host.firmware.wasmport [MODULES_DIR]: install the lane ahead
    (make venv does, into tools/mp32); prints the folder."""
    try:
        print(ensure(os.path.abspath(argv[1]) if len(argv) > 1 else None))
    except ToolMissing as e:
        print(e, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
