"""The gateway itself: sync conversations in, records stored once, cloud-to-edge topics out.

Theory of operation
-------------------
Every transport (transports/: HTTP bodies, TCP streams, MQTT payloads) hands the bytes
of a conversation to ``Gateway.process`` with that conversation's ``GatewayConnection``
(``new_connection``) and sends back what it returns: this module is the one place that
answers the sync protocol's events (docs/spec/wire.md). Batches and gaps of all
concurrent exchanges go through the group ``Committer``; an ACK is written only after
its commit returned. An exchange that ends in an error stores nothing of what it
carried: its answer is the ERROR alone, and the edge resends what it still owes in a
new session.

Cloud-to-edge topics (the topics file, ``topics.py``): ``publish`` gives records origin
``cloud`` and the next seqs of the topic, commits them through the same group
``Committer``, and returns their seqs once they are durable (the HTTP API,
``api.py``, checks a publish request before it calls it). A PULL is answered from the
store: a DATA with the published records after ``after_seq`` (at most
``max_records``, the gateway's ``max_batch_records``, and what fits the edge's
``max_message_bytes``), or ERROR ``unknown_topic`` for a topic the node may not pull.
The PULL's ``after_seq`` is the node's acknowledgement; it is kept per node and topic
(``downlinks``).

Table topics (``kind: table`` in the topics file, docs/spec/tables.md): the gateway keeps
one ``tables.Replica`` per table topic in memory, rebuilt from the store at start (every
stored record of the topic, any origin, applied in store order: the merge is order-free)
and then fed every record of the topic once it is durable -- an edge's batch after its
commit (the entries at or below the stream's new mark), its own publishes after theirs.
``table_write`` forms a cloud write from the replica's context (C1), publishes it in the
topic's cloud stream (so the downlink carries it to the edges that pull the topic) and
applies it before it returns. Nothing of the replica is persisted: the store's records
are its truth.

Relaying (tables.md, "Relayed writes"): every edge write of a table topic the gateway
publishes is copied, once, into the topic's cloud stream as a relay record carrying its
dot, ts and value, so every edge that pulls the topic receives every writer's writes. The
copy is made by a background task after the edge's batch was committed and acknowledged
(``_relay_pending``; a failed store is retried a second later). Which dots were relayed
is known from the cloud stream itself: relays follow each writer's seq order, so the
highest relayed seq per writer says it (``_relayed``); at start, an edge record of the
store above it (the gateway stopped in between) is queued again, so each is relayed
exactly once. An edge write whose relay would be over the topic's ``max_record_bytes``
is refused by the replica (``too_large``): neither applied nor relayed, so no puller is
ever refused a relay.

Tombstone collection (tables.md, "Tombstones and their collection"): an edge's HELLO
reports, per table topic, how far it holds the cloud stream and its own log's end
(capability ``tables``); ``stable`` turns the reports into each node's applied marks
(the cloud stream's relays say which edge writes lie below ``held``: ``_relay_index``)
and takes the min with the gateway's own, once the gateway holds everything a node wrote
before reporting; ``collect_tables`` drops the tombstones it covers, after a report or a
batch (at most once per ``collect_every_s``).

``start()`` / ``close()`` run the committer and close the store; ``service.serve``
wires the gateway, its HTTP API and the transports into one process.
"""
import asyncio
import bisect
import collections
import logging
import os
import time

import cbor2

from edgeline import sync
from edgeline.clock import HybridClock
from edgeline.errors import LocalProtocolError, RemoteProtocolError
from edgeline.store import topic_dirname
from edgeline.table import COUNTER

from .. import tables
from .. import wirecomp
from ..nodekeys import check_keys
from . import compaction
from .committer import Committer
from .store import LEGACY, Delivered, GatewayStore, Publish

log = logging.getLogger("edgeline.gateway")

REFUSAL_LOG_EVERY_S = 60  # a refused node is logged at most once a minute (per node and reason)
MAX_REFUSED_NODES = 1000  # refused node ids remembered (HELLOs name any id: bounded, the stalest go)
HEALTH_WINDOW_S = 600  # refusals and store errors this recent make the gateway's health degraded
_AUTH_REFUSALS = ("bad_proof", "unknown_node")
_ENTRY_OVERHEAD = 28  # the most a DATA entry adds to its key and value: array, ts delta, two heads


def now_ms():
    return int(time.time() * 1000)


def _relay_dot(value):
    """(writer, seq) of the edge write a cloud-stream record relays, or None."""
    try:
        r = tables.read_relay(cbor2.loads(value))
    except Exception:  # noqa: BLE001 - not a relay (or not CBOR): the replica counts it
        return None
    return None if r is None else (r[0], r[1])


