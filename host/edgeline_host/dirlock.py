"""One process per data directory: an exclusive lock on a ``LOCK`` file.

Failure modes first
-------------------
* A second agent (or gateway) is started on a directory another one is using: both
  would append to the same logs and each would overwrite the other's records. The second
  gets ``DirInUse`` -- one line naming the holder's pid and start time -- before it opens
  or writes anything, and exits; the first goes on undisturbed.
* The holder dies (crash, SIGKILL, power cut): the kernel drops its lock with its last
  file descriptor, so a stale ``LOCK`` file never blocks the next start. The pid written
  in the file is only for the message; nothing ever trusts it.
* The ``LOCK`` file is deleted or replaced while we hold it (someone "cleaning up"):
  a new process could then lock the new file and run beside us. ``lock_lost()`` tells
  (the path no longer names the inode we locked), for health to report.

Theory of operation
-------------------
``DirLock(path).acquire()`` opens (creating) ``path`` and takes ``fcntl.flock(LOCK_EX |
LOCK_NB)`` on it; on success it writes ``{"pid", "host", "started"}`` into it (JSON,
one line) and remembers the file's (device, inode). A refused ``flock`` reads that line
for the message and raises ``DirInUse``. ``release()`` closes the descriptor (which drops
the lock) but never deletes the file: deleting it would let a process that opened the old
file and one that creates a new one both hold "the" lock. flock is per open file, so two
``DirLock`` of one path in one process exclude each other too (tests rely on it).
"""
import datetime
import fcntl
import json
import os
import socket

LOCK_NAME = "LOCK"


class DirInUse(OSError):
    """Another process holds the lock; the message is the line to show the user. An
    OSError, so callers that turn OSErrors into one line (boards' main.py) need nothing
    more."""


class DirLock:
    """The lock of ``path`` (a lock file); ``what`` is the name the message gives (the
    directory or store it guards)."""

    def __init__(self, path, what=None):
        self.path = path
        self.what = what if what is not None else os.path.dirname(path) or "."
        self.file = None  # the locked file while held
        self.ident = None  # (st_dev, st_ino) of the file we locked

    @classmethod
    def for_dir(cls, data_dir):
        """The lock of a data directory: ``<data_dir>/LOCK`` (the directory is created)."""
        os.makedirs(data_dir, exist_ok=True)
        return cls(os.path.join(data_dir, LOCK_NAME), what=data_dir)

    def acquire(self):
        """Take the lock or raise DirInUse; returns self."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DirInUse("%s is in use by %s; stop it first" % (self.what, holder)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": datetime.datetime.now(datetime.timezone.utc)
                               .strftime("%Y-%m-%d %H:%M:%S UTC")}) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, line.encode(), 0)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        # A file object, not a bare fd: a DirLock dropped without release() (a test's
        # forgotten Agent) is released when it is collected, never leaked for the process.
        self.file = os.fdopen(fd, "r+b", buffering=0)
        self.ident = (st.st_dev, st.st_ino)
        return self

    def lock_lost(self):
        """True when ``path`` no longer names the file we locked (deleted or replaced),
        so another process could take a lock beside ours; False while we hold it (and
        when we hold nothing)."""
        if self.file is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self.ident

    def release(self):
        """Drop the lock (the file stays). Idempotent."""
        f, self.file = self.file, None
        if f is not None:
            f.close()

    def __enter__(self):
        return self.acquire() if self.file is None else self

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd):
    """'pid N (started T)' from a held lock file, as far as it says."""
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8"))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # the holder has not written its line yet
    text = "pid %d" % pid
    host = info.get("host")
    if host and host != socket.gethostname():
        text += " on %s" % host
    if info.get("started"):
        text += " (started %s)" % info["started"]
    return text
