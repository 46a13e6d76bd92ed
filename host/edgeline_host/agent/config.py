"""The edge agent's configuration: ``edge.yaml`` parsed into frozen dataclasses.

Theory of operation
-------------------
``load_config(path)`` reads the file (UTF-8 YAML, duplicate keys refused), then
``parse_config(mapping, source)`` walks it top-down, one section at a time, and builds plain
frozen dataclasses. Every value is checked where it is read; the first problem stops the
walk with one ``ConfigError`` whose message is a single line::

    edge.yaml: edge.sync_topics[1].direction: must be one of edge_to_cloud, cloud_to_edge, bidirectional (got 'up')

i.e. ``<file>: <field path>: <what is wrong>``. Unknown keys are errors (with a "did you
mean" for close spellings), never silently ignored: a misspelt ``retention`` would
otherwise keep data forever. After the sections, cross-checks run: duplicate topics, a
topic both synced and local, budgets against the device's storage, the endpoint a synced
topic needs, topics named by the MQTT ingest map.

Never pretend. A key the edge-first proposal's ``edge.yaml`` names but nothing in edgeline
acts on yet (``_NOT_YET_BY_KEY``: conflicts, the mesh, resource limits other
than storage) is refused by name, in one line that names the issue that will bring it and
says what to do instead; only the one value that means what edgeline does today (``none``,
``0``, ``enabled: false``) is accepted. Values not implemented yet of keys that do act
(``eviction_policy: lru``) are refused the same way (``_NOT_YET_BY_VALUE``). docs/config.md
marks each "not yet"; tests/agent/test_config_keys.py checks that every key it lists is
either acted on or refused.

Units. Sizes are bytes: an int, or text such as ``"256MB"``, ``"1.5MB"``, ``"512KiB"``.
**Size prefixes are binary**: ``K``/``KB``/``KiB`` = 1024, ``M``/``MB``/``MiB`` = 2**20,
``G``/``GB``/``GiB`` = 2**30, ``T``/``TB``/``TiB`` = 2**40 (case-insensitive), as the seed's
``bandwidth_limit: 1048576  # 1MB/s`` reads; fractions round down to a whole byte.
Durations are text with units ``ms``, ``s``, ``m`` (minutes), ``h``, ``d`` (``"7d"``,
``"1h30m"``, ``"500ms"``); a key whose name carries its unit (``interval_secs``,
``group_ms``) also takes a plain number in that unit. Every duration is held in
milliseconds, every size in bytes, and the dataclass field names say so.

The node key (``key`` inline, or ``key_file``) is a secret: it is never part of an error
message, and ``NodeKey``'s repr hides it, so logging an ``EdgeConfig`` cannot leak it.
"""
import difflib
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Optional, Tuple
from urllib.parse import urlsplit

from edgeline.errors import ConfigError
from edgeline.store import topic_dirname
from edgeline.sync import is_node_id

from ..nodekeys import NodeKey, decode_key, read_key_file
from ..transports.mqtt import filter_covers
from ..yamlfile import DAY_MS as _DAY
from ..yamlfile import DURATION_HELP as _DURATION_HELP
from ..yamlfile import HOUR_MS as _HOUR
from ..yamlfile import MAX_SIZE_BYTES as _MAX_SIZE
from ..yamlfile import MINUTE_MS as _MINUTE
from ..yamlfile import SECOND_MS as _SECOND
from ..yamlfile import BadValue as _Invalid
from ..yamlfile import GiB, KiB, MiB, load_yaml_file
from ..yamlfile import duration_text_ms as _duration_text_ms
from ..yamlfile import one_line as _one_line
from ..yamlfile import show_value as _show
from ..yamlfile import size_bytes as _size

__all__ = [
    "Address",
    "CircuitBreaker",
    "EdgeConfig",
    "GatewayEndpoint",
    "HttpIngest",
    "IngestSettings",
    "MqttIngest",
    "ResourceLimits",
    "RetryPolicy",
    "SyncSettings",
    "TopicConfig",
    "load_config",
    "parse_config",
]

DIRECTIONS = ("edge_to_cloud", "cloud_to_edge", "bidirectional")
LOCAL = "local"  # the direction of a local_topics entry
SYNC_POLICIES = ("every", "group", "none")
FULL_POLICIES = ("drop_oldest", "reject", "drop_newest")
EVICTION_POLICIES = ("oldest", "priority")
GATEWAY_SCHEMES = ("http", "https", "mqtt", "mqtts")
# edge.sync.compression: how BATCHes travel (docs/spec/wire.md, "Compressed batches");
# each falls back to what the gateway accepts (an older gateway: plain BATCH)
COMPRESSIONS = ("none", "columnar", "zstd")

