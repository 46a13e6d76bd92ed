"""The emulated board's firmware: what runs inside ``micropython`` for emulator/ptyboard.py.

Theory of operation
-------------------
emulator/ptyboard.py (CPython) owns the serial line -- a pseudo-terminal on which it speaks
MicroPython's REPL protocol to mpremote or a person. This module is the half that a real
board has in its firmware. It runs in a ``micropython -X heapsize=N`` process (the unix
port), loaded from a ROMFS image that sits in the bottom of the heap and executes in
place (the heap is made larger by exactly the image's size, as firmware/mpy.rom_boot asks), so
the program gets the board's heap.

At boot it opens its two control pipes (while the host file system is still mounted),
unmounts the host file system from / and mounts the flash image there instead: littlefs2
on a block device over the image file (edgeline_host/firmware/flashfile.py, the one
`edgeline firmware run` uses too), formatted on first boot
as the ESP32 and RP2040 firmware do. ``sys.path`` becomes a board's ('', '.frozen',
'/lib'). Modules frozen into the board's firmware come as a ROMFS image (``--frozen``),
mounted at /rom (and put on ``sys.path`` before /lib) and run in place, as frozen code
runs from flash. ``machine`` gains ``reset()`` (see emulator/boardmachine.py).

The process's stdin and stdout are the board's UART: the bridge forwards the host's bytes
to stdin while code runs, and copies stdout (stderr too) to the host. Commands and their
outcomes travel on the control pipes instead, so nothing in the UART stream is reserved.

Control messages, each ``op (1 byte) + length (4 bytes, little-endian) + payload``:

  bridge -> board
    ``f``  source: run it in the REPL namespace, compiled as a file (raw REPL, paste mode)
    ``s``  source: run it as one interactive statement (a friendly REPL line: the values
           of expressions are printed)
    ``r``  file name: run that file from flash if it exists (boot.py, main.py)
    ``q``  soft reset: drop every Python object, let finalisers close open files, unmount
           the flash, exit
  board -> bridge
    ``R``  booted; payload: the version and build date (for the banner)
    ``B``  the command was read and the user's code is about to run: from now on a
           Ctrl-C may be sent (before, a KeyboardInterrupt could cut a command in half)
    ``F``  the user's code has ended; the bridge stops interrupting and answers one byte
    ``E``  the normal output has ended; the bridge answers one byte, and then the
           exception's text follows on stdout (the answer keeps the two apart: the
           bridge has taken all the output before it by then)
    ``D``  status byte (0 ok, 1 exception, 2 SystemExit: soft reset wanted) + the stdin
           bytes the code left unread (they go back to the REPL, as on a board)
    ``I``  a Ctrl-C was held back (it landed in the flash driver, see _Flash): send
           it again
    ``H``  ``machine.reset()``: the bridge kills this process and boots a new one
    ``Q``  ready to exit (after ``q``)

Ctrl-C is a signal that makes the interpreter raise KeyboardInterrupt at its next
bytecode check (emulator/ptyboard.py). The bridge sends it only between ``B`` and ``F``,
while the user's code runs; the F/S exchange makes the rest safe. A KeyboardInterrupt
can surface at any later jump of this module (with a native binary's asynchronous
SIGINT: anywhere, even right after a read has taken bytes from a pipe) until the one
the bridge may have caused is raised. So every step after the user's code is re-entrant: a
flag records it as done, the main loop catches the stray KeyboardInterrupt and carries
on where it was, and the bridge ignores a repeated ``F``. S is awaited with ``poll``,
which takes nothing from the pipe; once S is there, any signal the bridge sent (before
it wrote S) has been handled, and the loop jump that follows raises it, before S is
read. After that no Ctrl-C can come until the next ``B``.
"""
import gc
import io
import micropython
import os
import select
import sys

import flashfile

try:
    import vfs
except ImportError:  # before MicroPython 1.23 mounting lived in os
    vfs = os

_OK = 0
_EXC = 1
_EXIT = 2

_IDLE = 0
_AFTER = 1
_TWICE = (0, 1)

_ME = b'  File "boardrom.py"'  # mpy-cross -s boardrom.py: this module's traceback entries
_ME_LEN = len(_ME)


