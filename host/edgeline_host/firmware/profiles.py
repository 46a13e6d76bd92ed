"""Board profiles: boards/<name>/profile.json, read and checked.

Theory of operation
-------------------
A profile is data: what a target is (runtime, firmware, architecture), what it has
(heap or RAM, file system, clock, network) and how edgeline runs on it (default
settings). Host tools read profiles through `load_profile`, which checks every field
against the schema below and refuses the file on the first problem with one line that
names the file and the field -- the same rule as edge.yaml (docs/config.md). Unknown
keys are errors: a misspelt budget would otherwise be silently ignored.

The board's own settings file (``edgeline.json``, what main.py reads) is built from a
profile's ``defaults`` by `board_config`, and checked by the same rules here and again
on the board (boards/common/edgeline_app.py) -- a hand-edited file gets one line there
too, on the serial console.
"""
import json
import os
import re

from edgeline.sync import is_node_id


def _boards_dir():
    """Where the profiles are: $EDGELINE_BOARDS if set; else the data package
    edgeline_host/boards that an installed edgeline carries (setup.py ships boards/ there);
    else, in a checkout (an editable install, or host/ on sys.path), boards/ beside host/."""
    if os.environ.get("EDGELINE_BOARDS"):
        return os.environ["EDGELINE_BOARDS"]
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # edgeline_host/
    shipped = os.path.join(package, "boards")
    if os.path.isdir(shipped):
        return shipped
    return os.path.join(os.path.dirname(os.path.dirname(package)), "boards")


BOARDS_DIR = _boards_dir()

MCU_RUNTIMES = ("micropython", "circuitpython")
RUNTIMES = MCU_RUNTIMES + ("cpython",)
MPY_ARCHS = ("x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
             "xtensawin", "rv32imc", "rv64imc")
FULL_POLICIES = ("drop_oldest", "reject", "drop_newest")
SYNC_POLICIES = ("every", "group", "none")
TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ProfileError(ValueError):
    """A profile or board config is invalid; the message is one line naming the field."""


# ------------------------------------------------------------------ checking helpers


class _Ctx:
    def __init__(self, source):
        self.source = source

    def fail(self, path, msg):
        raise ProfileError("%s: %s: %s" % (self.source, path or "(top)", msg))


def _show(v):
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _obj(ctx, path, v, required, optional=()):
    if not isinstance(v, dict):
        ctx.fail(path, "must be an object (got %s)" % _show(v))
    for k in v:
        if k not in required and k not in optional:
            ctx.fail(_join(path, k), "unknown key")
    for k in required:
        if k not in v:
            ctx.fail(_join(path, k), "missing")
    return v


def _join(path, key):
    return "%s.%s" % (path, key) if path else key


def _int(ctx, path, v, lo=1, hi=1 << 62):
    if type(v) is not int or not lo <= v <= hi:
        ctx.fail(path, "must be an integer from %d to %d (got %s)" % (lo, hi, _show(v)))
    return v


def _str(ctx, path, v, choices=None, allow_none=False):
    if v is None and allow_none:
        return v
    if not isinstance(v, str) or not v:
        ctx.fail(path, "must be a non-empty string (got %s)" % _show(v))
    if choices is not None and v not in choices:
        ctx.fail(path, "must be one of %s (got %s)" % (", ".join(choices), _show(v)))
    return v


def _bool(ctx, path, v):
    if type(v) is not bool:
        ctx.fail(path, "must be true or false (got %s)" % _show(v))
    return v


# ------------------------------------------------------------------ the board config (edgeline.json)

TOPIC_KEYS = ("segment_bytes", "budget_bytes", "full_policy", "sync", "group_records", "group_ms", "priority")
SYNC_KEYS = ("interval_ms", "batch_records", "batch_bytes", "max_rounds", "timeout_s", "backoff_min_ms",
             "backoff_max_ms")