# Keys that nothing in edgeline acts on yet, refused by name (see the module doc):
# (section, key) -> (the value that means what edgeline does today and is accepted, or
# _NO_VALUE; the issue that will bring the setting; what to do instead).
_NO_VALUE = object()
_MESH_LATER = "remove the mesh section (the node syncs with its gateway only)"
_NOT_YET_BY_KEY = {
    ("edge", "location"): (_NO_VALUE, 12, "remove the key (a node's location is not used yet)"),
    ("edge.resources", "max_memory"): (0, 13, "remove the key (the agent's memory is not capped)"),
    ("edge.resources", "max_cpu_percent"): (100, 13, "remove the key (the agent's CPU use is not capped)"),
    ("edge.resources", "max_file_descriptors"): (0, 13, "remove the key (the system's limit applies)"),
    ("edge.resources", "max_connections"): (0, 13, "remove the key (connections are not capped)"),
    ("edge.mesh", "enabled"): (False, 12, _MESH_LATER),
    ("edge.mesh", "discovery"): (_NO_VALUE, 12, _MESH_LATER),
    ("edge.mesh", "peers"): (_NO_VALUE, 12, _MESH_LATER),
    ("edge.mesh", "listen"): (_NO_VALUE, 12, _MESH_LATER),
    ("edge.mesh", "max_peers"): (_NO_VALUE, 12, _MESH_LATER),
    ("edge.mesh", "gossip_interval_secs"): (_NO_VALUE, 12, _MESH_LATER),
    ("edge.mesh", "replicated_topics"): (_NO_VALUE, 12, _MESH_LATER),
}
# Values not implemented yet of keys that act: key -> {value: (issue, what to use instead)}.
_NOT_YET_BY_VALUE = {
    "eviction_policy": {
        "lru": (13, "use oldest or priority"),
        "compact": (10, "use oldest or priority"),
    },
}

_DEFAULT_PORTS = {"http": 80, "https": 443, "mqtt": 1883, "mqtts": 8883}
_MQTT_TOPIC_PREFIX = "edgeline"
_MAX_NAME_BYTES = 255  # a topic's directory name must fit one file-system name

# -- schema: the keys each mapping accepts (docs/config.md lists every one; a test checks) --

TOP_KEYS = ("edge",)
EDGE_KEYS = (
    "node_id",
    "location",
    "cloud_endpoint",
    "data_dir",
    "key",
    "key_file",
    "sync",
    "resources",
    "conflict_resolution",
    "sync_topics",
    "local_topics",
    "mesh",
    "ingest",
    "health",
)
SYNC_KEYS = (
    "enabled",
    "interval_secs",
    "batch_size",
    "compression",
    "bandwidth_limit",
    "max_queue_size",
    "retry",
    "circuit_breaker",
)
RETRY_KEYS = ("initial_ms", "max_ms", "multiplier", "jitter")
BREAKER_KEYS = ("failures", "open_secs")
RESOURCE_KEYS = (
    "max_memory",
    "max_storage",
    "max_cpu_percent",
    "max_file_descriptors",
    "max_connections",
    "eviction_policy",
)
TOPIC_KEYS = (
    "topic",
    "direction",
    "kind",
    "sync",
    "group_records",
    "group_ms",
    "full_policy",
    "priority",
    "budget",
    "retention",
    "segment_size",
    "conflict_resolution",
    "type",
)
LOCAL_TOPIC_KEYS = tuple(k for k in TOPIC_KEYS if k != "direction")
HEALTH_KEYS = ("uplink_failing_secs", "storage_full_percent", "min_free_disk")
MESH_KEYS = ("enabled", "discovery", "peers", "listen", "max_peers", "gossip_interval_secs", "replicated_topics")
INGEST_KEYS = ("http", "mqtt", "dedupe")
HTTP_KEYS = ("listen",)
MQTT_KEYS = ("broker", "listen", "users", "topics", "map")
DEDUPE_KEYS = ("max_entries", "max_age_secs")



# ---------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Address:
    """A host and a port; ``str()`` gives ``host:port`` (``[v6]:port``)."""

    host: str
    port: int

    def __str__(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)


@dataclass(frozen=True)
class GatewayEndpoint:
    """``cloud_endpoint`` taken apart. ``transport`` is ``http`` or ``mqtt``.

    For MQTT the URL's path is a topic prefix (default ``edgeline``): the agent publishes
    to ``<prefix>/<node_id>/up`` and subscribes to ``<prefix>/<node_id>/down``.
    """

    url: str
    scheme: str
    host: str
    port: int
    path: str
    transport: str
    tls: bool
    uplink_topic: Optional[str] = None
    downlink_topic: Optional[str] = None


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between failed exchanges: initial_ms × multiplier^n, capped at max_ms, less
    up to ``jitter`` of it at random."""

    initial_ms: int = 500
    max_ms: int = 60000
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay_ms(self, attempt, rand):
        """The wait before retry ``attempt`` (0 for the first); ``rand`` in [0, 1) comes
        from the caller's random source, so this stays a pure function."""
        delay = float(self.initial_ms)
        for _ in range(min(attempt, 200)):
            delay *= self.multiplier
            if delay >= self.max_ms:
                break
        delay = min(delay, float(self.max_ms))
        return int(delay * (1.0 - self.jitter * rand))


@dataclass(frozen=True)
class CircuitBreaker:
    """After ``failures`` consecutive failed exchanges the uplink stops trying for
    ``open_ms``, then tries once (half-open). ``failures`` 0 disables the breaker."""

    failures: int = 5
    open_ms: int = 30000


@dataclass(frozen=True)
class SyncSettings:
    enabled: bool = True
    interval_ms: int = 30000
    batch_size: int = 1000
    bandwidth_bytes_per_sec: int = 0  # 0: unlimited
    compression: str = "zstd"  # one of COMPRESSIONS
    max_queue_records: int = 0  # 0: bounded only by the topics' budgets
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreaker = CircuitBreaker()


@dataclass(frozen=True)
class ResourceLimits:
    max_storage_bytes: int = 1 * GiB  # the device budget the topics' logs share
    eviction_policy: str = "oldest"


@dataclass(frozen=True)
class HealthSettings:
    """When ``/v1/health`` says degraded (edgeline_host.health has the rules)."""

    uplink_failing_ms: int = 300 * 1000  # the uplink failing this long: degraded
    storage_full_percent: int = 90  # storage used over this share of max_storage: degraded
    min_free_disk_bytes: int = 64 * MiB  # less free on the data directory's disk: degraded


