"""Table topics on a host: the settings, a replica fed by records, writes formed from it.

Theory of operation
-------------------
The merge rules are ``edgeline.table`` (docs/spec/tables.md), sans-IO. This module is
what the gateway and the edge agent share around it (they never import each other):

* ``parse_table_settings`` reads a topic's ``kind: table``, ``type`` (register, counter,
  set, map) and ``conflict_resolution`` (a strategy name, or ``{custom_merge:
  "package.module:function"}``) from the agent's edge.yaml or the gateway's topics file,
  the same way in both; what nothing acts on yet (a WebAssembly merge) is refused by name.
* ``Replica`` holds one topic's ``Table``. Every record of the topic the node holds is
  fed to ``apply_record(writer, seq, ts, key, value)`` -- at start from the store or the
  logs, then as records are stored -- in any order, duplicates included (the merge is
  order-free, T1). A record whose value is not a table write of format 1 is counted in
  ``malformed`` and left out (it is acknowledged data: it stays stored). A writer id is
  the record's origin, with its log's incarnation when that is not the legacy one
  (``writer_id``): a wiped node is a new writer (C3).
* A local write (a PUT/DELETE at the gateway or the agent) is formed by ``form_write``
  from the replica's context (C1): it returns the record's CBOR value; the caller stores
  it durably, then feeds the stored record back through ``apply_record`` before it
  answers. Callers serialise their own writes per topic (``lock``): a counter's running
  total and a key's context must include the previous local write.
* Relays (tables.md, "Relayed writes"): the gateway copies each edge's table write into
  the topic's cloud stream as ``[1, 4, writer, seq, ts, value]`` (``relay_value``), so the
  downlink carries every writer's writes to every edge; ``apply_record`` applies a relay
  as the write it carries, with the original dot, so a relayed write is the same write
  everywhere (its writer receiving it back: a duplicate).
* Tombstones (tables.md, "Tombstones and their collection"): ``Replica.collect(stable)``
  drops the tombstones ``stable`` covers; ``stable_vector`` is the min over the
  replicas' applied marks, and ``read_reports`` reads an edge's ``[held, head]`` per
  topic from its HELLO's ``tables`` capability -- the gateway computes ``stable`` from
  them (gateway.py), the agent sends them (service.py ``_table_reports``). The floor is
  in memory: after a restart the replica holds the tombstones again until the next
  collection (harmless: nothing concurrent with them can arrive any more).
* Conflicts: the core reports each one where the siblings meet; the replica keeps one
  row per conflict identity ``(key, field, type, sorted sibling dots)`` -- each conflict
  once -- with the strategy's resolution as it stands (``conflicts_json``). The rows are
  kept in a ``ConflictLog`` file per topic (tables.md, "The conflict log file"), so a
  restart lists the conflicts met before it (a replay meets only some again).
"""
import asyncio
import importlib
import io
import logging
import os
import struct
import zlib

import cbor2

from edgeline import codec
from edgeline import table as T
from edgeline.errors import ConfigError, EdgelineError

from . import fastcbor

log = logging.getLogger("edgeline.tables")

CONFLICTS_DIRECTORY = "~table-conflicts"  # the agent's conflict logs, in its data_dir ("~": never a topic's)
OP_RELAY = 4  # a relayed write in the cloud stream (tables.md, "Relayed writes")
KIND_TABLE = "table"
KIND_STREAM = "stream"
KINDS = (KIND_STREAM, KIND_TABLE)
TABLE_KEYS = ("kind", "type", "conflict_resolution")
LEGACY_INCARNATION = "0" * 16
MAX_CONFLICT_ROWS = 10000  # rows kept per topic; the oldest resolved ones go first


class TableSettings:
    """A table topic's settings: value ``type``, ``strategy`` and the custom ``merge``
    callable (or None) with its ``merge_name``."""

    __slots__ = ("type", "strategy", "merge", "merge_name")

    def __init__(self, type_=T.REGISTER, strategy=T.LAST_WRITE_WINS, merge=None, merge_name=None):
        self.type = type_
        self.strategy = strategy
        self.merge = merge
        self.merge_name = merge_name

    def describe(self):
        return {"type": self.type, "conflict_resolution": self.strategy if self.merge_name is None else
                {T.CUSTOM_MERGE: self.merge_name}}

    def __repr__(self):
        return "TableSettings(%r, %r, merge=%r)" % (self.type, self.strategy, self.merge_name)


def load_merge(spec, where):
    """The callable named ``package.module:function``; ConfigError naming it if it cannot
    be imported."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError("%s: custom_merge must be \"package.module:function\" (got %r)" % (where, spec))
    mod, fn = spec.split(":")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except Exception as e:  # noqa: BLE001 - whatever importing the user's module raises: one line
        raise ConfigError("%s: custom_merge %r cannot be loaded: %s: %s" % (where, spec, type(e).__name__,
                                                                            str(e).splitlines()[0] if str(e) else "")
                          ) from None
    if not callable(f):
        raise ConfigError("%s: custom_merge %r is not callable" % (where, spec))
    return PythonMerge(f)


class PythonMerge:
    """A Python custom merge, with its failures kept per sibling set (key and dots) so
    the replica can report ``merge_failed`` with the reason; what it raises still
    reaches the core's ``resolve``, which shows the siblings."""

    def __init__(self, fn):
        self.fn = fn
        self.failures = {}

    def __call__(self, key, versions):
        try:
            return self.fn(key, versions)
        except Exception as e:
            if len(self.failures) >= MAX_CONFLICT_ROWS:
                self.failures.clear()
            text = str(e).strip().splitlines()
            self.failures[(key,) + tuple((v[0], v[1]) for v in versions)] = "%s: %s" % (
                type(e).__name__, text[0] if text else "")
            raise


