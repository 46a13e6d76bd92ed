"""Debian's ARM CPython under QEMU user mode: a Raspberry Pi Zero (or Pi 4) on this machine.

    python tools/qemu_user.py sysroot [--profile pizero|pi4] [--cache DIR]   # build, print path
    python tools/qemu_user.py python  [--profile ...] [-- ARGS...]           # the emulated python
    python tools/qemu_user.py pytest  [--profile ...] [-- PYTEST ARGS...]    # the Pi test suite

Theory of operation
-------------------
A Pi Zero is an ARMv6 (ARM1176) CPU. Debian's ``armel`` port is built for ARMv5TE and so
runs on it; ``armhf`` is ARMv7 and does not (Illegal instruction under ``-cpu arm1176``).
``ensure_sysroot()`` downloads the ``:armel`` packages of CPython 3.11 and the shared
libraries it links (``apt-get download``: from the host's package lists when it has the
architecture enabled -- ``dpkg --add-architecture armel``, as CI does -- else from
lists fetched into a private apt state in the cache, leaving the host's configuration
alone), unpacks each with ``dpkg -x`` into one directory,
and precompiles the standard library with the host's python3.11 when it has one (same
bytecode; otherwise the emulated interpreter writes its .pyc files on first use).
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
    "pizero": {"arch": "armel", "qemu": "qemu-arm", "cpu": "arm1176", "machine": "armv6l", "pointer_bytes": 4},
    # Raspberry Pi 4: Cortex-A72, 64-bit OS.
    "pi4": {"arch": "arm64", "qemu": "qemu-aarch64", "cpu": "cortex-a72", "machine": "aarch64", "pointer_bytes": 8},
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

# What runs on the emulated Pi (tests/emulator/test_pizero_qemu.py, `qemu_user.py pytest`):
# every core test, and the host tests of what a Pi runs in CPython that need no C
# extension and no MicroPython -- the log and outbox model, the codec against cbor2 and
# the golden files, the sync protocol fuzzers, the configuration parser, the gateway's
# SQLite store, and the CLI with its SIGKILL demo.
PI_TEST_FILES = (
    "tests/core",
    "tests/properties/test_log_model.py",
    "tests/agent/test_config.py",
    "tests/formats/test_codec_interop.py",
    "tests/formats/test_golden.py",
    "tests/formats/test_wire_golden.py",
    "tests/properties/test_sync_fuzz.py",
    "tests/shared/test_fastcbor.py",
    "tests/properties/test_auth.py",
    "tests/gateway/test_gateway_store.py",
    "tests/gateway/test_committer.py",
    "tests/system/test_cli.py",
)
# Hypothesis tests are capped at this many examples under emulation (the native run
# keeps its full counts; here the point is the platform).
PI_MAX_EXAMPLES = 15
# The selection passes more than this many tests; fewer means part of it did not run.
PI_MIN_PASSED = 300


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


def host_problem(profile="pizero"):
    """None if this host can build and run the profile, else a one-line reason."""
    p = _profile(profile)
    if not sys.platform.startswith("linux"):
        return "QEMU user mode needs Linux, not %s" % sys.platform
    if not shutil.which(p["qemu"]):
        return "%s not found (apt-get install qemu-user)" % p["qemu"]
    for tool in ("dpkg", "apt-get"):
        if not shutil.which(tool):
            return "%s not found: the sysroot is built from Debian packages" % tool
    return None


def _arch_enabled(arch):
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.split()
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout.split()
    return arch in native + foreign


def _apt_options(cache_dir, arch):
    """apt-get options to download `arch` packages. When the host has the architecture
    enabled (dpkg --add-architecture, as CI does) its own package lists serve; otherwise
    a private apt state in the cache fetches that architecture's lists alone, leaving
    the host's apt and dpkg configuration untouched."""
    opts = ["-q"]
    if os.geteuid() == 0:
        opts += ["-o", "APT::Sandbox::User=root"]  # our temp dirs are not _apt's to read
    if _arch_enabled(arch):
        probe = subprocess.run(["apt-cache", "show", "%s:%s" % (PYTHON + "-minimal", arch)],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            raise QemuUserError("no %s package lists yet: run apt-get update" % arch)
        return opts
    state = Path(cache_dir or default_cache_dir()) / ("apt-" + arch)
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    opts += ["-o", "APT::Architecture=" + arch, "-o", "APT::Architectures::=" + arch,
             "-o", "Dir::State::Lists=%s" % (state / "lists"), "-o", "Dir::Cache=%s" % (state / "cache")]
    _log("fetching the %s package lists into %s" % (arch, state))
    _run(["apt-get", "update"] + opts, "apt-get update (%s lists)" % arch)
    return opts


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


def _precompile(tree, final_tree):
    """Precompile a tree of .py files with the host's python3.11, naming each code object
    by the file's final path. Without a host 3.11 nothing is done: the emulated
    interpreter writes the .pyc files itself on first import (that first run is slower)."""
    if sys.version_info[:2] != (3, 11):
        return False
    cmd = [sys.executable, "-m", "compileall", "-q", "-j", "1", "-s", str(tree), "-p", str(final_tree),
           "-x", r"/(test|tests|idlelib|lib2to3)/", str(tree)]
    # compileall exits 1 when a file does not compile (Debian ships a few deliberately
    # broken files as test data): that file stays uncompiled, which costs nothing.
    subprocess.run(cmd, capture_output=True, text=True)
    return True


def ensure_sysroot(cache_dir=None, profile="pizero", packages=SYSROOT_PACKAGES):
    """Path of a complete Debian sysroot with CPython 3.11 for `profile`; built if missing.

    Needs qemu-user, dpkg, apt-get and Debian's archive (see host_problem(),
    _apt_options()).
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
            opts = _apt_options(cache_dir, arch)
            _log("downloading %d :%s packages" % (len(packages), arch))
            _run(["apt-get", "download"] + opts + ["%s:%s" % (name, arch) for name in packages],
                 "apt-get download", cwd=str(debs))
            files = sorted(os.listdir(debs))
            for name in files:
                _run(["dpkg", "-x", str(debs / name), str(tree)], "dpkg -x " + name)
            compiled = _precompile(tree / "usr" / "lib" / PYTHON, final / "usr" / "lib" / PYTHON)
            stamp = {"recipe": _RECIPE, "arch": arch, "profile": profile, "packages": sorted(packages),
                     "debs": files, "stdlib_precompiled": compiled}
            tree.rename(final)
            _write_stamp(final, stamp)
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


def _stamp_ok(path, expect):
    try:
        with open(os.path.join(path, _STAMP)) as f:
            return json.load(f) == expect
    except (OSError, ValueError):
        return False


def _write_stamp(path, stamp):
    tmp = os.path.join(path, _STAMP + ".tmp")
    with open(tmp, "w") as f:
        json.dump(stamp, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(path, _STAMP))


def ensure_pure_packages(cache_dir=None, requirements=TEST_REQUIREMENTS, python_version="3.11"):
    """Path of a directory holding pure-Python wheels of `requirements` (and their
    dependencies) installed for CPython `python_version`, for any CPU; built if missing.
    Raises QemuUserError if pip cannot resolve them as pure-Python wheels."""
    stamp = {"recipe": _RECIPE, "python": python_version, "requirements": sorted(requirements)}
    key = _key(_RECIPE, "pure", python_version, *sorted(requirements))
    final = Path(cache_dir or default_cache_dir()) / ("pure-py%s-%s" % (python_version.replace(".", ""), key))
    if _stamp_ok(final, stamp):
        return final
    with _Lock(str(final) + ".lock"):
        if _stamp_ok(final, stamp):
            return final
        started = time.monotonic()
        if final.exists():
            _log("removing incomplete package directory %s" % final)
            shutil.rmtree(final)
        work = Path(tempfile.mkdtemp(prefix=final.name + ".build-", dir=final.parent))
        try:
            site = work / "site"
            _log("installing pure-Python wheels: %s" % " ".join(requirements))
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--no-warn-script-location", "--no-compile", "--target", str(site),
                  "--platform", "any", "--python-version", python_version, "--implementation", "py",
                  "--only-binary=:all:"] + list(requirements), "pip install (pure-Python wheels)")
            shutil.rmtree(site / "bin", ignore_errors=True)  # host-side launchers, useless there
            if python_version == "%d.%d" % sys.version_info[:2]:
                _precompile(site, final)
            _write_stamp(site, stamp)
            site.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _log("packages %s installed in %.1f s" % (final, time.monotonic() - started))
    return final


_LAUNCHER = """#!/bin/sh
# The emulated %(profile)s's python (tools/qemu_user.py). QEMU's -0 makes this script's path
# the interpreter's argv[0], so sys.executable is this script and pyvenv.cfg beside it
# applies: a subprocess started as sys.executable is emulated too.
exec %(qemu)s -cpu %(cpu)s -L %(sysroot)s -0 "$0" %(python)s "$@"
"""

_CONSOLE_SCRIPT = """#!%(python)s
import sys
from %(module)s import %(func)s
sys.exit(%(func)s())
"""


def _sh_quote(text):
    import shlex

    return shlex.quote(str(text))


def make_venv(venv_dir, sysroot, profile="pizero", paths=(), scripts=None):
    """Make a virtual environment for the emulated interpreter at `venv_dir`; return the
    path of its bin/python (a launcher script, see _LAUNCHER).

    `paths` are directories put on its sys.path (through a .pth file): package
    directories from ensure_pure_packages(), source trees. `scripts` maps a console
    script name to "module:function" (default: edgeline -> edgeline_host.cli:main).
    """
    p = _profile(profile)
    qemu = shutil.which(p["qemu"])
    if qemu is None:
        raise QemuUserError("%s not found (apt-get install qemu-user)" % p["qemu"])
    venv = Path(venv_dir).resolve()
    bindir = venv / "bin"
    site = venv / "lib" / PYTHON / "site-packages"
    bindir.mkdir(parents=True, exist_ok=True)
    site.mkdir(parents=True, exist_ok=True)
    with open(venv / "pyvenv.cfg", "w") as f:
        f.write("home = %s\ninclude-system-site-packages = false\nversion = 3.11\n"
                % os.path.join(str(sysroot), "usr", "bin"))
    python = bindir / "python"
    with open(python, "w") as f:
        f.write(_LAUNCHER % {"profile": profile, "qemu": _sh_quote(qemu), "cpu": p["cpu"],
                             "sysroot": _sh_quote(sysroot),
                             "python": _sh_quote(os.path.join(str(sysroot), "usr", "bin", PYTHON))})
    os.chmod(python, 0o755)
    for alias in ("python3", PYTHON):
        if not (bindir / alias).exists():
            os.symlink("python", bindir / alias)
    # Debian's own python3-* packages (PyYAML) live in the sysroot's dist-packages,
    # which a virtual environment does not see by itself.
    dist = os.path.join(str(sysroot), "usr", "lib", "python3", "dist-packages")
    with open(site / "edgeline-qemu-user.pth", "w") as f:
        f.writelines(str(Path(x).resolve()) + "\n" for x in list(paths) + [dist])
    if scripts is None:
        scripts = {"edgeline": "edgeline_host.cli:main"}
    for name, target in scripts.items():
        module, func = target.split(":")
        path = bindir / name
        with open(path, "w") as f:
            # A shebang naming a script (the launcher) is fine on Linux.
            f.write(_CONSOLE_SCRIPT % {"python": python, "module": module, "func": func})
        os.chmod(path, 0o755)
    return python


def clean_env(extra=None):
    """The host environment minus what would point the emulated Python at host files."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")
           and not k.startswith("QEMU_")}
    env.update(extra or {})
    return env


