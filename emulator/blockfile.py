"""A block device backed by a host file, for MicroPython's VFS drivers (FAT, littlefs).

Unlike emulator/flash.py it keeps the image on the host's disk, not in the heap, so a
board-sized heap still has room for the code under test. No power cuts here; every
write reaches the file at once (the unix port's files are unbuffered), so killing the
process is a power cut between two block writes. ``create=False`` opens an existing
image (the emulated board's flash, emulator/board.py) instead of erasing a new one.
"""
import os


class FileBlockDevice:
    def __init__(self, path, block_size, block_count, create=True):
        self.block_size = block_size
        self.block_count = block_count
        if create:
            f = open(path, "wb")
            blank = bytearray(block_size)
            for i in range(block_size):
                blank[i] = 0xFF
            for _ in range(block_count):
                f.write(blank)
            f.close()
        elif os.stat(path)[6] != block_size * block_count:
            raise ValueError("%s is %d bytes, not %d blocks of %d" % (path, os.stat(path)[6], block_count, block_size))
        self.f = open(path, "r+b")

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * self.block_size + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=0):
        self.f.seek(n * self.block_size + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.block_count
        if op == 5:
            return self.block_size
        if op == 6:
            return 0
        return 0 if op in (1, 2, 3) else None