def parse_strategy(value, where, base_dir=None):
    """(strategy, merge, merge_name) from a ``conflict_resolution`` value. A WebAssembly
    merge's path is relative to ``base_dir`` (the config file's folder)."""
    if isinstance(value, dict):
        if set(value) != {T.CUSTOM_MERGE}:
            raise ConfigError("%s: a mapping here is {custom_merge: \"package.module:function\"} or {custom_merge: "
                              "{wasm: path}} (got keys %s)" % (where, ", ".join(sorted(map(str, value)))))
        spec = value[T.CUSTOM_MERGE]
        if isinstance(spec, dict):
            if set(spec) != {"wasm"} or not isinstance(spec["wasm"], str) or not spec["wasm"]:
                raise ConfigError("%s: a WebAssembly merge is {custom_merge: {wasm: path}} (got %r)" % (where, spec))
            import os

            from .wasmmerge import WasmMerge

            path = spec["wasm"]
            if base_dir is not None and not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            return T.CUSTOM_MERGE, WasmMerge(path, where + ".custom_merge.wasm"), {"wasm": spec["wasm"]}
        return T.CUSTOM_MERGE, load_merge(spec, where), spec
    if value == T.CUSTOM_MERGE:
        raise ConfigError("%s: custom_merge names its function: conflict_resolution: {custom_merge: "
                          "\"package.module:function\"} or {custom_merge: {wasm: path}}" % where)
    if value not in T.STRATEGIES:
        raise ConfigError("%s: must be one of %s, or {custom_merge: ...} (got %r)"
                          % (where, ", ".join(s for s in T.STRATEGIES if s != T.CUSTOM_MERGE), value))
    return value, None, None


def parse_table_settings(settings, where, default_strategy=None, base_dir=None):
    """A TableSettings when ``settings`` (a topic's mapping) says ``kind: table``, else
    None; ConfigError (one line naming ``where`` and the key) when the table keys are
    wrong, or given to a stream topic. ``default_strategy`` is a ``conflict_resolution``
    value to use when the topic gives none."""
    kind = settings.get("kind", KIND_STREAM)
    if kind not in KINDS:
        raise ConfigError("%s.kind: must be one of %s (got %r)" % (where, ", ".join(KINDS), kind))
    if kind != KIND_TABLE:
        for k in ("type", "conflict_resolution"):
            if k in settings:
                raise ConfigError("%s.%s: only a table topic has it (add kind: table, or remove the key)" % (where, k))
        return None
    type_ = settings.get("type", T.REGISTER)
    if type_ not in T.KINDS:
        raise ConfigError("%s.type: must be one of %s (got %r)" % (where, ", ".join(T.KINDS), type_))
    value = settings.get("conflict_resolution")
    if value is None and type_ == T.REGISTER:
        value = default_strategy  # already checked where it was given
    if value is None:
        value = T.LAST_WRITE_WINS
    strategy, merge, name = parse_strategy(value, "%s.conflict_resolution" % where, base_dir)
    if type_ != T.REGISTER and "conflict_resolution" in settings and strategy != T.LAST_WRITE_WINS:
        raise ConfigError("%s.conflict_resolution: a %s table merges by its type (tables.md, CRDT value types); "
                          "only a register uses a strategy" % (where, type_))
    return TableSettings(type_, strategy, merge, name)


def _loads(value):
    """A record value decoded with cbor2 (C-accelerated: a replica decodes every record
    it is fed); TableError, not cbor2's errors, when it is not one CBOR item."""
    fp = io.BytesIO(value)
    try:
        item = cbor2.load(fp)
    except Exception as e:  # noqa: BLE001 - remote bytes: whatever cbor2 raises is "malformed"
        raise T.TableError("the value is not CBOR: %s" % (str(e).splitlines() or ["?"])[0]) from None
    if fp.tell() != len(value):
        raise T.TableError("%d bytes after the CBOR item" % (len(value) - fp.tell()))
    return item


def _dumps(obj):
    """A record value as CBOR through cbor2 (C: a busy gateway forms many writes), the
    same bytes as the core's codec; CodecError, like the core's, for what the core could
    not carry or read back (invalid text, nesting deeper than it decodes)."""
    if not _depth_ok(obj, codec.MAX_DEPTH):
        raise codec.CodecError("CBOR nesting deeper than %d levels" % codec.MAX_DEPTH)
    return fastcbor.dumps(obj)


