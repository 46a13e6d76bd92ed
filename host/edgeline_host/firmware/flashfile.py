"""A board's flash kept in a host file: the block device MicroPython's littlefs2 driver mounts.

Theory of operation
-------------------
This module runs inside MicroPython (the unix port), not in the host's CPython: the
emulated board -- ``edgeline firmware run`` (firmware/unixport.py) and the pty board of
the test suite (emulator/ptyboard.py) -- mounts its flash through it, and so do the
MicroPython tests (tests/mp). It is the only file-backed block device of the project;
emulator/flash.py keeps the one whose bytes live in the heap.

`FileBlockDevice` speaks the extended block protocol (``readblocks(n, buf, off)``,
``writeblocks(n, buf, off)``, ``ioctl(op, arg)``) over an image file read and written at
block offsets. The image stays on the host's disk, not in the heap, so a board-sized heap
keeps its room for the code under test, and a later run (a reboot) finds the file system
where the last one left it. Every write reaches the file at once (the unix port's files
are unbuffered), so killing the process is a power cut between two block writes.

A power cut inside a write, for the crash tests: with ``cut_after=k`` the k-th
``writeblocks`` call programs only the first half of its bytes and raises ``OSError(5)``
(EIO); from then on the chip is "off": every later program and erase is dropped silently
and returns success -- littlefs also writes from GC finalisers of open files, where the
heap is locked and an exception cannot even be allocated. ``power_on()`` is the chip with
power restored, on the same file.
"""
import os

_EIO = 5
_ERASED = {}  # block size -> one erased block's bytes, shared by every device


def erased_block(block_size):
    """One erased (all 0xFF) block. Shared: a power cycle makes a new device, and a fresh
    4 KB object each time would fragment a board-sized heap (tests/mp/soak.py)."""
    e = _ERASED.get(block_size)
    if e is None:
        e = _ERASED[block_size] = b"\xff" * block_size
    return e


class FileBlockDevice:
    """``block_count`` blocks of ``block_size`` bytes in the file ``path``. ``create``
    writes a blank (erased) image first; ``create=False`` powers on the one in the file
    (``block_count`` None: as many blocks as the file holds)."""

    def __init__(self, path, block_size=4096, block_count=64, create=True, cut_after=None, f=None):
        self.path = path
        self.block_size = block_size
        if f is None:
            if create:
                blank = erased_block(block_size)
                f = open(path, "wb")
                for _ in range(block_count):
                    f.write(blank)
                f.close()
            else:
                size = os.stat(path)[6]
                if block_count is None:
                    block_count = size // block_size
                elif size != block_size * block_count:
                    raise ValueError("%s is %d bytes, not %d blocks of %d" % (path, size, block_count, block_size))
            f = open(path, "r+b")
        self.block_count = block_count
        self.f = f
        self.cut_after = cut_after
        self.writes = 0  # writeblocks calls so far (including dropped ones)
        self.erases = 0
        self.cut = False  # True once the power was cut: programs and erases are dropped

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * self.block_size + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=0):
        self.writes += 1
        if self.cut:
            return
        self.f.seek(n * self.block_size + off)
        if self.cut_after is not None and self.writes >= self.cut_after:
            self.cut = True
            self.f.write(buf, len(buf) // 2)
            raise OSError(_EIO)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.block_count
        if op == 5:
            return self.block_size
        if op == 6:
            self.erases += 1
            if not self.cut:
                self.f.seek(arg * self.block_size)
                self.f.write(erased_block(self.block_size))
            return 0
        if op == 3:
            self.f.flush()
            return 0
        if op in (1, 2):
            return 0
        return None

    def power_on(self):
        """The same chip after power returns: a fresh device on the same file, no cut armed."""
        if not self.cut:
            raise ValueError("power_on() is for a device whose power was cut")
        return FileBlockDevice(self.path, self.block_size, self.block_count, f=self.f)

    def close(self):
        self.f.close()
