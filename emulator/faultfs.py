"""An in-memory storage that cuts power: the crash-test double of `FileStorage`.

Theory of operation
-------------------
`FaultStorage` offers exactly the interface of `edgeline.storage.FileStorage` (listdir,
makedirs, exists, size, open_append, open_update, open_read, remove, rename, truncate,
sync_dir; handles with write(buf, n), sync(), seek(pos), readinto(buf), close()) over a
tree held in memory. It is pure Python and runs on CPython and MicroPython.

Each file (an inode; handles and renames keep pointing at the same one) holds:

* ``durable`` — its bytes as of its last ``sync()`` (or truncate, or creation);
* ``data``    — its current bytes, what reads see;
* ``pending`` — the writes since the last sync, each ``(offset, bytes)``, in order,
  so a crash can replay any subset of them.

Durability model (what a crash keeps):

* ``handle.sync()`` makes the whole file durable (fsync is per file, not per handle).
* Metadata operations — creating a file (``open_append``/``open_update`` of a missing
  path), ``remove``, ``rename``, ``truncate``, ``makedirs`` — are atomic and durable when
  they return, as littlefs guarantees and as `FileStorage` achieves by fsyncing the
  directory. A renamed file keeps its unsynced writes (they may still vanish). ``truncate``
  also makes the file's content durable up to the new length.

Write points and power cuts:

* Every ``handle.write()`` and every metadata operation that changes the tree is a *write
  point*, numbered from 1 in the order issued; ``write_points`` counts them. Reads,
  ``sync()``, ``sync_dir()``, ``close()`` and no-op ``makedirs`` are not write points.
* ``cut_at = N`` arms a cut: at write point N (or the first point after, if armed late)
  the power fails. The operation does not happen — a metadata operation not at all, a
  write only as whatever prefix the crash mode decides — and `PowerCut` is raised.
  (A metadata operation that completes and is then cut is the state seen by a cut at the
  next write point, so looping N over every point covers both.)
* After the cut the device is dead: every further call, on the storage or on any of its
  handles, raises `PowerCut`, until a test calls ``crash()``.
* ``crash(mode)`` returns a NEW `FaultStorage` holding what survives power loss, with
  no cut armed and its write points counted from 0 again (arm ``cut_at`` on it to inject
  a fault during recovery, then crash that one too):

  ``"torn"``    every write issued before the cut persists, synced or not; the cut write
                persists as a prefix of ``torn_bytes`` bytes (None: half of it; a negative
                k: all but the last -k bytes).
  ``"lost"``    every file reverts to its durable bytes: unsynced writes vanish entirely.
  ``"reorder"`` per file, a seeded random subset of the unsynced writes persists, applied
                over the durable bytes in issue order (holes read as zeros); the cut
                write, if chosen, persists as a random prefix. SQLite-style.

  ``crash()`` leaves the storage it is called on unchanged, so one cut state can be
  crashed several ways; ``snapshot()`` copies a storage (cut armed or not, dead or not).
  ``cut`` says which operation was cut (a string for failure messages), or is None.

Why `PowerCut` derives from Exception and not from OSError: core code may catch OSError
to handle a storage fault (full disk, EIO) and carry on, which would hide the cut from the
test. A class of its own passes through every ``except OSError``. (BaseException would
also escape ``except Exception`` blocks, but the test runner reports Exceptions only and
core code is not supposed to swallow everything.)

``full_at_bytes`` models a full disk: a write that would make the total of all files'
current lengths exceed it raises ``OSError(28)`` (ENOSPC) and lands nothing; it is a
normal error, the device stays alive.

``listdir`` returns names in reverse sorted order on purpose: real file systems promise
no order, and code that relies on one should fail here rather than on a board.

``contents(path)`` and ``contents(path, durable=True)`` let a test look at a file's
current and durable bytes without going through a handle (never cut, not counted).

The module is kept small on purpose (few functions, inodes as lists): the MicroPython
crash tests load it beside the whole log into a board-sized heap.
"""

_ENOENT = 2
_EBADF = 9
_EEXIST = 17
_ENOTDIR = 20
_EISDIR = 21
_EINVAL = 22
_ENOSPC = 28

MODES = ("torn", "lost", "reorder")

# An inode is a list: [durable bytes, current bytearray, pending [(offset, bytes)]].
_DUR = 0
_DATA = 1
_PEND = 2


class PowerCut(Exception):
    """The simulated power failed; the storage is dead until crash()."""