DEFAULT_KEYS = ("data_dir", "storage_budget_bytes", "sample_ms", "topics", "sync", "watchdog_ms")
CONFIG_KEYS = DEFAULT_KEYS + ("profile", "node_id", "key", "gateway", "wifi", "samples")


def check_defaults(ctx, path, d, fs_bytes=None):
    _obj(ctx, path, d, DEFAULT_KEYS)
    data_dir = _str(ctx, _join(path, "data_dir"), d["data_dir"])
    if not data_dir.startswith("/"):
        ctx.fail(_join(path, "data_dir"), "must be an absolute path on the board (got %s)" % _show(data_dir))
    budget = _int(ctx, _join(path, "storage_budget_bytes"), d["storage_budget_bytes"], 8192)
    if fs_bytes is not None and budget > fs_bytes * 3 // 4:
        ctx.fail(_join(path, "storage_budget_bytes"),
                 "%d is more than 3/4 of the %d-byte file system (littlefs needs free blocks to commit)"
                 % (budget, fs_bytes))
    _int(ctx, _join(path, "sample_ms"), d["sample_ms"], 10, 86400000)
    _int(ctx, _join(path, "watchdog_ms"), d["watchdog_ms"], 0, 8388)  # 8388 ms: the rp2 hardware maximum
    if d["watchdog_ms"] and d["watchdog_ms"] < 1000:
        ctx.fail(_join(path, "watchdog_ms"), "must be 0 (off) or at least 1000 (got %d)" % d["watchdog_ms"])
    topics = d["topics"]
    if not isinstance(topics, dict) or not topics:
        ctx.fail(_join(path, "topics"), "must be a non-empty object of topic name -> settings")
    total = 0
    for name, t in topics.items():
        tp = _join(_join(path, "topics"), name)
        if not TOPIC.match(name):
            ctx.fail(tp, "topic names are 1-64 characters of A-Z a-z 0-9 . _ -")
        _obj(ctx, tp, t, ("segment_bytes", "budget_bytes"), TOPIC_KEYS)
        seg = _int(ctx, _join(tp, "segment_bytes"), t["segment_bytes"], 512, 1 << 24)
        tb = _int(ctx, _join(tp, "budget_bytes"), t["budget_bytes"], 1024)
        if tb < 2 * seg:
            ctx.fail(_join(tp, "budget_bytes"), "must hold at least 2 segments (%d bytes)" % (2 * seg))
        total += tb
        if "full_policy" in t:
            _str(ctx, _join(tp, "full_policy"), t["full_policy"], FULL_POLICIES)
        if "sync" in t:
            _str(ctx, _join(tp, "sync"), t["sync"], SYNC_POLICIES)
        if "group_records" in t:
            _int(ctx, _join(tp, "group_records"), t["group_records"], 1, 1000000)
        if "group_ms" in t:
            _int(ctx, _join(tp, "group_ms"), t["group_ms"], 1, 86400000)
        if "priority" in t:
            _int(ctx, _join(tp, "priority"), t["priority"], 0, 1000)
    if min(t["budget_bytes"] for t in topics.values()) > budget:
        ctx.fail(_join(path, "storage_budget_bytes"), "is smaller than every topic's budget_bytes")
    s = _obj(ctx, _join(path, "sync"), d["sync"], SYNC_KEYS)
    sp = _join(path, "sync")
    _int(ctx, _join(sp, "interval_ms"), s["interval_ms"], 0, 86400000)
    _int(ctx, _join(sp, "batch_records"), s["batch_records"], 1, 1000)
    _int(ctx, _join(sp, "batch_bytes"), s["batch_bytes"], 64, 1 << 20)
    _int(ctx, _join(sp, "max_rounds"), s["max_rounds"], 1, 10000)
    _int(ctx, _join(sp, "timeout_s"), s["timeout_s"], 1, 600)
    lo = _int(ctx, _join(sp, "backoff_min_ms"), s["backoff_min_ms"], 10, 3600000)
    hi = _int(ctx, _join(sp, "backoff_max_ms"), s["backoff_max_ms"], 10, 86400000)
    if hi < lo:
        ctx.fail(_join(sp, "backoff_max_ms"), "must be at least backoff_min_ms (%d)" % lo)
    if d["watchdog_ms"] and s["timeout_s"] * 1000 >= d["watchdog_ms"]:
        ctx.fail(_join(sp, "timeout_s"), "a socket wait of %d s would trip the %d ms watchdog"
                 % (s["timeout_s"], d["watchdog_ms"]))
    return d