@dataclass(frozen=True)
class TopicConfig:
    """One topic: how it syncs and how its log is kept (``log_options()`` for the core)."""

    name: str
    direction: str  # one of DIRECTIONS, or LOCAL
    sync: str = "group"
    group_records: int = 1000
    group_ms: int = 1000
    full_policy: str = "drop_oldest"
    priority: int = 0
    budget_bytes: int = 1 * GiB
    retention_ms: int = 0  # 0: kept until the budget needs the room
    segment_bytes: int = 64 * KiB
    table: object = None  # edgeline_host.tables.TableSettings of a kind: table topic; None for a stream

    @property
    def is_local(self):
        return self.direction == LOCAL

    @property
    def sends(self):
        """Records appended here go up to the gateway."""
        return self.direction in ("edge_to_cloud", "bidirectional")

    @property
    def receives(self):
        """Records come down from the gateway (PULL / DATA)."""
        return self.direction in ("cloud_to_edge", "bidirectional")

    def log_options(self):
        """Keyword arguments for ``edgeline.store.Store.log(topic, **options)``."""
        return {
            "segment_bytes": self.segment_bytes,
            "budget_bytes": self.budget_bytes,
            "full_policy": self.full_policy,
            "sync": self.sync,
            "group_records": self.group_records,
            "group_ms": self.group_ms,
            "retention_ms": self.retention_ms,
            "priority": self.priority,
        }


@dataclass(frozen=True)
class HttpIngest:
    listen: Address = Address("127.0.0.1", 8080)


@dataclass(frozen=True)
class MqttIngest:
    """Subscribe to ``topics`` on a local broker (``broker``; None: no bridge), and/or
    take publishes on the agent's own MQTT endpoint (``listen``; None: off), whose
    CONNECTs must name one of ``users`` (user -> password) when there are any.
    ``topic_map`` routes MQTT topics (by filter, first match wins) to edgeline topics,
    for both. Without a map an MQTT topic is used as the edgeline topic name as it is."""

    broker: Optional[Address] = Address("127.0.0.1", 1883)
    topics: Tuple[str, ...] = ("#",)
    topic_map: Tuple[Tuple[str, str], ...] = ()
    listen: Optional[Address] = None
    users: Tuple[Tuple[str, str], ...] = ()

    def route(self, mqtt_topic):
        """The edgeline topic a message on ``mqtt_topic`` goes to, or None (not routed)."""
        if self.topic_map:
            for flt, target in self.topic_map:
                if filter_covers(flt, mqtt_topic):
                    return target
            return None
        for flt in self.topics:
            if filter_covers(flt, mqtt_topic):
                return mqtt_topic
        return None


@dataclass(frozen=True)
class IngestDedupe:
    """The bounds of each topic's ingest dedupe window (agent/idempotency.py): how many
    keyed requests / MQTT packet ids it remembers, and for how long."""

    max_entries: int = 10000
    max_age_ms: int = 86400 * 1000


@dataclass(frozen=True)
class IngestSettings:
    http: Optional[HttpIngest] = None
    mqtt: Optional[MqttIngest] = None
    dedupe: IngestDedupe = IngestDedupe()


@dataclass(frozen=True)
class EdgeConfig:
    source: str
    node_id: str
    data_dir: str
    cloud_endpoint: Optional[str] = None
    gateway: Optional[GatewayEndpoint] = None
    key: Optional[NodeKey] = None  # inline; otherwise read from key_file
    key_file: Optional[str] = None
    sync: SyncSettings = SyncSettings()
    resources: ResourceLimits = ResourceLimits()
    topics: Tuple[TopicConfig, ...] = ()  # sync_topics in order, then local_topics
    ingest: IngestSettings = IngestSettings()
    health: HealthSettings = HealthSettings()

    def topic(self, name):
        """The TopicConfig named ``name``, or None."""
        for t in self.topics:
            if t.name == name:
                return t
        return None

    @property
    def sync_topics(self):
        return tuple(t for t in self.topics if not t.is_local)

    @property
    def local_topics(self):
        return tuple(t for t in self.topics if t.is_local)

    def node_key(self):
        """The node's key: the inline ``key``, else read from ``key_file`` now.

        Raises ConfigError (one line, never showing the key) when the file is missing,
        unreadable or does not hold 32 bytes.
        """
        if self.key is not None:
            return self.key
        return read_key_file(self.key_file, self.source)


# ---------------------------------------------------------------------------- the walk


def _join(path, key):
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return "%s.%s" % (path, key) if path else key
    return "%s[%s]" % (path, _show(key))


class _Ctx:
    def __init__(self, source):
        self.source = source

    def fail(self, path, what):
        raise ConfigError(_one_line("%s: %s: %s" % (self.source, path, what)))


