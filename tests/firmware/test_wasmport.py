"""The 32-bit lane as a product feature (edgeline_host.firmware.wasmport): the packaged node
runner, the npm package installed from the shipped lock into a modules folder on first
use, and one-line reasons where it cannot be.

tests/system/test_wheel.py runs it from an installed wheel, with a real first-use install.
"""
import os
import shutil
import subprocess

import pytest

from edgeline_host.firmware import wasmport
from edgeline_host.firmware.mpy import ToolMissing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_WHICH = shutil.which


def _fake_install(d, lock=None):
    """A modules folder as npm ci leaves it, without running npm."""
    entry = os.path.join(d, *wasmport._ENTRY)
    os.makedirs(os.path.dirname(entry))
    open(entry, "w").close()
    open(os.path.join(d, "node_modules", ".package-lock.json"), "w").close()
    shutil.copyfile(os.path.join(wasmport.RUNNER_DIR, "package.json"), os.path.join(d, "package.json"))
    if lock is None:
        shutil.copyfile(os.path.join(wasmport.RUNNER_DIR, "package-lock.json"), os.path.join(d, "package-lock.json"))
    else:
        with open(os.path.join(d, "package-lock.json"), "w") as f:
            f.write(lock)


def _which(present):
    return lambda name: _WHICH(name) if name in present else None


def test_the_runner_and_its_lock_are_product_files():
    # one runner: in the package, none left in tools/
    assert os.path.isfile(wasmport.RUN_MJS)
    assert wasmport.RUNNER_DIR.startswith(os.path.join(ROOT, "host", "edgeline_host"))
    assert not os.path.exists(os.path.join(ROOT, "tools", "mp32", "run.mjs"))
    assert wasmport._pinned_version() == "1.27.0"
    cmd = wasmport.command("print(1)", None, "256k", [("/a", "/b")], "/m")
    assert cmd[1:] == [wasmport.RUN_MJS, "--modules", "/m", "--heap", "256k", "--copy", "/a:/b", "-c", "print(1)"]


def test_the_modules_folder_is_the_env_var_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGELINE_MP32_DIR", str(tmp_path / "m"))
    assert wasmport.modules_dir() == str(tmp_path / "m")
    monkeypatch.delenv("EDGELINE_MP32_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert wasmport.modules_dir() == str(tmp_path / "c" / "edgeline" / "mp32")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert wasmport.modules_dir() == str(tmp_path / "h" / ".cache" / "edgeline" / "mp32")


def test_installed_means_the_shipped_lock(tmp_path):
    d = str(tmp_path / "m")
    assert not wasmport.installed(d)
    _fake_install(d)
    assert wasmport.installed(d)
    stale = str(tmp_path / "old")
    _fake_install(stale, lock='{"lockfileVersion": 3, "packages": {}}\n')  # an older edgeline's pin
    assert not wasmport.installed(stale)


def test_missing_says_why_in_one_line(monkeypatch, tmp_path):
    d = str(tmp_path / "m")
    monkeypatch.setattr(wasmport.shutil, "which", _which({"npm"}))
    assert wasmport.missing(d).startswith("node not found: ")
    monkeypatch.setattr(wasmport.shutil, "which", _which({"node"}))
    why = wasmport.missing(d)
    assert why.startswith("npm not found: ") and d in why and "\n" not in why
    _fake_install(d)
    assert wasmport.missing(d) is None  # installed: npm not needed
    with pytest.raises(ToolMissing, match="^npm not found: "):
        wasmport.ensure(str(tmp_path / "other"))
    monkeypatch.setattr(wasmport, "RUNNER_DIR", str(tmp_path / "no-runner"))
    assert wasmport.missing(d).startswith("no 32-bit lane in this installation")


def test_a_failed_npm_ci_is_one_line_and_tried_again_next_time(monkeypatch, tmp_path, capfd):
    if shutil.which("node") is None:
        pytest.skip("node not found")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\necho 'npm error network offline' >&2\nexit 1\n")
    npm.chmod(0o755)
    os.symlink(shutil.which("node"), str(bin_dir / "node"))
    monkeypatch.setenv("PATH", str(bin_dir))
    d = str(tmp_path / "m")
    with pytest.raises(ToolMissing) as e:
        wasmport.ensure(d)
    assert str(e.value) == "npm ci of %s in %s failed: npm error network offline" % (wasmport.PACKAGE, d)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgeline: installing " + wasmport.PACKAGE + " 1.27.0")
    assert not os.path.exists(os.path.join(d, "package-lock.json")) and wasmport.missing(d) is None


def test_the_runner_needs_a_modules_folder(tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node not found")
    env = {k: v for k, v in os.environ.items() if k != "EDGELINE_MP32_DIR"}
    p = subprocess.run(["node", wasmport.RUN_MJS, "-c", "print(1)"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 2 and "--modules DIR (or $EDGELINE_MP32_DIR) is required" in p.stderr
    p = subprocess.run(["node", wasmport.RUN_MJS, "--modules", str(tmp_path), "-c", "print(1)"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 2 and "is missing: npm ci in " + str(tmp_path) in p.stderr


def test_the_lane_runs_32_bit_micropython():
    d = wasmport.modules_dir()  # the checkout's tools/mp32 (conftest), installed if need be
    why = wasmport.missing(d)
    if why:
        from integration import REQUIRED

        if REQUIRED:
            pytest.fail(why + " (EDGELINE_REQUIRE_INTEGRATION=1 forbids skipping)")
        pytest.skip(why)
    wasmport.ensure(d)
    p = subprocess.run(wasmport.command("import sys\nprint(sys.maxsize, sys.implementation.name)"), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(2 ** 31 - 1), "micropython"]