def check_board_config(cfg, source="edgeline.json", profile=None):
    """Check a board's edgeline.json; returns it. One-line ProfileError on the first problem."""
    ctx = _Ctx(source)
    _obj(ctx, "", cfg, ("profile", "node_id", "key") + DEFAULT_KEYS, ("gateway", "wifi", "samples"))
    _str(ctx, "profile", cfg["profile"])
    if not is_node_id(cfg["node_id"]):  # the protocol's rule (docs/spec/wire.md): what the gateway accepts
        ctx.fail("node_id", "must be 1-64 characters of A-Z a-z 0-9 . _ -, not . or .. (got %s)" % _show(cfg["node_id"]))
    key = cfg["key"]
    if not isinstance(key, str) or not re.match(r"^[0-9a-fA-F]{64}$", key):
        ctx.fail("key", "must be the node's 32-byte key as 64 hex digits")
    if cfg.get("gateway") is not None:
        g = _obj(ctx, "gateway", cfg["gateway"], ("host", "port"))
        _str(ctx, "gateway.host", g["host"])
        _int(ctx, "gateway.port", g["port"], 1, 65535)
    if cfg.get("wifi") is not None:
        w = _obj(ctx, "wifi", cfg["wifi"], ("ssid", "password"), ("country", "connect_timeout_ms"))
        _str(ctx, "wifi.ssid", w["ssid"])
        if not isinstance(w["password"], str):
            ctx.fail("wifi.password", "must be a string (empty for an open network)")
        if "country" in w and (not isinstance(w["country"], str) or not re.match(r"^[A-Z]{2}$", w["country"])):
            ctx.fail("wifi.country", "must be a two-letter country code such as GB (got %s)" % _show(w["country"]))
        if "connect_timeout_ms" in w:
            _int(ctx, "wifi.connect_timeout_ms", w["connect_timeout_ms"], 100, 600000)
    if "samples" in cfg:
        _int(ctx, "samples", cfg["samples"], 0)
    fs = profile["storage"]["fs_bytes"] if profile else None
    check_defaults(ctx, "", {k: cfg[k] for k in DEFAULT_KEYS}, fs)
    if profile is not None:
        if cfg["profile"] != profile["name"]:
            ctx.fail("profile", "is %s, but this is the %s profile" % (_show(cfg["profile"]), profile["name"]))
        kind = profile["network"]["kind"]
        if kind in ("wlan", "wifi") and cfg.get("gateway") and cfg.get("wifi") is None:
            ctx.fail("wifi", "the %s profile reaches the gateway over Wi-Fi: give wifi.ssid and wifi.password"
                     % profile["name"])
    return cfg


# ------------------------------------------------------------------ profiles


