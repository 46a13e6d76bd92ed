"""edgeline on a microcontroller: settings, sampling, group commit, sync with backoff.

Theory of operation
-------------------
Every board's main.py does the same four things around its own hardware: read
``/edgeline.json``, open one ring log per topic on the board's flash (littlefs2, or FAT
on CircuitPython), append a sensor reading every ``sample_ms``, and hand what is
durable to the gateway (boards/common/uplink.py) every ``sync.interval_ms`` while the
network is up. That loop lives here, once; main.py passes in what differs per board:
``sample(n)`` (the reading), ``wall_ms()`` (the wall clock, any epoch fixed up),
``network_up(cfg)`` (bring the link up, say whether it is), ``set_clock(cfg)`` (NTP)
and ``watchdog(cfg)`` (start one; returns its feed function).

Failure modes first, then what is guaranteed:

* a bad settings file: one line on the console naming the field, and ``run`` returns
  -- nothing was opened, nothing is lost, the REPL stays usable to fix the file;
* no network, gateway down, a read times out: the records stay in the log; the next
  attempt waits ``backoff_min_ms``, doubling up to ``backoff_max_ms``, with up to a
  quarter of random jitter so a fleet back from an outage does not reconnect in step;
  sampling never waits for the network;
* power cut at any moment: records committed (every ``group_records`` appends or
  ``group_ms``, and always before a send) are on flash; the outbox cursor moves only
  after the gateway has stored a batch; after reboot the sequence continues and the
  uplink resumes from the cursor and the gateway's marks -- exactly once at the gateway;
* the gateway holds seqs of a topic past this log's end (the log was wiped, the gateway
  remembers the old one): nothing of that topic is sent, since the gateway would drop
  it as duplicates; each attempt says so in one line and backs off as above, and the
  other topics sync (edgeline.sender, docs/spec/wire.md "Sender rules");
* a gateway from before log incarnations (wire version 1): the uplink speaks version 1
  to it, and one line says so (``the gateway speaks wire version 1 only``); the summary's
  ``wire_version`` is the version last spoken;
* the log full: the topic's ``full_policy`` decides (``drop_oldest`` by default) and the
  loss is reported to the gateway as a gap; ``reject`` makes ``append`` refuse, and the
  reading is counted as rejected;
* a flash error on append or commit: one line, counted, and the loop goes on (a board
  in the field has no one to press a key).

Time: scheduling uses the wrap-safe tick counter; the logs' group commit is given a
monotonic uptime in ms built from it (it must not wrap); record timestamps come from a
hybrid logical clock seeded with the newest timestamp on flash, so they stay ordered
even on a board whose RTC restarts at 2000 or 2021 after every power-up.
"""
import gc
import json
import os
import time
from binascii import unhexlify

from edgeline import codec
from edgeline.clock import HybridClock
from edgeline.errors import EdgelineError, LogFull
from edgeline.outbox import Outbox
from edgeline.store import Store

CONFIG_PATH = "/edgeline.json"

# Tick counters: MicroPython time.ticks_*; CircuitPython supervisor.ticks_ms (wraps at
# 2**29, no ticks_diff); CPython (host tests of this module) a monotonic clock.
try:
    _ticks_ms = time.ticks_ms
    _ticks_diff = time.ticks_diff
except AttributeError:
    try:
        from supervisor import ticks_ms as _ticks_ms

        def _ticks_diff(a, b):
            return ((a - b + 0x10000000) & 0x1FFFFFFF) - 0x10000000

    except ImportError:

        def _ticks_ms():
            return int(time.monotonic() * 1000)

        def _ticks_diff(a, b):
            return a - b


def _sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


class SettingsError(EdgelineError):
    """edgeline.json is missing or wrong; one line naming the field."""


_TOPIC_KEYS = ("segment_bytes", "budget_bytes", "full_policy", "sync", "group_records", "group_ms", "priority")
_SYNC_KEYS = ("interval_ms", "batch_records", "batch_bytes", "max_rounds", "timeout_s", "backoff_min_ms",
              "backoff_max_ms")
_TOP_KEYS = ("profile", "node_id", "key", "data_dir", "storage_budget_bytes", "sample_ms", "topics", "sync",
             "watchdog_ms", "gateway", "wifi", "samples")


def _need_int(path, v, lo):
    if type(v) is not int or v < lo:
        raise SettingsError("%s: must be an integer >= %d (got %r)" % (path, lo, v))