class Gateway:
    """One gateway: store, committer, the sync protocol's answers, publishing.

    ``topics`` ({name: topics.DownTopic}, from ``topics.load_topics``) are the
    cloud-to-edge topics it publishes and serves to PULLs. ``publish_token``: the
    bearer token the publish API requires; None lets only loopback clients publish.
    """

    def __init__(self, db_path, keys, max_message_bytes=1 << 20, max_batch_records=10000, session_idle_s=300,
                 topics=None, publish_token=None, health_window_s=HEALTH_WINDOW_S, monotonic=time.monotonic):
        check_keys(keys)
        self.store = GatewayStore(db_path)
        # each table topic's conflict log (tables.md, "The conflict log file"), beside the store
        self.tables_dir = None if db_path == ":memory:" else db_path + ".tables"
        self.keys = keys  # node_id -> 32-byte key
        self.tables = {}  # table topic -> tables.Replica (set with the topics)
        self._relayed = {}  # table topic -> {writer: the highest seq of it relayed, queued or refused}
        self._relay_pending = {}  # table topic -> [(writer, seq, ts, key, value)] to relay
        # table topic -> {writer: ([cloud seq], [writer seq])} of the relays, in order; the
        # entries below what every node holds are dropped (``stable``)
        self._relay_index = {}
        self._writers = {}  # table topic -> {(node, incarnation hex)} that have written to it
        self._reports = {}  # (table topic, node) -> [usable report or None, newer report or None]
        self.collected = 0  # tombstones collected at causal stability since start
        self.table_mismatches = {}  # (table topic, node) -> [type, strategy] the node reported, unlike ours
        self.collect_every_s = 1.0  # at most one collection per this many seconds (tests: 0)
        self._collected_at = None
        self._relay_wake = None
        self._relay_task = None
        self.relayed = 0  # edge writes relayed into cloud streams since start
        self.relay_retry_s = 1.0
        self.topics = dict(topics or {})
        self.publish_token = publish_token
        self.max_message_bytes = max_message_bytes
        self.max_batch_records = max_batch_records
        self.session_idle_s = session_idle_s
        self.committer = Committer(self.store, now_ms)
        self.clock = HybridClock(last_ts=self.store.last_published_ts())
        self.rejected = 0  # exchanges that ended in a protocol error from the edge
        self.store_failures = 0  # groups the store could not commit (edges retry)
        self.published = 0  # records published since start
        self.pulls = 0  # PULLs answered with DATA
        self.refused_pulls = 0  # PULLs answered with ERROR (topic not served to the node, record too large)
        self.cbatches = {}  # compressed BATCHes decoded since start, by encoding (wirecomp.GatewayCodec counts)
        self.new_incarnations = 0  # topics an edge came back to with a new log (wiped, replaced)
        self._last_pull_ms = {}  # (node, topic) -> wall ms of its last PULL
        self._warned = set()
        # Health (edgeline_host.health): protocol errors of edges counted per reason, the
        # nodes refused recently, the store's recent failures. ``monotonic`` (seconds) is
        # the clock of the rate limit and the window; tests replace it.
        self.health_window_s = health_window_s
        self._monotonic = monotonic
        self.errors_by_reason = {}  # ERROR name (bad_proof, unknown_node, malformed, ...) -> count
        self._refused = {}  # node -> [reason, count, last monotonic s, last logged monotonic s, wall ms]
        self._store_failed_at = collections.deque(maxlen=1000)  # monotonic s of recent store failures
        self.last_store_error = None
        self.store_ok = True  # False from a failed commit until one succeeds
        self.lock_lost = None  # a callable: True once the store's lock is lost (service.serve sets it)
        self.dirlock = None  # the store's DirLock when service.serve runs it

    @property
    def topics(self):
        return self._topics

    @topics.setter
    def topics(self, topics):
        """The topics file's topics; a replica of each table topic is (re)built from the
        store."""
        self._topics = dict(topics or {})
        for rep in getattr(self, "tables", {}).values():
            rep.close()
        self.tables = {}
        self._relayed = {}
        self._relay_pending = {}
        self._relay_index = {}
        self._writers = {}
        self._compactors = {}  # table topic -> compaction.Compactor (what compacted DATA leaves out)
        for name, t in sorted(self._topics.items()):
            if t.table is not None:
                self.tables[name] = self._rebuild(name, t)

    def _rebuild(self, name, topic):
        clog = None
        if self.tables_dir is not None:
            clog = tables.ConflictLog(os.path.join(self.tables_dir, topic_dirname(name) + ".cl"))
        rep = tables.Replica(name, topic.table, clog,
                             max_relay_bytes=topic.max_record_bytes if topic.publishes else None)
        comp = self._compactors[name] = compaction.Compactor(topic.table)
        relayed = {}  # writer -> highest seq relayed
        last = {}  # (origin, incarnation) -> its last stored seq
        writers = self._writers[name] = set()
        for origin, inc, seq, ts, key, value in self.store.stream_records(name):
            rep.apply_record(tables.writer_id(origin, inc), seq, ts, key, value)
            if origin == sync.CLOUD_ORIGIN:
                comp.feed(seq, ts, key, value)
                dot = _relay_dot(value)
                if dot is not None:
                    if dot[1] > relayed.get(dot[0], 0):
                        relayed[dot[0]] = dot[1]
                    self._index_relay(name, seq, dot[0], dot[1])
            else:
                writers.add((origin, inc))
                last[(origin, inc)] = seq  # stream by stream in seq order: the last is the highest
        if topic.publishes:
            # an edge write stored but not relayed (the gateway stopped in between): again.
            # Relays are made in each writer's seq order (``_feed``), so what lies above the
            # highest relayed seq is what was not relayed: only that tail is read again.
            pending = []
            for (origin, inc), top in sorted(last.items()):
                writer = tables.writer_id(origin, inc)
                after = relayed.get(writer, 0)
                if top > after:
                    for seq, ts, key, value in self._stream_tail(name, origin, inc, after):
                        if rep.takes(key, value, writer, seq, ts):
                            pending.append((writer, seq, ts, key, value))
                    relayed[writer] = top
            self._relayed[name] = relayed
            if pending:
                self._relay_pending[name] = pending
                log.info("gateway: table topic %r: %d edge write(s) stored but not yet relayed to the edges: relaying "
                         "them", name, len(pending))
        if rep.malformed:
            log.warning("gateway: table topic %r: %d stored record(s) are not table writes (left out of the table; "
                        "last: %s)", name, rep.malformed, rep.last_malformed)
        if rep.too_large:
            log.warning("gateway: table topic %r: %d stored edge write(s) would be relayed over the topic's "
                        "max_record_bytes (left out of the table; last: %s)", name, rep.too_large, rep.last_too_large)
        return rep

    def _stream_tail(self, topic, origin, inc, after):
        """(seq, ts, key, value) of one edge stream's stored records above ``after``."""
        while True:
            rows = self.store.records(topic, origin, from_seq=after + 1, limit=1000, incarnation=inc)
            for r in rows:
                yield r["seq"], r["ts"], r["key"], r["value"]
            if len(rows) < 1000:
                return
            after = rows[-1]["seq"]

    # ------------------------------------------------------------------ lifecycle

    async def start(self):
        await self.committer.start()
        self._relay_wake = asyncio.Event()
        self._relay_task = asyncio.ensure_future(self._relay_loop())
        if self._relay_pending:
            self._relay_wake.set()

    async def close(self):
        if self._relay_task is not None:
            self._relay_task.cancel()
            try:
                await self._relay_task
            except asyncio.CancelledError:
                pass
            self._relay_task = None
        for rep in self.tables.values():
            rep.close()
        await self.committer.stop()
        self.store.close()

    async def _relay_loop(self):
        """Publish the queued relays of edge table writes, topic by topic, in batches;
        a failed store is retried after ``relay_retry_s``."""
        while True:
            await self._relay_wake.wait()
            self._relay_wake.clear()
            for name in list(self._relay_pending):
                while self._relay_pending.get(name):
                    todo = self._relay_pending[name][:self.max_batch_records]
                    values = [tables.relay_value(w, s, ts, v) for w, s, ts, _k, v in todo]
                    try:
                        first, _last = await self.publish(name, values, [k for _w, _s, _ts, k, _v in todo])
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # noqa: BLE001 - kept queued, tried again
                        self.store_failed(e)
                        await asyncio.sleep(self.relay_retry_s)
                        self._relay_wake.set()
                        break
                    for i, (w, s, _ts, _k, _v) in enumerate(todo):
                        self._index_relay(name, first + i, w, s)
                    del self._relay_pending[name][:len(todo)]
                    self.relayed += len(todo)
                if not self._relay_pending.get(name):
                    self._relay_pending.pop(name, None)

    # ------------------------------------------------------------------ sync

    def new_connection(self):
        def lookup(node_id):
            conn.hello_node = node_id  # the node a HELLO named, known or not (refusals name it)
            return self.keys.get(node_id)

        # the C-accelerated CBOR, and compressed BATCHes decoded (wirecomp: wire.md "Compressed batches")
        wc = wirecomp.GatewayCodec()
        wc.batches = self.cbatches
        conn = sync.GatewayConnection(
            lookup, os.urandom, max_message_bytes=self.max_message_bytes, max_batch_records=self.max_batch_records,
            codec=wc.codec,
        )
        wc.conn = conn
        conn.wirecodec = wc
        conn.hello_node = None
        conn.hello_capabilities = None
        return conn

    def protocol_error(self, conn, error):
        """An edge's exchange ended in RemoteProtocolError ``error``: count it by reason;
        a refused node (bad proof, unknown node) is remembered for health and logged, at
        most once a minute per node and reason."""
        self.rejected += 1
        text = str(error)
        why = text.split(":", 1)[0] if ":" in text else "malformed"
        if why not in sync.ERROR_NAMES:
            why = "malformed"
        self.errors_by_reason[why] = self.errors_by_reason.get(why, 0) + 1
        if why not in _AUTH_REFUSALS:
            return
        node = conn.node_id if why == "bad_proof" else getattr(conn, "hello_node", None)
        node = node if node is not None else "?"
        now = self._monotonic()
        r = self._refused.get(node)
        if r is None or r[0] != why:
            if r is None and len(self._refused) >= MAX_REFUSED_NODES:
                del self._refused[min(self._refused, key=lambda n: self._refused[n][2])]
            r = self._refused[node] = [why, 0, now, None, now_ms()]
        r[1] += 1
        r[2] = now
        r[4] = now_ms()
        if r[3] is None or now - r[3] >= REFUSAL_LOG_EVERY_S:
            r[3] = now
            log.warning("gateway: refused node %r: %s (%d time(s) since the gateway started%s)", node, text, r[1],
                        "" if r[1] == 1 else "; logged at most once a minute")

    def store_failed(self, error):
        """A commit (records, gaps, a publish) failed: counted, and in health."""
        self.store_failures += 1
        self.store_ok = False
        self._store_failed_at.append(self._monotonic())
        self.last_store_error = (str(error).splitlines() or ["?"])[0]
        log.error("gateway: the store could not commit: %s", self.last_store_error)

    def health(self):
        """``status``, ``reasons`` (edgeline_host.health), ``ok`` and the counters."""
        from .. import health as H

        now = self._monotonic()
        since = now - self.health_window_s
        recent = {n: r[0] for n, r in self._refused.items() if r[2] >= since}
        failures = sum(1 for t in self._store_failed_at if t >= since)
        reasons = H.lock_lost(self.lock_lost)
        reasons += H.store_errors(failures, self.health_window_s, self.last_store_error, failing_now=not self.store_ok)
        reasons += H.refused_nodes(recent, self.health_window_s)
        summary = H.summarize(reasons)
        return {
            "status": summary["status"],
            "reasons": summary["reasons"],
            "ok": summary["status"] == H.OK,
            "errors_by_reason": dict(self.errors_by_reason),
            "refused_nodes": [{"node": n, "reason": r[0], "count": r[1], "last_ms": r[4]}
                              for n, r in sorted(self._refused.items())],
        }

    async def process(self, conn, data, unit=None):
        """Feed bytes from an edge into its connection and answer every event.

        Returns (bytes to send back, finished): finished is True when the connection
        ended in an error (ours or the peer's) or the peer closed; the transport sends
        the bytes and closes. Batches and gaps are committed (durably, in a group with
        other exchanges) before their ACKs are written; a PULL is answered with its DATA
        at once. Any transport uses this: HTTP bodies, TCP streams, MQTT payloads.
        ``unit`` names what data is when it holds whole messages (an HTTP ``"body"``, an
        MQTT ``"payload"``): then data that ends inside a message is malformed. None for
        a stream (TCP), whose messages may span chunks.

        An exchange that ends in an error of the edge's making -- its garbage, an ERROR
        it sent, a unit ending inside a message -- commits nothing of what it carried:
        the answer is the ERROR owed (if any) alone. The edge was acknowledged nothing of
        it and sends it again on a new connection. A PULL this side refuses (ERROR
        ``unknown_topic``, ``too_large``) ends the exchange too, but after the ACKs of
        the batches before it, which are stored.
        """
        out = bytearray()
        items = []
        acks = []  # topics to acknowledge, in order of first appearance
        finished = False
        refusal = None  # the ERROR refusing a PULL, sent after the ACKs
        conn.receive_data(data)
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError as e:
                self.protocol_error(conn, e)
                return conn.pending_error_bytes(), True
            if ev is sync.NEED_DATA:
                if unit and conn.buffered_bytes:
                    self.rejected += 1
                    return conn.send(sync.Error(sync.ERR_MALFORMED, "malformed: the %s ends inside a message (%d "
                                                "bytes of it)" % (unit, conn.buffered_bytes))), True
                break
            cls = type(ev)
            if cls is sync.Error:
                return b"", True
            if cls is sync.ConnectionClosed:
                # The edge closed after complete messages: they are stored, though no
                # ACK can reach it (it learns its marks at the next WELCOME).
                finished = True
                break
            if cls is sync.Hello:
                conn.hello_capabilities = ev.capabilities  # table reports are taken once authenticated
                out += conn.send(sync.Challenge())
            elif cls is sync.Auth:
                incs = self._incarnations(conn)
                # limits name the BATCH encodings of the HELLO's offer this gateway accepts
                out += conn.send(sync.Welcome(marks=self.store.marks(conn.node_id, incs),
                                              limits=wirecomp.welcome_limits(conn, conn.hello_capabilities)))
                if self.tables:
                    self._take_reports(conn, incs)
            elif cls is sync.Batch or cls is sync.Gap:
                items.append((conn.node_id, ev, conn.incarnation_hex.get(ev.topic, LEGACY)))
                if ev.topic not in acks:
                    acks.append(ev.topic)
            elif cls is sync.Pull:
                answer, refusal = await self._pull(conn, ev)
                if refusal is not None:
                    self.refused_pulls += 1
                    finished = True
                    break
                out += answer
                self.pulls += 1
                key = (conn.node_id, ev.topic)
                self._last_pull_ms[key] = now_ms()
                before = self.store.delivered(*key)
                if before is None or before[0] != ev.after_seq:
                    items.append((conn.node_id, Delivered(ev.topic, ev.after_seq)))
        if items:
            try:
                marks = await self.committer.submit(items)
            except Exception as e:  # noqa: BLE001 - the edge must hear it, then retry
                self.store_failed(e)
                if conn.state == "ERROR":
                    return bytes(out), True
                out += conn.send(sync.Error(8, "could not store: %s" % (str(e).splitlines() or ["?"])[0]))
                return bytes(out), True
            self.store_ok = True
            fed = False
            for item, m in zip(items, marks):  # stored: the table replicas take them, answered or not
                if type(item[1]) is sync.Batch and item[1].topic in self.tables:
                    self._feed(item[0], item[2], item[1], m)
                    fed = True
            if fed:
                self.collect_tables()  # a batch may make a report usable
            if conn.state == "ERROR":
                # Another exchange on this connection ended it while the commit ran
                # (a transport that lets two run at once): no ACK can be sent. The
                # records are stored; the edge learns its marks at the next WELCOME.
                return bytes(out), True
            last = {}
            for item, m in zip(items, marks):
                ev = item[1]
                if type(ev) is not Delivered:
                    last[ev.topic] = m
            for topic in acks:
                out += conn.send(sync.Ack(topic, last[topic]))
        if refusal is not None and conn.state != "ERROR":
            out += conn.send(refusal)
        return bytes(out), finished

    async def _pull(self, conn, ev):
        """(DATA bytes, None) answering a PULL, or (b"", Error event) refusing it."""
        node, name = conn.node_id, ev.topic
        topic = self.topics.get(name)
        if topic is None or not topic.may_pull(node):
            why = "not a cloud-to-edge topic of this gateway" if topic is None or not topic.publishes else \
                "not served to node %r (its nodes list)" % node
            self._warn_once(("refused", node, name), "gateway: node %s pulled topic %r: %s" % (node, name, why))
            return b"", sync.Error(sync.ERR_UNKNOWN_TOPIC, "topic %r is %s" % (name, why))
        after = ev.after_seq
        if after >= (1 << 64) - 1:
            return b"", sync.Error(sync.ERR_MALFORMED, "PULL after_seq %d leaves no seq to send" % after)
        published = self.store.published(name)
        if after > published:
            self._warn_once(("ahead", node, name, after),
                            "gateway: node %s holds topic %r up to seq %d, but only %d were published here (was "
                            "the store restored from an old backup?); it receives nothing until seqs pass %d"
                            % (node, name, after, published, after))
        n = min(ev.max_records, self.max_batch_records)
        if name in self._compactors and (getattr(conn, "hello_capabilities", None) or {}).get(
                compaction.CAPABILITY) is True:
            out = await self._pull_compacted(conn, name, after, published, n)
            if out is not None:
                return out
        return await self._pull_plain(conn, name, after, published, n)

    async def _pull_plain(self, conn, name, after, published, n):
        """A DATA of every record after ``after`` (as many as fit), or a refusal."""
        node = conn.node_id
        rows = []
        if after < published and n > 0:
            rows = await asyncio.get_running_loop().run_in_executor(None, self.store.pull, name, after, n)
        if not rows:
            return conn.send(sync.Data(name, after + 1, 0, [])), None
        limit = conn.peer_max_message_bytes or self.max_message_bytes
        budget = limit - 32 - 3 * len(name)  # the message's own fields, generously
        size = 0
        for k, r in enumerate(rows):
            size += len(r.value) + (len(r.key) if r.key is not None else 0) + _ENTRY_OVERHEAD
            if size > budget and k:
                rows = rows[:k]
                break
        while True:
            try:
                return conn.send(sync.batch_from_records(name, rows, sync.Data)), None
            except LocalProtocolError as e:
                if len(rows) == 1:
                    r = rows[0]
                    self._warn_once(("large", node, name, r.seq), "gateway: node %s cannot take topic %r: %s"
                                    % (node, name, e))
                    return b"", sync.Error(sync.ERR_TOO_LARGE, "topic %r seq %d (%d bytes) is over this node's "
                                           "max_message_bytes %d" % (name, r.seq, len(r.value), limit))
                rows = rows[:len(rows) // 2]

    async def _pull_compacted(self, conn, name, after, published, n):
        """A compacted DATA (wire.md, "Compacted DATA"): the live records of a table topic
        after ``after``, each with the count of superseded seqs left out before it -- or
        None when the live records up to the horizon do not fit one DATA: a seq is left
        out because a record up to the horizon supersedes it, so a page ending before the
        horizon could leave the edge holding a state that never was (K2); such a pull is
        answered with plain records (``_pull_plain``), and compaction resumes once the rest
        fits one DATA."""
        comp = self._compactors[name]
        reach = min(comp.horizon, published)  # the live set covers the stream up to here
        plan = comp.plan(after, published, n)
        if plan and plan[-1][0] < reach:
            return None  # cut by the record count before the horizon
        if not plan:
            return conn.send(sync.Data(name, after + 1, 0, [])), None
        seqs = [s for s, _k in plan]
        rows = await asyncio.get_running_loop().run_in_executor(None, self.store.pull_seqs, name, seqs)
        skips = [k for _s, k in plan]
        limit = conn.peer_max_message_bytes or self.max_message_bytes
        budget = limit - 32 - 3 * len(name)
        size = 0
        for k, r in enumerate(rows):
            size += len(r.value) + (len(r.key) if r.key is not None else 0) + _ENTRY_OVERHEAD + 9
            if size > budget and k:
                rows = rows[:k]
                break
        if rows[-1].seq < reach:
            return None  # cut by the message's size before the horizon
        try:
            out = conn.send(compaction.data_of(name, rows, skips[:len(rows)]))
        except LocalProtocolError:
            return None  # over the peer's limit whole: plain pages instead
        comp.left_out += sum(skips[:len(rows)])
        return out, None

    def _feed(self, node, inc, batch, mark):
        """Apply the stored entries of an edge's batch (those at or below the stream's
        mark once it was committed) to the topic's replica; duplicates change nothing.
        Each entry above the writer's highest relayed seq is queued for relaying unless
        the replica refused it (malformed, or its relay over the topic's limit).

        Relays follow each writer's seq order: a stream's seqs are stored in order (the
        store takes a batch only from its mark on), the committer answers its groups in
        commit order, and each exchange feeds its batches as soon as its commit returns,
        before the loop runs anything else -- so the highest seq relayed per writer is
        all that needs keeping (``_relayed``), not every dot."""
        rep = self.tables[batch.topic]
        writer = tables.writer_id(node, inc)
        self._writers.setdefault(batch.topic, set()).add((node, inc))
        first, base = batch.first_seq, batch.base_ts
        relayed = self._relayed.get(batch.topic)
        for i, e in enumerate(batch.entries):
            seq = first + i
            if seq > mark:
                break
            refused = rep.malformed + rep.too_large
            rep.apply_record(writer, seq, base + e[0], e[1], e[2])
            # relayed unless refused (an edge's record is never a relay: that is malformed too)
            if relayed is not None and seq > relayed.get(writer, 0):
                relayed[writer] = seq
                if rep.malformed + rep.too_large == refused:
                    self._relay_pending.setdefault(batch.topic, []).append((writer, seq, base + e[0], e[1], e[2]))
                    if self._relay_wake is not None:
                        self._relay_wake.set()
                elif rep.too_large and rep.last_too_large.startswith("%s seq %d:" % (writer, seq)):
                    self._warn_once(("relay-too-large", batch.topic, writer),
                                    "gateway: table topic %r: %s; further ones of this writer are counted in "
                                    "too_large (GET /v1/tables)" % (batch.topic, rep.last_too_large))

    # ------------------------------------------------------------------ tombstone collection

    def _index_relay(self, topic, cloud_seq, writer, seq):
        cs, ss = self._relay_index.setdefault(topic, {}).setdefault(writer, ([], []))
        if not cs or cloud_seq > cs[-1]:
            cs.append(cloud_seq)
            ss.append(max(seq, ss[-1]) if ss else seq)  # relays are in seq order; max keeps it a bound

    def _take_reports(self, conn, incs):
        """Keep the table reports of a HELLO's ``tables`` capability (tables.md, "Reports
        at the gateway"): per table topic and node, the newest, and the newest usable one."""
        got = tables.read_reports(getattr(conn, "hello_capabilities", None))
        for topic, (held, head, settings) in got.items():
            if topic not in self.tables:
                continue
            mine = self.tables[topic].settings
            if settings is not None and settings != (mine.type, mine.strategy):
                # replicas that merge differently never converge: say so (the node's own
                # writes are still stored and applied here by the gateway's settings)
                self.table_mismatches[(topic, conn.node_id)] = list(settings)
                self._warn_once(("table-settings", topic, conn.node_id) + settings,
                                "gateway: node %s has table topic %r as type %s, conflict_resolution %s; the topics "
                                "file says %s, %s: their replicas will not show the same table until they match"
                                % (conn.node_id, topic, settings[0], settings[1], mine.type, mine.strategy))
            else:
                self.table_mismatches.pop((topic, conn.node_id), None)
            inc = incs.get(topic, LEGACY)
            slot = self._reports.setdefault((topic, conn.node_id), [None, None])
            if slot[0] is not None and (slot[0][2] != inc or slot[0][0] > held):
                slot[0] = None  # the node's log or its cloud stream was wiped: what it reported before is gone
            slot[1] = (held, head, inc)
        if got:
            self.collect_tables()

    def collect_tables(self, force=False):
        """Collect the causally stable tombstones of every table topic (at most once per
        ``collect_every_s`` unless ``force``); returns how many went."""
        now = self._monotonic()
        if not force and self._collected_at is not None and now - self._collected_at < self.collect_every_s:
            return 0
        self._collected_at = now
        n = 0
        for name, rep in self.tables.items():
            stable = self.stable(name)
            if stable:
                n += rep.collect(stable)
        self.collected += n
        return n

    def stable(self, topic):
        """The stable vector of a table topic (tables.md, "Stable vector"): () until every
        replica -- the cloud, every node the topic is served to (its ``nodes``, else every
        node with a key), every node that wrote to it -- has a usable report."""
        store = self.store
        writers = self._writers.get(topic, set())
        own = {tables.writer_id(n, i): store.mark(n, topic, i) for n, i in writers}
        own[sync.CLOUD_ORIGIN] = store.published(topic)
        marks = [own]
        index = self._relay_index.get(topic, {})
        low = None  # the lowest held of the usable reports
        served = self.topics[topic].nodes
        for node in sorted(set(self.keys if served is None else served) | set(n for n, _ in writers)):
            slot = self._reports.get((topic, node))
            if slot is None:
                return ()
            if slot[1] is not None and store.mark(node, topic, slot[1][2]) >= slot[1][1]:
                slot[0], slot[1] = slot[1], None  # the gateway holds everything the node wrote before it
            if slot[0] is None:
                return ()
            held, head, inc = slot[0]
            mine = tables.writer_id(node, inc)
            m = {sync.CLOUD_ORIGIN: held}
            for w, (cs, ss) in index.items():
                i = bisect.bisect_right(cs, held)
                if i:
                    m[w] = ss[i - 1]
            if head:
                m[mine] = max(head, m.get(mine, 0))
            marks.append(m)
            low = held if low is None else min(low, held)
        if low is not None:
            # Every node holds the cloud stream up to ``low``: a later report names a held
            # at or above it, except a wiped node's, for which the index then answers
            # nothing below its first entry -- less is collected, never more. So the
            # entries before the last one at or below ``low`` are never needed again.
            for cs, ss in index.values():
                i = bisect.bisect_right(cs, low)
                if i > 1:
                    del cs[:i - 1]
                    del ss[:i - 1]
        return tables.stable_vector(marks)

    def _incarnations(self, conn):
        """The HELLO's incarnations as hex ({topic: hex}), kept on the connection for its
        batches; a topic of this node seen before under another incarnation is reported
        (its log was wiped or replaced: the new seqs are stored as a new stream)."""
        incs = {t: bytes(i).hex() for t, i in (conn.incarnations or {}).items()}
        conn.incarnation_hex = incs
        node = conn.node_id
        for topic, inc in sorted(incs.items()):
            known = self.store.incarnations_of(node, topic)
            if known and inc not in known and ("incarnation", node, topic, inc) not in self._warned:
                prev = known[-1]
                last = self.store.mark(node, topic, prev)
                lost = [g for g in self.store.gaps(node, topic) if g.get("incarnation", prev) == prev]
                self.new_incarnations += 1
                self._warn_once(("incarnation", node, topic, inc),
                                "gateway: node %s topic %r has a new log incarnation %s (its log was wiped or "
                                "replaced): its records are stored from seq 1 under it. The previous incarnation %s "
                                "ended at seq %d; %d seqs of it were reported lost in gaps, and any seq it held above "
                                "%d never arrived" % (node, topic, inc, prev, last,
                                                     sum(g["last"] - g["first"] + 1 for g in lost), last))
        return incs

    def _warn_once(self, key, line):
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", line)

    # ------------------------------------------------------------------ publish

    async def publish(self, topic, values, keys=None):
        """Store values (CBOR bytes; keys bytes or None) as the next records of a
        cloud-to-edge topic, origin ``cloud``, stamped by the gateway's hybrid clock;
        return (first_seq, last_seq) once they are durable. The publish API's checks
        (topic, sizes) are the caller's."""
        if keys is None:
            keys = [None] * len(values)
        now = now_ms()
        entries = [(self.clock.now(now), k, v) for k, v in zip(keys, values)]
        marks = await self.committer.submit([(sync.CLOUD_ORIGIN, Publish(topic, entries))])
        self.store_ok = True
        self.published += len(entries)
        first = marks[0] - len(entries) + 1
        rep = self.tables.get(topic)
        if rep is not None:
            for i, (ts, k, v) in enumerate(entries):
                rep.apply_record(sync.CLOUD_ORIGIN, first + i, ts, k, v)
            comp = self._compactors[topic]
            for i, (ts, k, v) in enumerate(entries):
                comp.feed(first + i, ts, k, v)
        return first, marks[0]

    async def table_write(self, topic, writes, max_record_bytes=None):
        """Cloud writes to a table topic: ``writes`` is a list of ``(key, body,
        delete)`` (``tables.Replica.form_write``). They are formed from the replica's
        context, published together in the topic's cloud stream (one commit, all or
        nothing) and applied once durable. Returns (first_seq, last_seq).
        tables.WriteError for a write the table cannot take (nothing is stored); the
        store's errors propagate.

        Concurrent calls need no lock for a register, set or map: every write of the
        cloud supersedes the cloud's earlier ones whatever its context says (C1 at the
        receiver), so a write formed while another is being committed loses nothing; its
        context holds what the cloud has seen of the *other* writers, which is all a
        context must say. Forming and submitting run with no await between, so seqs and
        timestamps follow the order of forming. A counter's running total must include
        the previous one: counter writes are made one request after another."""
        rep = self.tables[topic]
        if rep.settings.type == COUNTER:
            async with rep.write_lock():
                return await self._table_write(topic, rep, writes, max_record_bytes)
        return await self._table_write(topic, rep, writes, max_record_bytes)

    async def _table_write(self, topic, rep, writes, max_record_bytes):
        pending = {}
        keys, values = [], []
        for key, body, delete in writes:
            value = rep.form_write(key, sync.CLOUD_ORIGIN, body, delete, pending)
            kb = key.encode("utf-8") if isinstance(key, str) else bytes(key)
            if max_record_bytes is not None and len(kb) + len(value) > max_record_bytes:
                raise tables.WriteError(413, "the write to key %r is %d bytes (key and table value), over "
                                             "max_record_bytes %d of topic %r" % (key, len(kb) + len(value),
                                                                                   max_record_bytes, topic))
            keys.append(kb)
            values.append(value)
        return await self.publish(topic, values, keys)

    def downlinks(self, node=None):
        """Per cloud-to-edge topic and node that may pull it: what was published, what
        the node acknowledged (its last PULL's after_seq), when it last pulled."""
        out = []
        for name in sorted(self.topics):
            topic = self.topics[name]
            if not topic.publishes:
                continue
            published = self.store.published(name)
            for n in sorted(topic.nodes if topic.nodes is not None else self.keys):
                if node is not None and n != node:
                    continue
                d = self.store.delivered(n, name)
                delivered = d[0] if d else 0
                pulled = self._last_pull_ms.get((n, name), d[1] if d else None)
                out.append({"topic": name, "node": n, "published": published, "delivered": delivered,
                            "pending": max(0, published - delivered), "pulled_ms": pulled})
        return out