def _depth_ok(obj, room):
    if isinstance(obj, (list, tuple)):
        if room <= 0:
            return False
        for x in obj:
            if isinstance(x, (list, tuple, dict)) and not _depth_ok(x, room - 1):
                return False
    elif isinstance(obj, dict):
        if room <= 0:
            return False
        for k, x in obj.items():
            if (isinstance(x, (list, tuple, dict)) and not _depth_ok(x, room - 1)) or \
                    (isinstance(k, (list, tuple, dict)) and not _depth_ok(k, room - 1)):
                return False
    return True


def writer_id(origin, incarnation_hex=LEGACY_INCARNATION):
    """The writer id of a record's origin and log incarnation (tables.md: a wiped node is
    a new writer): the origin for the legacy incarnation, else ``origin~incarnation``."""
    if not incarnation_hex or incarnation_hex == LEGACY_INCARNATION:
        return origin
    return "%s~%s" % (origin, incarnation_hex)


def key_text(key):
    """A record key (bytes) as the table key: text when UTF-8, else the bytes."""
    if key is None:
        return None
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(key)


def _jsonable(v):
    from .jsonrecords import jsonable

    return jsonable(v)


def _dot(s):
    return [s[0], s[1]]


def _vv_json(vv):
    return {vv[i]: vv[i + 1] for i in range(0, len(vv), 2)}


def relay_value(writer, seq, ts, value):
    """The record value relaying an edge's write (its dot, ts and record value bytes)
    in a topic's cloud stream: ``[1, 4, writer, seq, ts, value]``."""
    return cbor2.dumps([T.FORMAT_VERSION, OP_RELAY, writer, seq, ts, bytes(value)])


def _head_bytes(n):
    # the bytes of a CBOR head carrying n (RFC 8949 3.1: the shortest form)
    return 1 if n < 24 else 2 if n < 256 else 3 if n < 65536 else 5 if n < 1 << 32 else 9


def relay_record_bytes(key, writer, seq, ts, value_len):
    """The size of the record relaying a write -- key plus ``relay_value`` -- counted as
    the publish API counts a record against ``max_record_bytes``, without building it."""
    w = len(writer.encode("utf-8"))
    return (0 if key is None else len(key)) + 3 + _head_bytes(w) + w + _head_bytes(seq) + _head_bytes(ts) + \
        _head_bytes(value_len) + value_len


def read_relay(data):
    """(writer, seq, ts, value bytes) of a decoded relay item, or None when ``data`` is
    not one; TableError when it is one and malformed."""
    if type(data) is not list or len(data) < 2 or data[0] != T.FORMAT_VERSION or data[1] != OP_RELAY:
        return None
    if len(data) != 6:
        raise T.TableError("a relayed write is [1, 4, writer, seq, ts, value]")
    writer, seq, ts, value = data[2:]
    if type(writer) is not str or not writer or type(seq) is not int or seq < 1 or type(ts) is not int or ts < 0 \
            or type(value) is not bytes:
        raise T.TableError("a relayed write's writer, seq, ts, value are text, int >= 1, int >= 0, bytes")
    return writer, seq, ts, value


CAPABILITY = "tables"  # the HELLO capability carrying an edge's table reports (tables.md, "Tombstones")


def read_reports(caps):
    """{topic: (held, head, settings)} from a HELLO's capabilities (tables.md, "Reports
    at the gateway"): ``settings`` is the edge's ``[type, strategy]`` for the topic, or
    None if it sent none. What is not a well-formed report is left out (a report only
    ever allows more collection, so a doubtful one is none)."""
    raw = caps.get(CAPABILITY) if isinstance(caps, dict) else None
    out = {}
    if not isinstance(raw, dict):
        return out
    for topic, v in raw.items():
        if isinstance(topic, str) and isinstance(v, (list, tuple)) and len(v) >= 2 and \
                all(type(x) is int and 0 <= x < 1 << 64 for x in v[:2]):
            settings = None
            if len(v) >= 4 and isinstance(v[2], str) and isinstance(v[3], str):
                settings = (v[2], v[3])
            out[topic] = (v[0], v[1], settings)
    return out


def report_value(held, head, settings):
    """An edge's report of one table topic: [held, head, type, strategy]."""
    return [held, head, settings.type, settings.strategy]


def stable_vector(marks):
    """The stable vector (tables.md, "Stable vector"): ``marks`` is one {writer: seq}
    per replica (this one included), each what that replica has applied; the result
    is the flat vv of ``min over replicas``, writers at 0 left out. No replicas: ()."""
    if not marks:
        return ()
    out = []
    for w in sorted(marks[0]):
        v = min(m.get(w, 0) for m in marks)
        if v > 0:
            out += [w, v]
    return tuple(out)


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def _freeze(v):
    # CBOR gives arrays back as lists; an identity holds them as the core does: tuples
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


