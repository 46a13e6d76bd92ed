"""A table topic's custom merge in WebAssembly, run with the ``wasmtime`` package.

Failure modes first
-------------------
* The module traps, runs out of fuel (10,000,000 per call: an endless loop), asks for
  more memory than 16 pages (1 MiB), returns an output that is not the ABI's CBOR, or
  the input is over 1 MiB: the call raises ``MergeFailed`` with the reason; the core's
  ``resolve`` then shows the siblings as ``keep_both`` would, and the replica reports
  ``merge_failed`` with that reason. Nothing of it reaches the gateway's or the agent's
  loop as anything but that one exception.
* The module cannot be loaded (not WebAssembly, imports something -- no WASI --, no
  ``edgeline_abi_version`` returning 1, memory over the limit at start) or the wasmtime
  package is missing: ``ConfigError``, one line, when the config is read.

Theory of operation
-------------------
ABI version 1 of docs/spec/tables.md ("custom_merge"): the module exports ``memory``,
``edgeline_abi_version() -> i32`` (1), ``edgeline_alloc(len) -> ptr`` and
``edgeline_merge(ptr, len) -> i64``. A call writes one CBOR item ``{"key": key,
"versions": [[writer, seq, ts, deleted, value], ...]}`` (oldest first) at the pointer
``edgeline_alloc`` gives, calls ``edgeline_merge`` and reads ``(out_ptr << 32) |
out_len``: ``[0, value]`` is the merged value, ``[1]`` a delete. One instance per topic
is reused (a module keeps what it allocated: one that leaks reaches the memory limit
and fails from then on); the merge is deterministic, so results are cached per sibling
set (their dots).
"""
from edgeline import codec
from edgeline import table as T
from edgeline.errors import ConfigError, EdgelineError

ABI_VERSION = 1
FUEL_PER_CALL = 10000000
MAX_MEMORY_BYTES = 16 * 65536
MAX_INPUT_BYTES = 1 << 20
MAX_CACHE = 4096


class MergeFailed(Exception):
    """One call of the module failed: the reason, one line."""


class WasmMerge:
    """``merge(key, versions)`` for ``edgeline.table.Table`` from a module file."""

    def __init__(self, path, where="custom_merge"):
        try:
            import wasmtime
        except ImportError:
            raise ConfigError("%s: a WebAssembly merge needs the wasmtime package (pip install "
                              "'edgeline[wasm]')" % where) from None
        self.path = path
        self._wasmtime = wasmtime
        try:
            config = wasmtime.Config()
            config.consume_fuel = True
            engine = wasmtime.Engine(config)
            module = wasmtime.Module.from_file(engine, path)
            if module.imports:
                raise ConfigError("%s: %s imports %s: a merge module may import nothing (no WASI)" % (
                    where, path, ", ".join("%s.%s" % (i.module, i.name) for i in module.imports)))
            self.store = wasmtime.Store(engine)
            self.store.set_limits(memory_size=MAX_MEMORY_BYTES)
            self.store.set_fuel(FUEL_PER_CALL)
            inst = wasmtime.Instance(self.store, module, [])
            ex = inst.exports(self.store)
            missing = [n for n in ("memory", "edgeline_abi_version", "edgeline_alloc", "edgeline_merge")
                       if n not in ex]
            if missing:
                raise ConfigError("%s: %s does not export %s (tables.md, ABI version 1)" % (
                    where, path, ", ".join(missing)))
            self.memory = ex["memory"]
            self.alloc = ex["edgeline_alloc"]
            self.merge = ex["edgeline_merge"]
            version = ex["edgeline_abi_version"](self.store)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - wasmtime's errors, a missing file: one line
            raise ConfigError("%s: %s cannot be loaded: %s" % (where, path, _line(e))) from None
        if version != ABI_VERSION:
            raise ConfigError("%s: %s speaks ABI version %r; edgeline runs version %d" % (where, path, version,
                                                                                          ABI_VERSION))
        self.cache = {}  # sibling dots -> value or TOMBSTONE
        self.failures = {}  # sibling dots -> reason (each failing set once)
        self.calls = 0

    def __call__(self, key, versions):
        sig = (key,) + tuple((v[0], v[1]) for v in versions)
        if sig in self.cache:
            return self.cache[sig]
        if sig in self.failures:
            raise MergeFailed(self.failures[sig])
        try:
            out = self._call(key, versions)
        except MergeFailed as e:
            if len(self.failures) >= MAX_CACHE:
                self.failures.clear()
            self.failures[sig] = str(e)
            raise
        if len(self.cache) >= MAX_CACHE:
            self.cache.clear()
        self.cache[sig] = out
        return out

    def _call(self, key, versions):
        wt = self._wasmtime
        self.calls += 1
        data = codec.dumps({"key": key, "versions": [
            [w, s, ts, v is T.TOMBSTONE, None if v is T.TOMBSTONE else v] for w, s, ts, v in versions]})
        if len(data) > MAX_INPUT_BYTES:
            raise MergeFailed("the input is %d bytes, over %d" % (len(data), MAX_INPUT_BYTES))
        st = self.store
        try:
            st.set_fuel(FUEL_PER_CALL)
            ptr = self.alloc(st, len(data))
            self.memory.write(st, data, ptr)
            r = self.merge(st, ptr, len(data)) & 0xFFFFFFFFFFFFFFFF
            out_ptr, out_len = r >> 32, r & 0xFFFFFFFF
            if out_ptr + out_len > self.memory.data_len(st):
                raise MergeFailed("the output (%d bytes at %d) lies outside the module's memory (%d bytes)" % (
                    out_len, out_ptr, self.memory.data_len(st)))
            out = self.memory.read(st, out_ptr, out_ptr + out_len)
        except (wt.Trap, wt.WasmtimeError, IndexError, ValueError, TypeError) as e:
            raise MergeFailed("the module failed: %s" % _line(e)) from None
        try:
            item = codec.loads(bytes(out))
        except EdgelineError as e:
            raise MergeFailed("the output is not one CBOR item: %s" % e) from None
        # the tag is an integer, not a bool: [true] == [1] and false == 0 in Python
        if type(item) is list and len(item) == 1 and type(item[0]) is int and item[0] == 1:
            return T.TOMBSTONE
        if type(item) is list and len(item) == 2 and type(item[0]) is int and item[0] == 0:
            return item[1]
        raise MergeFailed("the output %r is neither [0, value] nor [1]" % (item,))


def _line(e):
    """One line of a wasmtime error: its cause (the last line: "wasm trap: ..."), not the
    backtrace heading wasmtime puts first."""
    text = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return "%s: %s" % (type(e).__name__, text[-1]) if text else type(e).__name__
