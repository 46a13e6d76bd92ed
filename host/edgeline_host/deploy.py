"""A MicroPython board on a serial port: put edgeline on it (deploy), read its queue back.

Theory of operation
-------------------
Everything goes through the board's REPL on its serial port, the way a person with
mpremote would do it -- and through mpremote's command line, which is the stable face of
that tool (its Python classes say their API will change).

``deploy`` builds what the board runs for its profile (edgeline_host.firmware.build: the
core compiled to .mpy for the profile's architecture in lib/, the board's main.py, and
the settings edgeline.json), copies it with ``mpremote fs cp`` -- which soft-resets the
board into the raw REPL first, so a running main.py stops before its files change, and
skips files whose SHA-256 on the board already matches -- library first and main.py
last, then soft-resets the board from the friendly REPL, which is what makes a board
run main.py again. A profile whose library is frozen into the firmware (or in its ROMFS
partition) gets only main.py and edgeline.json, once the board shows it can import the
library.

``status`` stops main.py the same way, runs ``edgeline_app.status()`` on the board over
the raw REPL (it opens the logs with the board's own settings and prints one JSON line:
per topic what is on flash, acknowledged and still owed), and starts main.py again with
a soft reset. Stopping main.py at any instant is safe: what it had acknowledged is on
flash and the gateway keeps the rest exactly once (docs/boards.md).

Before any of that, ``check_port`` opens the port for itself (exclusively, as mpremote
does) and looks for the raw REPL, so the usual mistakes get one line each: no such
port, a port another program holds, a port where no MicroPython answers.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from edgeline.errors import EdgelineError

_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_SOFT_REBOOT = b"soft reboot\r\n"
_STATUS_CODE = """import gc, json, os
gc.collect()
st = os.statvfs("/")
print("EDGELINE-BOARD " + json.dumps({"heap_free": gc.mem_free(), "heap_used": gc.mem_alloc(),
      "flash_bytes": st[0] * st[2], "flash_free_bytes": st[0] * st[3]}))
