"""The edge's downlink: records of cloud-to-edge topics, pulled from the gateway into the
device's logs (PULL / DATA, docs/spec/wire.md).

Failure modes first
-------------------
* The agent is killed (SIGKILL, power cut) at any moment of a pull: after the restart
  every record the gateway published is in the topic's log exactly once, in seq order
  (see "exactly once" below for why no moment is unsafe).
* The gateway is down or the link drops: nothing is pulled; the uplink's retry, backoff
  and circuit breaker (``uplink.py``) govern the next attempt, and the records wait at
  the gateway. An edge that was offline gets everything published meanwhile when it
  comes back, in order.
* The gateway does not serve a topic to this node (ERROR ``unknown_topic``: the topic
  is not in its topics file, or the node is not in the topic's ``nodes``) or holds a
  record over this node's ``max_message_bytes`` (ERROR ``too_large``): the topic is
  marked refused with the gateway's line (``edgeline edge sync status``), the session
  (which the ERROR ended) is started again without it, and the topic is tried again
  after ``refused_retry_ms`` or at ``edge sync now``. The uplink and the other topics go
  on; this is a configuration mismatch, not a link failure.
* The topic's log is full: a ``reject`` log (``drop_newest`` counts as ``reject`` here:
  a record the cloud still holds is not "dropped") takes what fits; the rest waits at
  the gateway and is asked for again at the next interval. A ``drop_oldest`` log evicts
  its oldest cloud records to make room (counted in ``evicted``, as for any log).
* The log fails a write (a disk error): the topic is set aside like a refused one, with
  the error; the agent's health names the topic (it needs a restart). Nothing the
  gateway was told is held was lost: the acknowledgement is the next PULL, after the
  commit.
* A DATA that does not continue the log (a hole) or is otherwise wrong: a failed
  exchange (the uplink backs off), nothing appended.
* The gateway holds fewer records of a topic than this edge (its store was restored
  from an old backup): the edge keeps pulling after its own last seq and receives new
  records once the gateway's seqs pass it; the gateway logs a warning.

Theory of operation
-------------------
Every receiving topic (``cloud_to_edge`` or ``bidirectional``) has a log that holds the
records of one origin -- the cloud (``edgeline.sync.CLOUD_ORIGIN``) -- and nothing else:
for a ``cloud_to_edge`` topic the topic's own log (the edge never writes to it), for a
``bidirectional`` topic a second log beside the topic's (``<topic dir>~cloud``,
``Store.log(topic, origin="cloud")``). So the node's own records and the cloud's never
share seqs, the uplink (whose outbox reads only the topic's own log) never sends a cloud
record back up, and the node never receives its own records back: the gateway serves
only records it published itself.

Because such a log holds one origin's records of one topic, appended in order from
seq 1, its seqs *are* the records' seqs: ``edgeline.inbox.append_data`` appends record s
only when the log would give it seq s. The position to pull after is therefore the log
itself -- ``PULL(topic, after_seq=log.last_seq)`` -- and no separate position file
exists, so there is no window between "append" and "position write" for a crash to
fall into. Killed before a record's bytes reach the file, it is not in the log and the
next PULL asks for it again; killed after, recovery finds it (a CRC-checked frame) and
the next PULL asks after it; a torn tail is truncated by recovery (log.md, I5) and
pulled again. ``append_data`` commits (fsync) before it returns, and the next PULL --
the acknowledgement the gateway records -- is sent only after it, so the gateway's
delivered position never passes what is durable here.

Cadence: a topic's pull is due at start, at its ``interval_ms`` after the last pull
that brought nothing, at once after a DATA that brought records (more may be waiting),
and at ``force()`` (``edge sync now``). The uplink asks ``due()`` / ``due_in_ms()`` in
its loop and sends ``request()`` -- one PULL per due topic -- as one request of its
session, after its batches; ``handle()`` applies the answers.
"""
import logging
import time

from edgeline import sync
from edgeline.inbox import append_data
from edgeline.errors import ConfigError, LogFull, StorageError

log = logging.getLogger("edgeline.downlink")

REFUSED_RETRY_MS = 300000  # how long a topic the gateway refused waits before it is tried again
MIN_INTERVAL_MS = 1000  # the pull interval when sync.interval_secs is 0 (push as soon as durable)


def _wall_ms():
    return int(time.time() * 1000)


def _monotonic_ms():
    return int(time.monotonic() * 1000)


def log_options(topic_cfg):
    """``Store.log`` options for the log of a topic's cloud records: the topic's, but
    committed by the downlink itself (one fsync per DATA: ``sync`` none) and never
    ``drop_newest`` (see the module doc)."""
    opts = topic_cfg.log_options()
    opts["sync"] = "none"
    if opts["full_policy"] == "drop_newest":
        opts["full_policy"] = "reject"
    return opts


class DownlinkFailure(Exception):
    """The gateway's answer to a PULL was wrong or an ERROR other than a refusal."""


class _Down:
    """One receiving topic's state."""

    def __init__(self, name, ringlog):
        self.name = name
        self.log = ringlog
        self.due_ms = 0  # monotonic ms when the next pull is due (0: at once)
        self.refused = None  # the gateway's line, while the topic is refused
        self.full = None  # why the log took no more, at the last DATA
        self.pulls = 0
        self.records = 0  # records appended from DATA since start
        self.last_pull_ms = None  # wall ms of the last DATA
        self.last_record_ms = None  # wall ms of the last DATA that brought records