class _Traceback(io.IOBase):
    """print_exception's target: the text goes to stdout line by line, without the
    entries of this module's frames (a board's traceback starts at the user's code)."""

    def __init__(self, out):
        self.out = out
        self.line = bytearray()

    def write(self, b):
        line = self.line
        for c in b:
            line.append(c)
            if c == 10:
                if line[:_ME_LEN] != _ME:
                    self.out.write(line)
                line[:] = b""
        return len(b)

    def close_line(self):
        if self.line:
            self.out.write(self.line)
            self.line[:] = b""


class _Flash(flashfile.FileBlockDevice):
    """The flash, safe from Ctrl-C. littlefs calls these methods from C; an exception
    unwinding through it would leave its state in RAM half-changed (a real board's flash
    driver is C, which a Ctrl-C cannot cut). So a KeyboardInterrupt that lands here is
    held: the block operation is done (again: it is idempotent) and the bridge is asked
    to interrupt once more (``I``), which lands after littlefs has returned."""

    def __init__(self, fw, path, block_bytes, block_count):
        flashfile.FileBlockDevice.__init__(self, path, block_bytes, block_count, create=False)
        self.fw = fw

    def readblocks(self, n, buf, off=0):
        while True:
            try:
                flashfile.FileBlockDevice.readblocks(self, n, buf, off)
                return
            except KeyboardInterrupt:
                self.fw.send(ord("I"))

    def writeblocks(self, n, buf, off=0):
        while True:
            try:
                flashfile.FileBlockDevice.writeblocks(self, n, buf, off)
                return
            except KeyboardInterrupt:
                self.fw.send(ord("I"))

    def ioctl(self, op, arg):
        while True:
            try:
                return flashfile.FileBlockDevice.ioctl(self, op, arg)
            except KeyboardInterrupt:
                self.fw.send(ord("I"))