def _mapping(ctx, path, value, allowed, what="a mapping"):
    """``value`` as a dict whose keys are all in ``allowed`` (None counts as empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(path, "must be %s (got %s)" % (what, _show(value)))
    for key in value:
        if not isinstance(key, str):
            ctx.fail(_join(path, key), "keys must be names (got %s)" % _show(key))
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                hint = "did you mean %r?" % close[0]
            else:
                hint = "expected one of: %s" % ", ".join(allowed)
            ctx.fail(_join(path, key), "unknown key (%s)" % hint)
    return value


def _bool(ctx, path, value, default):
    if value is None:
        return default
    if not isinstance(value, bool):
        ctx.fail(path, "must be true or false (got %s)" % _show(value))
    return value


def _int(ctx, path, value, default, lo, hi):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(path, "must be an integer (got %s)" % _show(value))
    if not lo <= value <= hi:
        ctx.fail(path, "must be between %d and %d (got %s)" % (lo, hi, _show(value)))
    return value


def _float(ctx, path, value, default, lo, hi):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ctx.fail(path, "must be a number (got %s)" % _show(value))
    if isinstance(value, float) and not math.isfinite(value):
        ctx.fail(path, "must be a finite number (got %s)" % _show(value))
    if not lo <= value <= hi:
        ctx.fail(path, "must be between %s and %s (got %s)" % (lo, hi, _show(value)))
    return float(value)


def _str(ctx, path, value, default=None):
    if value is None:
        return default
    if not isinstance(value, str):
        ctx.fail(path, "must be text (got %s%s)" % (_show(value), _quote_hint(value)))
    return value


def _quote_hint(value):
    return "; quote it" if isinstance(value, (bool, int, float)) else ""


def _choice(ctx, path, value, default, choices, not_yet=None):
    """``value`` if it is one of ``choices``; a value of ``not_yet`` ({value: (issue,
    instead)}) is refused as not implemented yet."""
    if value is None:
        return default
    if isinstance(value, str) and value in choices:
        return value
    if not_yet and isinstance(value, str) and value in not_yet:
        issue, instead = not_yet[value]
        ctx.fail(path, "%s is not implemented yet (issue #%d); %s" % (value, issue, instead))
    ctx.fail(path, "must be one of %s (got %s)" % (", ".join(choices), _show(value)))


def _refuse_not_yet(ctx, path, m, section):
    """Refuse, by name, a key of mapping ``m`` that nothing acts on yet (``_NOT_YET_BY_KEY``
    under ``section``), unless it is absent, null, or the value that means what edgeline
    does today."""
    for key, value in m.items():
        entry = _NOT_YET_BY_KEY.get((section, key))
        if entry is None or value is None:
            continue
        off, issue, instead = entry
        if off is not _NO_VALUE and value == off and isinstance(value, bool) == isinstance(off, bool):
            continue
        what = "not implemented yet"
        if isinstance(off, str) and isinstance(value, str):  # a choice: say which one
            word = re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", value)
            what = "%s is %s" % (value if word else _show(value), what)
        ctx.fail(_join(path, key), "%s (issue #%d); %s" % (what, issue, instead))


def _size_field(ctx, path, value, default, lo, hi=_MAX_SIZE, zero_ok=False):
    if value is None:
        return default
    try:
        n = _size(value)
    except _Invalid as e:
        ctx.fail(path, str(e))
    if zero_ok and n == 0:
        return 0
    if n < lo:
        ctx.fail(path, "must be at least %s (got %s%s)" % (_bytes_text(lo), _show(value), _unit_hint(value)))
    if n > hi:
        ctx.fail(path, "must be at most %s (got %s)" % (_bytes_text(hi), _show(value)))
    return n


def _unit_hint(value):
    return "; sizes without a unit are bytes" if isinstance(value, int) else ""


def _bytes_text(n):
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return "%d %s" % (n // size, unit)
    return "%d bytes" % n


def _duration_field(ctx, path, value, default, unit_ms, lo_ms, hi_ms, bare_ok=True, zero_ok=False):
    """A duration in ms. A plain number counts in ``unit_ms`` when the key names its unit
    (``bare_ok``); otherwise only 0 is accepted bare. ``zero_ok``: 0 is allowed below lo_ms."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            ms = _duration_text_ms(value)
        except _Invalid as e:
            ctx.fail(path, str(e))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            ctx.fail(path, "must be a finite number (got %s)" % _show(value))
        if value < 0:
            ctx.fail(path, "must not be negative (got %s)" % _show(value))
        if not bare_ok and value != 0:
            ctx.fail(path, "needs a unit (ms, s, m, h, d), e.g. '7d' or '12h'; 0 keeps everything (got %s)"
                     % _show(value))
        # every unit is >= 1 ms, so a number above hi_ms is out of range in any unit
        ms = hi_ms + 1 if value > hi_ms else int(Decimal(repr(value)) * unit_ms)
    else:
        ctx.fail(path, "must be %s (got %s)" % (_DURATION_HELP, _show(value)))
    if ms == 0 and (zero_ok or lo_ms == 0):
        return 0
    if not lo_ms <= ms <= hi_ms:
        ctx.fail(path, "must be between %s and %s (got %s)" % (_ms_text(lo_ms), _ms_text(hi_ms), _show(value)))
    return ms


def _ms_text(ms):
    if ms == 0:
        return "0"
    for unit, size in (("d", _DAY), ("h", _HOUR), ("m", _MINUTE), ("s", _SECOND)):
        if ms >= size and ms % size == 0:
            return "%d%s" % (ms // size, unit)
    return "%dms" % ms


def _list(ctx, path, value, what="a list"):
    if value is None:
        return []
    if not isinstance(value, list):
        ctx.fail(path, "must be %s (got %s)" % (what, _show(value)))
    return value


def _address(ctx, path, value, default, default_port=None, listen=False):
    if value is None:
        return default
    if not isinstance(value, str):
        ctx.fail(path, "must be 'host:port' text (got %s)" % _show(value))
    text = value.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]+))?|([^\s:/\[\]@]+)(?::([0-9]+))?", text)
    if m is None:
        ctx.fail(path, "must be 'host:port' (got %s)" % _show(value))
    host = m.group(1) or m.group(3)
    port_text = m.group(2) or m.group(4)
    if port_text is None:
        if default_port is None:
            ctx.fail(path, "must name a port: 'host:port' (got %s)" % _show(value))
        return Address(host, default_port)
    port = int(port_text)
    if port > 65535 or (port == 0 and not listen):
        ctx.fail(path, "port must be between %d and 65535 (got %s)" % (0 if listen else 1, _show(value)))
    return Address(host, port)