def _parent(path):
    i = path.rfind("/")
    if i < 0:
        return "."
    return path[:i] if i > 0 else "/"


def _norm(path):
    while len(path) > 1 and path[-1] == "/":
        path = path[:-1]
    return path


def _put(data, off, chunk):
    # Write chunk into bytearray data at off; a gap past the end reads as zeros.
    if off > len(data):
        data.extend(bytes(off - len(data)))
    data[off:off + len(chunk)] = chunk


def _rand(x):
    # xorshift32 step: the same sequence on CPython and MicroPython for the same seed.
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    return x ^ ((x << 5) & 0xFFFFFFFF)


class _Handle:
    def __init__(self, fs, inode, path, kind):
        self._fs = fs
        self._inode = inode
        self._path = path
        self._kind = kind  # "a" append, "u" update, "r" read
        self._pos = 0
        self._closed = False

    def _check(self, kind):
        self._fs._alive()
        if self._closed:
            raise ValueError("I/O operation on closed file")
        if kind == self._kind:
            raise OSError(_EBADF, "bad operation on this handle: " + self._path)

    def write(self, buf, n=None):
        self._check("r")
        if n is None:
            n = len(buf)
        chunk = bytes(buf[:n])
        inode = self._inode
        data = inode[_DATA]
        off = len(data) if self._kind == "a" else self._pos
        fs = self._fs
        fs._point("write", self._path, inode, off, chunk)
        fs._room(off + n - len(data), self._path)
        _put(data, off, chunk)
        inode[_PEND].append((off, chunk))
        self._pos = off + n
        return n

    def sync(self):
        self._check("")
        inode = self._inode
        inode[_DUR] = bytes(inode[_DATA])
        inode[_PEND] = []

    def seek(self, pos):
        self._check("a")
        if pos < 0:
            raise OSError(_EINVAL, "negative seek: " + self._path)
        self._pos = pos

    def readinto(self, buf):
        self._check("a")
        data = self._inode[_DATA]
        n = min(len(data) - self._pos, len(buf))
        if n <= 0:
            return 0
        buf[0:n] = data[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self):
        self._fs._alive()
        self._closed = True


