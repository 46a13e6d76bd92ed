"""A device's logs under one root directory, sharing one storage budget by priority.

Theory of operation
-------------------
Each topic has its own RingLog in ``<root>/<topic dir>``. What the device uses is the sum
of the logs' claims (``RingLog.claimed_bytes``: their bytes, buffered ones included, plus
the room each may still fill without asking). A log that needs more than its lease asks
the store (``reclaim_for``), which frees one segment at a time in the order
docs/spec/log.md gives: fully acknowledged segments of any log (lowest priority first),
then the oldest segment of a lower-priority ``drop_oldest`` log, then the appending
log's own policy. The store uses only RingLog's public API (docs/core.md).
"""
from .errors import ConfigError
from .log import DROP_OLDEST, RingLog
from .storage import FileStorage


def topic_dirname(topic):
    """A file-system-safe directory name for a topic name (reversible)."""
    out = []
    for c in topic:
        if ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c in "-_.":
            out.append(c)
        else:
            for b in c.encode():
                out.append("%%%02X" % b)
    name = "".join(out)
    if not name or name in (".", ".."):
        raise ConfigError("topic name %r cannot be stored" % (topic,))
    return name


class Store:
    """The logs of one device under one root directory, sharing one storage budget.

    ``store.log(topic, **options)`` opens (and recovers) the topic's RingLog. When an
    append would take the device past ``budget_bytes``, the store reclaims fully
    acknowledged segments first (lowest priority log first), then evicts the oldest
    segment of a ``drop_oldest`` log of lower priority than the appending one; failing
    that, the appending log's own full policy decides.
    """

    def __init__(self, root, budget_bytes, storage=None):
        self.root = root
        self.budget_bytes = budget_bytes
        self.storage = storage if storage is not None else FileStorage()
        self.storage.makedirs(root)
        self.logs = {}

    @property
    def size_bytes(self):
        """Bytes the device's logs occupy."""
        n = 0
        for lg in self.logs.values():
            n += lg.size_bytes
        return n

    def used_bytes(self):
        """Bytes occupied plus the room each log may still fill without asking (its lease)."""
        n = 0
        for lg in self.logs.values():
            n += lg.claimed_bytes
        return n

    def log(self, topic, origin=None, **options):
        """The topic's log of this node's records, or with ``origin`` (a node id) the log
        of the records another node appended to the topic (cloud-to-edge records: origin
        ``cloud``), in ``<topic dir>~<origin>``: topic_dirname never makes a "~", so the
        two can never share a directory."""
        name = topic if origin is None else (topic, origin)
        if name in self.logs:
            return self.logs[name]
        path = self.root + "/" + topic_dirname(topic)
        if origin is not None:
            path += "~" + origin
        lg = RingLog(path, storage=self.storage, store=self, **options)
        lg.topic = topic
        self.logs[name] = lg
        return lg

    def forget(self, lg):
        """Stop counting a log against the budget (RingLog.close calls this)."""
        for t in list(self.logs):
            if self.logs[t] is lg:
                del self.logs[t]

    def reclaim_for(self, appender):
        """Free one segment so the log ``appender`` can grow within the device budget, in
        docs/spec/log.md's order; True if one was removed, False if none may be (the
        appender's full policy then decides). RingLog calls this when it needs room."""
        by_prio = sorted(self.logs.values(), key=lambda lg: lg.priority)
        for lg in by_prio:
            if lg.remove_oldest():
                return True
        for lg in by_prio:
            if lg.priority >= appender.priority:
                break
            if lg.full_policy == DROP_OLDEST and lg.remove_oldest(True):
                return True
        return appender.full_policy == DROP_OLDEST and appender.remove_oldest(True)

    def flush(self):
        for lg in self.logs.values():
            lg.flush()

    def close(self):
        for lg in list(self.logs.values()):
            lg.close()