class Firmware:
    def __init__(self, rom, ctl_in, ctl_out, flash, block_bytes, block_count, heap_bytes, frozen=None):
        self.rom = rom  # the ROMFS image this code runs from: keep it alive
        self.ctl_in = open("/dev/fd/%d" % ctl_in, "rb")
        self.ctl_out = open("/dev/fd/%d" % ctl_out, "wb")
        self.frozen = None
        if frozen:
            # Modules frozen into the board's firmware, as a ROMFS image: read now, while
            # the host's files are still mounted; mounted at /rom and run in place.
            self.frozen = bytearray(os.stat(frozen)[6])
            f = open(frozen, "rb")
            f.readinto(self.frozen)
            f.close()
        self.stdin = sys.stdin.buffer
        self.stdout = sys.stdout.buffer
        self.poll = select.poll()
        self.poll.register(self.stdin, select.POLLIN)
        self.ctl_poll = select.poll()
        self.ctl_poll.register(self.ctl_in, select.POLLIN)
        self.hdr = bytearray(5)
        self.one = bytearray(1)
        self.ns = {"__name__": "__main__"}
        self.phase = _IDLE
        self._mount(flash, block_bytes, block_count)
        self.ballast = None
        self._pin(heap_bytes)

    def _pin(self, heap_bytes):
        # The interpreter was given the board's heap plus room for the emulator itself
        # (this ROM image, these objects, their qstrs); hold what is over, so that the
        # board's programs find the board's heap free (gc.mem_free()).
        gc.collect()
        over = gc.mem_free() - heap_bytes - 64  # the bytearray's own header
        if over > 0:
            self.ballast = bytearray(over)
            gc.collect()

    def _mount(self, flash, block_bytes, block_count):
        self.dev = _Flash(self, flash, block_bytes, block_count)
        vfs.umount("/")
        try:
            fs = vfs.VfsLfs2(self.dev)
        except OSError:
            # A blank or corrupt image: format it, as a board's _boot.py does.
            vfs.VfsLfs2.mkfs(self.dev)
            fs = vfs.VfsLfs2(self.dev)
        vfs.mount(fs, "/")
        os.chdir("/")
        path = sys.path
        path.clear()
        path.append("")
        path.append(".frozen")
        if self.frozen is not None:
            vfs.mount(vfs.VfsRom(self.frozen), "/rom")
            path.append("/rom")
            path.append("/rom/lib")
        path.append("/lib")

    # ------------------------------------------------------------------ control pipe

    def send(self, op, payload=b""):
        n = len(payload)
        self.ctl_out.write(bytes((op, n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF, n >> 24)) + payload)

    def _command(self):
        hdr = self.hdr
        self.ctl_in.readinto(hdr)
        n = hdr[1] | hdr[2] << 8 | hdr[3] << 16 | hdr[4] << 24
        data = self.ctl_in.read(n) if n else b""
        if len(data) != n:
            raise EOFError
        return hdr[0], data

    # ------------------------------------------------------------------ serving

    def serve(self):
        self.send(ord("R"), sys.version.split("MicroPython ")[-1].encode())
        while True:
            try:
                if self.phase == _IDLE:
                    op, data = self._command()
                    if op == ord("q"):
                        self._soft_reset()
                        return
                    self._job(op, data)
                self._after()
            except KeyboardInterrupt:
                pass  # a Ctrl-C that came as the user's code ended; see the module doc

    def _job(self, op, data):
        self.status = _EXC
        self.exc = KeyboardInterrupt()  # if a Ctrl-C lands before the try below
        self.f_sent = False
        self.stopped = False
        self.e_done = False
        self.phase = _AFTER
        # As pyexec does for every program: Ctrl-C interrupts again, whatever an earlier
        # one did with micropython.kbd_intr(). (Here that installs the SIGINT handler.)
        micropython.kbd_intr(3)
        self.send(ord("B"))
        ns = self.ns
        try:
            if op == ord("r"):
                name = data.decode()
                try:
                    os.stat(name)
                except OSError:
                    self.status = _OK
                    return
                ns["__file__"] = name
                data = None
                execfile(name, ns)
            else:
                mode = "single" if op == ord("s") else "exec"
                if mode == "exec":
                    ns["__file__"] = "<stdin>"
                code = compile(data, "<stdin>", mode)
                data = None
                exec(code, ns)
            self.status = _OK
        except SystemExit:
            self.status = _EXIT
        except BaseException as e:  # noqa: B036 - the board prints whatever the code raised
            self.exc = e
            self.status = _EXC

    def _after(self):
        # Every step is re-entrant (see the module doc): a flag marks it done.
        if not self.f_sent:
            self.send(ord("F"))
            self.f_sent = True
        if not self.stopped:
            self.ctl_poll.poll()  # until S is there, taking nothing
            for _ in _TWICE:
                pass  # a jump: a pending KeyboardInterrupt is raised here, not later
            self.ctl_in.readinto(self.one)
            self.stopped = True
        if self.status == _EXC and not self.e_done:
            self.e_done = True
            self.send(ord("E"))
            self.ctl_in.readinto(self.one)
            tb = _Traceback(self.stdout)
            sys.print_exception(self.exc, tb)
            tb.close_line()
        self.exc = None
        left = bytearray()
        while self.poll.poll(0):
            if not self.stdin.readinto(self.one):
                break
            left.append(self.one[0])
        self.phase = _IDLE
        self.send(ord("D"), bytes((self.status,)) + left)
        gc.collect()

    def _soft_reset(self):
        # What a board's soft reset does to Python state: nothing survives, and the
        # finalisers of open files run (littlefs commits them) before the file system goes.
        self.ns.clear()
        for name in list(sys.modules):
            if name not in ("boardrom", "flashfile", "machine"):
                del sys.modules[name]
        gc.collect()
        gc.collect()
        vfs.umount("/")
        self.send(ord("Q"))


def main(rom, ctl_in, ctl_out, flash, block_bytes, block_count, heap_bytes, frozen=None):
    """Boot and serve. The boot code has imported this module, flashfile and machine
    (boardmachine) from the ROMFS image ``rom`` and unmounted it."""
    fw = Firmware(rom, ctl_in, ctl_out, flash, block_bytes, block_count, heap_bytes, frozen)
    import machine

    machine._firmware = fw
    fw.serve()
