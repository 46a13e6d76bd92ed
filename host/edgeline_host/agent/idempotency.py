"""The ingest dedupe window: a persisted, bounded map from a request's key to the seqs its
records got, so a retried request or a redelivered message is answered, not stored again.

Failure modes first
-------------------
* Power cut or SIGKILL at any write: the window is an append-only file of CRC-framed
  entries (docs/spec/ingest-dedupe.md). An entry is written before the records it names
  are appended, and synced before the log's fsync that makes them durable (the agent's
  ``SyncFirstStorage`` calls ``sync()`` ahead of every fsync of the topic's log), so
  records durable implies their entry durable (D1). An entry that outlived its records
  (synced, then cut before the log's fsync) is dropped by ``recover(log_last_seq)`` (D2).
  A torn tail is cut at load (D3).
* Unbounded growth: at most ``max_entries`` live entries, none older than ``max_age_s``;
  the file is compacted (tmp, fsync, rename, fsync dir) when it holds about twice that.
* A file this code cannot read (another version, a bad header): refused in one line --
  starting over would forget what was stored and double the next retry.

Theory of operation
-------------------
The entries live in an ``OrderedDict`` in insertion order (the oldest first), so both
bounds drop from the front. ``add`` writes the entry at once (one small write; SIGKILL
keeps it, only a power cut can take it unsynced) and ``sync`` fsyncs if anything was
written since. Keys are bytes (str is UTF-8 encoded). Producer keys (``p:<id>:<seq>``)
keep a *floor* per producer: the highest request seq that left the window, persisted as a
``FLOOR`` entry, so a retry older than the window is refused rather than stored twice.

The file goes through the core's storage interface (``edgeline.storage``), so crash tests
run it and the log on one ``emulator.faultfs.FaultStorage`` with one numbering of write
points.
"""
import collections
import logging
import os
import struct
import threading
import time
import zlib

from edgeline.errors import EdgelineError
from edgeline.storage import FileStorage
from edgeline.store import Store, topic_dirname

MAGIC = b"ELDW"
VERSION = 1
HEADER = struct.Struct("<4sHHI")  # magic, version, flags, reserved; then crc u32
HEADER_BYTES = HEADER.size + 4
ENTRY = struct.Struct("<BBBBQQQ")  # kind, key_len, digest_len, reserved, first, last, added_ms
ENTRY_BYTES = ENTRY.size + 4  # without key and digest
_CRC = struct.Struct("<I")
KIND_ENTRY = 1
KIND_REMOVED = 2
KIND_FLOOR = 3
MAX_KEY_BYTES = 255
MAX_DIGEST_BYTES = 64
DIRECTORY = "~ingest-dedupe"  # in data_dir; "~" is never in a topic's directory name
COMPACT_SLACK = 64
DEFAULT_MAX_ENTRIES = 10000
DEFAULT_MAX_AGE_S = 86400

log = logging.getLogger("edgeline.agent")


def window_max_bytes(max_entries, digest_bytes=16):
    """About the most a window's file holds: ``2 * max_entries + COMPACT_SLACK`` entries
    (and the one add that passes it) of the longest key, before compaction (a compaction
    that fails on a full disk lets it grow on)."""
    return HEADER_BYTES + (2 * max_entries + COMPACT_SLACK + 1) * (ENTRY_BYTES + MAX_KEY_BYTES + digest_bytes)


class DedupeWindowError(EdgelineError):
    """The window file cannot be read (another version, a bad header)."""


def window_path(data_dir, topic):
    """Where topic's window lives in the agent's data_dir."""
    return os.path.join(data_dir, DIRECTORY, topic_dirname(topic) + ".dw")


def producer_key(producer_id, request_seq):
    """The key of request ``request_seq`` of producer ``producer_id`` (both text/int)."""
    return b"p:%s:%d" % (_bytes(producer_id), request_seq)


def _bytes(key):
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def pack_header():
    h = HEADER.pack(MAGIC, VERSION, 0, 0)
    return h + struct.pack("<I", zlib.crc32(h))


def pack_entry(kind, key, first_seq, last_seq, added_ms, digest=b""):
    body = ENTRY.pack(kind, len(key), len(digest), 0, first_seq, last_seq, added_ms) + key + digest
    return body + struct.pack("<I", zlib.crc32(body))