def _check_mcu(ctx, p):
    _obj(ctx, "", p, ("name", "title", "runtime", "firmware", "memory", "storage", "clock", "network", "sensor",
                      "defaults"))
    fw = _obj(ctx, "firmware", p["firmware"], ("port", "board", "min_version", "mpy_arch", "base_manifest",
                                                "romfs", "deploy"))
    _str(ctx, "firmware.port", fw["port"])
    _str(ctx, "firmware.board", fw["board"])
    if not isinstance(fw["min_version"], str) or not re.match(r"^\d+\.\d+(\.\d+)?$", fw["min_version"]):
        ctx.fail("firmware.min_version", "must be a version such as 1.22 (got %s)" % _show(fw["min_version"]))
    if p["runtime"] == "micropython":
        _str(ctx, "firmware.mpy_arch", fw["mpy_arch"], MPY_ARCHS)
        _str(ctx, "firmware.base_manifest", fw["base_manifest"])
        _str(ctx, "firmware.deploy", fw["deploy"], ("mpy", "romfs", "frozen"))
    else:
        # CircuitPython's .mpy format is not MicroPython's (its files begin with "C"):
        # the board gets .py sources.
        if fw["mpy_arch"] is not None or fw["base_manifest"] is not None:
            ctx.fail("firmware.mpy_arch", "must be null for CircuitPython (its .mpy format is not MicroPython's)")
        _str(ctx, "firmware.deploy", fw["deploy"], ("py",))
    _bool(ctx, "firmware.romfs", fw["romfs"])
    if fw["deploy"] == "romfs" and not fw["romfs"]:
        ctx.fail("firmware.deploy", "is romfs but firmware.romfs is false")
    m = _obj(ctx, "memory", p["memory"], ("heap_bytes", "core_ram_budget_bytes", "source"))
    _int(ctx, "memory.heap_bytes", m["heap_bytes"], 16384, 1 << 32)
    _int(ctx, "memory.core_ram_budget_bytes", m["core_ram_budget_bytes"], 1024, m["heap_bytes"])
    _str(ctx, "memory.source", m["source"])
    s = _obj(ctx, "storage", p["storage"], ("filesystem", "fs_bytes", "block_bytes", "log_budget_bytes", "source"))
    _str(ctx, "storage.filesystem", s["filesystem"], ("littlefs2", "fat"))
    _int(ctx, "storage.fs_bytes", s["fs_bytes"], 65536)
    bb = _int(ctx, "storage.block_bytes", s["block_bytes"], 128, 65536)
    if s["fs_bytes"] % bb:
        ctx.fail("storage.fs_bytes", "must be a whole number of %d-byte blocks" % bb)
    _int(ctx, "storage.log_budget_bytes", s["log_budget_bytes"], 8192, s["fs_bytes"])
    _str(ctx, "storage.source", s["source"])
    c = _obj(ctx, "clock", p["clock"], ("ticks", "wall", "epoch_year"))
    _str(ctx, "clock.ticks", c["ticks"])
    _str(ctx, "clock.wall", c["wall"])
    if c["epoch_year"] not in (1970, 2000):
        ctx.fail("clock.epoch_year", "must be 1970 or 2000 (got %s)" % _show(c["epoch_year"]))
    n = _obj(ctx, "network", p["network"], ("kind",))
    _str(ctx, "network.kind", n["kind"], ("wlan", "wifi", "none"))
    _str(ctx, "sensor", p["sensor"])
    d = check_defaults(ctx, "defaults", p["defaults"], s["fs_bytes"])
    if d["storage_budget_bytes"] > s["log_budget_bytes"]:
        ctx.fail("defaults.storage_budget_bytes", "exceeds storage.log_budget_bytes (%d)" % s["log_budget_bytes"])


def _check_cpython(ctx, p):
    _obj(ctx, "", p, ("name", "title", "runtime", "role", "platform", "memory", "storage", "clock", "network",
                      "config"))
    _str(ctx, "role", p["role"], ("edge", "gateway"))
    pl = _obj(ctx, "platform", p["platform"], ("machine", "python", "os"), ("emulation",))
    _str(ctx, "platform.machine", pl["machine"], ("armv6l", "armv7l", "aarch64", "x86_64"))
    _str(ctx, "platform.python", pl["python"])
    m = _obj(ctx, "memory", p["memory"], ("ram_bytes", "agent_memory_budget_bytes", "source"))
    _int(ctx, "memory.ram_bytes", m["ram_bytes"], 1 << 20)
    _int(ctx, "memory.agent_memory_budget_bytes", m["agent_memory_budget_bytes"], 1 << 20, m["ram_bytes"])
    s = _obj(ctx, "storage", p["storage"], ("filesystem", "medium", "log_budget_bytes"))
    _int(ctx, "storage.log_budget_bytes", s["log_budget_bytes"], 1 << 20)
    _obj(ctx, "clock", p["clock"], ("wall",))
    n = _obj(ctx, "network", p["network"], ("kind",))
    _str(ctx, "network.kind", n["kind"], ("os",))
    _str(ctx, "config", p["config"])


