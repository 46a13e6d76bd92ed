"""RAM at rest and the most live heap while syncing, on both word sizes.

Theory of operation
-------------------
The boards are 32-bit; the MicroPython unix port here is 64-bit, where every object,
pointer and GC block is twice as large. So the same probe -- one MicroPython program,
``PROBE`` -- runs on two interpreters:

* **64-bit**: the unix port (unixport.py), with the profile's heap, the library loaded the
  way the profile deploys it (.mpy files in RAM, or a ROMFS image run in place);
* **32-bit**: a 32-bit build of the unix port when ``$EDGELINE_MICROPYTHON32`` names one
  (not on any registry; docs/boards.md says how to build it): then as the 64-bit port,
  every mode. Otherwise MicroPython's WebAssembly port run by node (wasmport.py, the
  test suite's 32-bit lane; ``sys.maxsize == 2**31 - 1``). Its GC runs only between calls
  from JavaScript, and its heap grows, so heap *sizes* mean nothing there; but
  ``_mem()`` after a collection is the exact number of live bytes, and that is
  all the probe reads. It has no ROMFS (``vfs.VfsRom``) and no native emitter, so the
  library is always .mpy files loaded into RAM with the portable CRC (crc.py): for a
  ``deploy: frozen/romfs`` profile that is an upper bound (its bytecode stays in flash
  on the board), for ``deploy: mpy`` it is the board's way of loading.

The probe is a generator; each ``next()`` is one *step* and between steps the garbage is
collected (on the WebAssembly port by returning to JavaScript, ``--loop``; on the unix
port by ``gc.collect()``). Figures are bytes above the baseline taken before the
library is imported (the harness's own few objects exist by then):

* ``code_bytes``: after importing edgeline_app and uplink (and wlan on Wi-Fi boards);
* ``rest_bytes``: with the default settings' logs, outboxes and uplink open -- RAM at
  rest, what ``memory.core_ram_budget_bytes`` bounds;
* ``sync_live_bytes``: the most live heap between the rounds of a sync (each step one
  ``sync_once(1)``: one BATCH and its ACK, the connection kept open), after records
  were appended with hybrid-clock timestamps and committed;
* ``sync_round_bytes``: the most bytes allocated by the end of one round with automatic
  collection off -- live at its start plus everything the round allocated, garbage
  included: an upper bound on the live heap at any moment of the round.

Frozen code (``mode="frozen"``): a frozen firmware keeps the library's bytecode *and* its
names (qstrs) in flash. The unix port runs the bytecode in place from a ROMFS image, and
the names are interned before the baseline, so the pools they fill are not counted --
as on a board, whose first pool of run-time names is small whatever is frozen
(mpy-tool.py gives the frozen names' pool an ``alloc`` of at most 10, and py/qstr.c sizes
a new pool at twice the last one's). Still an upper bound: the ROMFS loader keeps each
function's raw-code record in RAM, where a frozen firmware has them in flash. Checked
against a 32-bit unix-port build with the library really frozen (docs/boards.md): there
at rest 18,448 B; this emulation on a 32-bit build 27,088 B. Figures depend on where the
pools of names stand at the baseline, so two runtimes can differ by up to one pool step.

The gateway is a replay: the host first runs the same program on CPython (a child
process of this Python, so the board's modules never enter this one) against the core's
``GatewayConnection`` and records, for every ``sendall`` of the board, the bytes the
gateway answered (the board's nonce is fixed, so its AUTH and the gateway's proofs are
the same in the replay). On the MicroPython side a socket stand-in returns those
bytes from a file; it never allocates more than a read's buffer, and its class exists
before the baseline.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

from . import wasmport
from .mpy import ToolMissing

# Records appended before the sync: enough for several full batches on every profile.
PROBE_RECORDS = 64
# The board's HELLO nonce in the probe (random on a board): fixed, so the replay fits.
_NONCE = b"\x5a" * 16
_WALL_MS = 1765000000000  # 2025-12: a real epoch, so timestamps are hybrid-clock sized

# The probe, MicroPython (and CPython) source. %(...)s: set up by the caller.
PROBE = '''
import gc, sys, json
# The standard modules the library uses: built into a board's firmware (no heap), but
# some are Python modules on the WebAssembly port (os with os.path, collections: about
# 2.6 KB there), so they are imported before the baseline.
import os, time, struct, binascii, errno, collections, hashlib
%(path)s
_mem = gc.mem_alloc if hasattr(gc, "mem_alloc") else (lambda: 0)  # CPython: the recording run


class _Replay:
    # The socket module and socket: answers each sendall with the recorded bytes.
    SOCK_STREAM = 1

    def __init__(self, path):
        self.path = path
        self.f = None
        self.buf = b""
        self.sent = 0

    def getaddrinfo(self, host, port, a, b):
        return [(0, 0, 0, "", (host, port))]

    def socket(self):
        if self.f is None and self.path:
            self.f = open(self.path, "rb")
        return self

    def settimeout(self, t):
        pass

    def connect(self, addr):
        pass

    def close(self):
        pass

    def sendall(self, data):
        self.sent += 1
        hdr = self.f.read(2)
        n = hdr[0] | (hdr[1] << 8)
        self.buf = self.buf + self.f.read(n) if n else self.buf

    def recv(self, n):
        b = self.buf
        if not b:
            raise OSError(11)
        self.buf = b[n:]
        return b[:n]


class _Os:
    # The WebAssembly port's os has no urandom; the board's uplink takes os.urandom as its
    # default nonce source (the probe's nonce is fixed anyway).
    @staticmethod
    def urandom(n):
        return bytes(n)


_sock = _Replay(%(replies)r)
_out = {}


def _intern(path):
    # A frozen build's names are in flash: interned here before the baseline, so the
    # pools they fill are not counted (one name a line).
    f = open(path)
    for line in f:
        hasattr(_sock, line[:-1])
    f.close()


if %(names)r:
    _intern(%(names)r)


def _probe():
    gc.collect()
    yield
    a0 = _mem()
    import edgeline_app, uplink
    %(extra)s
    gc.collect()
    yield
    _out["code_bytes"] = _mem() - a0
    cfg = edgeline_app.load_settings(%(cfg)r)
    store, topics = edgeline_app.open_logs(cfg)
    if not hasattr(os, "urandom"):
        uplink.os = _Os
    up = edgeline_app.make_uplink(cfg, topics, _sock)
    gc.collect()
    yield
    _out["rest_bytes"] = _mem() - a0
    if up is None or %(records)d == 0:
        _out["modules"] = sorted(m for m in sys.modules if m.startswith("edgeline"))
        return
    up._nonce_source = lambda n: %(nonce)r
    from edgeline import codec
    from edgeline.clock import HybridClock
    clock = HybridClock()
    name = None
    for name in topics:
        break
    lg = topics[name][0]
    for i in range(%(records)d):
        lg.append(codec.dumps({"temp_c": 20 + (i %% 50) / 10}), ts=clock.now(%(wall)d + i * 1000), now_ms=i * 1000)
        lg.tick(i * 1000)
    store.flush()
    i = None
    gc.collect()
    yield
    live = 0
    high = 0
    rounds = 0
    while up.pending:
        a = _mem() - a0
        if a > live:
            live = a
        gc.disable()
        try:
            up.sync_once(1)
            a = _mem() - a0
        finally:
            gc.enable()
        if a > high:
            high = a
        rounds += 1
        gc.collect()
        yield
    a = _mem() - a0
    _out["sync_live_bytes"] = live if live > a else a
    _out["sync_round_bytes"] = high
    _out["sync_rounds"] = rounds
    _out["acked"] = topics[name][1].acked
    up.close()
    store.close()
    _out["modules"] = sorted(m for m in sys.modules if m.startswith("edgeline"))


_g = _probe()


def _step():
    try:
        next(_g)
    except StopIteration:
        print("ramprobe " + json.dumps(_out))
        raise SystemExit(0)
'''

_UNIX_LOOP = "\nwhile True:\n    _step()\n"


class _Recorder:
    """CPython: the socket module for the recording run -- the core's GatewayConnection
    answering every sendall; ``replies`` the answers, one bytes per sendall."""

    SOCK_STREAM = 1

    def __init__(self, key):
        from edgeline import sync

        self.sync = sync
        self.gw = sync.GatewayConnection(lambda node: key, lambda n: b"\xa5" * n)
        self.replies = []
        self.marks = {}
        self.buf = b""

    def getaddrinfo(self, host, port, a, b):
        return [(0, 0, 0, "", (host, port))]

    def socket(self):
        return self

    def settimeout(self, t):
        pass

    def connect(self, addr):
        pass

    def close(self):
        pass

    def sendall(self, data):
        sync = self.sync
        self.gw.receive_data(bytes(data))
        out = b""
        while True:
            ev = self.gw.next_event()
            if ev is sync.NEED_DATA:
                break
            cls = type(ev)
            if cls is sync.Hello:
                out += self.gw.send(sync.Challenge())
            elif cls is sync.Auth:
                out += self.gw.send(sync.Welcome(marks={}))
            elif cls is sync.Batch:
                _, ack = sync.batch_window(self.marks.get(ev.topic, 0), ev)
                self.marks[ev.topic] = ack
                out += self.gw.send(sync.Ack(ev.topic, ack))
            elif cls is sync.Gap:
                _, ack = sync.apply_gap(self.marks.get(ev.topic, 0), ev)
                self.marks[ev.topic] = ack
                out += self.gw.send(sync.Ack(ev.topic, ack))
            else:
                raise RuntimeError("the probe's gateway got %r" % (ev,))
        self.replies.append(out)
        self.buf += out

    def recv(self, n):
        b = self.buf
        if not b:
            raise OSError(11, "the probe's gateway has nothing to answer")
        self.buf = b[n:]
        return b[:n]


# The recording run, on CPython in a child process: the recorder built first (so the
# core it answers with is this installation's), then the probe, whose socket it becomes.
_RECORD = '''
import json, struct
from edgeline_host.firmware.ramprobe import _Recorder
with open(%(cfg)r) as f:
    _rec = _Recorder(bytes.fromhex(json.load(f)["key"]))
%(probe)s
_sock = _rec
for _ in _g:
    pass
with open(%(out)r, "wb") as f:
    for r in _rec.replies:
        f.write(struct.pack("<H", len(r)) + r)
print("ramprobe " + json.dumps(_out))
'''


def record_replies(cfg_path, lib_dir, out_path, records=PROBE_RECORDS):
    """Run the probe on CPython against the core's gateway; write what the gateway
    answered to each sendall to out_path (u16 length, bytes; per sendall). The run is a
    child process of this Python with the library's folder first on its path."""
    import edgeline
    import edgeline_host

    code = _RECORD % {"cfg": cfg_path, "out": out_path, "probe": probe_code(cfg_path, None, "", lib_dir, records)}
    # the child finds edgeline and edgeline_host where this process found them
    roots = [os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))) for m in (edgeline_host, edgeline)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(roots + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    if p.returncode != 0:
        raise RuntimeError("the RAM probe's recording run exited %d: %s" % (p.returncode,
                                                                           (p.stdout + p.stderr).strip()[-2000:]))
    out = _parse(p.stdout)
    if out.get("acked") != records:
        raise RuntimeError("the recording run acknowledged %s of %d records" % (out.get("acked"), records))
    return out


def probe_code(cfg_path, replies_path, extra, path_code, records=PROBE_RECORDS, names_path=None):
    """The probe's source for one run: path_code puts the library on sys.path (a
    directory, or code that mounts a ROMFS image)."""
    if os.path.isdir(path_code):
        path_code = "sys.path.insert(0, %r)" % path_code
    return PROBE % {"path": path_code, "replies": replies_path, "extra": extra, "cfg": cfg_path,
                    "records": records, "nonce": _NONCE, "wall": _WALL_MS, "names": names_path}


def _vuint(data, i):
    n = 0
    while True:
        b = data[i]
        i += 1
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            return n, i


def mpy_names(path):
    """The names (qstrs) an .mpy file interns when it is loaded: its qstr table (.mpy v6),
    less the firmware's static ones. [] for a file holding native code (another arch)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"M\x06":
        raise ValueError("%s: not an .mpy v6 file" % path)
    if data[2] >> 2:  # native code: the table is read the same way, but skip it (crcnative.py)
        return []
    n_qstr, i = _vuint(data, 4)
    _, i = _vuint(data, i)
    names = []
    for _ in range(n_qstr):
        v, i = _vuint(data, i)
        if v & 1:
            continue  # a static qstr of the firmware: already in flash
        n = v >> 1
        names.append(data[i:i + n].decode())
        i += n + 1
    return names


def library_names(lib_dir):
    """Every name the library's .mpy files intern: what a frozen build keeps in flash."""
    out = set()
    for d, _, files in os.walk(lib_dir):
        for name in files:
            if name.endswith(".mpy"):
                out.update(mpy_names(os.path.join(d, name)))
    return sorted(out)


def names_heap_bytes(names_path):
    """Heap added for names interned before the baseline (a frozen build keeps them in
    flash, as a ROMFS image's bytes are added by unixport.heap_for): their characters and
    a 16-byte pool entry each, twice over for the pools' doubling, so it always fits."""
    with open(names_path) as f:
        names = f.read().split()
    return 2 * sum(len(n) + 1 + 16 for n in names) + 1024


def unix32_exe():
    """$EDGELINE_MICROPYTHON32: a 32-bit build of the MicroPython unix port (docs/boards.md
    says how to build one); None when unset. ToolMissing (one line) when it is set but
    is not one."""
    exe = os.environ.get("EDGELINE_MICROPYTHON32")
    if not exe:
        return None
    try:
        p = subprocess.run([exe, "-c", "import sys; print(sys.maxsize, sys.implementation.name)"],
                           capture_output=True, text=True, timeout=30)
        ok = p.returncode == 0 and p.stdout.split() == [str(2 ** 31 - 1), "micropython"]
    except OSError:
        ok = False
    if not ok:
        raise ToolMissing("EDGELINE_MICROPYTHON32=%s is not a 32-bit MicroPython unix port" % exe)
    return exe


def lane32_missing():
    """Why the 32-bit lane cannot run here (one line), or None: $EDGELINE_MICROPYTHON32,
    else the WebAssembly port (wasmport.missing; its npm package may still be installed on
    first use, by measure)."""
    try:
        if unix32_exe():
            return None
    except ToolMissing as e:
        return str(e)
    return wasmport.missing()


def _parse(out):
    for line in reversed(out.strip().splitlines()):
        if line.startswith("ramprobe "):
            return json.loads(line[len("ramprobe "):])
    raise RuntimeError("the RAM probe printed no result: " + out.strip()[-2000:])


def _setup(profile, tmp):
    """(cfg_path, extra) for the profile's default settings under tmp."""
    from .profiles import board_config

    wifi = {"ssid": "probe", "password": "probe-password"} if profile["network"]["kind"] != "none" else None
    cfg = board_config(profile, "ram-probe", "00" * 32, gateway=("127.0.0.1", 9), wifi=wifi)
    cfg["data_dir"] = os.path.join(tmp, "data")
    cfg_path = os.path.join(tmp, "edgeline.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    extra = "import wlan" if profile["network"]["kind"] == "wlan" else ""
    return cfg_path, extra


def measure(profile, mode="mpy", word_bits=64, records=PROBE_RECORDS):
    """The probe on one lane: {"code_bytes", "rest_bytes", "sync_live_bytes",
    "sync_round_bytes", "sync_rounds", "acked", "word_bits", "mode"}. ``mode``: ``mpy``
    (.mpy files in /lib, loaded into RAM), ``rom`` (ROMFS, run in place), ``frozen``
    (ROMFS with the library's names interned before the baseline: a frozen build keeps
    code and names in flash), ``py`` (sources compiled at import). The 32-bit lane is
    $EDGELINE_MICROPYTHON32 (a 32-bit unix-port build: every mode) if set, else the
    WebAssembly port, which runs ``mpy``, or for ``frozen`` .mpy with the names static
    (module doc); the mode and the runtime it ran are in the result (``mode``,
    ``runtime``). ``records=0``: RAM at rest only."""
    from . import build, unixport
    from .mpy import build_romfs

    static_names = mode == "frozen"
    exe = None
    wasm = False
    if word_bits == 32:
        why = lane32_missing()
        if why:
            raise ToolMissing(why)
        exe = unix32_exe()
        wasm = exe is None
        if wasm:
            modules = wasmport.ensure()
            mode = "mpy, names static" if static_names else "mpy"
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, extra = _setup(profile, tmp)
        replies = None
        if records:
            src = os.path.join(tmp, "src")
            build.compile_library(profile, src, source=True)
            replies = os.path.join(tmp, "replies.bin")
            record_replies(cfg_path, src, replies, records)
            _reset_data(cfg_path)
        lib = os.path.join(tmp, "lib")
        names = None
        n_names = 0
        if wasm:
            # bytecode only: the WebAssembly port has no native emitter (crcnative.py is
            # compiled for no board here; logformat.py falls back to crc.py)
            build.compile_library(dict(profile, firmware=dict(profile["firmware"], mpy_arch=None)), lib)
        else:
            build.compile_library(profile, lib, source=(mode == "py"))
        if static_names:
            names = os.path.join(tmp, "names.txt")
            listed = library_names(lib)
            n_names = len(listed)
            with open(names, "w") as f:
                f.write("".join(n + "\n" for n in listed))
        if wasm:
            mount = {"host": tmp, "mp": "/probe"}
            _rewrite_data_dir(cfg_path, "/probe/data")
            code = probe_code(_mp_path(cfg_path, mount), replies and _mp_path(replies, mount), extra,
                              "sys.path.insert(0, %r)" % _mp_path(lib, mount), records,
                              names and _mp_path(names, mount))
            cmd = wasmport.command(code, "_step()", "256k", [(tmp, "/probe")], modules)
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            out = p.stdout + p.stderr
            if p.returncode != 0:
                raise RuntimeError("the 32-bit RAM probe exited %d: %s" % (p.returncode, out.strip()[-2000:]))
        else:
            if mode in ("rom", "frozen"):
                image = os.path.join(tmp, "lib.romfs")
                build_romfs(lib, image)
                path = "import os, vfs\n" + unixport._ROM % {"rom": image} + 'sys.path.insert(0, "/rom")\n'
                heap = unixport.heap_for(profile, image)
            else:
                path = lib
                heap = unixport.heap_for(profile)
            if names:
                heap += names_heap_bytes(names)
            out = unixport._run(probe_code(cfg_path, replies, extra, path, records, names) + _UNIX_LOOP, heap,
                                exe=exe)
    res = _parse(out)
    if static_names:
        res["static_names"] = n_names
    if records and res.get("acked") != records:
        raise RuntimeError("the %d-bit RAM probe acknowledged %s of %d records" % (word_bits, res.get("acked"),
                                                                                   records))
    res["word_bits"] = word_bits
    res["mode"] = mode
    res["runtime"] = "WebAssembly port" if wasm else ("unix port, 32-bit build" if exe else "unix port")
    return res


def _mp_path(host_path, mount):
    return mount["mp"] + host_path[len(mount["host"]):]


def _rewrite_data_dir(cfg_path, data_dir):
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["data_dir"] = data_dir
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


def _reset_data(cfg_path):
    # The recording run's logs: gone, so the measured run starts from a blank flash too.
    import shutil

    with open(cfg_path) as f:
        d = json.load(f)["data_dir"]
    shutil.rmtree(d, ignore_errors=True)
