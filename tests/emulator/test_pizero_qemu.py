"""The core and the host's pure-Python tests on a Raspberry Pi Zero: Debian's armel
CPython 3.11 under ``qemu-arm -cpu arm1176`` (tools/qemu_user.py, docs/pizero.md).

The sysroot and the pure-Python wheels come from a cache (built on first use: about
20 s from nothing); the emulated run takes two to three minutes, ten times its native
time. Without qemu-arm (or dpkg/apt-get, or Debian's archive) the tests skip with the
reason; under EDGELINE_REQUIRE_INTEGRATION=1 (CI) they fail instead.
EDGELINE_QEMU_PROFILE=pi4 runs them on the Pi 4 profile (arm64, Cortex-A72) instead.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from integration import REQUIRED  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import qemu_user  # noqa: E402

PROFILE = os.environ.get("EDGELINE_QEMU_PROFILE", "pizero")


def _unavailable(msg):
    if REQUIRED:
        pytest.fail(msg + " (EDGELINE_REQUIRE_INTEGRATION=1 forbids skipping)")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def pi_python(tmp_path_factory):
    problem = qemu_user.host_problem(PROFILE)
    if problem:
        _unavailable("cannot emulate a %s: %s" % (PROFILE, problem))
    try:
        sysroot = qemu_user.ensure_sysroot(profile=PROFILE)
        packages = qemu_user.ensure_pure_packages()
    except qemu_user.QemuUserError as e:  # no network, a broken mirror
        _unavailable("cannot build the %s sysroot: %s" % (PROFILE, e))
    venv = tmp_path_factory.mktemp("pi-venv")
    return qemu_user.make_venv(venv, sysroot, PROFILE, paths=qemu_user.source_paths(packages))


def test_the_emulated_python_is_the_board(pi_python):
    expect = qemu_user.PROFILES[PROFILE]
    probe = ("import platform, struct, sys, time\n"
             "print(platform.machine(), struct.calcsize('P'), sys.maxsize, sys.version_info[:2], time.time_ns() > 0)")
    out = subprocess.run([str(pi_python), "-c", probe], capture_output=True, text=True, timeout=300,
                         env=qemu_user.clean_env())
    assert out.returncode == 0, out.stderr
    machine, pointer, maxsize, version = out.stdout.split(None, 3)
    assert machine == expect["machine"]
    assert int(pointer) == expect["pointer_bytes"] and int(maxsize) == (1 << (8 * expect["pointer_bytes"] - 1)) - 1
    assert version.strip() == "(3, 11) True"


# With "write", writes a log through the CPython fast paths (append_many, keyed appends,
# u64 timestamps, values around the 64 KB read chunk) with an outbox cursor; then (or
# with "read" only) reopens it, reads it all back and prints a summary. Run by the
# emulated and the native interpreter alike.
_LOG_SCRIPT = r"""
import sys
from edgeline import log, fastpath
from edgeline.outbox import Outbox
assert log.RingLog.append is fastpath.append_cpython
d = sys.argv[1]
values = [bytes([i % 251]) * (i * 37 % 70000) for i in range(120)]
if sys.argv[2] == "write":
    lg = log.RingLog(d, segment_bytes=1 << 18, budget_bytes=4 << 20, sync="group", group_records=64)
    lg.append_many(values[:60], ts=(1 << 64) - 1)
    lg.append_many(values[60:], ts=[(1 << 63) + i for i in range(60)], keys=[b"k%d" % i for i in range(60)])
    for i in range(200):
        lg.append(b"v" * i, ts=i << 16, key=b"key" * (i % 5) if i % 3 else None)
    Outbox(lg, "uplink").ack(250)
    lg.close()
lg = log.RingLog(d, segment_bytes=1 << 18, budget_bytes=4 << 20)
seq, got = 1, []
while True:
    batch = lg.read(seq, 50)
    if not batch:
        break
    got += batch
    seq = batch[-1].seq + 1
assert [r.value for r in got[:120]] == values, "values differ"
print(len(got), got[0].ts, got[119].ts, got[119].key, Outbox(lg, "uplink").acked, lg.last_seq)
"""


def _tree(path):
    # The incarnation file holds a random id made with the log (docs/spec/log.md): its
    # layout is compared, its id and the CRC over it are not.
    tree = {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}
    inc = tree.get("incarnation")
    if inc is not None:
        tree["incarnation"] = (len(inc), inc[:8])
    return tree


def test_log_bytes_are_the_same_on_the_board(pi_python, tmp_path):
    """The ring log's files written on the 32-bit ARMv6 interpreter are byte-for-byte
    those written natively (docs/spec/log.md has one format), and each side reads the
    other's."""
    board, native = tmp_path / "board", tmp_path / "native"
    out_board = subprocess.run([str(pi_python), "-c", _LOG_SCRIPT, str(board), "write"], capture_output=True,
                               text=True, timeout=600, env=qemu_user.clean_env())
    assert out_board.returncode == 0, out_board.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "core"))
    out_native = subprocess.run([sys.executable, "-c", _LOG_SCRIPT, str(native), "write"], capture_output=True,
                                text=True, timeout=600, env=env)
    assert out_native.returncode == 0, out_native.stderr[-3000:]
    assert out_board.stdout == out_native.stdout
    assert out_board.stdout.split() == ["320", str((1 << 64) - 1), str((1 << 63) + 59), "b'k59'", "250", "320"]
    assert _tree(board) == _tree(native)
    # Each side reopens the other's log and reads the same records.
    for path, python, env_ in ((board, sys.executable, env), (native, str(pi_python), qemu_user.clean_env())):
        out = subprocess.run([python, "-c", _LOG_SCRIPT, str(path), "read"], capture_output=True, text=True,
                             timeout=600, env=env_)
        assert out.returncode == 0 and out.stdout == out_native.stdout, out.stdout + out.stderr[-3000:]


def test_pi_suite_passes(pi_python, tmp_path):
    report = tmp_path / "junit.xml"
    proc = qemu_user.run_pytest(pi_python, ["-q", "--junitxml", str(report)], timeout=3600)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    suites = ET.parse(report).getroot()
    cases = list(suites.iter("testcase"))
    failed = [c.get("classname") + "::" + c.get("name") for c in cases
              if c.find("failure") is not None or c.find("error") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    passed = len(cases) - len(failed) - len(skipped)
    assert not failed, tail
    # Every file of the selection ran and passed something: a dependency missing on the
    # device would skip or empty a file, and the floor catches a shrunken run.
    assert passed >= qemu_user.PI_MIN_PASSED, "only %d passed:\n%s" % (passed, tail)
    ran = {c.get("classname") for c in cases if c.find("skipped") is None}
    for path in qemu_user.selected_test_files():
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        assert any(name == module or name.startswith(module + ".") for name in ran), "nothing passed in " + path
