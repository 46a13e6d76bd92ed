"""A block device backed by a host file, for MicroPython's VFS drivers (FAT, littlefs).

Unlike emulator/flash.py it keeps the image on the host's disk, not in the heap, so a
board-sized heap still has room for the code under test. No power cuts here.
"""


class FileBlockDevice:
    def __init__(self, path, block_size, block_count):
        self.block_size = block_size
        self.block_count = block_count
        f = open(path, "wb")
        blank = bytearray(block_size)
        for i in range(block_size):
            blank[i] = 0xFF
        for _ in range(block_count):
            f.write(blank)
        f.close()
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