class ConflictLog:
    """A table topic's conflict rows on disk (tables.md, "The conflict log file"), so a
    restart lists the conflicts met before it, not only those its replay meets again.

    ``open`` reads the rows (``rows``: [(identity, row)], first met first) and cuts a
    torn or corrupt tail; ``append`` adds one row, written and fsynced before it returns
    (conflicts are rare: one fsync each). When the file holds twice ``max_rows`` it is
    rewritten with the rows kept (tmp, fsync, rename, fsync of the folder)."""

    MAGIC = b"ELCL"
    VERSION = 1
    HEADER = struct.Struct("<4sHHI")  # magic, version, flags, reserved; then CRC32 of those 12 bytes
    MAX_ENTRY_BYTES = 1 << 20

    def __init__(self, path, max_rows=MAX_CONFLICT_ROWS):
        self.path = path
        self.max_rows = max_rows
        self.rows = []
        self.entries = 0
        self.cut_bytes = 0  # a torn or corrupt tail cut at open
        self.rewrite_errors = 0
        self._rewrite_at = 0  # after a failed rewrite: the entries at which to try again
        self._end = None  # the end of the last whole entry: where the next one goes
        self._f = None
        self._open()

    def _header(self):
        h = self.HEADER.pack(self.MAGIC, self.VERSION, 0, 0)
        return h + struct.pack("<I", zlib.crc32(h))

    @staticmethod
    def _entry(ident, row):
        key, field, ctype, dots = ident
        payload = cbor2.dumps([key, field, ctype, [x for d in dots for x in d], row])
        head = struct.pack("<I", len(payload))
        return head + payload + struct.pack("<I", zlib.crc32(head + payload))

    def _open(self):
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(self.path + ".tmp"):
            os.remove(self.path + ".tmp")  # the remains of a cut rewrite: the file itself is whole
        if not os.path.exists(self.path):
            self._rewrite([])
        with open(self.path, "rb") as f:
            data = f.read()
        h = self._header()
        if len(data) < 16 or data[:16] != h:
            raise ConfigError("%s: not a conflict log of version %d (header %s); move it away to start a new one"
                              % (self.path, self.VERSION, data[:16].hex()))
        pos = 16
        rows = {}
        while pos + 8 <= len(data):
            n = struct.unpack_from("<I", data, pos)[0]
            end = pos + 4 + n + 4
            if n == 0 or n > self.MAX_ENTRY_BYTES or end > len(data):
                break
            if struct.unpack_from("<I", data, end - 4)[0] != zlib.crc32(data[pos:end - 4]):
                break
            try:
                item = cbor2.loads(data[pos + 4:end - 4])
                key, field, ctype, flat, row = item
                ident = (_freeze(key), _freeze(field), ctype,
                         tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2)))
                hash(ident)
            except Exception:  # noqa: BLE001 - a checked entry that is not a row: cut like a torn one
                break
            rows.setdefault(ident, row)
            self.entries += 1
            pos = end
        self.rows = list(rows.items())[-self.max_rows:]
        self._f = open(self.path, "r+b")
        if pos < len(data):
            self.cut_bytes = len(data) - pos
            self._f.truncate(pos)
            os.fsync(self._f.fileno())
        self._f.seek(pos)
        self._end = pos

    def _rewrite(self, rows):
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self._header() + b"".join(self._entry(i, r) for i, r in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, ident, row, kept=None):
        """Write one row durably; ``kept()`` (the rows kept now, asked for when the file
        is to be rewritten) bounds the file. Raises OSError if the row could not be
        written: what a failed write left (a torn entry, bytes in a buffer) is cut when
        the file is reopened, at the next append, so the rows after it are read back.
        A failed rewrite leaves the file as it was (whole, only longer): it is counted
        in ``rewrite_errors``, logged, and tried again ``max_rows`` appends later."""
        entry = self._entry(ident, row)
        if self._f is None:
            self._reopen()
        try:
            self._f.write(entry)
            self._f.flush()
            os.fsync(self._f.fileno())
        except BaseException:
            self._drop()
            raise
        self._end += len(entry)
        self.entries += 1
        if kept is not None and self.entries >= max(2 * self.max_rows, self._rewrite_at):
            kept = kept()[-self.max_rows:]
            self._drop()
            self._end = None  # the file is whole either way: the old one, or the new one renamed
            try:
                self._rewrite(kept)
            except OSError as e:
                self.rewrite_errors += 1
                self._rewrite_at = self.entries + self.max_rows
                try:
                    os.remove(self.path + ".tmp")
                except OSError:
                    pass
                log.warning("conflict log %s: cannot rewrite it: %s (it keeps growing; tried again %d rows on)",
                            self.path, e, self.max_rows)
                return
            self.entries = len(kept)
            self._rewrite_at = 0

    def _reopen(self):
        f = open(self.path, "r+b")
        try:
            if self._end is None:
                f.seek(0, 2)
                self._end = f.tell()
            else:
                f.truncate(self._end)  # what a failed append left after the last whole entry
                f.seek(self._end)
        except BaseException:
            f.close()
            raise
        self._f = f

    def _drop(self):
        """Close the file after a failure; the next append reopens it (``_reopen``)."""
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()  # flushes what a failed write buffered: it may fail again, and is cut anyway
            except (OSError, ValueError):
                pass

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None


class WriteError(Exception):
    """A local write the table cannot take (400/409 at the HTTP API): one line."""

    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status


