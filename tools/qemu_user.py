"""Debian's ARM CPython under QEMU user mode: a Raspberry Pi Zero (or Pi 4) on this machine.

    python tools/qemu_user.py sysroot [--profile pizero|pi4] [--cache DIR]   # build, print path
    python tools/qemu_user.py python  [--profile ...] [-- ARGS...]           # the emulated python
    python tools/qemu_user.py pytest  [--profile ...] [-- PYTEST ARGS...]    # the Pi test suite

Theory of operation
-------------------
A Pi Zero is an ARMv6 (ARM1176) CPU. Debian's ``armel`` port is built for ARMv5TE and so
runs on it; ``armhf`` is ARMv7 and does not (Illegal instruction under ``-cpu arm1176``).
``ensure_sysroot()`` downloads the ``:armel`` packages of CPython 3.11 and the shared
libraries it links (``apt-get download``, so the host needs ``dpkg --add-architecture
armel`` and ``apt-get update`` once), unpacks each with ``dpkg -x`` into one directory,
and precompiles the standard library (with the host's python3.11 when it has one: same
bytecode, ten times faster than compiling under emulation; otherwise under emulation).
``qemu-arm -cpu arm1176 -L SYSROOT SYSROOT/usr/bin/python3.11`` then runs as a Pi Zero:
``platform.machine()`` is ``armv6l``, pointers and C longs are 32 bits.

The sysroot lives in a cache directory (``$XDG_CACHE_HOME/edgeline``, else
``~/.cache/edgeline``) under a name keyed by the profile and the package list, so a
changed list builds a new one. It is built in a temporary directory beside its final
place, renamed into place when complete, and marked by a stamp file written last; a
directory without a valid stamp is incomplete and rebuilt. A lock file serialises
concurrent builders (two test runs, two engineers).

What runs in the sysroot must be pure Python (PyPI has no ARMv6 wheels of C
extensions) or come from Debian's ``:armel`` packages (PyYAML: ``python3-yaml``, with
its libyaml binding). ``ensure_pure_packages()`` installs pure-Python wheels
(``pip install --target --platform any --implementation py --only-binary=:all:``) into
a cached directory keyed the same way. ``make_venv()`` makes a small virtual
environment whose ``bin/python`` is a shell script running the emulated interpreter
(with QEMU's ``-0`` giving it its own path as argv[0], so ``sys.executable`` is that
script): a test that starts ``sys.executable`` in a subprocess starts another emulated
Python, with no binfmt_misc registration on the host.

User-mode emulation is about ten times slower than native and faster than a real Pi
Zero: it proves the code is correct on a 32-bit ARMv6 CPython, not its speed or memory.

Used as a module (the Pi Zero full-system tests reuse the sysroot)::

    import sys; sys.path.insert(0, "tools")
    import qemu_user
    root = qemu_user.ensure_sysroot()              # Path; builds on first use
    cmd = qemu_user.python_command(root) + ["-c", "import platform; print(platform.machine())"]
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bump when the way a sysroot is built changes, so old caches are not reused.
_RECIPE = "1"
_STAMP = ".edgeline-sysroot.json"

PROFILES = {
    # Raspberry Pi Zero / Zero W / Pi 1: ARM1176JZF-S, ARMv6.
    "pizero": {"arch": "armel", "qemu": "qemu-arm", "cpu": "arm1176", "machine": "armv6l"},
    # Raspberry Pi 4: Cortex-A72, 64-bit OS.
    "pi4": {"arch": "arm64", "qemu": "qemu-aarch64", "cpu": "cortex-a72", "machine": "aarch64"},
}

PYTHON = "python3.11"

# CPython 3.11 and every library its interpreter and stdlib extension modules link,
# plus Debian's PyYAML (pure Python + libyaml binding built for the architecture).
SYSROOT_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libgcc-s1", "gcc-12-base", "libatomic1", "zlib1g", "libffi8", "libssl3",
    "libexpat1", "libsqlite3-0", "libbz2-1.0", "liblzma5", "libncursesw6", "libtinfo6",
    "libreadline8", "libuuid1", "libdb5.3", "libnsl2", "libtirpc3", "libgssapi-krb5-2",
    "libkrb5-3", "libk5crypto3", "libkrb5support0", "libkeyutils1", "libcom-err2",
    "libcrypt1", "python3-yaml", "libyaml-0-2",
)

# Pure-Python wheels for the test run on the device: the test tools and what the host
# package imports (cbor2, aiohttp and its helpers fall back to pure Python when their C
# extensions are absent). PyYAML comes from the sysroot (python3-yaml).
TEST_REQUIREMENTS = (
    "pytest>=8", "hypothesis>=6.100", "cbor2>=5.6", "click>=8.1", "aiohttp>=3.9", "paho-mqtt>=2.0",
)


class QemuUserError(Exception):
    """A one-line reason the emulated Pi cannot be built or run."""


def _log(msg):
    print("qemu_user: " + msg, file=sys.stderr, flush=True)


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeline"


def _profile(name):
    try:
        return PROFILES[name]
    except KeyError:
        raise QemuUserError("unknown profile %r (known: %s)" % (name, ", ".join(sorted(PROFILES))))


def _key(*parts):
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def sysroot_path(cache_dir=None, profile="pizero", packages=SYSROOT_PACKAGES):
    """Where ensure_sysroot() puts (or finds) the sysroot for this profile and package list."""
    arch = _profile(profile)["arch"]
    key = _key(_RECIPE, arch, *sorted(packages))
    return Path(cache_dir or default_cache_dir()) / ("%s-%s-%s" % (profile, arch, key))


def host_problem(profile="pizero", need_apt=True):
    """None if this host can build and run the profile, else a one-line reason."""
    p = _profile(profile)
    if not sys.platform.startswith("linux"):
        return "QEMU user mode needs Linux, not %s" % sys.platform
    if not shutil.which(p["qemu"]):
        return "%s not found (apt-get install qemu-user)" % p["qemu"]
    if need_apt:
        for tool in ("dpkg", "apt-get"):
            if not shutil.which(tool):
                return "%s not found: the sysroot is built from Debian packages" % tool
        native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.split()
        foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout.split()
        if p["arch"] not in native + foreign:
            return ("dpkg architecture %s not enabled (dpkg --add-architecture %s && apt-get update)"
                    % (p["arch"], p["arch"]))
    return None


def _valid_stamp(path, arch, packages):
    try:
        with open(os.path.join(path, _STAMP)) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        stamp.get("recipe") == _RECIPE
        and stamp.get("arch") == arch
        and sorted(stamp.get("packages", ())) == sorted(packages)
        and os.path.isfile(os.path.join(path, "usr", "bin", PYTHON))
        and os.path.isfile(os.path.join(path, "usr", "lib", PYTHON, "os.py"))
    )


class _Lock:
    """An exclusive flock on a file beside the cache entries (released on exit or crash)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing drops the lock