def check_settings(cfg, source=CONFIG_PATH):
    """The board's own check of edgeline.json (the host checks it fully when it writes
    it: edgeline_host.firmware.profiles). Raises SettingsError (one line)."""
    if type(cfg) is not dict:
        raise SettingsError("%s: must be a JSON object" % source)
    for k in cfg:
        if k not in _TOP_KEYS:
            raise SettingsError("%s: %s: unknown key" % (source, k))
    for k in ("node_id", "key", "data_dir", "storage_budget_bytes", "sample_ms", "topics", "sync"):
        if k not in cfg:
            raise SettingsError("%s: %s: missing" % (source, k))
    try:
        if len(cfg["key"]) != 64:
            raise ValueError
        unhexlify(cfg["key"])
    except (TypeError, ValueError):
        raise SettingsError("%s: key: must be 64 hex digits" % source)
    _need_int(source + ": storage_budget_bytes", cfg["storage_budget_bytes"], 8192)
    _need_int(source + ": sample_ms", cfg["sample_ms"], 10)
    _need_int(source + ": watchdog_ms", cfg.get("watchdog_ms", 0), 0)
    _need_int(source + ": samples", cfg.get("samples", 0), 0)
    topics = cfg["topics"]
    if type(topics) is not dict or not topics:
        raise SettingsError("%s: topics: must name at least one topic" % source)
    for name in topics:
        t = topics[name]
        if type(t) is not dict:
            raise SettingsError("%s: topics.%s: must be an object" % (source, name))
        for k in t:
            if k not in _TOPIC_KEYS:
                raise SettingsError("%s: topics.%s.%s: unknown key" % (source, name, k))
    s = cfg["sync"]
    if type(s) is not dict:
        raise SettingsError("%s: sync: must be an object" % source)
    for k in _SYNC_KEYS:
        if k not in s:
            raise SettingsError("%s: sync.%s: missing" % (source, k))
        _need_int("%s: sync.%s" % (source, k), s[k], 0 if k == "interval_ms" else 1)
    g = cfg.get("gateway")
    if g is not None:
        if type(g) is not dict or type(g.get("host")) is not str or type(g.get("port")) is not int:
            raise SettingsError("%s: gateway: must be {\"host\": ..., \"port\": ...}" % source)
    return cfg


def load_settings(path=CONFIG_PATH):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise SettingsError("%s: not found (write one with `edgeline firmware config`)" % path)
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise SettingsError("%s: invalid JSON: %s" % (path, e))
    return check_settings(cfg, path)


def open_logs(cfg):
    """(store, {topic: (RingLog, Outbox)}) under cfg["data_dir"]; recovers after a crash."""
    store = Store(cfg["data_dir"], cfg["storage_budget_bytes"])
    topics = {}
    for name in cfg["topics"]:
        opts = cfg["topics"][name]
        kw = {}
        for k in opts:
            kw[k] = opts[k]
        lg = store.log(name, **kw)
        topics[name] = (lg, Outbox(lg))
    return store, topics


def make_uplink(cfg, topics, socket_module=None):
    """The BoardUplink for cfg's gateway; None when there is no gateway, or no sockets
    (firmware without a network stack, such as a plain Pico's: the board only logs)."""
    g = cfg.get("gateway")
    if not g:
        return None
    if socket_module is None:
        # Asked before importing the uplink, which brings the sync protocol (about 25 KB
        # of RAM at 32-bit): a firmware without sockets never needs it.
        try:
            import socket  # noqa: F401
        except ImportError:
            return None
    import uplink
    s = cfg["sync"]
    return uplink.BoardUplink(cfg["node_id"], unhexlify(cfg["key"]), g["host"], g["port"], topics,
                              batch_records=s["batch_records"], batch_bytes=s["batch_bytes"],
                              max_message_bytes=max(1024, s["batch_bytes"] + 512), timeout_s=s["timeout_s"],
                              socket_module=socket_module)