def parse_entries(data, offset=HEADER_BYTES):
    """Yield ``(end_offset, kind, key, first, last, added_ms, digest)`` for each valid entry
    from ``offset``; stop at the first invalid or incomplete one (the torn tail)."""
    n = len(data)
    while offset + ENTRY_BYTES <= n:
        kind, klen, dlen, res, first, last, added = ENTRY.unpack_from(data, offset)
        if kind not in (KIND_ENTRY, KIND_REMOVED, KIND_FLOOR) or not klen or res or dlen > MAX_DIGEST_BYTES:
            return
        end = offset + ENTRY.size + klen + dlen
        if end + 4 > n:
            return
        if zlib.crc32(data[offset:end]) != struct.unpack_from("<I", data, end)[0]:
            return
        k0 = offset + ENTRY.size
        yield end + 4, kind, bytes(data[k0:k0 + klen]), first, last, added, bytes(data[k0 + klen:end])
        offset = end + 4


class DedupeWindow:
    """One topic's dedupe window in file ``path`` (see the module doc).

    ``recover(log_last_seq)`` once after the topic's log is open; then ``lookup``,
    ``add``, ``discard``, ``sync``; ``close``. Counters: ``hits`` and ``conflicts`` (the
    caller's: a key found with the same / another digest), ``dropped_at_recovery``,
    ``evicted``. ``clock`` returns seconds (tests)."""

    def __init__(self, path, max_entries=DEFAULT_MAX_ENTRIES, max_age_s=DEFAULT_MAX_AGE_S, storage=None,
                 clock=time.time):
        if max_entries < 1 or max_age_s <= 0:
            raise ValueError("max_entries must be >= 1 and max_age_s > 0")
        self.path = path
        self.max_entries = max_entries
        self.max_age_ms = int(max_age_s * 1000)
        self.storage = storage if storage is not None else FileStorage()
        self.clock = clock
        self.hits = 0
        self.conflicts = 0
        self.evicted = 0
        self.dropped_at_recovery = 0
        self.cut_at_recovery = 0
        self._entries = collections.OrderedDict()  # key -> (first, last, digest, added_ms)
        self._floors = collections.OrderedDict()  # producer id -> (floor seq, added_ms)
        self._fh = None
        # Entries written and entries known durable: sync() may run in another thread
        # (the agent's commit worker, through SyncFirstStorage) while add() writes, so a
        # count, not a flag -- an entry written during an fsync stays owed to the next.
        self._written = 0
        self._synced = 0
        self._io = threading.Lock()  # held by sync() over its fsync and by a handle swap
        self._in_file = 0  # entries in the file (live or not): compaction trigger
        self._needs_rewrite = False
        self._compact_failed_at = 0  # _in_file when a compaction last failed: retried COMPACT_SLACK later
        self._closed = False
        self.size_bytes = 0  # the file's bytes (what the window takes of max_storage: StoreBesideWindows)
        self._load()

    # ------------------------------------------------------------------ loading

    def _now_ms(self):
        return int(self.clock() * 1000)

    def _load(self):
        st = self.storage
        tmp = self.path + ".tmp"
        if st.exists(tmp):
            st.remove(tmp)  # a compaction cut before its rename: the old file stands
        if not st.exists(self.path):
            return
        size = st.size(self.path)
        data = bytearray(size)
        h = st.open_read(self.path)
        try:
            got = 0
            mv = memoryview(data)
            while got < size:
                n = h.readinto(mv[got:])
                if not n:
                    break
                got += n
        finally:
            h.close()
        del data[got:]
        self.size_bytes = len(data)
        if len(data) < HEADER_BYTES or bytes(data[:HEADER_BYTES]) != pack_header():
            magic, version = bytes(data[:4]), (struct.unpack_from("<H", data, 4)[0] if len(data) >= 6 else None)
            if magic == MAGIC and version not in (None, VERSION):
                why = "it is format version %s; this edgeline reads version %d" % (version, VERSION)
            else:
                why = "its header is not that of a dedupe window (version %d)" % VERSION
            raise DedupeWindowError("%s: cannot read the ingest dedupe window: %s; move it away to start "
                                    "a new window (retries of earlier requests would then be stored again)"
                                    % (self.path, why))
        end = HEADER_BYTES
        for end, kind, key, first, last, added, digest in parse_entries(data):
            self._in_file += 1
            if kind == KIND_ENTRY:
                self._entries.pop(key, None)
                self._entries[key] = (first, last, digest, added)
            elif kind == KIND_REMOVED:
                self._entries.pop(key, None)
            else:
                self._floors.pop(key, None)
                self._floors[key] = (first, added)
        if end < len(data):
            st.truncate(self.path, end)  # D3: the torn tail
            self.size_bytes = end
            self._needs_rewrite = True
        self._bound(self._now_ms())

    def recover(self, log_last_seq):
        """Drop the entries whose records the log does not hold (``first_seq`` above
        ``log_last_seq``: a crash took them), cut those it holds in part to that part;
        rewrite the file if anything changed. Returns how many were dropped or cut."""
        gone = [k for k, e in self._entries.items() if e[1] > log_last_seq]
        entries = self._entries
        cut = dropped = 0
        if gone:
            entries = collections.OrderedDict(entries)  # self._entries changes once the file does
            for k in gone:
                first, _, digest, added = entries[k]
                if first <= log_last_seq:
                    # Part of the request's records reached the file (SIGKILL keeps what
                    # was written): the entry keeps the part the log holds, so a retry is
                    # not stored twice (the caller appends only the rest; see service.py).
                    entries[k] = (first, log_last_seq, digest, added)
                    cut += 1
                else:
                    del entries[k]
                    dropped += 1
        if gone or self._needs_rewrite or self._in_file > len(entries) + len(self._floors) + COMPACT_SLACK:
            self.compact(entries)  # raises (nothing changed in memory) if it cannot be rewritten
        self._entries = entries
        self.cut_at_recovery += cut
        self.dropped_at_recovery += dropped
        return len(gone)

    # ------------------------------------------------------------------ the map

    def lookup(self, key):
        """``(first_seq, last_seq, digest)`` stored under ``key``, or None (never stored,
        forgotten, or older than ``max_age_s``)."""
        e = self._entries.get(_bytes(key))
        if e is None or self._now_ms() - e[3] > self.max_age_ms:
            return None
        return e[0], e[1], e[2]

    def floor(self, producer_id):
        """The highest request seq of ``producer_id`` that left the window, or None."""
        f = self._floors.get(_bytes(producer_id))
        return f[0] if f is not None else None

    def __len__(self):
        return len(self._entries)

    def add(self, key, first_seq, last_seq, digest=b""):
        """Remember ``key`` -> seqs first..last (replacing what it named); written, not
        synced (``sync()``)."""
        key = _bytes(key)
        digest = bytes(digest)
        if not 1 <= len(key) <= MAX_KEY_BYTES or len(digest) > MAX_DIGEST_BYTES:
            raise ValueError("a key is 1..%d bytes and a digest at most %d" % (MAX_KEY_BYTES, MAX_DIGEST_BYTES))
        if not 1 <= first_seq <= last_seq:
            raise ValueError("seqs must be 1 <= first_seq <= last_seq, not %d..%d" % (first_seq, last_seq))
        now = self._now_ms()
        self._write(pack_entry(KIND_ENTRY, key, first_seq, last_seq, now, digest))
        self._entries.pop(key, None)
        self._entries[key] = (first_seq, last_seq, digest, now)
        self._bound(now)
        self._maybe_compact()

    def add_many(self, entries):
        """``add`` each ``(key, first_seq, last_seq, digest)`` of ``entries``, in order,
        with one write for all (the MQTT endpoint's burst of messages: one entry each).
        A write cut short keeps a prefix of them (the file's torn tail, D3)."""
        now = self._now_ms()
        rows = []
        parts = []
        head = ENTRY.pack
        crc = _CRC.pack
        for key, first_seq, last_seq, digest in entries:
            if type(key) is not bytes:
                key = _bytes(key)
            if type(digest) is not bytes:
                digest = bytes(digest)
            if not 1 <= len(key) <= MAX_KEY_BYTES or len(digest) > MAX_DIGEST_BYTES:
                raise ValueError("a key is 1..%d bytes and a digest at most %d" % (MAX_KEY_BYTES, MAX_DIGEST_BYTES))
            if not 1 <= first_seq <= last_seq:
                raise ValueError("seqs must be 1 <= first_seq <= last_seq, not %d..%d" % (first_seq, last_seq))
            rows.append((key, (first_seq, last_seq, digest, now)))
            body = head(KIND_ENTRY, len(key), len(digest), 0, first_seq, last_seq, now) + key + digest
            parts.append(body)  # pack_entry, inline: this is per message
            parts.append(crc(zlib.crc32(body)))
        if not rows:
            return
        self._write(b"".join(parts), len(rows))
        held = self._entries
        for k, e in rows:
            held.pop(k, None)
            held[k] = e
        self._bound(now)
        self._maybe_compact()

    def discard(self, key):
        """Forget ``key`` (its records were not stored after all, or its MQTT packet id was
        reused). Written, not synced; nothing is written for a key not held."""
        key = _bytes(key)
        if self._entries.pop(key, None) is None:
            return
        self._write(pack_entry(KIND_REMOVED, key, 0, 0, self._now_ms()))
        self._maybe_compact()

    def sync(self):
        """Make every entry written so far durable (fsync; nothing to do: no I/O). Safe
        from another thread than the writer's: what was written before the call is
        durable when it returns."""
        with self._io:
            n = self._written
            if n == self._synced:
                return
            if self._fh is None:  # a failed compaction closed it
                self._fh = self.storage.open_append(self.path)
            self._fh.sync()
            self._synced = n

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._fh is not None:
            try:
                self.sync()
            finally:
                with self._io:
                    self._fh.close()
                    self._fh = None

    # ------------------------------------------------------------------ bounds and file

    def _bound(self, now):
        entries = self._entries
        while entries:
            k, e = next(iter(entries.items()))
            if len(entries) <= self.max_entries and now - e[3] <= self.max_age_ms:
                break
            del entries[k]
            self.evicted += 1
            if k.startswith(b"p:"):
                pid, _, seq = k[2:].rpartition(b":")
                if seq.isdigit() and int(seq) > (self.floor(pid) or -1):
                    self._floors.pop(pid, None)
                    self._floors[pid] = (int(seq), now)
                    self._write(pack_entry(KIND_FLOOR, pid, int(seq), int(seq), now))
        floors = self._floors
        while floors:
            k, f = next(iter(floors.items()))
            if len(floors) <= self.max_entries and now - f[1] <= self.max_age_ms:
                break
            del floors[k]

    def _write(self, entry, count=1):
        if self._needs_rewrite:
            # An earlier write failed and may have left part of an entry in the file: an
            # entry appended after it would be lost at load. Rewrite the file whole first
            # (from memory); if that fails too, this write fails.
            self.compact()
        if self._fh is None:
            self._create()
        try:
            self._fh.write(entry, len(entry))
        except BaseException:
            self._needs_rewrite = True
            self.size_bytes += len(entry)  # perhaps a part of it: counted whole until the rewrite
            raise
        self.size_bytes += len(entry)
        self._written += 1
        self._in_file += count

    def _create(self):
        st = self.storage
        d = os.path.dirname(self.path)
        if d:
            st.makedirs(d)
        if not st.exists(self.path):
            self._rewrite([])
        self._fh = st.open_append(self.path)

    def _maybe_compact(self):
        """Compact when the file holds about twice the live entries. A compaction that
        fails (a full disk) is not the caller's failure: the entry it just wrote is in
        the file and in memory, the old file stands; it is tried again COMPACT_SLACK
        entries later."""
        n = self._in_file
        if n > 2 * self.max_entries + COMPACT_SLACK and n > self._compact_failed_at + COMPACT_SLACK:
            try:
                self.compact()
            except (OSError, EdgelineError) as e:
                self._compact_failed_at = n
                log.warning("ingest dedupe window %s: compaction failed (%s); the file grows until it succeeds",
                            self.path, e)

    def compact(self, entries=None):
        """Rewrite the file with the live entries only (``entries``: these instead of
        the window's), atomically (tmp, fsync, rename). On failure the old file stands
        and takes appends again; the error is raised."""
        entries = self._entries if entries is None else entries
        parts = [pack_entry(KIND_FLOOR, pid, f[0], f[0], f[1]) for pid, f in self._floors.items()]
        parts += [pack_entry(KIND_ENTRY, k, e[0], e[1], e[3], e[2]) for k, e in entries.items()]
        with self._io:  # not under an fsync of another thread
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            try:
                d = os.path.dirname(self.path)
                if d:
                    self.storage.makedirs(d)
                self._rewrite(parts)  # written and synced whole
            except BaseException:
                try:
                    self._fh = self.storage.open_append(self.path)  # the old file: unsynced entries stay owed
                except (OSError, EdgelineError):
                    pass  # sync() and _write() open it
                raise
            self._synced = self._written
            self._fh = self.storage.open_append(self.path)
        self._in_file = len(parts)
        self._needs_rewrite = False
        self._compact_failed_at = 0

    def _rewrite(self, parts):
        st = self.storage
        tmp = self.path + ".tmp"
        if st.exists(tmp):
            st.remove(tmp)
        data = bytearray(pack_header() + b"".join(parts))
        try:
            h = st.open_append(tmp)
            try:
                h.write(data, len(data))
                h.sync()
            finally:
                h.close()
        except BaseException:
            try:
                st.remove(tmp)  # its bytes back to a full disk
            except (OSError, EdgelineError):
                pass
            raise
        st.rename(tmp, self.path)  # durable when it returns (the directory is synced)
        self.size_bytes = len(data)