def source_paths(packages):
    """sys.path entries for running the repository's code and tests in the emulated venv."""
    return [packages, ROOT / "core", ROOT / "host", ROOT / "tools"]


def selected_test_files(selection=PI_TEST_FILES):
    """The test files of a selection of files and directories (absolute paths)."""
    import glob

    out = []
    for entry in selection:
        path = os.path.join(str(ROOT), entry)
        out += sorted(glob.glob(os.path.join(path, "test_*.py"))) if os.path.isdir(path) else [path]
    return out


def run_pytest(python, args=(), files=PI_TEST_FILES, max_examples=PI_MAX_EXAMPLES, timeout=None, capture=True):
    """Run pytest on `files` with the emulated `python` (from make_venv) in the repository;
    return the CompletedProcess (output captured unless `capture` is false)."""
    cmd = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-p", "qemu_user",
           "--max-examples", str(max_examples)] + list(args) + list(files)
    return subprocess.run(cmd, cwd=str(ROOT), env=clean_env(), capture_output=capture, text=True, timeout=timeout)


# ------------------------------------------------------------------ pytest plugin
# Loaded inside the emulated run (`-p qemu_user`). Every hypothesis test, @given
# functions and stateful machines alike, runs without its deadline and without the
# too_slow health check (under emulation time says nothing about the code), and with
# --max-examples N at most N examples: here the point is the platform (32-bit ARMv6),
# not a deeper search than the native run, which keeps the full counts, already makes.