def _check_name(ctx, path, value, what):
    """A topic name: text, 1-128 characters, no control characters, storable as a directory."""
    if not isinstance(value, str):
        ctx.fail(path, "%s must be text (got %s%s)" % (what, _show(value), _quote_hint(value)))
    if not 1 <= len(value) <= 128:
        ctx.fail(path, "%s must be 1 to 128 characters (got %d characters)" % (what, len(value)))
    for c in value:
        if unicodedata.category(c) in ("Cc", "Cs"):
            ctx.fail(path, "%s must not contain control characters (got %s)" % (what, _show(value)))
    if value in (".", ".."):
        ctx.fail(path, "%s cannot be %r" % (what, value))
    if len(topic_dirname(value).encode()) > _MAX_NAME_BYTES:
        ctx.fail(path, "%s is too long as a directory name once escaped (%s): use fewer symbols or non-ASCII letters"
                 % (what, _show(value)))
    return value


def _check_mqtt_filter(ctx, path, value):
    if not isinstance(value, str) or not value:
        ctx.fail(path, "must be an MQTT topic filter like 'sensors/#' (got %s)" % _show(value))
    if "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > 65535:
        ctx.fail(path, "is not a valid MQTT topic filter (got %s)" % _show(value))
    levels = value.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            ctx.fail(path, "'#' must be a whole level and the last one (got %s)" % _show(value))
        if "+" in level and level != "+":
            ctx.fail(path, "'+' must be a whole level (got %s)" % _show(value))
    return value


# ---------------------------------------------------------------------------- sections

def _parse_node_id(ctx, edge):
    path = "edge.node_id"
    value = edge.get("node_id")
    if value is None:
        ctx.fail(path, "required: the node's name, 1-64 characters of A-Z a-z 0-9 . _ -")
    if not isinstance(value, str):
        ctx.fail(path, "must be text (got %s%s)" % (_show(value), _quote_hint(value)))
    if not is_node_id(value):  # the protocol's rule (docs/spec/wire.md): what the gateway accepts
        ctx.fail(path, "must be 1-64 characters of A-Z a-z 0-9 . _ -, not . or .. (got %s)" % _show(value))
    return value


def _parse_gateway(ctx, value, node_id):
    path = "edge.cloud_endpoint"
    if value is None:
        return None
    if not isinstance(value, str):
        ctx.fail(path, "must be a URL text (got %s)" % _show(value))
    wanted = "an http://, https://, mqtt:// or mqtts:// URL"
    try:
        parts = urlsplit(value.strip())
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        ctx.fail(path, "must be %s (%s; got %s)" % (wanted, e, _show(value)))
    scheme = parts.scheme.lower()
    if scheme not in GATEWAY_SCHEMES:
        ctx.fail(path, "must be %s (got %s)" % (wanted, _show(value)))
    if not host:
        ctx.fail(path, "must name a host (got %s)" % _show(value))
    if parts.username is not None or parts.password is not None:
        ctx.fail(path, "must not hold a user or password: the node authenticates with its key")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        ctx.fail(path, "must not have a query or fragment (got %s)" % _show(value))
    if port == 0:
        ctx.fail(path, "port must be between 1 and 65535 (got %s)" % _show(value))
    port = port or _DEFAULT_PORTS[scheme]
    transport = "http" if scheme.startswith("http") else "mqtt"
    tls = scheme in ("https", "mqtts")
    if transport == "http":
        return GatewayEndpoint(value, scheme, host, port, parts.path or "/", transport, tls)
    prefix = parts.path.strip("/") or _MQTT_TOPIC_PREFIX
    if "+" in prefix or "#" in prefix or "\x00" in prefix or "//" in prefix:
        ctx.fail(path, "the path is the MQTT topic prefix and must not hold '+', '#' or empty levels (got %s)"
                 % _show(value))
    return GatewayEndpoint(
        value, scheme, host, port, parts.path or "/", transport, tls,
        uplink_topic="%s/%s/up" % (prefix, node_id),
        downlink_topic="%s/%s/down" % (prefix, node_id),
    )


def _parse_retry(ctx, value):
    path = "edge.sync.retry"
    m = _mapping(ctx, path, value, RETRY_KEYS)
    d = RetryPolicy()
    initial = _duration_field(ctx, path + ".initial_ms", m.get("initial_ms"), d.initial_ms, 1, 1, _HOUR)
    max_ms = _duration_field(ctx, path + ".max_ms", m.get("max_ms"), max(d.max_ms, initial), 1, 1, _DAY)
    if max_ms < initial:
        ctx.fail(path + ".max_ms", "must be at least initial_ms (%d), got %d" % (initial, max_ms))
    return RetryPolicy(
        initial_ms=initial,
        max_ms=max_ms,
        multiplier=_float(ctx, path + ".multiplier", m.get("multiplier"), d.multiplier, 1, 10),
        jitter=_float(ctx, path + ".jitter", m.get("jitter"), d.jitter, 0, 1),
    )


def _parse_breaker(ctx, value):
    path = "edge.sync.circuit_breaker"
    m = _mapping(ctx, path, value, BREAKER_KEYS)
    d = CircuitBreaker()
    return CircuitBreaker(
        failures=_int(ctx, path + ".failures", m.get("failures"), d.failures, 0, 1000),
        open_ms=_duration_field(ctx, path + ".open_secs", m.get("open_secs"), d.open_ms, _SECOND, 1, _DAY),
    )