def _jitter(ms):
    # Up to a quarter of ms, from os.urandom (every port here has it).
    r = os.urandom(2)
    return ms - (ms // 4) * (r[0] | (r[1] << 8)) // 65535


def run(cfg, sample, wall_ms, network_up=None, set_clock=None, watchdog=None, socket_module=None, say=print):
    """The board's loop; returns a summary dict when ``cfg["samples"]`` readings were
    taken and all were acknowledged (never, when samples is 0: a board runs for ever)."""
    feed = watchdog(cfg) if watchdog is not None and cfg.get("watchdog_ms") else None
    store, topics = open_logs(cfg)
    first = None
    last_ts = 0
    for name in topics:
        if first is None:
            first = name
        if topics[name][0].last_ts > last_ts:
            last_ts = topics[name][0].last_ts
    lg, ob = topics[first]
    clock = HybridClock(last_ts=last_ts)
    up = make_uplink(cfg, topics, socket_module)
    s = cfg["sync"]
    limit = cfg.get("samples", 0)
    sample_ms = cfg["sample_ms"]
    backoff = s["backoff_min_ms"]
    wire_version = up.wire_version if up is not None else None
    say("edgeline: node %s, topic %s from seq %d, %d owed; uplink %s"
        % (cfg["node_id"], first, lg.next_seq, ob.depth,
           "%s:%d" % (cfg["gateway"]["host"], cfg["gateway"]["port"]) if up else "none (log only)"))
    taken = 0
    rejected = 0
    errors = 0
    synced = 0
    clock_set = False
    finished = False
    peak = 0
    uptime = 0
    t_prev = _ticks_ms()
    next_sample = 0
    next_sync = 0
    while True:
        if feed:
            feed()
        t = _ticks_ms()
        uptime += _ticks_diff(t, t_prev)
        t_prev = t
        sampling = not limit or taken < limit
        if sampling and uptime >= next_sample:
            n = lg.next_seq
            try:
                lg.append(codec.dumps(sample(n)), ts=clock.now(wall_ms()), now_ms=uptime)
            except LogFull:
                rejected += 1
            except (OSError, EdgelineError) as e:
                errors += 1
                say("edgeline: append failed: %s" % e)
            taken += 1
            next_sample += sample_ms
            if next_sample < uptime:  # fell behind (a long sync): skip, do not burst
                next_sample = uptime + sample_ms
        try:
            for name in topics:
                topics[name][0].tick(uptime)
            if not sampling and not finished:
                # the last reading is taken: commit, and send what is owed now
                store.flush()
                finished = True
                next_sync = uptime
        except (OSError, EdgelineError) as e:
            errors += 1
            say("edgeline: commit failed: %s" % e)
        if up is not None and uptime >= next_sync and (up.pending or up.connected):
            if network_up is None or network_up(cfg):
                if set_clock is not None and not clock_set:
                    clock_set = set_clock(cfg)
                try:
                    n = up.sync_once(s["max_rounds"])
                    synced += n
                    backoff = s["backoff_min_ms"]
                    next_sync = uptime + (s["interval_ms"] if not up.pending else 0)
                    if not sampling and not up.pending:
                        up.close()
                except EdgelineError as e:
                    # UplinkError (network, gateway) or a storage error: one line, retry later.
                    say("edgeline: sync failed: %s; retry in %d ms" % (e, backoff))
                    next_sync = uptime + _jitter(backoff)
                    backoff = min(backoff * 2, s["backoff_max_ms"])
                if up.wire_version != wire_version:  # said once per change, not per connect
                    wire_version = up.wire_version
                    if wire_version == 1:
                        say("edgeline: the gateway speaks wire version 1 only: syncing without log "
                            "incarnations; upgrade the gateway")
                    else:
                        say("edgeline: the gateway speaks wire version %d again" % wire_version)
            else:
                next_sync = uptime + _jitter(backoff)
                backoff = min(backoff * 2, s["backoff_max_ms"])
        if not sampling and (up is None or not up.pending):
            break
        gc.collect()
        live = gc.mem_alloc()
        if live > peak:
            peak = live
        wait = (next_sample if sampling else next_sync) - uptime
        if up is not None and up.pending and next_sync - uptime < wait:
            wait = next_sync - uptime
        if wait > 0:
            _sleep_ms(wait if wait < 1000 else 1000)
    if up is not None:
        up.close()
    result = {"taken": taken, "last_seq": lg.last_seq, "acked": ob.acked, "synced": synced,
              "rejected": rejected, "errors": errors, "peak_alloc_bytes": peak,
              "wire_version": wire_version}
    store.close()
    return result


def status(path=CONFIG_PATH):
    """One JSON line: per topic what is on flash, acknowledged and owed (what
    `edgeline board status` reads back over the REPL)."""
    cfg = load_settings(path)
    store, topics = open_logs(cfg)
    out = {"node_id": cfg["node_id"], "pending": 0, "topics": {}}
    for name in topics:
        lg, ob = topics[name]
        g = ob.gap()
        out["topics"][name] = {"last_seq": lg.last_seq, "acked": ob.acked, "pending": ob.depth,
                               "gap": [g[0], g[1]] if g else None, "size_bytes": lg.size_bytes,
                               "budget_bytes": lg.budget_bytes, "evicted": lg.evicted, "dropped": lg.dropped}
        out["pending"] += ob.depth
    out["storage_budget_bytes"] = cfg["storage_budget_bytes"]
    try:
        st = os.statvfs(cfg["data_dir"])
        out["fs_free_bytes"] = st[0] * st[3]
    except (OSError, AttributeError):
        pass
    store.close()
    print(json.dumps(out))
    return out


def main(sample, wall_ms, network_up=None, set_clock=None, watchdog=None, socket_module=None, path=CONFIG_PATH):
    """What a board's main.py calls: load the settings and run; one line on any error
    that stops the loop (settings, flash), instead of a traceback."""
    try:
        cfg = load_settings(path)
        res = run(cfg, sample, wall_ms, network_up, set_clock, watchdog, socket_module)
    except (OSError, EdgelineError) as e:
        print("edgeline: stopped: %s" % e)
        return None
    except MemoryError:
        # The heap is too small for these settings (batch sizes, buffers) or this way of
        # loading the code: freeze it or use ROMFS (docs/boards.md). Committed records
        # are safe on flash; a watchdog, if set, restarts the board.
        gc.collect()
        print("edgeline: stopped: out of memory (%d bytes free)" % gc.mem_free())
        return None
    print("edgeline: done %s" % json.dumps(res))
    return res
