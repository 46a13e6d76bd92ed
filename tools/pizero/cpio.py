"""Write initramfs archives in the cpio "newc" format the Linux kernel unpacks.

Theory of operation
-------------------
The kernel unpacks an initramfs from one or more concatenated newc archives (each with
its own ``TRAILER!!!``), so a big cached base archive plus a small per-boot one is a
single initrd: ``cat base.cpio boot.cpio``. Writing the format here, rather than driving
the ``cpio`` tool over a staging directory, gives entries owned by root, device nodes
(``/dev/console``) without ``mknod`` and byte-identical output for identical input.

An entry is a 110-byte ASCII header (magic ``070701`` and thirteen 8-digit hex fields),
the NUL-terminated name padded to a multiple of 4, then the data padded the same way.
Directories must come before what they hold: the kernel does not create parents.
"""
import os
import stat

_MAGIC = b"070701"


class CpioWriter:
    """Entries in order, to a binary file object. Names are relative (no leading /)."""

    def __init__(self, f):
        self.f = f
        self.ino = 1
        self.dirs = set()
        self.closed = False

    def _entry(self, name, mode, data=b"", mtime=0, rdev=(0, 0), nlink=1):
        name = name.strip("/")
        if not name:
            raise ValueError("cpio entry needs a name")
        raw = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, int(mtime) & 0xFFFFFFFF, len(data), 0, 0,
                  rdev[0], rdev[1], len(raw), 0)
        self.ino += 1
        hdr = _MAGIC + b"".join(b"%08X" % v for v in fields)
        self.f.write(hdr + raw + b"\0" * (-(len(hdr) + len(raw)) % 4))
        if data:
            self.f.write(data)
            self.f.write(b"\0" * (-len(data) % 4))

    def mkdir(self, name, mode=0o755, mtime=0):
        """A directory and, first, any parent not yet written."""
        name = name.strip("/")
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | mode, mtime=mtime if d == name else 0, nlink=2)

    def _parent(self, name):
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.mkdir(parent)

    def file(self, name, data, mode=0o644, mtime=0):
        self._parent(name)
        self._entry(name, stat.S_IFREG | mode, bytes(data), mtime=mtime)

    def symlink(self, name, target, mtime=0):
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode(), mtime=mtime)

    def chardev(self, name, major, minor, mode=0o600):
        self._parent(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def tree(self, src, dest=""):
        """Everything under host directory ``src`` as ``dest/...``: files, directories and
        symlinks with their permission bits and mtimes (compiled .pyc files check the
        source's mtime), hard links as copies, other kinds skipped."""
        src = os.fspath(src)
        dest = dest.strip("/")
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(root, src)
            base = dest if rel == "." else (dest + "/" + rel if dest else rel)
            if base:
                st = os.lstat(root)
                self.mkdir(base, stat.S_IMODE(st.st_mode), st.st_mtime)
            for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                path = os.path.join(root, name)
                target = base + "/" + name if base else name
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(target, os.readlink(path), st.st_mtime)
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        self.file(target, f.read(), stat.S_IMODE(st.st_mode), st.st_mtime)

    def close(self):
        """Write the trailer (the file object stays open)."""
        if not self.closed:
            self._entry("TRAILER!!!", 0)
            self.closed = True