def _parse_sync(ctx, value):
    path = "edge.sync"
    m = _mapping(ctx, path, value, SYNC_KEYS)
    _refuse_not_yet(ctx, path, m, path)
    d = SyncSettings()
    bw = m.get("bandwidth_limit")
    if isinstance(bw, str) and re.search(r"/\s*s(ec)?\s*$", bw):
        bw = re.sub(r"/\s*s(ec)?\s*$", "", bw)  # "1MB/s" reads as it should
    queue = m.get("max_queue_size")
    if isinstance(queue, str):
        ctx.fail(path + ".max_queue_size", "must be a number of records (got %s); bytes are bounded by each "
                 "topic's budget and resources.max_storage" % _show(queue))
    return SyncSettings(
        enabled=_bool(ctx, path + ".enabled", m.get("enabled"), d.enabled),
        interval_ms=_duration_field(ctx, path + ".interval_secs", m.get("interval_secs"), d.interval_ms,
                                    _SECOND, 0, 7 * _DAY),
        batch_size=_int(ctx, path + ".batch_size", m.get("batch_size"), d.batch_size, 1, 100000),
        bandwidth_bytes_per_sec=_size_field(ctx, path + ".bandwidth_limit", bw, d.bandwidth_bytes_per_sec, 0),
        compression=_choice(ctx, path + ".compression", m.get("compression"), d.compression, COMPRESSIONS),
        max_queue_records=_int(ctx, path + ".max_queue_size", queue, d.max_queue_records, 0, 10 ** 12),
        retry=_parse_retry(ctx, m.get("retry")),
        circuit_breaker=_parse_breaker(ctx, m.get("circuit_breaker")),
    )


def _parse_resources(ctx, value):
    path = "edge.resources"
    m = _mapping(ctx, path, value, RESOURCE_KEYS)
    _refuse_not_yet(ctx, path, m, path)
    d = ResourceLimits()
    return ResourceLimits(
        max_storage_bytes=_size_field(ctx, path + ".max_storage", m.get("max_storage"), d.max_storage_bytes,
                                      64 * KiB),
        eviction_policy=_choice(ctx, path + ".eviction_policy", m.get("eviction_policy"), d.eviction_policy,
                                EVICTION_POLICIES, _NOT_YET_BY_VALUE["eviction_policy"]),
    )


def _parse_topic(ctx, path, entry, local, resources, default_strategy=None, base_dir=None):
    if local and isinstance(entry, str):
        entry = {"topic": entry}
    allowed = LOCAL_TOPIC_KEYS if local else TOPIC_KEYS
    if local and isinstance(entry, dict) and "direction" in entry:
        ctx.fail(path + ".direction", "local topics have no direction (move the topic to sync_topics to sync it)")
    what = "a topic name or a mapping with 'topic'" if local else "a mapping with 'topic' and 'direction'"
    if not isinstance(entry, dict):
        ctx.fail(path, "must be %s (got %s)" % (what, _show(entry)))
    m = _mapping(ctx, path, entry, allowed, what)
    _refuse_not_yet(ctx, path, m, "topic")
    if m.get("topic") is None:
        ctx.fail(path + ".topic", "required: the topic's name")
    name = _check_name(ctx, path + ".topic", m["topic"], "a topic name")
    if local:
        direction = LOCAL
    else:
        if m.get("direction") is None:
            ctx.fail(path + ".direction", "required: one of %s" % ", ".join(DIRECTIONS))
        direction = _choice(ctx, path + ".direction", m["direction"], None, DIRECTIONS)
    d = TopicConfig(name, direction)
    priority = m.get("priority")
    if priority is not None and resources.eviction_policy != "priority":
        ctx.fail(path + ".priority", "only used with resources.eviction_policy: priority (it is %r)"
                 % resources.eviction_policy)
    segment = _size_field(ctx, path + ".segment_size", m.get("segment_size"), d.segment_bytes, KiB, GiB)
    max_storage = resources.max_storage_bytes
    budget = _size_field(ctx, path + ".budget", m.get("budget"), max_storage, KiB)
    if budget > max_storage:
        ctx.fail(path + ".budget", "must fit resources.max_storage (%s), got %s" % (_bytes_text(max_storage),
                                                                                 _show(m.get("budget"))))
    if budget < 2 * segment:
        if m.get("budget") is None:
            ctx.fail(path + ".segment_size", "two segments (%s) must fit the topic's budget, which defaults to "
                     "resources.max_storage (%s)" % (_bytes_text(2 * segment), _bytes_text(budget)))
        ctx.fail(path + ".budget", "must hold two segments of segment_size: at least %s (got %s)"
                 % (_bytes_text(2 * segment), _show(m.get("budget"))))
    from ..tables import parse_table_settings

    try:
        table = parse_table_settings(m, path, default_strategy, base_dir)
    except ConfigError as e:
        raise ConfigError(_one_line("%s: %s" % (ctx.source, e))) from None
    full_policy = _choice(ctx, path + ".full_policy", m.get("full_policy"), d.full_policy, FULL_POLICIES)
    if table is not None:
        # The replica is rebuilt from the log at start: a write evicted from it would be
        # gone from this replica only. Until compaction (issue #10) a table keeps every write.
        if m.get("full_policy") is None:
            full_policy = "reject"
        elif full_policy != "reject":
            ctx.fail(path + ".full_policy", "a table topic keeps every write until compaction is built (issue #10): "
                     "use reject (the default for a table), not %s" % full_policy)
        if m.get("retention") not in (None, 0, "0"):
            ctx.fail(path + ".retention", "a table topic keeps every write until compaction is built (issue #10): "
                     "remove the key")
    return TopicConfig(
        table=table,
        name=name,
        direction=direction,
        sync=_choice(ctx, path + ".sync", m.get("sync"), d.sync, SYNC_POLICIES),
        group_records=_int(ctx, path + ".group_records", m.get("group_records"), d.group_records, 1, 1000000),
        group_ms=_duration_field(ctx, path + ".group_ms", m.get("group_ms"), d.group_ms, 1, 0, _HOUR),
        full_policy=full_policy,
        priority=_int(ctx, path + ".priority", priority, d.priority, 0, 255),
        budget_bytes=budget,
        retention_ms=_duration_field(ctx, path + ".retention", m.get("retention"), d.retention_ms, 1, _SECOND,
                                     100 * 365 * _DAY, bare_ok=False, zero_ok=True),
        segment_bytes=segment,
    )