class StoreBesideWindows(Store):
    """The agent's Store: its logs share ``resources.max_storage`` less what the ingest
    dedupe windows' files hold now, so logs and windows together stay within it (a log
    asks the store for room against ``budget_bytes``, read at every ask). ``windows``
    (the list the agent fills) are counted in ``used_total_bytes``: what the agent
    reports as storage used. The room a log was granted (at most a segment) before a
    window grew is not taken back: the sum may pass max_storage by what the windows grew
    since, until that log next asks."""

    def __init__(self, root, max_storage_bytes, windows, storage=None):
        self.windows = windows
        Store.__init__(self, root, max_storage_bytes, storage)

    @property
    def budget_bytes(self):
        n = self.max_storage_bytes
        for w in self.windows:
            n -= w.size_bytes
        return n

    @budget_bytes.setter
    def budget_bytes(self, value):
        self.max_storage_bytes = value

    @property
    def windows_bytes(self):
        n = 0
        for w in self.windows:
            n += w.size_bytes
        return n

    @property
    def used_total_bytes(self):
        """The logs' bytes and the windows' files: what the agent takes of max_storage."""
        return self.size_bytes + self.windows_bytes


class SyncFirstStorage:
    """The agent's storage: ``FileStorage`` (or any storage) whose handles, for files in a
    registered log directory, call that topic's ``before_sync`` (its window's ``sync``)
    ahead of their own fsync. So every fsync of a log -- a flush, ``sync: every``, a
    commit by count, a sealed segment -- is preceded by the window's: records durable
    implies their entries durable (docs/spec/ingest-dedupe.md, D1), whatever path the
    commit takes."""

    def __init__(self, inner=None):
        self.inner = inner if inner is not None else FileStorage()
        self._hooks = {}  # log directory -> callable

    def before_sync(self, log_dir, fn):
        self._hooks[log_dir.rstrip("/")] = fn

    def open_append(self, path):
        h = self.inner.open_append(path)
        fn = self._hooks.get(path.rpartition("/")[0])
        return h if fn is None else _SyncFirst(h, fn)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _SyncFirst:
    __slots__ = ("_h", "_fn")

    def __init__(self, h, fn):
        self._h = h
        self._fn = fn

    def write(self, buf, n):
        self._h.write(buf, n)

    def sync(self):
        self._fn()
        self._h.sync()

    def seek(self, pos):
        self._h.seek(pos)

    def readinto(self, buf):
        return self._h.readinto(buf)

    def close(self):
        self._h.close()