def check_profile(p, source="profile.json"):
    ctx = _Ctx(source)
    if not isinstance(p, dict):
        ctx.fail("", "must be a JSON object")
    _str(ctx, "name", p.get("name"))
    _str(ctx, "title", p.get("title"))
    rt = _str(ctx, "runtime", p.get("runtime"), RUNTIMES)
    if rt in MCU_RUNTIMES:
        _check_mcu(ctx, p)
    else:
        _check_cpython(ctx, p)
    return p


def profile_names(boards_dir=None):
    d = boards_dir or BOARDS_DIR
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n, "profile.json")))


def _no_profiles(d):
    return ProfileError("no board profiles in %s (set EDGELINE_BOARDS to a folder of <name>/profile.json)" % d)


def load_profile(name, boards_dir=None):
    """The checked profile ``name`` (a dict, plus ``dir``: its folder). ProfileError if
    it does not exist or is invalid."""
    d = boards_dir or BOARDS_DIR
    names = profile_names(d)
    if name not in names:
        if not names:
            raise _no_profiles(d)
        raise ProfileError("unknown profile %r; known: %s" % (name, ", ".join(names)))
    path = os.path.join(d, name, "profile.json")
    rel = os.path.relpath(path, os.path.dirname(d))
    try:
        with open(path) as f:
            p = json.load(f)
    except ValueError as e:
        raise ProfileError("%s: invalid JSON: %s" % (rel, e)) from None
    check_profile(p, rel)
    if p["name"] != name:
        raise ProfileError("%s: name: is %r but the folder is %r" % (rel, p["name"], name))
    p = dict(p)
    p["dir"] = os.path.join(d, name)
    for f in ("main.py",) + (("boot.py",) if p["runtime"] == "circuitpython" else ()):
        if not os.path.isfile(os.path.join(p["dir"], f)):
            raise ProfileError("%s: the profile has no %s beside it" % (rel, f))
    return p


def load_all(boards_dir=None, runtimes=RUNTIMES):
    names = profile_names(boards_dir)
    if not names:
        raise _no_profiles(boards_dir or BOARDS_DIR)  # a table of nothing would look like success
    out = []
    for n in names:
        p = load_profile(n, boards_dir)
        if p["runtime"] in runtimes:
            out.append(p)
    return out


def board_config(profile, node_id, key_hex, gateway=None, wifi=None, samples=None, overrides=None):
    """The board's edgeline.json (a dict) from the profile's defaults; checked."""
    if profile["runtime"] not in MCU_RUNTIMES:
        raise ProfileError("%s is a %s profile: it runs the agent with %s, not an edgeline.json"
                           % (profile["name"], profile["runtime"], profile["config"]))
    cfg = json.loads(json.dumps(profile["defaults"]))  # a deep copy
    if overrides:
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k].update(v)
            else:
                cfg[k] = v
    cfg["profile"] = profile["name"]
    cfg["node_id"] = node_id
    cfg["key"] = key_hex
    if gateway is not None:
        cfg["gateway"] = {"host": gateway[0], "port": gateway[1]}
    if wifi is not None:
        cfg["wifi"] = wifi
    if samples is not None:
        cfg["samples"] = samples
    return check_board_config(cfg, "edgeline.json", profile)
