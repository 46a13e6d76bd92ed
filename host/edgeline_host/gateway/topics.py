"""The gateway's cloud-to-edge topics: which topics it publishes and who may pull them.

Theory of operation
-------------------
The gateway accepts edge-to-cloud records on any topic (an edge's config decides what
it sends), but it only *publishes* on topics it is told about: the topics file given
with ``edgeline gateway --topics FILE``, a YAML mapping of topic name to its settings::

    setpoints:                     # every node in the keys file may pull it
      direction: cloud_to_edge     # the default; or bidirectional
    pos.promotions:
      direction: bidirectional
      nodes: [edge-1, edge-2]      # only these nodes may pull it
      max_record_bytes: 512        # refuse publishing a record over this (key + value)
    inventory.updates:
      direction: bidirectional
      kind: table                  # keyed state (docs/spec/tables.md); default stream
      type: register               # register (default), counter, set or map
      conflict_resolution: last_write_wins   # or {custom_merge: "pkg.module:function"} or {custom_merge: {wasm: path}}

* ``direction`` -- ``cloud_to_edge`` (the default) or ``bidirectional``: records
  published at the gateway go down to the edges. ``edge_to_cloud`` is accepted, to
  say so explicitly, and refuses publishing.
* ``nodes`` -- the node ids that may pull the topic (each must be in the keys file);
  without it every node in the keys file may. A node that PULLs a topic it may not
  gets ERROR ``unknown_topic`` (docs/spec/wire.md).
* ``max_record_bytes`` -- the largest record (key plus CBOR value) the publish API
  accepts for the topic; default 16 KiB, so a record fits an agent's default segment
  and message limits. Boards take far less (a board's ``max_message_bytes`` is 1 KiB
  by default): set it for topics boards pull.

* ``kind`` -- ``stream`` (the default) or ``table``: the gateway keeps a replica of a
  table topic (``edgeline_host.tables``) fed by every record of it, from edges and its
  own, and serves ``/v1/tables/{topic}``; ``type`` and ``conflict_resolution`` are the
  table's (docs/gateway.md, "Table topics").

Without a topics file the gateway publishes nothing and refuses every PULL.
"""
from edgeline.errors import ConfigError
from edgeline.sync import is_node_id

from ..tables import TABLE_KEYS, parse_table_settings
from ..yamlfile import load_yaml_file, parse_size

DIRECTIONS = ("cloud_to_edge", "bidirectional", "edge_to_cloud")
KEYS = ("direction", "nodes", "max_record_bytes") + TABLE_KEYS
DEFAULT_MAX_RECORD_BYTES = 16 * 1024
MAX_RECORD_BYTES = 1 << 20  # what one DATA of the default max_message_bytes can carry, about


class DownTopic:
    """One topic of the topics file."""

    __slots__ = ("name", "direction", "nodes", "max_record_bytes", "table")

    def __init__(self, name, direction="cloud_to_edge", nodes=None, max_record_bytes=DEFAULT_MAX_RECORD_BYTES,
                 table=None):
        self.name = name
        self.direction = direction
        self.nodes = nodes  # frozenset of node ids, or None: every node with a key
        self.max_record_bytes = max_record_bytes
        self.table = table  # tables.TableSettings of a table topic, None for a stream

    @property
    def publishes(self):
        return self.direction != "edge_to_cloud"

    def may_pull(self, node_id):
        return self.publishes and (self.nodes is None or node_id in self.nodes)

    def __repr__(self):
        return "DownTopic(%r, %r, nodes=%r, max_record_bytes=%d)" % (self.name, self.direction, self.nodes,
                                                                     self.max_record_bytes)


def parse_topics(data, keys, source="topics file", base_dir=None):
    """{name: DownTopic} from the mapping a topics file holds; ConfigError (one line,
    naming the file and topic) on anything wrong. ``keys`` is the gateway's node -> key
    mapping (names in ``nodes`` must be in it); ``base_dir`` the folder a WebAssembly
    merge's path is relative to (the topics file's)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("%s: must be a mapping of topic: settings" % source)
    out = {}
    for name, settings in data.items():
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise ConfigError("%s: topic %r: a topic is 1-128 characters of text" % (source, name))
        where = "%s: %s" % (source, name)
        if settings is None:
            settings = {}
        if isinstance(settings, str):
            settings = {"direction": settings}
        if not isinstance(settings, dict):
            raise ConfigError("%s: must be a mapping (%s)" % (where, ", ".join(KEYS)))
        for k in settings:
            if k not in KEYS:
                raise ConfigError("%s: unknown key %r (known: %s)" % (where, k, ", ".join(KEYS)))
        direction = settings.get("direction", "cloud_to_edge")
        if direction not in DIRECTIONS:
            raise ConfigError("%s.direction: must be one of %s (got %r)" % (where, ", ".join(DIRECTIONS), direction))
        nodes = settings.get("nodes")
        if nodes is not None:
            if not isinstance(nodes, list) or not nodes:
                raise ConfigError("%s.nodes: must be a non-empty list of node ids" % where)
            for n in nodes:
                if not isinstance(n, str) or not is_node_id(n):
                    raise ConfigError("%s.nodes: %r is not a node id" % (where, n))
                if n not in keys:
                    raise ConfigError("%s.nodes: %r is not in the keys file" % (where, n))
            nodes = frozenset(nodes)
        limit = settings.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)
        try:
            limit = parse_size(limit)
        except ConfigError as e:
            raise ConfigError("%s.max_record_bytes: %s" % (where, e)) from None
        if not 1 <= limit <= MAX_RECORD_BYTES:
            raise ConfigError("%s.max_record_bytes: must be 1 B to 1 MiB (got %d)" % (where, limit))
        table = parse_table_settings(settings, where, base_dir=base_dir)
        out[name] = DownTopic(name, direction, nodes, limit, table)
    return out


def load_topics(path, keys):
    """The topics file at path (see the module doc); ConfigError, one line, if wrong
    (a topic named twice included)."""
    import os

    return parse_topics(load_yaml_file(path, "the topics file"), keys, path, os.path.dirname(os.path.abspath(path)))