def _run(cmd, what, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [x for x in lines if x.startswith("E:") or "rror" in x] or lines[-1:]
        raise QemuUserError("%s failed (exit %d): %s" % (what, proc.returncode, " | ".join(errors[-3:])))
    return proc


def _compile_tree(tree, final_tree, python_cmd=None):
    """Precompile a tree of .py files; co_filename is the file's final path."""
    if python_cmd is None and sys.version_info[:2] == (3, 11):
        # The host's 3.11 writes the same bytecode the emulated 3.11 reads, ten times
        # faster than compiling under emulation.
        python_cmd = [sys.executable]
    if python_cmd is None:
        return False
    cmd = python_cmd + ["-m", "compileall", "-q", "-j", "1", "-s", str(tree), "-p", str(final_tree),
                        "-x", r"/(test|tests|idlelib|lib2to3/tests)/", str(tree)]
    # compileall exits 1 when a file does not compile (Debian ships a few py2-only
    # files in test data); that file just stays uncompiled.
    subprocess.run(cmd, capture_output=True, text=True)
    return True


def ensure_sysroot(cache_dir=None, profile="pizero", packages=SYSROOT_PACKAGES):
    """Path of a complete Debian sysroot with CPython 3.11 for `profile`; built if missing.

    Needs qemu-user (only to compile the stdlib when the host has no python3.11), dpkg,
    apt-get and the profile's dpkg architecture enabled with its package lists fetched.
    Raises QemuUserError with a one-line reason if it cannot be built.
    """
    p = _profile(profile)
    arch = p["arch"]
    final = sysroot_path(cache_dir, profile, packages)
    if _valid_stamp(final, arch, packages):
        return final
    problem = host_problem(profile)
    if problem:
        raise QemuUserError(problem)
    with _Lock(str(final) + ".lock"):
        if _valid_stamp(final, arch, packages):
            return final  # another process built it while we waited
        started = time.monotonic()
        if final.exists():
            _log("removing incomplete sysroot %s" % final)
            shutil.rmtree(final)
        work = Path(tempfile.mkdtemp(prefix=final.name + ".build-", dir=final.parent))
        try:
            debs = work / "debs"
            tree = work / "root"
            debs.mkdir()
            tree.mkdir()
            _log("downloading %d :%s packages" % (len(packages), arch))
            cmd = ["apt-get", "download", "-q"]
            if os.geteuid() == 0:
                cmd += ["-o", "APT::Sandbox::User=root"]  # root's temp dir is not _apt's
            _run(cmd + ["%s:%s" % (name, arch) for name in packages], "apt-get download", cwd=str(debs))
            files = sorted(os.listdir(debs))
            for name in files:
                _run(["dpkg", "-x", str(debs / name), str(tree)], "dpkg -x " + name)
            compiled = _compile_tree(tree / "usr" / "lib" / PYTHON, final / "usr" / "lib" / PYTHON)
            stamp = {"recipe": _RECIPE, "arch": arch, "profile": profile, "packages": sorted(packages),
                     "debs": files, "stdlib_precompiled": compiled}
            tree.rename(final)
            if not compiled:
                # No host 3.11: compile under emulation, in place (slower, once).
                _compile_tree(final / "usr" / "lib" / PYTHON, final / "usr" / "lib" / PYTHON,
                              python_command(final, profile))
                stamp["stdlib_precompiled"] = True
            tmp = final / (_STAMP + ".tmp")
            with open(tmp, "w") as f:
                json.dump(stamp, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, final / _STAMP)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _log("sysroot %s built in %.1f s" % (final, time.monotonic() - started))
    return final


def python_command(sysroot, profile="pizero", argv0=None):
    """The command line prefix that runs the sysroot's python3.11 as the profile's CPU."""
    p = _profile(profile)
    qemu = shutil.which(p["qemu"])
    if qemu is None:
        raise QemuUserError("%s not found (apt-get install qemu-user)" % p["qemu"])
    cmd = [qemu, "-cpu", p["cpu"], "-L", str(sysroot)]
    if argv0:
        cmd += ["-0", argv0]
    return cmd + [os.path.join(str(sysroot), "usr", "bin", PYTHON)]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="qemu_user.py", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("sysroot", "python"))
    ap.add_argument("--profile", default="pizero", choices=sorted(PROFILES))
    ap.add_argument("--cache", help="cache directory (default: %s)" % default_cache_dir())
    ap.add_argument("args", nargs=argparse.REMAINDER, help="after --: arguments for the emulated python")
    opts = ap.parse_args(argv)
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    try:
        root = ensure_sysroot(opts.cache, opts.profile)
        if opts.command == "sysroot":
            print(root)
            return 0
        return subprocess.run(python_command(root, opts.profile) + args).returncode
    except QemuUserError as e:
        print("qemu_user: error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