class Replica:
    """One node's replica of one table topic, with its conflict log."""

    def __init__(self, name, settings, conflict_log=None, max_relay_bytes=None):
        self.name = name
        # at the gateway, for a topic it relays: the largest relay record (key + value) the
        # topic's pullers take, its max_record_bytes. An edge write whose relay would be
        # larger is refused here (counted in too_large, kept stored, never applied nor
        # relayed): applied here only, the cloud would show what no edge could ever get.
        self.max_relay_bytes = max_relay_bytes
        self.too_large = 0
        self.last_too_large = None
        self.settings = settings
        self.table = T.Table(settings.type, settings.strategy, settings.merge, on_conflict=self._on_conflict)
        self.lock = None  # an asyncio.Lock serialising local writes, made in the loop (write_lock)
        self.applied = 0  # writes that changed the state
        self.collected = 0  # tombstones collected at causal stability (collect)
        self.ignored = 0  # duplicates and superseded writes
        self.malformed = 0  # records whose value is not a table write (kept stored, not applied)
        self.last_malformed = None
        self.rows = {}  # conflict identity -> row (insertion order: first met first)
        self._applying = None  # (writer, seq, ts) of the write being applied
        self.conflict_log = conflict_log  # a ConflictLog: the rows survive a restart
        self.conflict_log_errors = 0
        self._backstop_logged = False
        if conflict_log is not None:
            self.rows.update(conflict_log.rows)

    def close(self):
        if self.conflict_log is not None:
            self.conflict_log.close()

    def write_lock(self):
        if self.lock is None:
            self.lock = asyncio.Lock()
        return self.lock

    # ------------------------------------------------------------------ feeding

    def apply_record(self, writer, seq, ts, key, value, relayed=False):
        """Apply one stored record of the topic (key bytes, value CBOR bytes). Returns
        True if it changed the state; a malformed record is counted, not raised. A relay
        (from the cloud) is applied as the write it carries."""
        if key is None and not value:
            # a seq a compacted DATA left out (edgeline.inbox.PLACEHOLDER): nothing to apply
            self.ignored += 1
            return False
        k = key_text(key)
        try:
            if k is None:
                raise T.TableError("a table record needs a key")
            data = _loads(value)
            relay = read_relay(data)
            if relay is not None:
                if relayed or writer != T.CLOUD:
                    raise T.TableError("a relayed write comes from the cloud, and holds no relay")
                return self.apply_record(relay[0], relay[1], relay[2], key, relay[3], True)
            ops = T.read_value(data)
            self._check_ops(ops)
            if not relayed and writer != T.CLOUD and self._too_large(key, writer, seq, ts, value):
                return False
        except EdgelineError as e:
            self.malformed += 1
            self.last_malformed = "%s seq %d: %s" % (writer, seq, e)
            return False
        except Exception as e:  # noqa: BLE001 - remote bytes: whatever a check raises is "malformed"
            self.malformed += 1
            self.last_malformed = "%s seq %d: %s: %s" % (writer, seq, type(e).__name__, _first_line(e))
            return False
        self._applying = (writer, seq, ts)
        changed = False
        try:
            for field, op, ctx, v in ops:
                if op == T.OP_COUNT:
                    ch = self.table.apply(k, writer, seq, ts, ctx, v)
                else:
                    ch = self.table.apply(k, writer, seq, ts, ctx, v, field)
                changed = changed or ch
        except T.TableError as e:
            self.malformed += 1
            self.last_malformed = "%s seq %d: %s" % (writer, seq, e)
            return False
        except Exception as e:  # noqa: BLE001 - a backstop: a remote record never stops a replica
            # What the checks above let through and the table still cannot take (a bug
            # here, not the writer's): counted like a malformed record, logged once, so
            # the gateway keeps answering and starting, and an agent keeps its replica.
            self.malformed += 1
            self.last_malformed = "%s seq %d: %s: %s" % (writer, seq, type(e).__name__, _first_line(e))
            if not self._backstop_logged:
                self._backstop_logged = True
                log.error("table topic %s: record %s seq %d (key %r) could not be applied: %s (counted malformed; "
                          "further ones are counted only)", self.name, writer, seq, k, self.last_malformed,
                          exc_info=True)
            return False
        finally:
            self._applying = None
        if changed:
            self.applied += 1
        else:
            self.ignored += 1
        return changed

    def takes(self, key, value, writer=None, seq=1, ts=0):
        """True when a record (key bytes, value bytes) is a table write this topic takes
        (not a relay, and with ``writer``, its relay within ``max_relay_bytes``): what the
        gateway relays."""
        try:
            data = _loads(value)
            if key is None or read_relay(data) is not None:
                return False
            self._check_ops(T.read_value(data))
        except Exception:  # noqa: BLE001 - EdgelineError, or anything a check of remote bytes raises
            return False
        return writer is None or self.max_relay_bytes is None or \
            relay_record_bytes(key, writer, seq, ts, len(value)) <= self.max_relay_bytes

    def _too_large(self, key, writer, seq, ts, value):
        if self.max_relay_bytes is None:
            return False
        n = relay_record_bytes(key, writer, seq, ts, len(value))
        if n <= self.max_relay_bytes:
            return False
        self.too_large += 1
        self.last_too_large = ("%s seq %d: its relay would be %d bytes, over the topic's max_record_bytes %d (kept "
                               "stored, not applied nor relayed)" % (writer, seq, n, self.max_relay_bytes))
        return True

    def _check_ops(self, ops):
        kind = self.settings.type
        for field, op, _ctx, _v in ops:
            if kind == T.COUNTER:
                if op != T.OP_COUNT:
                    raise T.TableError("a counter table takes counter writes (op 2) only")
            elif op == T.OP_COUNT:
                raise T.TableError("a %s table takes no counter writes" % kind)
            elif (field is None) != (kind == T.REGISTER):
                raise T.TableError("a %s write %s fields" % (kind, "has no" if field is None else "needs"))
            elif field is not None and not T.field_ok(field):  # read_value checks it too: a map key, a list
                raise T.TableError("an element or field is text, an integer or bytes (got a %s)"
                                   % type(field).__name__)

    def _on_conflict(self, key, field, ctype, sibs):
        # called by the core in the middle of applying a write it has already taken: what
        # listing the conflict raises must not reach it (the record would count malformed)
        try:
            self._list_conflict(key, field, ctype, sibs)
        except Exception as e:  # noqa: BLE001 - counted and logged once, like a conflict log failure
            self.conflict_log_errors += 1
            if self.conflict_log_errors == 1:
                log.warning("table topic %s: cannot list a conflict on key %r: %s: %s", self.name, key,
                            type(e).__name__, _first_line(e))

    def _list_conflict(self, key, field, ctype, sibs):
        ident = (key, field, ctype, tuple(sorted((s[0], s[1]) for s in sibs)))
        if ident in self.rows:
            return
        if len(self.rows) >= MAX_CONFLICT_ROWS:
            del self.rows[next(iter(self.rows))]
        w = self._applying
        row = self.rows[ident] = {"key": _jsonable(key), "field": _jsonable(field), "type": ctype,
                                  "versions": [self._version_json(s) for s in T.ordered(sibs)],
                                  "found_by": None if w is None else [w[0], w[1]]}
        if self.conflict_log is not None:
            try:
                self.conflict_log.append(ident, row, kept=lambda: list(self.rows.items()))
            except Exception as e:  # noqa: BLE001 - the row stays listed in memory; the write it came
                # with is stored and applied: a conflict log that cannot be written never fails it
                self.conflict_log_errors += 1
                if self.conflict_log_errors == 1:
                    log.warning("table topic %s: cannot write its conflict log %s: %s (the conflict is listed "
                                "until a restart)", self.name, self.conflict_log.path, e)

    # ------------------------------------------------------------------ local writes

    def form_write(self, key, writer, body, delete=False, pending=None):
        """The CBOR record value of a local write to ``key`` by ``writer`` (this node),
        its context from this replica (C1). ``pending`` ({key: total}) carries a
        counter's running total across writes formed before any is applied (one
        request's records). ``body`` by type: register -- the value;
        counter -- {"add": n}; set -- {"add": [...], "remove": [...]}; map -- {"put":
        {field: value}, "delete": [field, ...]}. ``delete`` deletes the key (a register's
        tombstone; every element or field of a set or map). WriteError if it cannot."""
        t = self.table
        kind = self.settings.type
        if kind == T.REGISTER:
            if delete:
                return _dumps(T.write_value(T.OP_DELETE, t.context(key)))
            if body is None:
                raise WriteError(400, "a table value cannot be null (null marks a delete, tables.md): DELETE the key")
            return _dumps(T.write_value(T.OP_PUT, t.context(key), body))
        if kind == T.COUNTER:
            if delete:
                raise WriteError(409, "a counter has no delete in table format 1 (tables.md)")
            if not isinstance(body, dict) or set(body) != {"add"} or type(body["add"]) is not int:
                raise WriteError(400, "a counter write is {\"add\": <integer>}")
            total = (t.count_total(key, writer) if pending is None or key not in pending else pending[key]) \
                + body["add"]
            if pending is not None:
                pending[key] = total
            return _dumps(T.write_value(T.OP_COUNT, (), total))
        ops = []
        if delete:
            for f in t.fields(key):
                ops.append((f, T.OP_DELETE, t.context(key, f), None))
            if not ops:
                raise WriteError(404, "key %r holds nothing to delete" % (key,))
            return _dumps(T.field_value(ops))
        if kind == T.SET:
            names = ("add", "remove")
        else:
            names = ("put", "delete")
        if not isinstance(body, dict) or not body or set(body) - set(names):
            raise WriteError(400, "a %s write is {%s}" % (kind, ", ".join('"%s": ...' % n for n in names)))
        if kind == T.SET:
            adds = body.get("add", [])
            removes = body.get("remove", [])
            if not isinstance(adds, list) or not isinstance(removes, list):
                raise WriteError(400, "a set write's add and remove are lists of elements")
            items = [(e, T.OP_PUT, True) for e in adds] + [(e, T.OP_DELETE, None) for e in removes]
        else:
            puts = body.get("put", {})
            dels = body.get("delete", [])
            if not isinstance(puts, dict) or not isinstance(dels, list):
                raise WriteError(400, "a map write's put is an object of fields, its delete a list of fields")
            if any(v is None for v in puts.values()):
                raise WriteError(400, "a map field's value cannot be null (null marks a delete): list it in \"delete\"")
            items = [(f, T.OP_PUT, v) for f, v in puts.items()] + [(f, T.OP_DELETE, None) for f in dels]
        seen = set()
        for f, op, v in items:
            if not isinstance(f, (str, int)) or isinstance(f, bool):
                raise WriteError(400, "an element or field is text or an integer (got %r)" % (f,))
            if f in seen:
                raise WriteError(400, "element or field %r twice in one write" % (f,))
            seen.add(f)
            ops.append((f, op, t.context(key, f), v))
        if not ops:
            raise WriteError(400, "the write changes nothing")
        return _dumps(T.field_value(ops))

    # ------------------------------------------------------------------ reads

    def _visible_json(self, v):
        if isinstance(v, T.Siblings):
            return {"siblings": [_jsonable(x) for x in v.values]}
        return {"value": _jsonable(v)}

    @staticmethod
    def _version_json(s):
        out = {"writer": s[0], "seq": s[1], "ts": s[2]}
        if s[3] is T.TOMBSTONE:
            out["deleted"] = True
        else:
            out["value"] = _jsonable(s[3])
        return out

    def collect(self, stable):
        """Drop the tombstones whose whole vv is at or below ``stable`` (causally stable:
        ``stable_vector``); their vvs join the table's floor, so a replay of a collected
        write is ignored and the next write to the key supersedes what replicas that
        have not collected still hold. Returns how many went."""
        n = self.table.collect(stable) if stable else 0
        self.collected += n
        return n

    def describe(self):
        d = {"topic": self.name, "applied": self.applied, "ignored": self.ignored, "malformed": self.malformed,
             "collected": self.collected,
             "conflicts": dict(self.table.conflicts)}
        d.update(self.settings.describe())
        if self.last_malformed:
            d["last_malformed"] = self.last_malformed
        if self.conflict_log_errors:
            d["conflict_log_errors"] = self.conflict_log_errors
        if self.too_large:
            d["too_large"] = self.too_large
            d["last_too_large"] = self.last_too_large
        return d

    def state_json(self):
        """The visible state: every key that shows something, sorted."""
        d = self.describe()
        d["keys"] = [dict({"key": _jsonable(k)}, **self._visible_json(v)) for k, v in self.table.items()]
        return d

    def key_json(self, key):
        """One key: ``present``, its visible value (or ``siblings``), its versions (the
        raw siblings, per field for a set or map) and version vector."""
        t = self.table
        v = t.view(key)
        out = {"topic": self.name, "key": _jsonable(key), "present": v is not T.MISSING}
        if v is not T.MISSING:
            out.update(self._visible_json(v))
        kind = self.settings.type
        if kind == T.REGISTER:
            sibs = t.siblings(key)
            out["versions"] = [self._version_json(s) for s in sibs]
            out["version"] = _vv_json(t.context(key)) if sibs else {}
            st = t.view(key)
            if len(sibs) > 1:
                out["conflict"] = T.conflict_type(sibs)
                out["resolution"] = self.resolution(sibs, st, key)
                if out["resolution"] == "merge_failed":
                    out["merge_error"] = self.merge_failure(key, sibs)
        elif kind == T.COUNTER:
            st = t._shard(key).get(key, ())
            out["totals"] = {st[i]: st[i + 2] for i in range(0, len(st), 3)}
            out["version"] = {st[i]: st[i + 1] for i in range(0, len(st), 3)}
        else:
            out["fields"] = [{"field": _jsonable(f), "versions": [self._version_json(s) for s in t.siblings(key, f)],
                              "version": _vv_json(t.context(key, f))} for f in t.fields(key)]
        return out

    def resolution(self, sibs, visible, key=None):
        """How the strategy resolves siblings as they stand: use_cloud / use_edge (the
        chosen version's writer), drop (the chosen version is a delete), both
        (keep_both, or a custom merge that failed), merged (a custom merge)."""
        strategy = self.settings.strategy if self.settings.type == T.REGISTER else T.LAST_WRITE_WINS
        if strategy == T.CUSTOM_MERGE and self.merge_failure(key, sibs) is not None:
            return "merge_failed"
        if isinstance(visible, T.Siblings):
            return "both"
        if strategy == T.CUSTOM_MERGE:
            return "merged"
        if strategy == T.KEEP_BOTH:
            return "both"
        best = T.chosen(strategy, sibs)
        if best[3] is T.TOMBSTONE:
            return "drop"
        return "use_cloud" if best[0] == T.CLOUD else "use_edge"

    def merge_failure(self, key, sibs):
        """Why the custom merge failed for these siblings (a WebAssembly merge keeps its
        failures per sibling set), or None."""
        failures = getattr(self.settings.merge, "failures", None)
        if not failures or not sibs:
            return None
        return failures.get((key,) + tuple((s[0], s[1]) for s in T.ordered(sibs)), None)

    def conflicts_json(self):
        """Each conflict met, once, first met first: type, versions, the write that made
        the siblings meet, and the resolution as it stands now (or ``superseded`` when a
        later write has replaced the siblings)."""
        out = []
        for ident, row in self.rows.items():
            key, field, ctype, dots = ident
            r = dict(row)
            sibs = self.table.siblings(key, field) if self.settings.type != T.COUNTER else []
            now = set((s[0], s[1]) for s in sibs)
            if ctype == T.ORDERING:
                r["resolution"] = "causal"  # the write that had seen the other wins (T2)
            elif not set(dots) <= now:
                r["resolution"] = "superseded"  # a write that had seen them replaced them
            else:
                vis = T.resolve(self.settings.strategy if self.settings.type == T.REGISTER else T.LAST_WRITE_WINS,
                                [s for s in sibs if (s[0], s[1]) in set(dots)], self.settings.merge, key)
                r["resolution"] = self.resolution([s for s in sibs if (s[0], s[1]) in set(dots)], vis, key)
                if r["resolution"] == "merge_failed":
                    r["merge_error"] = self.merge_failure(key, [s for s in sibs if (s[0], s[1]) in set(dots)])
                if vis is not T.MISSING:
                    r.update(self._visible_json(vis))
            out.append(r)
        resolutions = {}
        for r in out:
            resolutions[r["resolution"]] = resolutions.get(r["resolution"], 0) + 1
        return {"topic": self.name, "counts": dict(self.table.conflicts), "resolutions": resolutions,
                "conflicts": out}