class FaultStorage:
    """In-memory storage with power-cut injection; see the module docstring."""

    def __init__(self, cut_at=None, torn_bytes=None, full_at_bytes=None, seed=0):
        self.cut_at = cut_at
        self.torn_bytes = torn_bytes
        self.full_at_bytes = full_at_bytes
        self.seed = seed
        self.write_points = 0
        self.dead = False
        self.cut = None  # what was cut, for messages
        self._cut_write = None  # (inode, offset, bytes) of a cut write
        self._files = {}
        self._dirs = {".": True, "/": True}

    # -- fault machinery ---------------------------------------------------------

    def _alive(self):
        if self.dead:
            raise PowerCut("device is dead since " + self.cut)

    def _point(self, kind, path, inode=None, off=0, chunk=b""):
        self.write_points += 1
        if self.cut_at is not None and self.write_points >= self.cut_at:
            self.dead = True
            self.cut = "cut at write point %d: %s %s" % (self.write_points, kind, path)
            if inode is not None:
                self.cut += " (%d bytes at %d)" % (len(chunk), off)
                self._cut_write = (inode, off, chunk)
            raise PowerCut(self.cut)

    def _room(self, grow, path):
        full = self.full_at_bytes
        if full is not None and grow > 0:
            total = grow
            for inode in self._files.values():
                total += len(inode[_DATA])
            if total > full:
                raise OSError(_ENOSPC, "No space left on device: " + path)

    def snapshot(self):
        """An independent copy of this storage, in the same state (armed, dead or not)."""
        s = FaultStorage(self.cut_at, self.torn_bytes, self.full_at_bytes, self.seed)
        s.write_points = self.write_points
        s.dead = self.dead
        s.cut = self.cut
        s._dirs = dict(self._dirs)
        cw = self._cut_write
        for path, inode in self._files.items():
            c = [inode[_DUR], bytearray(inode[_DATA]), list(inode[_PEND])]
            s._files[path] = c
            if cw is not None and cw[0] is inode:
                s._cut_write = (c, cw[1], cw[2])
        return s

    def crash(self, mode="torn", torn_bytes=None, seed=None):
        """Return a new storage holding what survives losing power now (see module doc)."""
        if mode not in MODES:
            raise ValueError("crash mode must be one of torn, lost, reorder: %r" % (mode,))
        if torn_bytes is None:
            torn_bytes = self.torn_bytes
        x = ((self.seed if seed is None else seed) * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF or 1
        cw = self._cut_write
        s = FaultStorage(None, self.torn_bytes, self.full_at_bytes, self.seed)
        s._dirs = dict(self._dirs)
        for path in sorted(self._files):
            inode = self._files[path]
            cut = cw is not None and cw[0] is inode
            if mode == "torn":
                data = bytearray(inode[_DATA])
                if cut:
                    n = len(cw[2])
                    if torn_bytes is None:
                        k = n // 2
                    elif torn_bytes < 0:
                        k = max(0, n + torn_bytes)
                    else:
                        k = min(n, torn_bytes)
                    _put(data, cw[1], cw[2][:k])
            else:
                data = bytearray(inode[_DUR])
                if mode == "reorder":
                    for off, chunk in inode[_PEND]:
                        x = _rand(x)
                        if x & 1:
                            _put(data, off, chunk)
                    if cut:
                        x = _rand(x)
                        if x & 1:
                            x = _rand(x)
                            _put(data, cw[1], cw[2][:x % (len(cw[2]) + 1)])
            s._files[path] = [bytes(data), data, []]
        return s

    def contents(self, path, durable=False):
        """A file's current bytes, or its bytes as of its last sync (tests only)."""
        inode = self._files[_norm(path)]
        return inode[_DUR] if durable else bytes(inode[_DATA])

    # -- the storage interface -----------------------------------------------------

    def _inode(self, path, parent=False):
        # The file at path (OSError if none); with parent=True, check that path could
        # be created instead and return its inode or None.
        self._alive()
        inode = self._files.get(path)
        if path in self._dirs:
            raise OSError(_EISDIR, "is a directory: " + path)
        if parent:
            d = _parent(path)
            if d not in self._dirs:
                raise OSError(_ENOTDIR if d in self._files else _ENOENT, "no such directory: " + d)
        elif inode is None:
            raise OSError(_ENOENT, "no such file: " + path)
        return inode

    def listdir(self, path):
        self._alive()
        path = _norm(path)
        if path not in self._dirs:
            raise OSError(_ENOTDIR if path in self._files else _ENOENT, "no such directory: " + path)
        names = []
        for table in (self._files, self._dirs):
            for p in table:
                if p != path and _parent(p) == path:
                    names.append(p[p.rfind("/") + 1:])
        names.sort()
        names.reverse()
        return names

    def makedirs(self, path):
        self._alive()
        path = _norm(path)
        missing = []
        p = path
        while p not in self._dirs:
            if p in self._files:
                raise OSError(_EEXIST, "a file is in the way: " + p)
            missing.append(p)
            p = _parent(p)
        if missing:
            self._point("makedirs", path)
            for p in missing:
                self._dirs[p] = True

    def exists(self, path):
        self._alive()
        path = _norm(path)
        return path in self._files or path in self._dirs

    def size(self, path):
        self._alive()
        path = _norm(path)
        if path in self._dirs:
            return 0
        return len(self._inode(path)[_DATA])

    def open_append(self, path, kind="a"):
        path = _norm(path)
        inode = self._inode(path, True)
        if inode is None:
            self._point("create", path)
            inode = self._files[path] = [b"", bytearray(), []]
        return _Handle(self, inode, path, kind)

    def open_update(self, path):
        return self.open_append(path, "u")

    def open_read(self, path):
        path = _norm(path)
        return _Handle(self, self._inode(path), path, "r")

    def remove(self, path):
        path = _norm(path)
        self._inode(path)
        self._point("remove", path)
        del self._files[path]

    def rename(self, src, dst):
        src = _norm(src)
        dst = _norm(dst)
        inode = self._inode(src)
        self._inode(dst, True)
        self._point("rename", src + " -> " + dst)
        del self._files[src]
        self._files[dst] = inode

    def truncate(self, path, size):
        path = _norm(path)
        inode = self._inode(path)
        if size < 0:
            raise OSError(_EINVAL, "negative size: " + path)
        self._point("truncate", path)
        data = inode[_DATA]
        self._room(size - len(data), path)
        if size <= len(data):
            data[size:] = b""
        else:
            data.extend(bytes(size - len(data)))
        inode[_DUR] = bytes(data)
        inode[_PEND] = []

    def sync_dir(self, path):
        self._alive()
        if _norm(path) not in self._dirs:
            raise OSError(_ENOENT, "no such directory: " + path)