class Downlink:
    """The cloud-to-edge half of one edge's sync.

    ``topics`` maps each receiving topic to the RingLog of its cloud records (opened
    with ``log_options``). ``on_records(topic, ringlog, n)`` is called after records
    were appended and committed (the agent wakes its readers and advances its clock).
    """

    def __init__(self, topics, interval_ms=30000, max_records=1000, on_records=None, now_ms=_monotonic_ms,
                 refused_retry_ms=REFUSED_RETRY_MS):
        self._topics = [_Down(name, lg) for name, lg in topics.items()]
        self._by_name = {t.name: t for t in self._topics}
        self.interval_ms = interval_ms if interval_ms > 0 else MIN_INTERVAL_MS
        self.max_records = max_records
        self.on_records = on_records
        self.refused_retry_ms = refused_retry_ms
        self._now_ms = now_ms

    @property
    def topics(self):
        return [t.name for t in self._topics]

    # ------------------------------------------------------------------ cadence

    def due_in_ms(self):
        """Milliseconds until the next pull is due (0: now); None without topics."""
        if not self._topics:
            return None
        now = self._now_ms()
        return max(0, min(t.due_ms for t in self._topics) - now)

    def due(self):
        return self.due_in_ms() == 0

    def force(self):
        """Pull every topic at once, refused ones included (``edge sync now``)."""
        for t in self._topics:
            t.due_ms = 0
            t.refused = None

    # ------------------------------------------------------------------ exchange

    def request(self, conn):
        """(body, topics): one PULL per due topic, after the last seq its log holds."""
        now = self._now_ms()
        body = bytearray()
        sent = []
        for t in self._topics:
            if t.due_ms > now:
                continue
            body += conn.send(sync.Pull(t.name, t.log.last_seq, self.max_records))
            sent.append(t)
        return bytes(body), sent

    def handle(self, sent, events):
        """Apply the gateway's answers to the PULLs of ``sent``, in order. Returns True
        when the gateway ended the session by refusing a topic (the caller starts a new
        one); raises DownlinkFailure for any other wrong answer. Storage errors of the
        logs propagate."""
        i = 0
        for ev in events:
            cls = type(ev)
            if cls is sync.Data:
                if i >= len(sent) or sent[i].name != ev.topic:
                    raise DownlinkFailure("DATA for topic %r answers no PULL of this request" % ev.topic)
                self._apply(sent[i], ev)
                i += 1
            elif cls is sync.Error:
                name = sync.ERROR_NAMES[ev.code] if ev.code < len(sync.ERROR_NAMES) else "?"
                if i < len(sent) and ev.code in (sync.ERR_UNKNOWN_TOPIC, sync.ERR_TOO_LARGE):
                    self._refuse(sent[i], "gateway refused: %s" % ev.message)
                    return True
                raise DownlinkFailure("gateway sent ERROR %s: %s" % (name, " ".join(ev.message.split())))
            # an ACK here would answer nothing of this request: ignore it, as the uplink does
        if i < len(sent):
            raise DownlinkFailure("the gateway did not answer the PULL of topic(s) %s"
                                  % ", ".join(t.name for t in sent[i:]))
        return False

    def _refuse(self, t, line):
        if t.refused != line:
            log.warning("downlink: topic %s: %s; trying again in %d s or at `edge sync now`", t.name, line,
                        self.refused_retry_ms // 1000)
        t.refused = line
        t.due_ms = self._now_ms() + self.refused_retry_ms

    def _apply(self, t, data):
        lg = t.log
        before = lg.last_seq
        wall = _wall_ms()
        t.pulls += 1
        t.last_pull_ms = wall
        t.refused = None
        was_full = t.full
        t.full = None
        full = None
        try:
            append_data(lg, data, wall)
        except LogFull as e:
            full = str(e)
        except ConfigError as e:  # a record that does not fit a segment of this log
            self._refuse(t, "seq %d cannot be stored: %s" % (lg.last_seq + 1, e))
        except StorageError as e:  # the log failed a write: it is unusable until the agent restarts
            self._refuse(t, "cannot store: %s" % e)
        except sync.RemoteProtocolError as e:
            raise DownlinkFailure(str(e)) from None
        n = lg.last_seq - before
        if n:
            t.records += n
            t.last_record_ms = wall
            if self.on_records is not None:
                self.on_records(t.name, lg, n)
        if full is not None:
            if was_full is None:
                log.warning("downlink: topic %s: the log is full (%s); the rest waits at the gateway", t.name, full)
            t.full = full
        if t.refused is None:
            # Records came: more may be waiting, pull again at once; else at the interval.
            more = bool(data.entries) and full is None
            t.due_ms = 0 if more else self._now_ms() + self.interval_ms

    # ------------------------------------------------------------------ status

    def status(self):
        return {
            t.name: {
                "origin": sync.CLOUD_ORIGIN,
                "last_seq": t.log.last_seq,
                "first_seq": t.log.first_seq,
                "records": t.records,
                "pulls": t.pulls,
                "last_pull_ms": t.last_pull_ms,
                "last_record_ms": t.last_record_ms,
                "error": t.refused or t.full,
            }
            for t in self._topics
        }