# ---------------------------------------------------------------------- HTTP (aiohttp)

MAX_WRITE_BODY_BYTES = 1 << 20


def parse_body(body):
    """The JSON document of a write's body; WriteError(400) if it is not JSON, or has
    a number JSON cannot give back."""
    from .jsonrecords import _loads, _not_finite_in, _not_finite_message

    if not body:
        raise WriteError(400, "the body is empty: give the value as JSON")
    try:
        doc, found = _loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WriteError(400, "the body is not valid JSON: %s" % e) from None
    except RecursionError:
        raise WriteError(400, "the body's JSON is nested too deep") from None
    if found:
        raise WriteError(400, _not_finite_message(_not_finite_in(doc)))
    return doc


class TableRoutes:
    """The table API both the gateway and the agent serve (docs/gateway.md, docs/agent.md):

    * ``GET /v1/tables`` -- the table topics and their counters;
    * ``GET /v1/tables/{topic}`` -- the visible state (``?key=K`` is one key, for a key
      named ``conflicts``);
    * ``GET /v1/tables/{topic}/conflicts`` -- the conflict log;
    * ``GET /v1/tables/{topic}/{key}`` -- one key: value (or siblings), versions, version;
    * ``PUT /v1/tables/{topic}/{key}`` (JSON body, by type as ``Replica.form_write``) and
      ``DELETE /v1/tables/{topic}/{key}``: a write by this node, answered once durable
      with its seq.

    ``replicas()`` gives {topic: Replica}; ``write(topic, key, body, delete)`` is the
    node's coroutine storing one write (returns its JSON answer); ``authorize(request)``
    may raise to refuse a write (the gateway's publish token).
    """

    def __init__(self, replicas, write, authorize=None):
        self.replicas = replicas
        self.write = write
        self.authorize = authorize

    def attach(self, app):
        app.router.add_get("/v1/tables", self.handle_list)
        app.router.add_get("/v1/tables/{topic}", self.handle_state)
        app.router.add_get("/v1/tables/{topic}/conflicts", self.handle_conflicts)
        app.router.add_get("/v1/tables/{topic}/{key:.+}", self.handle_key)
        app.router.add_put("/v1/tables/{topic}/{key:.+}", self.handle_put)
        app.router.add_delete("/v1/tables/{topic}/{key:.+}", self.handle_delete)

    @staticmethod
    def _json(doc, status=200):
        from aiohttp import web

        return web.json_response(doc, status=status)

    def _replica(self, request):
        name = request.match_info["topic"]
        rep = self.replicas().get(name)
        if rep is None:
            raise WriteError(404, "%r is not a table topic here (known: %s)" % (
                name, ", ".join(sorted(self.replicas())) or "none"))
        return rep

    async def _answer(self, fn):
        from aiohttp import web

        from .jsonrecords import RequestError

        try:
            return self._json(await fn())
        except WriteError as e:
            return self._json({"error": str(e)}, e.status)
        except RequestError as e:
            return web.json_response({"error": str(e)}, status=e.status, headers=e.headers)

    async def handle_list(self, _request):
        return self._json({"tables": [r.describe() for _, r in sorted(self.replicas().items())]})

    async def handle_state(self, request):
        async def fn():
            rep = self._replica(request)
            if "key" in request.query:
                return rep.key_json(request.query["key"])
            return rep.state_json()
        return await self._answer(fn)

    async def handle_conflicts(self, request):
        async def fn():
            return self._replica(request).conflicts_json()
        return await self._answer(fn)

    async def handle_key(self, request):
        async def fn():
            return self._replica(request).key_json(request.match_info["key"])
        return await self._answer(fn)

    async def handle_put(self, request):
        return await self._write(request, False)

    async def handle_delete(self, request):
        return await self._write(request, True)

    async def _write(self, request, delete):
        async def fn():
            if self.authorize is not None:
                self.authorize(request)
            rep = self._replica(request)
            body = None
            if not delete:
                if request.content_length is not None and request.content_length > MAX_WRITE_BODY_BYTES:
                    raise WriteError(413, "the body is over %d bytes" % MAX_WRITE_BODY_BYTES)
                body = parse_body(await request.read())
            return await self.write(rep.name, request.match_info["key"], body, delete)
        return await self._answer(fn)
