"""tools/lint_stubs.py: core/ passes it, and the lint itself catches what a board lacks."""
import os
import shutil
import subprocess
import sys

import pytest

from integration import REQUIRED  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import lint_stubs  # noqa: E402


@pytest.fixture(scope="module")
def stubs():
    try:
        return {t: lint_stubs.Stubs(t) for t in lint_stubs.TARGETS}
    except lint_stubs.LintError as e:
        msg = "%s (make venv installs them)" % e
        if REQUIRED:
            pytest.fail(msg + " -- EDGELINE_REQUIRE_INTEGRATION=1 forbids skipping")
        pytest.skip(msg)


def lint(stubs, source, *targets):
    return lint_stubs.lint_source(source, [stubs[t] for t in targets or lint_stubs.TARGETS], "snippet.py")


def test_core_passes_on_every_board(stubs):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "lint_stubs.py")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith(": 0 problems") and "rp2" in last and "esp32" in last and "circuitpython" in last, last


def test_cli_reports_file_line_name_and_target(stubs, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef sync(fd):\n    os.fsync(fd)\n")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "lint_stubs.py"), "--target", "rp2", str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    first = proc.stdout.splitlines()[0]
    assert first.startswith(os.path.relpath(str(bad), ROOT) + ":5: os.fsync is missing on rp2 (micropython-rp2-stubs ")


def test_ticks_ms_is_not_on_circuitpython(stubs):
    src = "import time\n\ndef now_ms():\n    return time.ticks_ms()\n"
    assert lint(stubs, src, "rp2", "esp32") == []
    (line,) = lint(stubs, src, "circuitpython")
    assert line.startswith("snippet.py:4: time.ticks_ms is missing on circuitpython")
    assert lint(stubs, "import supervisor\nt = supervisor.ticks_ms()\n", "circuitpython") == []


def test_os_fsync_is_on_no_board(stubs):
    # typeshed's os (inside micropython-stdlib-stubs) has fsync; MicroPython's does not.
    out = lint(stubs, "import os\nos.fsync(3)\n")
    assert [o.split(" (")[0] for o in out] == [
        "snippet.py:2: os.fsync is missing on rp2",
        "snippet.py:2: os.fsync is missing on esp32",
        "snippet.py:2: os.fsync is missing on circuitpython",
    ]
    assert lint(stubs, "import os\nos.listdir('/'); os.rename('a', 'b'); os.stat('a')\n") == []


def test_cpython_only_names_of_stdlib_stubs_fail(stubs):
    assert lint(stubs, "import struct\nS = struct.Struct('<I')\n", "rp2")[0].startswith(
        "snippet.py:2: struct.Struct is missing on rp2")
    assert lint(stubs, "import sys\nn = sys.getsizeof(1)\n", "esp32")[0].startswith(
        "snippet.py:2: sys.getsizeof is missing on esp32")
    assert lint(stubs, "import struct, sys\nstruct.pack_into('<I', b, 0, 1)\nsys.print_exception(e)\n", "rp2", "esp32") == []


def test_hashlib_sha256_is_not_on_circuitpython(stubs):
    src = "import hashlib\nh = hashlib.sha256(b'')\n"
    assert lint(stubs, src, "rp2", "esp32") == []
    assert lint(stubs, src, "circuitpython")[0].startswith("snippet.py:2: hashlib.sha256 is missing on circuitpython")
    assert lint(stubs, "from hashlib import sha256\n", "circuitpython")[0].startswith(
        "snippet.py:1: hashlib.sha256 is missing on circuitpython")


def test_missing_modules(stubs):
    assert lint(stubs, "import network\n", "circuitpython")[0].startswith(
        "snippet.py:1: module network is missing on circuitpython")
    assert lint(stubs, "import socketpool\n", "rp2")[0].startswith("snippet.py:1: module socketpool is missing on rp2")
    assert lint(stubs, "import esp32\n", "esp32") == []
    assert lint(stubs, "import esp32\n", "rp2")[0].startswith("snippet.py:1: module esp32 is missing on rp2")


def test_fallback_chain_passes_when_one_branch_exists(stubs):
    # CircuitPython has no u-prefixed aliases; the fallback import is what runs there.
    src = ("try:\n    import ubinascii as b\nexcept ImportError:\n    import binascii as b\n"
           "def crc(x):\n    return b.crc32(x)\n")
    assert lint(stubs, src) == []
    nested = ("try:\n    from hashlib import sha256\nexcept ImportError:\n    try:\n"
              "        from uhashlib import sha256\n    except ImportError:\n        import hashlib\n\n"
              "        def sha256(data=b''):\n            return hashlib.new('sha256', data)\n")
    assert lint(stubs, nested) == []


def test_fallback_chain_fails_when_no_branch_exists(stubs):
    src = "try:\n    import nothing_like_this\nexcept ImportError:\n    import nor_this\n"
    out = lint(stubs, src, "rp2")
    assert len(out) == 1 and out[0].startswith("snippet.py:4: module nor_this is missing on rp2")


def test_a_handler_catches_only_what_it_names(stubs):
    # A missing attribute raises AttributeError, which `except ImportError` lets through.
    src = "try:\n    import os\n    f = os.fsync\nexcept ImportError:\n    f = None\n"
    assert lint(stubs, src, "rp2")[0].startswith("snippet.py:3: os.fsync is missing on rp2")
    ok = "import struct\ntry:\n    p = struct.Struct('<I').pack_into\nexcept AttributeError:\n    p = struct.pack_into\n"
    assert lint(stubs, ok) == []
    bad = "import struct\ntry:\n    p = struct.Struct('<I').pack_into\nexcept AttributeError:\n    p = struct.nope\n"
    assert lint(stubs, bad, "rp2")[0].startswith("snippet.py:5: struct.nope is missing on rp2")


def test_a_try_around_a_def_does_not_protect_its_body(stubs):
    src = "import os\ntry:\n    def f():\n        os.fsync(0)\nexcept AttributeError:\n    pass\n"
    assert lint(stubs, src, "rp2")[0].startswith("snippet.py:4: os.fsync is missing on rp2")


def test_board_flags_skip_code_a_target_never_runs(stubs):
    head = "import os\nimport sys\n_MP = sys.implementation.name in ('micropython', 'circuitpython')\n"
    assert lint(stubs, head + "if not _MP:\n    os.fsync(0)\n") == []
    assert lint(stubs, head + "if _MP:\n    pass\nelse:\n    os.fsync(0)\n") == []
    assert lint(stubs, head + "def f():\n    if _MP:\n        os.fsync(0)\n", "rp2")[0].startswith(
        "snippet.py:6: os.fsync is missing on rp2")
    upy = "import sys\n_UPY = sys.implementation.name == 'micropython'\nif _UPY:\n    import time\n    t = time.ticks_ms()\n"
    assert lint(stubs, upy) == []  # CircuitPython never runs the branch


def test_hasattr_guards_are_evaluated_per_target(stubs):
    src = ("import hashlib\nif hasattr(hashlib, 'sha256'):\n    h = hashlib.sha256\nelse:\n"
           "    def h(data=b''):\n        return hashlib.new('sha256', data)\n")
    assert lint(stubs, src) == []
    bad = "import hashlib\nif not hasattr(hashlib, 'new'):\n    h = hashlib.sha256\n"
    assert lint(stubs, bad, "rp2", "esp32") == []  # no `new` there: the branch runs, sha256 exists
    assert lint(stubs, bad, "circuitpython") == []  # `new` there: the branch never runs
    worse = "import hashlib\nif hasattr(hashlib, 'new'):\n    h = hashlib.sha256\n"
    assert lint(stubs, worse, "circuitpython")[0].startswith("snippet.py:3: hashlib.sha256 is missing on circuitpython")


def test_cpython_only_modules_must_stay_off_the_board_path(stubs):
    head = "import sys\n_SMALL = sys.implementation.name in ('micropython', 'circuitpython')\n"
    assert lint(stubs, head + "if not _SMALL:\n    from .fastpath import read_segment\n") == []
    out = lint(stubs, head + "from .fastpath import read_segment\n", "esp32")
    assert out[0].startswith("snippet.py:3: edgeline.fastpath is CPython-only")
    assert set(lint_stubs.CPYTHON_ONLY) == {"edgeline.fastpath"}


def test_stdlib_layer_counts_only_documented_names():
    import ast

    tree = ast.parse(
        "def listdir(d=None):\n    '''List a directory.'''\n"
        "def fsync(fd): ...\n"
        "@mp_available()\ndef mount(fs, path): ...\n"
        "argv: list\n'''Arguments.'''\n"
        "abiflags: str\n"
        "class Struct: ...\n"
    )
    assert lint_stubs.stub_names(tree, True)[0] == {"listdir", "mount", "argv"}
    assert lint_stubs.stub_names(tree, False)[0] == {"listdir", "fsync", "mount", "argv", "abiflags", "Struct"}


def test_supplement_yields_to_the_stubs(stubs, monkeypatch):
    monkeypatch.setitem(lint_stubs.CIRCUITPYTHON_SUPPLEMENT, "supervisor", "ticks_ms")
    with pytest.raises(lint_stubs.LintError, match="now describes module 'supervisor'"):
        lint_stubs.Stubs("circuitpython")


def test_tampered_stub_files_are_refused(stubs, tmp_path):
    shutil.copytree(lint_stubs.stubs_dir("rp2"), tmp_path / "rp2")
    with open(tmp_path / "rp2" / "time.pyi", "a") as f:
        f.write("\ndef ticks_forever() -> int: ...\n")
    with pytest.raises(lint_stubs.LintError, match="does not match its RECORD hash"):
        lint_stubs.Stubs("rp2", base=str(tmp_path)).names("time")


def test_board_uplink_on_the_micropython_ports(stubs):
    # boards/common/uplink.py is board code: it passes on rp2 and esp32, and on
    # CircuitPython too -- it has no `socket` module, and the uplink's import of it falls
    # back to a socket module passed in (socketpool, by the CircuitPython profile's main.py)
    path = os.path.join(ROOT, "boards", "common", "uplink.py")
    problems, _ = lint_stubs.lint_paths([path], [stubs["rp2"], stubs["esp32"]])
    assert problems == []
    problems, _ = lint_stubs.lint_paths([path], [stubs["circuitpython"]])
    assert problems == []
    assert "socket_module" in open(path).read()
