"""A simulated flash chip for MicroPython's littlefs2 driver, with power cuts.

Theory of operation
-------------------
`FlashBlockDevice` is a block device in pure Python, the kind MicroPython's ``os.VfsLfs2``
mounts (the extended interface: ``readblocks(n, buf, off)``, ``writeblocks(n, buf, off)``
and ``ioctl(op, arg)``), backed by one bytearray. The class is plain Python; mounting
it needs MicroPython, the only runtime with the littlefs2 driver.

A power cut: with ``cut_after=k`` the k-th ``writeblocks`` call programs only the first
half of its bytes and raises ``OSError(5)`` (EIO); littlefs turns that into an OSError of
the file operation, which `FileStorage` passes up. From then on the chip is "off": every
further program and erase is dropped silently and returns success. It must not raise
again, because littlefs also writes from GC finalisers of open files, where the heap is
locked and an exception cannot even be allocated. Reads keep working (they read the
image as the cut left it), also from finalisers: ``readblocks`` falls back to a copy
that allocates nothing (``writeblocks`` and erase allocate nothing anyway).

To restore power, mount a fresh device on the bytes: ``power_on()`` shares them (no copy,
as heap is scarce), ``FlashBlockDevice(data=dev.image())`` copies them.
The same chip kept in a host file (for chips of megabytes), power cuts included, is the
product's board flash, edgeline_host/firmware/flashfile.py (``flashfile`` in the
MicroPython test tree). ``mount`` and ``umount`` wrap ``os.mount``/``os.umount``.
"""
import os

from flashfile import erased_block

_EIO = 5


class FlashBlockDevice:
    """A flash chip of ``block_count`` blocks of ``block_size`` bytes in RAM."""

    def __init__(self, block_size=4096, block_count=64, data=None, cut_after=None):
        self.block_size = block_size
        self.block_count = block_count
        self._erased = erased_block(block_size)
        size = block_size * block_count
        if data is None:
            self.data = bytearray(size)
            for b in range(block_count):
                self.data[b * block_size:(b + 1) * block_size] = self._erased
        else:
            if len(data) != size:
                raise ValueError("image is %d bytes, not %d" % (len(data), size))
            # A bytearray is adopted as is (heap is scarce under micropython -X heapsize);
            # anything else is copied.
            self.data = data if isinstance(data, bytearray) else bytearray(data)
        self.cut_after = cut_after
        self.writes = 0  # writeblocks calls so far (including dropped ones)
        self.erases = 0
        self.cut = False  # True once the power was cut: programs and erases are dropped

    def readblocks(self, n, buf, off=0):
        start = n * self.block_size + off
        try:
            buf[0:len(buf)] = memoryview(self.data)[start:start + len(buf)]
        except MemoryError:
            # Called from a GC finaliser with the heap locked: copy without allocating.
            data = self.data
            for i in range(len(buf)):
                buf[i] = data[start + i]

    def writeblocks(self, n, buf, off=0):
        self.writes += 1
        if self.cut:
            return
        start = n * self.block_size + off
        k = len(buf)
        if self.cut_after is not None and self.writes >= self.cut_after:
            self.cut = True
            k //= 2
            self.data[start:start + k] = buf[0:k]
            raise OSError(_EIO)
        self.data[start:start + k] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.block_count
        if op == 5:
            return self.block_size
        if op == 6:
            self.erases += 1
            if not self.cut:
                start = arg * self.block_size
                self.data[start:start + self.block_size] = self._erased
            return 0
        if op in (1, 2, 3):
            return 0
        return None

    def image(self):
        """A copy of the chip's bytes, to mount on a fresh device (power restored)."""
        return bytearray(self.data)

    def power_on(self):
        """The same chip after power returns: a fresh device on the same bytes, no cut
        armed. Sharing the bytes is safe: this (cut) device drops every later write."""
        if not self.cut:
            raise ValueError("power_on() is for a device whose power was cut; use image()")
        return FlashBlockDevice(self.block_size, self.block_count, self.data)


def mount(dev, path="/flash", mkfs=False):
    """Mount ``dev`` with littlefs2 at ``path``, formatting it first if ``mkfs``."""
    if mkfs:
        os.VfsLfs2.mkfs(dev)
    os.mount(os.VfsLfs2(dev), path)
    return path


def umount(path="/flash"):
    """Unmount ``path``; quietly nothing if nothing is mounted there."""
    try:
        os.umount(path)
    except OSError:
        pass
