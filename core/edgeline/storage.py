"""The one small storage interface the log and the outbox use.

Theory of operation
-------------------
The core never opens files of its own choosing: it is handed a storage object. The log
needs only a handful of operations — list a directory, append to a file and sync it,
read a file at an offset, rewrite a small file in place, remove, rename, truncate — so
that is the whole interface. `FileStorage` implements it over the `os` module and `open`,
which covers CPython on POSIX, MicroPython's unix port and MicroPython's VFS (littlefs2
and FAT mounts appear in the same namespace). Tests substitute an in-memory storage
that injects power cuts (emulator/faultfs.py).

Handles returned by `open_append`, `open_update` and `open_read` offer:

* ``write(buf, n)`` — write the first ``n`` bytes of ``buf`` (a bytearray); appends for
  append handles, at the current position for update handles.
* ``sync()`` — make everything written so far durable (fsync; on MicroPython, ``flush``,
  which fsyncs on the unix port and commits on littlefs).
* ``seek(pos)``, ``readinto(buf) -> n`` — read handles and update handles.
* ``close()``.

Metadata operations (create, remove, rename, truncate) are durable when they return:
on CPython the directory is fsynced; littlefs commits metadata atomically.
"""
import os
import sys

_MP = sys.implementation.name in ("micropython", "circuitpython")


if _MP:

    class _File:
        # MicroPython streams take write(buf, n) natively, without slicing (no allocation).
        def __init__(self, f):
            self._f = f

        def write(self, buf, n):
            self._f.write(buf, n)

        def sync(self):
            self._f.flush()

        def seek(self, pos):
            self._f.seek(pos)

        def readinto(self, buf):
            return self._f.readinto(buf) or 0

        def close(self):
            self._f.close()

    def _open(path, mode):
        return open(path, mode)

    def _fsync_dir(path):
        pass  # no directory fsync on boards; littlefs commits metadata atomically

    try:
        _ilistdir = os.ilistdir
    except AttributeError:  # CircuitPython: listdir only
        _ilistdir = None

    def _iterdir(path):
        if _ilistdir is None:
            return os.listdir(path)
        return (entry[0] for entry in _ilistdir(path))

else:
    # CPython only (tools/lint_stubs.py skips this branch for boards: os.fsync, os.open
    # and os.truncate exist on none of them).

    class _File:
        # Raw (unbuffered) file: the log does its own buffering in one bytearray.
        def __init__(self, f):
            self._f = f

        def write(self, buf, n):
            if n == len(buf):
                self._f.write(buf)
            else:
                self._f.write(memoryview(buf)[:n])

        def sync(self):
            os.fsync(self._f.fileno())

        def seek(self, pos):
            self._f.seek(pos)

        def readinto(self, buf):
            return self._f.readinto(buf) or 0

        def close(self):
            self._f.close()

    def _open(path, mode):
        return open(path, mode, buffering=0)

    def _fsync_dir(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    _iterdir = os.listdir


def _parent(path):
    i = path.rfind("/")
    if i < 0:
        return "."
    return path[:i] if i > 0 else "/"


class FileStorage:
    """Storage over real files: CPython (POSIX), MicroPython unix port and VFS."""

    def __init__(self, sync_dirs=True):
        # sync_dirs: fsync a directory after creating, removing or renaming in it
        # (CPython only; MicroPython has no directory fsync and littlefs does not need it).
        self._sync_dirs = sync_dirs and not _MP

    def listdir(self, path):
        return os.listdir(path)

    def iterdir(self, path):
        """The names in a directory one at a time (optional in the interface: the log
        uses it when there). On a board the whole listing of a log of hundreds of
        segments would be one more large block in a fragmented heap."""
        return _iterdir(path)

    def makedirs(self, path):
        if self.exists(path):
            return
        parent = _parent(path)
        if parent not in (".", "/", path) and not self.exists(parent):
            self.makedirs(parent)
        os.mkdir(path)
        self.sync_dir(parent)

    def exists(self, path):
        try:
            os.stat(path)
            return True
        except OSError:
            return False

    def size(self, path):
        return os.stat(path)[6]

    def open_append(self, path):
        created = not self.exists(path)
        f = _File(_open(path, "ab"))
        if created:
            self.sync_dir(_parent(path))
        return f

    def open_update(self, path):
        if not self.exists(path):
            _open(path, "wb").close()
            self.sync_dir(_parent(path))
        return _File(_open(path, "r+b"))

    def open_read(self, path):
        return _File(_open(path, "rb"))

    def remove(self, path):
        os.remove(path)
        self.sync_dir(_parent(path))

    def rename(self, src, dst):
        if _MP and self.exists(dst):
            # FAT refuses to rename over an existing file; littlefs and POSIX replace.
            try:
                os.rename(src, dst)
            except OSError:
                os.remove(dst)
                os.rename(src, dst)
        else:
            os.rename(src, dst)
        self.sync_dir(_parent(dst))

    def truncate(self, path, size):
        if not _MP:
            os.truncate(path, size)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        # MicroPython files have no truncate: copy the prefix, then rename over.
        tmp = path + ".tmp"
        src = open(path, "rb")
        dst = open(tmp, "wb")
        buf = bytearray(512)
        left = size
        try:
            while left > 0:
                n = src.readinto(buf)
                if not n:
                    break
                if n > left:
                    n = left
                dst.write(buf, n)
                left -= n
            dst.flush()
        finally:
            src.close()
            dst.close()
        self.rename(tmp, path)

    def sync_dir(self, path):
        if self._sync_dirs:
            _fsync_dir(path)