def _parse_default_strategy(ctx, edge, base_dir=None):
    """``edge.conflict_resolution``: the strategy of the register tables that give none."""
    from ..tables import parse_strategy

    value = edge.get("conflict_resolution")
    if value is None:
        return None
    try:
        parse_strategy(value, "edge.conflict_resolution", base_dir)
    except ConfigError as e:
        raise ConfigError(_one_line("%s: %s" % (ctx.source, e))) from None
    return value


def _parse_topics(ctx, edge, resources, base_dir=None):
    default_strategy = _parse_default_strategy(ctx, edge, base_dir)
    topics = []
    where = {}  # name -> path of its entry
    for section, local in (("sync_topics", False), ("local_topics", True)):
        path = "edge." + section
        for i, entry in enumerate(_list(ctx, path, edge.get(section))):
            entry_path = "%s[%d]" % (path, i)
            t = _parse_topic(ctx, entry_path, entry, local, resources, default_strategy, base_dir)
            if t.name in where:
                first = where[t.name]
                if first.startswith(path + "["):
                    ctx.fail(entry_path + ".topic", "duplicate topic %s (also %s)" % (_show(t.name), first[5:]))
                ctx.fail(entry_path + ".topic", "topic %s is also in %s: a topic is either synced or local"
                         % (_show(t.name), first[5:]))
            where[t.name] = entry_path
            topics.append(t)
    return tuple(topics)


def _check_mesh(ctx, value):
    """The mesh does not exist yet (issue #12): only ``enabled: false`` is accepted."""
    path = "edge.mesh"
    _refuse_not_yet(ctx, path, _mapping(ctx, path, value, MESH_KEYS), path)


def _parse_ingest(ctx, value, topics):
    path = "edge.ingest"
    m = _mapping(ctx, path, value, INGEST_KEYS)
    http = None
    if "http" in m:
        h = _mapping(ctx, path + ".http", m["http"], HTTP_KEYS)
        http = HttpIngest(listen=_address(ctx, path + ".http.listen", h.get("listen"), HttpIngest().listen,
                                          listen=True))
    mqtt = None
    if "mqtt" in m:
        mp = path + ".mqtt"
        q = _mapping(ctx, mp, m["mqtt"], MQTT_KEYS)
        by_name = {t.name: t for t in topics}
        routes = []
        raw_map = q.get("map")
        if raw_map is not None and not isinstance(raw_map, dict):
            ctx.fail(mp + ".map", "must be a mapping of MQTT topic filter -> edgeline topic (got %s)" % _show(raw_map))
        for flt, target in (raw_map or {}).items():
            p = _join(mp + ".map", flt)
            _check_mqtt_filter(ctx, p, flt)
            _check_name(ctx, p, target, "the edgeline topic")
            t = by_name.get(target)
            if t is None:
                ctx.fail(p, "unknown topic %s (not in sync_topics or local_topics)" % _show(target))
            if t.direction == "cloud_to_edge":
                ctx.fail(p, "topic %s is cloud_to_edge: the edge does not write to it" % _show(target))
            routes.append((flt, target))
        default_topics = tuple(f for f, _ in routes) or MqttIngest().topics
        subs = []
        for i, flt in enumerate(_list(ctx, mp + ".topics", q.get("topics"))):
            subs.append(_check_mqtt_filter(ctx, "%s.topics[%d]" % (mp, i), flt))
        listen = None
        if "listen" in q:
            listen = _address(ctx, mp + ".listen", q["listen"], None, default_port=1883, listen=True)
        # No broker named and an endpoint of its own: the agent bridges nothing.
        broker = None if listen is not None and "broker" not in q else \
            _address(ctx, mp + ".broker", q.get("broker"), MqttIngest().broker, default_port=1883)
        users = []
        raw_users = q.get("users")
        if raw_users is not None:
            if listen is None:
                ctx.fail(mp + ".users", "only the agent's own endpoint (ingest.mqtt.listen) takes logins; "
                         "a broker checks its own")
            if not isinstance(raw_users, dict) or not raw_users:
                ctx.fail(mp + ".users", "must be a mapping of user name -> password (got %s)" % _show(raw_users))
            for user, password in raw_users.items():
                p = _join(mp + ".users", user)
                if not isinstance(user, str) or not user:
                    ctx.fail(p, "a user name must be text (got %s)" % _show(user))
                if not isinstance(password, str) or not password:
                    ctx.fail(p, "the password must be text, not empty (got %s)" % _show(password))
                users.append((user, password))
        mqtt = MqttIngest(
            broker=broker,
            listen=listen,
            users=tuple(users),
            topics=tuple(subs) or default_topics,
            topic_map=tuple(routes),
        )
    dp = path + ".dedupe"
    dm = _mapping(ctx, dp, m.get("dedupe"), DEDUPE_KEYS)
    dd = IngestDedupe()
    dedupe = IngestDedupe(
        max_entries=_int(ctx, dp + ".max_entries", dm.get("max_entries"), dd.max_entries, 1, 10 ** 7),
        max_age_ms=_duration_field(ctx, dp + ".max_age_secs", dm.get("max_age_secs"), dd.max_age_ms, _SECOND,
                                   _SECOND, 365 * _DAY),
    )
    return IngestSettings(http=http, mqtt=mqtt, dedupe=dedupe)