def pytest_addoption(parser):
    parser.addoption("--max-examples", type=int, default=0, metavar="N",
                     help="cap every hypothesis test at N examples (tools/qemu_user.py)")


def _emulation_settings(current, cap):
    from hypothesis import HealthCheck, settings

    examples = min(current.max_examples, cap) if cap > 0 else current.max_examples
    checks = list(current.suppress_health_check)
    if HealthCheck.too_slow not in checks:
        checks.append(HealthCheck.too_slow)
    return settings(current, max_examples=examples, deadline=None, suppress_health_check=checks)


def pytest_collection_modifyitems(config, items):
    try:
        from hypothesis import settings
    except ImportError:
        return
    cap = config.getoption("--max-examples")
    for item in items:
        cls = getattr(item, "cls", None)
        current = getattr(cls, "settings", None)
        if isinstance(current, settings):  # a RuleBasedStateMachine's TestCase
            cls.settings = _emulation_settings(current, cap)
            continue
        func = getattr(item, "obj", None)
        func = getattr(func, "__func__", func)  # a method's function holds the settings
        current = getattr(func, "_hypothesis_internal_use_settings", None)
        if isinstance(current, settings):
            func._hypothesis_internal_use_settings = _emulation_settings(current, cap)


def pytest_report_header(config):
    cap = config.getoption("--max-examples")
    return "qemu_user: hypothesis tests without deadlines%s" % (", at most %d examples" % cap if cap > 0 else "")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="qemu_user.py", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("sysroot", "python", "pytest"),
                    help="sysroot: build (if needed) and print its path; python: run the emulated "
                         "python with the repository on its path; pytest: run the Pi test selection")
    ap.add_argument("--profile", default="pizero", choices=sorted(PROFILES))
    ap.add_argument("--cache", help="cache directory (default: %s)" % default_cache_dir())
    ap.add_argument("--max-examples", type=int, default=PI_MAX_EXAMPLES, metavar="N",
                    help="pytest: cap hypothesis tests at N examples (0: the tests' own counts)")
    ap.epilog = "Arguments after -- go to python, or to pytest (test paths there replace the selection)."
    argv = sys.argv[1:] if argv is None else list(argv)
    args = argv[argv.index("--") + 1:] if "--" in argv else []
    opts = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        root = ensure_sysroot(opts.cache, opts.profile)
        if opts.command == "sysroot":
            print(root)
            return 0
        packages = ensure_pure_packages(opts.cache)
        with tempfile.TemporaryDirectory(prefix="edgeline-%s-venv-" % opts.profile) as tmp:
            python = make_venv(tmp, root, opts.profile, paths=source_paths(packages))
            if opts.command == "python":
                return subprocess.run([str(python)] + args, env=clean_env()).returncode
            files = PI_TEST_FILES
            if any(os.path.exists(os.path.join(str(ROOT), a.split("::")[0])) for a in args):
                files = ()
            started = time.monotonic()
            code = run_pytest(python, args, files, opts.max_examples, capture=False).returncode
            _log("%s: pytest exited %d after %.1f s" % (opts.profile, code, time.monotonic() - started))
            return code
    except QemuUserError as e:
        print("qemu_user: error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