import edgeline_app
edgeline_app.status()
"""


class BoardError(EdgelineError):
    """The board could not be reached or did not do what was asked; one line."""


def _serial(port, timeout_s):
    try:
        import serial
    except ImportError:
        raise BoardError("pyserial is not installed (pip install mpremote, which brings it)") from None
    if not os.path.exists(port):
        raise BoardError("no such port: %s" % port)
    try:
        return serial.Serial(port, 115200, timeout=timeout_s, exclusive=True)
    except serial.SerialException as e:
        text = str(e)
        if "exclusively lock" in text or "Resource temporarily unavailable" in text:
            raise BoardError("%s is busy: another program has it open (a terminal, mpremote, the agent)" % port) from None
        if "Permission denied" in text:
            raise BoardError("no permission to open %s (on Linux: add yourself to the dialout group)" % port) from None
        raise BoardError("cannot open %s: %s" % (port, text.splitlines()[0] if text else "unknown error")) from None


def _read_until(ser, ending, timeout_s):
    data = b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(ending) and time.monotonic() < deadline:
        data += ser.read(1)
    return data


def check_port(port, timeout_s=5):
    """Is a MicroPython REPL on ``port``? Interrupts whatever runs there (Ctrl-C), enters
    the raw REPL, leaves it again; BoardError (one line) if not."""
    ser = _serial(port, 0.1)
    deadline = time.monotonic() + timeout_s
    seen = b""
    try:
        while True:
            # Again until it answers: a board that is booting spends a Ctrl-C on boot.py
            # and then starts main.py.
            ser.write(b"\r\x03\x03")
            time.sleep(0.05)
            ser.reset_input_buffer()
            ser.write(b"\r\x01")
            got = _read_until(ser, _RAW_BANNER + b">", min(1.0, max(0.1, deadline - time.monotonic())))
            if got.endswith(_RAW_BANNER + b">"):
                break
            seen += got
            if time.monotonic() >= deadline:
                lines = seen.decode("utf-8", "replace").strip().splitlines()
                raise BoardError("no MicroPython REPL answered on %s (sent Ctrl-C and Ctrl-A; got %s)"
                                 % (port, repr(lines[-1][:60]) if lines else "nothing in %gs" % timeout_s))
        ser.write(b"\r\x02")
    finally:
        ser.close()


def soft_reset(port, timeout_s=10):
    """Soft-reset the board from its friendly REPL, so that it runs boot.py and main.py
    (a soft reset from the raw REPL, which mpremote does, skips main.py)."""
    ser = _serial(port, 0.1)
    try:
        ser.write(b"\r\x03\x03\x02")  # stop whatever runs; the friendly REPL
        time.sleep(0.05)
        ser.reset_input_buffer()
        ser.write(b"\x04")
        got = _read_until(ser, _SOFT_REBOOT, timeout_s)
        if not got.endswith(_SOFT_REBOOT):
            raise BoardError("the board on %s did not soft-reset (no \"soft reboot\" in %gs)" % (port, timeout_s))
    finally:
        ser.close()


def mpremote(port, args, timeout_s=300):
    """Run ``mpremote connect PORT ARGS...``; its output, or BoardError with its last line."""
    cmd = [sys.executable, "-m", "mpremote", "connect", port] + list(args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BoardError("mpremote %s did not finish in %ds" % (args[0], timeout_s)) from None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        if lines and lines[-1].startswith("No module named mpremote"):
            raise BoardError("mpremote is not installed (pip install mpremote)")
        raise BoardError(_last_error(lines) or "mpremote exited with status %d" % proc.returncode)
    return proc.stdout


def _last_error(lines):
    for line in reversed(lines):
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            return line[len("mpremote: "):] if line.startswith("mpremote: ") else line
    return None


def _load_profile(name):
    from edgeline_host.firmware.profiles import ProfileError, load_profile

    try:
        p = load_profile(name)
    except ProfileError as e:
        raise BoardError(str(e)) from None
    if p["runtime"] == "circuitpython":
        raise BoardError("%s runs CircuitPython: copy `edgeline firmware build --profile %s` to its CIRCUITPY drive"
                         " (docs/boards.md)" % (name, name))
    if p["runtime"] != "micropython":
        raise BoardError("%s is a %s profile: it runs the edgeline agent, not a board's main.py" % (name, p["runtime"]))
    return p


def read_config(path, profile):
    """The board's settings from ``path`` (edgeline.json, as `edgeline firmware config`
    writes it), checked against the profile; BoardError (one line) if wrong."""
    from edgeline_host.firmware.profiles import ProfileError, check_board_config

    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        raise BoardError("cannot read %s: %s" % (path, e.strerror or e)) from None
    except ValueError as e:
        raise BoardError("%s: invalid JSON: %s" % (path, e)) from None
    try:
        return check_board_config(cfg, path, profile)
    except ProfileError as e:
        raise BoardError(str(e)) from None


CODE_MODES = ("mpy", "py", "frozen", "romfs")


def deploy(port, profile_name, config_path=None, say=None, timeout_s=5, code=None):
    """Build edgeline for the profile, copy it to the board on ``port`` and soft-reset it.
    ``code``: how the library reaches the board -- ``mpy`` or ``py`` files in /lib, or
    already ``frozen`` into its firmware (``romfs``: in its ROMFS partition); default:
    the profile's. ``timeout_s``: how long the board may take to answer at its REPL.
    Returns {"files", "copied", "unchanged", "bytes", "code"}."""
    from edgeline_host.firmware import build
    from edgeline_host.firmware.mpy import ToolMissing

    say = say or (lambda s: None)
    profile = _load_profile(profile_name)
    code = code or profile["firmware"]["deploy"]
    if code not in CODE_MODES:
        raise BoardError("--code must be one of %s, not %r" % (", ".join(CODE_MODES), code))
    cfg = read_config(config_path, profile) if config_path else None
    check_port(port, timeout_s)
    if code in ("frozen", "romfs"):
        try:
            mpremote(port, ["exec", "import edgeline_app"], timeout_s=60)
        except BoardError as e:
            raise BoardError("%s runs edgeline %s, and the board on %s cannot import it (%s); flash a firmware with"
                             " it (docs/boards.md), or copy the .mpy files: --code mpy"
                             % (profile_name, "frozen into its firmware" if code == "frozen" else
                                "from its ROMFS partition", port, e)) from None
    with tempfile.TemporaryDirectory(prefix="edgeline-deploy-") as tmp:
        try:
            build.build(profile, tmp, cfg, source=code == "py")
        except (ToolMissing, RuntimeError) as e:
            raise BoardError(str(e)) from None
        os.remove(os.path.join(tmp, "sizes.json"))  # the build's report, not for the board
        if code in ("frozen", "romfs"):
            import shutil

            shutil.rmtree(os.path.join(tmp, "lib"))  # the board has it
        files = []
        for d, _dirs, names in os.walk(tmp):
            files += [os.path.join(d, n) for n in names]
        total = sum(os.path.getsize(f) for f in files)
        # The library first and main.py last: a copy cut short leaves the old main.py,
        # which the old library still serves.
        args = []
        if os.path.isdir(os.path.join(tmp, "lib")):
            args += ["fs", "cp", "-r", os.path.join(tmp, "lib"), ":", "+"]
        if cfg is not None:
            args += ["fs", "cp", os.path.join(tmp, "edgeline.json"), ":edgeline.json", "+"]
        args += ["fs", "cp", os.path.join(tmp, "main.py"), ":main.py", "+", "fs", "ls", ":"]
        say("copying %d files (%d bytes) to %s" % (len(files), total, port))
        out = mpremote(port, args)
    lines = out.splitlines()
    unchanged = sum(1 for line in lines if line.startswith("Up to date:"))
    settings = any(line.split()[-1:] == ["edgeline.json"] for line in lines[lines.index("ls :"):])
    soft_reset(port)
    return {"files": len(files), "copied": len(files) - unchanged, "unchanged": unchanged, "bytes": total,
            "code": code, "settings": settings}


def status(port, restart=True, timeout_s=5):
    """What the board on ``port`` holds: per topic its seqs, acknowledged, pending (the
    queue depth), gap and sizes, plus heap and flash. main.py is stopped to ask and, with
    ``restart``, started again after."""
    check_port(port, timeout_s)
    try:
        out = mpremote(port, ["exec", _STATUS_CODE], timeout_s=120)
    except BoardError as e:
        text = str(e)
        if restart:
            soft_reset(port)
        if "no module named 'edgeline" in text:
            raise BoardError("edgeline is not on the board on %s (edgeline board deploy): %s" % (port, text)) from None
        raise BoardError("the board on %s could not report: %s" % (port, text)) from None
    board = logs = None
    for line in out.splitlines():
        line = line.strip()
        try:
            if line.startswith("EDGELINE-BOARD "):
                board = json.loads(line[len("EDGELINE-BOARD "):])
            elif line.startswith("{"):
                logs = json.loads(line)
        except ValueError:
            pass
    if restart:
        soft_reset(port)
    if board is None or logs is None:
        lines = out.strip().splitlines()
        raise BoardError("the board on %s answered, but not with its status: %s"
                         % (port, lines[-1][:80] if lines else "nothing"))
    logs["board"] = board
    from .health import board_reasons, summarize

    logs.update(summarize(board_reasons(logs, out.splitlines())))  # status, reasons
    return logs