def _parse_key(ctx, edge, base_dir, data_dir):
    key_text = edge.get("key")
    key_file = edge.get("key_file")
    if key_text is not None and key_file is not None:
        ctx.fail("edge.key", "give key or key_file, not both")
    if key_text is not None:
        if not isinstance(key_text, str):
            ctx.fail("edge.key", "must be text: 64 hex digits or base64 of 32 bytes (the value is not shown)")
        try:
            return decode_key(key_text), None
        except ValueError as e:
            ctx.fail("edge.key", str(e))
    if key_file is None:
        return None, os.path.join(data_dir, "node.key")
    key_file = _str(ctx, "edge.key_file", key_file)
    if not key_file or "\x00" in key_file:
        ctx.fail("edge.key_file", "must be a file path (got %s)" % _show(key_file))
    return None, _resolve(base_dir, key_file)


def _resolve(base_dir, p):
    p = os.path.expanduser(p)
    if base_dir is None or os.path.isabs(p):
        return p
    return os.path.normpath(os.path.join(base_dir, p))


def _parse_health(ctx, value):
    path = "edge.health"
    m = _mapping(ctx, path, value, HEALTH_KEYS)
    d = HealthSettings()
    return HealthSettings(
        uplink_failing_ms=_duration_field(ctx, path + ".uplink_failing_secs", m.get("uplink_failing_secs"),
                                          d.uplink_failing_ms, _SECOND, 0, 7 * _DAY),
        storage_full_percent=_int(ctx, path + ".storage_full_percent", m.get("storage_full_percent"),
                                  d.storage_full_percent, 1, 100),
        min_free_disk_bytes=_size_field(ctx, path + ".min_free_disk", m.get("min_free_disk"),
                                        d.min_free_disk_bytes, 0),
    )


def parse_config(mapping, source="edge.yaml", base_dir=None):
    """An EdgeConfig from the mapping a YAML file holds (``{"edge": {...}}``).

    ``source`` names the file in error messages. Relative ``data_dir`` and ``key_file``
    paths are joined to ``base_dir`` when given (``load_config`` passes the config file's
    directory). Raises ConfigError, one line, on the first problem found.
    """
    ctx = _Ctx(source)
    if mapping is None:
        raise ConfigError("%s: the file is empty (it must start with 'edge:')" % source)
    top = _mapping(ctx, "", mapping, TOP_KEYS) if isinstance(mapping, dict) else None
    if top is None:
        raise ConfigError("%s: must be a mapping with the key 'edge' (got %s)" % (source, _show(mapping)))
    if "edge" not in top:
        raise ConfigError("%s: edge: missing (the file must start with 'edge:')" % source)
    edge = _mapping(ctx, "edge", top["edge"], EDGE_KEYS)

    _refuse_not_yet(ctx, "edge", edge, "edge")
    node_id = _parse_node_id(ctx, edge)
    endpoint = edge.get("cloud_endpoint")
    gateway = _parse_gateway(ctx, endpoint, node_id)
    data_dir = _str(ctx, "edge.data_dir", edge.get("data_dir"))
    if data_dir is None:
        data_dir = os.path.join(".", "edgeline-data", node_id) if base_dir is None else \
            os.path.join(base_dir, "edgeline-data", node_id)
    else:
        if not data_dir or "\x00" in data_dir:
            ctx.fail("edge.data_dir", "must be a directory path (got %s)" % _show(data_dir))
        data_dir = _resolve(base_dir, data_dir)
    key, key_file = _parse_key(ctx, edge, base_dir, data_dir)
    sync = _parse_sync(ctx, edge.get("sync"))
    resources = _parse_resources(ctx, edge.get("resources"))
    topics = _parse_topics(ctx, edge, resources, base_dir)
    _check_mesh(ctx, edge.get("mesh"))
    ingest = _parse_ingest(ctx, edge.get("ingest"), topics)
    health = _parse_health(ctx, edge.get("health"))

    if sync.enabled and gateway is None and any(not t.is_local for t in topics):
        ctx.fail("edge.cloud_endpoint", "required: sync is enabled and sync_topics is not empty "
                 "(or set sync.enabled: false)")
    return EdgeConfig(
        source=source,
        node_id=node_id,
        data_dir=data_dir,
        cloud_endpoint=endpoint.strip() if isinstance(endpoint, str) else None,
        gateway=gateway,
        key=key,
        key_file=key_file,
        sync=sync,
        resources=resources,
        topics=topics,
        ingest=ingest,
        health=health,
    )


# ---------------------------------------------------------------------------- the file


def load_config(path):
    """Read, parse and check the config file at ``path``. ConfigError (one line) if bad."""
    source = os.fspath(path)
    doc = load_yaml_file(source)
    return parse_config(doc, source=source, base_dir=os.path.dirname(os.path.abspath(source)))
