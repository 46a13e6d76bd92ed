"""The edge agent's service: HTTP and MQTT ingest into the device's logs, the uplink, and a control API.

Failure modes first
-------------------
* The agent is killed (SIGKILL, power cut) at any moment: every record whose ingest
  answer said ``"durable": true`` is on stable storage (the answer waits for the commit
  that covered it); the ring log's recovery finds it, the outbox cursor says what the
  gateway already holds, and the uplink resumes from the gateway's marks -- nothing
  acknowledged is lost, nothing is stored twice at the gateway.
* The gateway is down or unreachable: ingest keeps answering (store and forward); the
  records wait in the logs, bounded by the topics' budgets and ``full_policy``, and the
  uplink retries with backoff and its circuit breaker (``uplink.py``).
* A producer sends garbage (bad JSON, an unknown or cloud_to_edge topic, a body over
  the limit, a record over a segment): a one-line JSON error with a 4xx status, checked
  *before* anything is appended, so a refused request stores nothing.
* The device is full and the topic's policy is ``reject`` (or ``sync.max_queue_size``
  records are owed): 503 with ``Retry-After`` -- backpressure. ``drop_newest`` drops and
  says how many in the answer; ``drop_oldest`` evicts and the uplink reports the gap.
* A producer retries a request whose answer it lost: with an ``Idempotency-Key`` (or
  ``Edgeline-Producer-Id`` + ``Edgeline-Request-Seq``) the retry is answered from the
  topic's dedupe window (idempotency.py) with the seqs the records already got, after a
  crash too: the window is synced before every fsync of the log (``SyncFirstStorage``),
  so records durable implies their key durable.
* MQTT ingest (mqtt_ingest.py) acknowledges a message to the broker only once its
  record is durable, in a session that outlives the agent, and recognises the broker's
  resend of a message it already stored (packet id and payload digest, in the same
  window): exactly once into the log.
  The agent's own MQTT endpoint (mqtt_endpoint.py) PUBACKs a publisher the same way.
* SIGTERM / SIGINT: stop accepting, commit every log, answer the waiting producers,
  acknowledge to the MQTT broker what the commit covered, stop the uplink after its
  exchange in flight, close the logs and cursors.

Theory of operation
-------------------
One asyncio loop owns everything: the core's logs and outboxes are not thread-safe, so
ingest handlers, the group-commit timers and the uplink all call them from the loop;
the one exception is a group commit's fsync, which a worker thread runs on a file
handle whose bytes the loop wrote before (see ``group`` below).
An ingest request is parsed and checked whole (jsonrecords.py), then appended with one
``append_many`` (one HLC timestamp per record) by ``append``. The ingest surface every
source uses is public: ``ingest(topic, keys, values)`` (append, then wait as the topic's
policy has it: the HTTP handler), ``append`` and ``wait_durable`` separately (MQTT ingest
must know at once whether a message was taken, and acknowledges it only later),
``commit_now`` and ``closing``. What
the answer waits for depends on the topic's ``sync`` policy:

* ``every``: each append is committed before ``append_many`` returns; answer at once.
* ``group``: leader/follower group commit, as databases do it. A request that waits
  registers ``(last_seq, future)``; if no commit of the topic is running, one starts at
  once (``_start_commit``: the buffer is written out on the loop thread, the fsync runs
  in a worker thread -- fastpath's ``begin_commit``/``sync_commit``/``end_commit`` -- while
  appends go on). Requests arriving during that fsync join the next commit, which starts
  as soon as the running one ends; ``_commit_done`` publishes ``durable_seq`` and wakes
  every waiter whose ``last_seq <= durable_seq``. One commit in flight per topic, so
  many concurrent requests share one fsync and nobody waits for a timer. For records no
  one waits for, ``group_records`` (inside the log's append) and ``group_ms`` (a timer
  armed by ``_appended``) stay the upper bounds.
* ``none``: answer at once with ``"durable": false`` (the record becomes durable at
  the next flush: the uplink's ``peek`` commits before it sends, and shutdown flushes).

After each ingest the uplink is notified, so records leave as soon as they are durable
rather than at the next ``interval_secs``.

Table topics (``kind: table``, docs/spec/tables.md): the agent keeps a replica of each
(``edgeline_host.tables.Replica``), rebuilt at start by reading the topic's logs -- its
own writes and the cloud's -- and then fed by every write it appends (``append`` forms a
table write from each keyed record, its context from the replica, and applies it in the
same step, with no await between: C1) and by the cloud's records the downlink brings
(``_received``). ``/v1/tables`` reads and writes them (``tables.TableRoutes``).

Cloud-to-edge topics (``cloud_to_edge``, ``bidirectional``) are pulled by the same
uplink loop into logs of the cloud's records (``downlink.py``); local consumers read
them, and any topic's own durable records, with ``GET /v1/topics/{topic}/records``
(optionally waiting for new ones: a long poll).
"""
import asyncio
import hashlib
import logging
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from edgeline import sync
from edgeline.clock import HybridClock
from edgeline.errors import ConfigError, EdgelineError, LogFull
from edgeline.fastpath import begin_commit, end_commit, sync_commit, sync_from
from edgeline.inbox import PLACEHOLDER
from edgeline.logformat import FRAME_OVERHEAD_BYTES, pack_segment_header
from edgeline.outbox import Outbox
from edgeline.store import topic_dirname

from .. import tables
from ..dirlock import DirInUse, DirLock
from ..httperrors import json_errors
from ..jsonrecords import RequestError, parse_records, record_to_json
from ..metrics import metrics_handler
from .idempotency import (DedupeWindow, StoreBesideWindows, SyncFirstStorage, producer_key, window_max_bytes,
                          window_path)

log = logging.getLogger("edgeline.agent")

MAX_BODY_BYTES = 1 << 20  # an ingest request body; larger is 413
MAX_READ_RECORDS = 10000  # records in one answer of the read API
MAX_READ_BYTES = 1 << 20  # about this many value bytes in one answer of the read API
MAX_WAIT_MS = 60000  # the longest long poll of the read API
RETRY_AFTER_S = 1  # what a 503 asks the producer to wait
RETENTION_EVERY_MS = 10000  # how often age retention runs
MAX_IDEMPOTENCY_KEY = 128  # characters of an Idempotency-Key
MAX_PRODUCER_ID = 64  # characters of an Edgeline-Producer-Id
_SEG_HDR = len(pack_segment_header(1, 0, 1 << 16))


_COMMIT_FAILED = ("commit failed: %s; the records are not known durable: the agent reopens the log, which keeps what "
                  "reached the disk whole; retry with the same key (a request without one may then be stored twice)")


def _log_warning(line):
    # The core's logs warn through a function (print on a board); here, the log.
    logging.getLogger("edgeline.log").warning("%s", line)


def _size_text(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return "%.1f %s" % (n / size, unit)
    return "%d bytes" % n


def check_before_open(cfg):
    """What an agent checks of ``cfg`` before it opens anything (and ``edgeline agent
    --check`` with it): the node key when it syncs, a cloud_endpoint it can use.
    ConfigError, one line."""
    syncs = cfg.sync.enabled and any(t.sends or t.receives for t in cfg.topics)
    if syncs:
        _check_key(cfg)
    if syncs and cfg.gateway is not None and cfg.gateway.scheme == "mqtts":
        raise ConfigError("%s: edge.cloud_endpoint: mqtts:// (MQTT over TLS) is not supported by the agent yet; "
                          "use mqtt:// to a broker on a network you trust, or https://" % cfg.source)


def _check_key(cfg):
    if cfg.key is None and cfg.key_file and not os.path.exists(cfg.key_file):
        raise ConfigError(
            "%s: edge.key_file: %s does not exist; create it with `edgeline keygen %s` and add "
            "'%s: <the printed hex>' to the gateway's keys file" % (cfg.source, cfg.key_file, cfg.key_file,
                                                                    cfg.node_id))
    cfg.node_key()  # a bad key file: ConfigError now, before anything is opened


def wall_ms():
    return int(time.time() * 1000)


class _TopicState:
    """One topic at run time: its config, log, outbox (if it sends), commit waiters, and
    the log of its cloud records (if it receives; the topic's own log for cloud_to_edge)."""

    def __init__(self, cfg, ringlog, outbox, down=None, window=None):
        self.cfg = cfg
        self.log = ringlog
        self.outbox = outbox
        self.down = down
        self.window = window  # the ingest dedupe window (idempotency.py); None: cloud_to_edge
        self.waiters = []  # (last_seq, future) of answers waiting for a commit
        self.timer = None  # the group_ms bound for records nobody waits for (asyncio.TimerHandle)
        self.commit = None  # the token of the commit whose fsync is in flight in a worker thread
        self.urgent = False  # commit_now came during a commit: the next starts as it ends
        self.woke_seq = -1  # durable_seq at the last _wake
        self.commit_started = 0.0  # perf_counter() when the commit in flight began (its latency: /metrics)


class Agent:
    """One edge node: store, topics, uplink, HTTP server. ``run()`` until ``stop()``.

    ``max_body_bytes`` bounds an ingest request. ``uplink_options`` go to
    ``uplink.from_config``, ``mqtt_options`` to ``mqtt_ingest.MqttSource``,
    ``mqtt_endpoint_options`` to ``mqtt_endpoint.MqttEndpoint`` (tests shorten timeouts
    with them).
    """

    def __init__(self, cfg, max_body_bytes=MAX_BODY_BYTES, uplink_options=None, print_fn=print, mqtt_options=None,
                 mqtt_endpoint_options=None):
        self.cfg = cfg
        self.mqtt_options = mqtt_options
        self.mqtt_endpoint_options = mqtt_endpoint_options
        self.mqtt = None  # the MQTT ingest (mqtt_ingest.MqttSource) while run() runs
        self.mqtt_endpoint = None  # the agent's own MQTT endpoint (mqtt_endpoint.MqttEndpoint) while run() runs
        self.max_body_bytes = max_body_bytes
        self.print = print_fn
        self.sending = cfg.sync.enabled and any(t.sends for t in cfg.topics)
        self.receiving = cfg.sync.enabled and any(t.receives for t in cfg.topics)
        check_before_open(cfg)
        from .downlink import log_options as down_options

        # One agent per data directory: a second one is refused here, before any log opens.
        self.dirlock = DirLock.for_dir(cfg.data_dir).acquire()
        # Every fsync of a topic's log is preceded by its dedupe window's (D1 of
        # docs/spec/ingest-dedupe.md), whichever path commits: flush, every, count, seal.
        self._storage = SyncFirstStorage()
        try:
            # the logs share max_storage less what the dedupe windows hold (docs/agent.md)
            self.windows = []
            self.store = StoreBesideWindows(cfg.data_dir, cfg.resources.max_storage_bytes, self.windows,
                                            storage=self._storage)
        except BaseException:
            self.dirlock.release()
            raise
        self.topics = {}
        dd = cfg.ingest.dedupe
        try:
            for t in cfg.topics:
                down = window = None
                if t.direction == "cloud_to_edge":
                    # Only the cloud writes this topic: its log holds the cloud's records.
                    lg = down = self.store.log(t.name, warn=_log_warning, **down_options(t))
                else:
                    window = DedupeWindow(window_path(cfg.data_dir, t.name), max_entries=dd.max_entries,
                                          max_age_s=dd.max_age_ms / 1000.0, storage=self._storage.inner)
                    self.windows.append(window)
                    self._storage.before_sync(self.store.root + "/" + topic_dirname(t.name), window.sync)
                    lg = self.store.log(t.name, warn=_log_warning, **t.log_options())
                    window.recover(lg.last_seq)
                    if t.receives:
                        down = self.store.log(t.name, origin=sync.CLOUD_ORIGIN, warn=_log_warning, **down_options(t))
                ob = Outbox(lg, "uplink") if (t.sends and self.sending) else None
                self.topics[t.name] = _TopicState(t, lg, ob, down, window)
        except BaseException:
            self.store.close()
            self._close_windows()
            self.dirlock.release()
            raise
        self.tables = {}  # table topic -> tables.Replica
        try:
            for name, st in self.topics.items():
                if st.cfg.table is not None:
                    self.tables[name] = self._rebuild_table(st)
        except BaseException:  # a conflict log it cannot read: one line, nothing left open
            self._close_tables()
            self.store.close()
            self._close_windows()
            self.dirlock.release()
            raise
        self.disk_warning = self._check_disk()  # None, or the line printed (for health)
        self.dedupe_warning = self._check_dedupe_room()  # None, or the line printed
        self.clock = HybridClock(last_ts=max([lg.last_ts for lg in self.store.logs.values()] or [0]))
        self._changed = None  # an asyncio.Event readers wait on; set (and dropped) when records become readable
        self.uplink = None
        if self.sending or self.receiving:
            from .downlink import Downlink
            from .uplink import from_config

            sending = {n: (st.log, st.outbox) for n, st in self.topics.items() if st.outbox is not None}
            options = dict(uplink_options or {})
            if self.receiving:
                receiving = {n: st.down for n, st in self.topics.items() if st.down is not None}
                options["downlink"] = Downlink(receiving, interval_ms=cfg.sync.interval_ms,
                                               max_records=cfg.sync.batch_size, on_records=self._received,
                                               **options.pop("downlink_options", {}))
            if self.tables:
                options.setdefault("hello_capabilities", self._table_reports)
            self.uplink = from_config(cfg, sending, **options)
        self.housekeeping_ms = RETENTION_EVERY_MS  # tests shorten it
        self.recovered = 0  # logs reopened after a write error
        self.unflushed = {}  # topic -> why its final commit failed (shutdown)
        self.started_ms = wall_ms()
        self.started_mono = time.monotonic()
        self.last_error = None
        self.ingested = 0
        self.rejected = 0
        self.duplicates = 0  # keyed requests answered from the dedupe window, not stored again
        self.ingest_requests = {}  # HTTP ingest requests by outcome (ok, duplicate, status code): /metrics
        from .metrics import CommitLatency

        self.commit_latency = CommitLatency()  # group commits' latency histogram: /metrics
        self._stop = None
        self._closing = False
        self._closed_logs = False  # shutdown settled the commits: no more start
        self._commit_pool = None  # the worker threads that fsync (made at the first commit)

    def _table_reports(self):
        """The HELLO's ``tables`` capability (tables.md, "Reports at the gateway"): per
        table topic, ``[held, head]`` -- the durable end of its cloud
        stream (applied to the replica as it arrived) and the end of its own log, read
        together -- so the gateway can collect tombstones at causal stability."""
        out = {}
        for name in self.tables:
            st = self.topics[name]
            held = st.down.durable_seq if st.down is not None else 0
            # a cloud_to_edge topic's log is the cloud's stream: this node writes nothing to it
            out[name] = tables.report_value(held, 0 if st.cfg.direction == "cloud_to_edge" else st.log.last_seq,
                                            st.cfg.table)
        return {tables.CAPABILITY: out} if out else None

    def _own_writer(self, st):
        """The writer id of this node's writes to a table topic: its node id, with its
        log's incarnation (tables.writer_id)."""
        return tables.writer_id(self.cfg.node_id, bytes(st.log.incarnation).hex())

    def _rebuild_table(self, st):
        """A topic's replica from its logs: this node's writes and the cloud's."""
        clog = tables.ConflictLog(os.path.join(self.cfg.data_dir, tables.CONFLICTS_DIRECTORY,
                                               topic_dirname(st.cfg.name) + ".cl"))
        rep = tables.Replica(st.cfg.name, st.cfg.table, clog)
        logs = []
        if st.cfg.direction != "cloud_to_edge":
            logs.append((self._own_writer(st), st.log))
        if st.down is not None:
            logs.append((sync.CLOUD_ORIGIN, st.down))
        for writer, lg in logs:
            self._feed_table(rep, writer, lg, lg.first_seq)
        if rep.malformed:
            log.warning("agent: table topic %s: %d record(s) in its logs are not table writes (left out of the "
                        "table; last: %s)", st.cfg.name, rep.malformed, rep.last_malformed)
        return rep

    @staticmethod
    def _feed_table(rep, writer, lg, from_seq):
        seq = max(from_seq, lg.first_seq)
        while seq <= lg.last_seq:
            recs = lg.read(seq, 1000, 1 << 20)
            if not recs:
                break
            for r in recs:
                rep.apply_record(writer, r.seq, r.ts, r.key, r.value)
            seq = recs[-1].seq + 1

    def _table_values(self, st, rep, keys, values, table_ops):
        """The record values of table writes to ``st``: each formed from the replica's
        context (C1) -- from ``table_ops`` ((body, delete) pairs: the table API) or from
        the keyed records of an ingest (each value's JSON/CBOR is the write's body).
        RequestError(400/404/409) naming the record if one cannot be a write."""
        from edgeline import codec

        writer = self._own_writer(st)
        out = []
        pending = {}  # a counter key's total as this request's earlier writes left it
        for i, k in enumerate(keys):
            if k is None:
                raise RequestError(400, "record %d: topic %r is a table: every record needs a key" % (i, st.cfg.name))
            key = tables.key_text(k)
            if table_ops is not None:
                body, delete = table_ops[i]
            else:
                try:
                    body, delete = codec.loads(values[i]), False
                except EdgelineError as e:
                    raise RequestError(400, "record %d: not a value a table takes: %s" % (i, e)) from None
            try:
                out.append(rep.form_write(key, writer, body, delete, pending))
            except tables.WriteError as e:
                raise RequestError(e.status, "record %d (key %r): %s" % (i, key, e)) from None
        return out

    def _check_disk(self):
        """Warn (once, at start) when the storage budget is more than the disk under
        data_dir can give -- its free bytes plus what the logs already hold: the disk then
        fills first, and appends fail instead of the topics' full_policy acting."""
        import shutil

        cfg = self.cfg
        try:
            free = shutil.disk_usage(cfg.data_dir).free
        except OSError:
            return None
        held = self.store.used_total_bytes  # the logs and the dedupe windows
        room = free + held
        budget = cfg.resources.max_storage_bytes
        if budget <= room:
            return None
        over = sorted(t.name for t in cfg.topics if t.budget_bytes > room and t.budget_bytes < budget)
        line = ("edgeline agent: warning: resources.max_storage (%s) is more than the disk of %s can hold "
                "(%s free, %s held): the disk fills first, and then appends fail (500) instead of the "
                "topics' full_policy acting; lower max_storage%s" % (
                    _size_text(budget), cfg.data_dir, _size_text(free), _size_text(held),
                    " and the budgets of %s" % ", ".join(over) if over else ""))
        self.print(line)
        log.warning("%s", line)
        return line

    def _check_dedupe_room(self):
        """Warn (once, at start) when the dedupe windows may take more than half of
        max_storage: they count in it, and the logs give way to them (docs/agent.md)."""
        if not self.windows:
            return None
        cfg = self.cfg
        n = len(self.windows)
        bound = n * window_max_bytes(cfg.ingest.dedupe.max_entries)
        budget = cfg.resources.max_storage_bytes
        if 2 * bound <= budget:
            return None
        line = ("edgeline agent: warning: the ingest dedupe windows of %d topic(s) may take up to %s "
                "(ingest.dedupe.max_entries %d each), more than half of resources.max_storage (%s): they count "
                "in it, and the logs give way to them; lower ingest.dedupe.max_entries or raise max_storage" % (
                    n, _size_text(bound), cfg.ingest.dedupe.max_entries, _size_text(budget)))
        self.print(line)
        log.warning("%s", line)
        return line

    def close(self):
        """Close the logs, the dedupe windows and the data directory's lock, without a
        final commit (``run`` commits before it closes; an Agent that never ran -- a test,
        a tool -- closes with this)."""
        self._close_tables()
        self.store.close()
        self._close_windows()
        self.dirlock.release()

    def _close_tables(self):
        for rep in self.tables.values():
            rep.close()

    def _close_windows(self):
        for w in self.windows:
            try:
                w.close()
            except OSError as e:
                log.error("agent: closing %s: %s", w.path, e)

    # ------------------------------------------------------------------ HTTP app

    def app(self):
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[json_errors])
        app.router.add_post("/v1/topics/{topic}/records", self.handle_ingest)
        app.router.add_get("/v1/topics/{topic}/records", self.handle_read)
        app.router.add_get("/v1/sync/status", self.handle_sync_status)
        app.router.add_post("/v1/sync/{action}", self.handle_sync_action)
        app.router.add_get("/v1/queue", self.handle_queue)
        app.router.add_get("/v1/health", self.handle_health)
        app.router.add_get("/metrics", metrics_handler(self._metrics_registry))  # made at the first scrape
        tables.TableRoutes(lambda: self.tables, self._table_write).attach(app)
        return app

    def _metrics_registry(self):
        from .metrics import registry_for

        return registry_for(self)  # docs/metrics.md

    @staticmethod
    def _error(status, message, headers=None, detail=None):
        body = {"error": message}
        if detail:
            body.update(detail)
        return web.json_response(body, status=status, headers=headers)

    async def handle_ingest(self, request):
        try:
            answer = await self._ingest(request)
        except RequestError as e:
            self.rejected += 1
            self._count_request(str(e.status))
            return self._error(e.status, str(e), e.headers, e.detail)
        self._count_request("duplicate" if answer.get("duplicate") else "ok")
        return web.json_response(answer)

    def _count_request(self, outcome):
        self.ingest_requests[outcome] = self.ingest_requests.get(outcome, 0) + 1

    async def _ingest(self, request):
        if self.cfg.ingest.http is None:
            raise RequestError(404, "HTTP ingest is off (add ingest.http to the config)")
        if self._closing:
            raise RequestError(503, "the agent is shutting down", {"Retry-After": str(RETRY_AFTER_S)})
        name = request.match_info["topic"]
        self._writable(name)  # before the body is read: a wrong topic costs no upload
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(413, "the body is over %d bytes" % self.max_body_bytes) from None
        idem = self._idempotency(request.headers, body)
        keys, values = parse_records(body)
        return await self.ingest(name, keys, values, idem)

    @staticmethod
    def _idempotency(headers, body):
        """``(window key, digest, producer id or None, request seq)`` from a request's
        ``Idempotency-Key`` or ``Edgeline-Producer-Id`` + ``Edgeline-Request-Seq``
        headers, or None; RequestError(400) if they are malformed."""
        ikey = headers.get("Idempotency-Key")
        pid = headers.get("Edgeline-Producer-Id")
        rseq = headers.get("Edgeline-Request-Seq")
        if ikey is None and pid is None and rseq is None:
            return None
        digest = hashlib.blake2b(body, digest_size=16).digest()
        if ikey is not None:
            if pid is not None or rseq is not None:
                raise RequestError(400, "give Idempotency-Key or Edgeline-Producer-Id with Edgeline-Request-Seq, "
                                  "not both")
            if not 1 <= len(ikey) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in ikey):
                raise RequestError(400, "Idempotency-Key must be 1 to %d visible ASCII characters"
                                  % MAX_IDEMPOTENCY_KEY)
            return b"k:" + ikey.encode(), digest, None, None
        if pid is None or rseq is None:
            raise RequestError(400, "Edgeline-Producer-Id and Edgeline-Request-Seq go together")
        if not 1 <= len(pid) <= MAX_PRODUCER_ID or not all(c.isascii() and (c.isalnum() or c in "._-") for c in pid):
            raise RequestError(400, "Edgeline-Producer-Id must be 1 to %d characters of [A-Za-z0-9._-]"
                              % MAX_PRODUCER_ID)
        if not (rseq.isascii() and rseq.isdigit()) or len(rseq) > 18:
            raise RequestError(400, "Edgeline-Request-Seq must be a decimal integer from 0 to 10**18 - 1, got %r"
                              % rseq[:40])
        return producer_key(pid, int(rseq)), digest, pid, int(rseq)

    def _writable(self, name):
        """The state of topic ``name`` if the edge writes to it; RequestError(404/409) if not."""
        st = self.topics.get(name)
        if st is None:
            raise RequestError(404, "unknown topic %r (not in sync_topics or local_topics)" % name)
        if st.cfg.direction == "cloud_to_edge":
            raise RequestError(409, "topic %r is cloud_to_edge: the edge does not write to it" % name)
        return st

    @property
    def closing(self):
        """True once shutdown began: ingest sources append nothing more."""
        return self._closing

    async def ingest(self, name, keys, values, idem=None):
        """Append records (CBOR ``values`` with ``keys``, bytes or None) to topic ``name``
        and wait as its sync policy has it; the ingest answer: ``first_seq``,
        ``last_seq``, ``durable`` (and ``dropped`` under ``drop_newest``).
        RequestError as ``append``, and 404/409/503 for an unknown, cloud_to_edge topic
        or an agent shutting down. Part of a request that went in before a ``reject``
        topic filled up is waited for before the error is raised.

        ``idem`` (``_idempotency``): a request whose key the topic's dedupe window holds
        is not stored again; it is answered with the seqs it got (``"duplicate": true``)
        once they are durable, as the original is -- also while the original still waits
        (its entry is added before its records are appended, with no await between).
        422 if the key came with another body, 409 if a producer's request seq is older
        than the window."""
        if self._closing:
            raise RequestError(503, "the agent is shutting down", {"Retry-After": str(RETRY_AFTER_S)})
        st = self._writable(name)
        self.ready(st)  # a log that failed a write is reopened first: the window's seqs follow it
        lg = st.log
        w = st.window
        if idem is not None and values:
            key, digest, pid, rseq = idem
            hit = w.lookup(key)
            if hit is not None:
                return await self._duplicate(st, hit, idem, keys, values)
            floor = w.floor(pid) if pid is not None else None
            if floor is not None and rseq <= floor:
                raise RequestError(409, "request seq %d of producer %r is older than the dedupe window (it "
                                  "holds seqs above %d): it cannot be told from a new request; it was not "
                                  "stored" % (rseq, pid, floor))
            try:
                w.add(key, lg.last_seq + 1, lg.last_seq + len(values), digest)
            except (OSError, EdgelineError) as e:
                raise RequestError(500, "the ingest dedupe window of topic %r cannot be written (%s): nothing of the "
                                  "request was stored; retry with the same key" % (name, e)) from None
        else:
            idem = None
        before = lg.last_seq
        try:
            first, n = self.append(st, keys, values)
        except BaseException as e:
            stored = e.stored if isinstance(e, RequestError) else 0
            if idem is not None:
                if st.log.failure is not None:
                    # A write failed: records of the request may be in the file, whole,
                    # though not synced. The entry keeps naming the whole request; recover()
                    # syncs what the reopened log kept and cuts the entry to it, so a retry
                    # appends only the rest (or is answered as a duplicate).
                    pass
                elif stored:  # a reject topic filled up part way: the key keeps that part; a
                    w.add(idem[0], before + 1, before + stored, idem[1])  # retry appends the rest
                else:
                    w.discard(idem[0])  # nothing stored: a retry stores it
            if stored:  # the part that went in, as the policy has it (a failed log: what it made durable)
                lg = st.log
                await self.wait_durable(st, lg.last_seq if lg.failure is None else lg.durable_seq)
            raise
        lg = st.log
        if idem is not None and n < len(values):
            if n:
                w.add(idem[0], first, first + n - 1, idem[1])  # drop_newest kept the first n
            else:
                w.discard(idem[0])
        answer = {"topic": name, "first_seq": first if n else None, "last_seq": lg.last_seq if n else None}
        if n < len(values):
            answer["dropped"] = len(values) - n  # drop_newest: counted in the log's "dropped"
        answer["durable"] = await self.wait_durable(st, lg.last_seq) if n else True
        return answer

    async def _duplicate(self, st, hit, idem, keys, values):
        """The answer to a request whose key the window holds (see ``ingest``)."""
        first, last, stored_digest = hit
        key, digest, pid, rseq = idem
        w = st.window
        lg = st.log
        what = "Idempotency-Key" if pid is None else "request seq %d of producer %r" % (rseq, pid)
        if stored_digest != digest:
            w.conflicts += 1
            raise RequestError(422, "%s was used before for another request body (stored as seqs %d..%d); "
                              "a new request needs a new key" % (what, first, last))
        w.hits += 1
        self.duplicates += 1
        have = last - first + 1
        if have < len(values):
            # A crash kept only the first records of the original (recover cut its entry):
            # append the rest, right after them if nothing came between.
            if lg.last_seq != last:
                raise RequestError(409, "the request under this %s was cut by a crash: its records 0..%d are "
                                  "stored as seqs %d..%d and other records followed them; records %d.. were "
                                  "not stored: send them under a new key" % (what, have - 1, first, last, have),
                                  detail={"stored_records": have, "stored_first_seq": first, "stored_last_seq": last})
            try:
                w.add(key, first, first + len(values) - 1, digest)
            except (OSError, EdgelineError) as e:
                raise RequestError(500, "the ingest dedupe window of topic %r cannot be written (%s): nothing more "
                                  "of the request was stored; retry with the same key" % (st.cfg.name, e)) from None
            try:
                _, n = self.append(st, keys[have:], values[have:])
            except BaseException as e:
                if st.log.failure is None:  # a failed log: recover() cuts the entry to what it kept
                    w.add(key, first, last + (e.stored if isinstance(e, RequestError) else 0), digest)
                raise
            if have + n < len(values):
                w.add(key, first, last + n, digest)
            last += n
        durable = await self.wait_durable(st, last)
        return {"topic": st.cfg.name, "first_seq": first, "last_seq": last, "durable": durable, "duplicate": True}

    def append(self, st, keys, values, table_ops=None):
        """The write path every ingest source shares (HTTP, MQTT): check, then append
        ``values`` (CBOR, with ``keys``) to topic ``st`` with one ``append_many`` and one
        HLC timestamp each; return ``(first_seq, n)``, n appended (fewer than given only
        under ``drop_newest``). Durability is the caller's to wait for (``wait_durable``).

        RequestError: 413 a record over a segment, 503 ``sync.max_queue_size`` or a full
        ``reject`` topic, 500 a failed write -- nothing stored, except that a ``reject``
        topic filling up part way says how many went in (``e.stored``).

        A table topic's records become table writes here (``_table_values``; with
        ``table_ops``, the table API's (body, delete) pairs, ``values`` unused), and what
        is appended is applied to its replica before this returns."""
        name = st.cfg.name
        self.ready(st)
        rep = self.tables.get(name)
        if rep is not None:
            values = self._table_values(st, rep, keys, values, table_ops)
        lg = st.log
        room = lg.segment_bytes - _SEG_HDR
        for i, (k, v) in enumerate(zip(keys, values)):
            if FRAME_OVERHEAD_BYTES + (0 if k is None else len(k)) + len(v) > room:  # the frame's length
                raise RequestError(413, "record %d does not fit in a segment of topic %r (%d bytes)"
                                  % (i, name, lg.segment_bytes))
        limit = self.cfg.sync.max_queue_records
        if limit and st.outbox is not None:
            owed = sum(s.outbox.depth for s in self.topics.values() if s.outbox is not None)
            if owed + len(values) > limit:
                raise RequestError(503, "sync.max_queue_size reached: %d records owed to the gateway" % owed,
                                  {"Retry-After": str(RETRY_AFTER_S)})
        now = wall_ms()
        ts = [self.clock.now(now) for _ in values]
        before = lg.last_seq
        try:
            lg.append_many(values, ts=ts, keys=keys if any(k is not None for k in keys) else None, now_ms=now)
        except LogFull as e:
            if rep is not None:
                self._applied(st, rep, keys, values, ts, before, lg.last_seq - before)
            n = lg.last_seq - before
            self._appended(st, n)
            if n == 0:
                raise RequestError(503, "%s" % e, {"Retry-After": str(RETRY_AFTER_S)}) from None
            # Part of the request went in before the log filled: say exactly which part.
            raise RequestError(503, "%s; records 0..%d of the request were stored as seqs %d..%d, the rest were not"
                              % (e, n - 1, before + 1, before + n), {"Retry-After": str(RETRY_AFTER_S)},
                              stored=n) from None
        except EdgelineError as e:
            self.last_error = "%s: %s" % (name, e)
            err = self._write_failed(lg, before, e)
            if err.stored:
                if rep is not None:
                    self._applied(st, rep, keys, values, ts, before, err.stored)
                self._appended(st, err.stored)
            raise err from None
        n = lg.last_seq - before
        if rep is not None:
            self._applied(st, rep, keys, values, ts, before, n)
        self._appended(st, n)
        return before + 1, n

    def _applied(self, st, rep, keys, values, ts, before, n):
        writer = self._own_writer(st)
        for i in range(n):
            rep.apply_record(writer, before + 1 + i, ts[i], keys[i], values[i])

    async def _table_write(self, name, key, body, delete):
        """A write of the table API (PUT/DELETE /v1/tables/{topic}/{key}): formed,
        appended and applied (``append``), answered once durable as the topic's sync
        policy has it."""
        if self._closing:
            raise RequestError(503, "the agent is shutting down", {"Retry-After": str(RETRY_AFTER_S)})
        st = self._writable(name)
        kb = key.encode("utf-8")
        first, n = self.append(st, [kb], [None], table_ops=[(body, delete)])
        durable = await self.wait_durable(st, first) if n else True
        return {"topic": name, "key": key, "origin": self.cfg.node_id, "seq": first, "durable": durable}

    def ready(self, st):
        """Reopen topic ``st``'s log if a write error failed it (``recover``); RequestError
        503 while it cannot be reopened yet."""
        if st.log.failure is not None and not self.recover(st):
            raise RequestError(503, "the log of topic %r failed a write and cannot be reopened yet (%s); the agent "
                                    "tries again" % (st.cfg.name, self.last_error), {"Retry-After": str(RETRY_AFTER_S)})

    @staticmethod
    def _write_failed(lg, before, e):
        """The 500 of an append that failed on a write error, saying what of the request
        is durable (under ``sync: every`` the records before the failing one were each
        committed) -- a producer that retries then knows what it would store twice."""
        done = lg.durable_seq - before if lg.durable_seq > before else 0
        if not done:
            return RequestError(500, "%s; nothing of the request is known durable: the agent reopens the log, which "
                                     "keeps what reached the disk whole; retry with the same key (a request without "
                                     "one may then be stored twice in part)" % e)
        return RequestError(500, "%s; records 0..%d of the request were stored as seqs %d..%d (durable); the agent "
                                 "reopens the log, which keeps what reached the disk whole; retry with the same key "
                                 "(a request without one may then be stored twice in part)"
                            % (e, done - 1, before + 1, before + done), stored=done)

    def recover(self, st):
        """After a write error (``st.log.failure``), reopen topic ``st``'s log from disk --
        recovery keeps every durable record and cuts a torn tail -- and re-attach its
        outbox (and the uplink to them). Called by the next append to the topic and by
        housekeeping, so the agent heals by itself once the cause is gone (a full disk
        with room again). True when the log takes writes; False (and ``last_error``) when
        it cannot be reopened yet: the next try comes with the next append or round."""
        old = st.log
        if old.failure is None:
            return True
        if st.cfg.direction == "cloud_to_edge":
            return False  # the downlink's log: it is written by the downlink, not by ingest
        name = st.cfg.name
        why = old.failure
        if st.commit is not None:
            # A worker thread still syncs this log's file: it is closed only once that
            # commit is done (_commit_done); the next append or round tries again.
            self.last_error = "%s: %s; reopening once the commit in flight ends" % (name, why)
            return False
        durable = old.durable_seq
        for _, fut in st.waiters:  # what they waited for was never committed
            if not fut.done():
                fut.set_exception(RequestError(500, _COMMIT_FAILED % why))
        st.waiters = []
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        try:
            old.close()  # no flush (it failed); closes the outbox's cursor, leaves the store
        except (EdgelineError, OSError):
            pass
        lg = ob = None
        try:
            lg = self.store.log(name, warn=_log_warning, **st.cfg.log_options())
            if lg.last_seq > durable:
                # Recovery counts what it found whole as durable, but it was written, not
                # synced (the fsync failed, or never ran): sync it before anyone is told
                # so -- the window's entries first (SyncFirstStorage), then the segments.
                sync_from(lg, durable + 1)
            if st.window is not None:
                st.window.recover(lg.last_seq)  # entries cut to what the log holds; changed only if rewritten
            ob = Outbox(lg, "uplink") if st.outbox is not None else None
        except (EdgelineError, OSError) as e:
            if lg is not None:
                try:
                    lg.close()  # and out of store.logs: the next try reopens it from disk
                except (EdgelineError, OSError):
                    pass
                self.store.forget(lg)
            self.last_error = "%s: cannot reopen the log after a write error: %s" % (name, e)
            log.error("agent: topic %s: cannot reopen the log after a write error (%s): %s; trying again later",
                      name, why, e)
            return False
        st.log = lg
        if ob is not None:
            st.outbox = ob
            if self.uplink is not None:
                self.uplink.reattach(name, lg, ob)
        if name in self.tables:
            # The replica took every write appended, but the reopened log keeps only what
            # reached the disk whole: rebuilt from it, it never shows a write the log dropped.
            self.tables[name].close()
            self.tables[name] = self._rebuild_table(st)
        self.recovered += 1
        kept = ""
        if lg.last_seq > durable:
            # Written before the error but never answered durable: whole on disk, synced, kept.
            kept = "; seqs %d..%d, written before the error but not answered durable, were found whole, synced and " \
                   "kept" % (durable + 1, lg.last_seq)
        line = "agent: topic %s: log reopened after a write error (%s); it takes writes again from seq %d%s" % (
            name, why, lg.next_seq, kept)
        log.warning("%s", line)
        self.print("edgeline " + line)
        return True

    def _appended(self, st, n):
        self.ingested += n
        self._wake(st)  # a commit by count or a seal may have covered earlier waiters (and readers)
        lg = st.log
        if n and st.timer is None and lg.sync == "group" and lg.durable_seq < lg.last_seq:
            # Nobody may wait for these: they are committed at the latest group_ms from now
            # (or at group_records, inside the log's append). Armed once per group_ms at
            # most, never cancelled by the commits waiters start: a request costs no timer.
            try:
                st.timer = asyncio.get_running_loop().call_later(lg.group_ms / 1000.0, self._group_ms_passed, st)
            except RuntimeError:
                pass  # called outside the agent's loop (a tool, a test): the log's own bounds apply
        if self.uplink is not None and st.outbox is not None and n:
            self.uplink.notify()

    def commit_now(self, st):
        """Commit topic ``st`` now rather than at its group-commit bounds (MQTT ingest:
        the broker sends nothing more until what it sent is acknowledged). Starts a
        commit unless one is running (then the next starts as it ends); its waiters are
        answered when it ends."""
        st.urgent = True
        if st.commit is None:
            self._start_commit(st)

    async def wait_durable(self, st, seq):
        """Wait until seq is committed, as the topic's sync policy has it; True if it is.

        Leader/follower group commit: a waiter arriving while no commit runs starts one at
        once; one arriving during a commit's fsync is answered by the next, which starts as
        soon as the running one ends. Never a timer while someone waits."""
        lg = st.log
        if lg.durable_seq >= seq:
            return True
        if lg.sync == "none":
            return False
        fut = asyncio.get_running_loop().create_future()
        st.waiters.append((seq, fut))
        if st.commit is None:
            self._start_commit(st)
        return await fut

    def _group_ms_passed(self, st):
        st.timer = None
        lg = st.log
        if lg.durable_seq < lg.last_seq:
            st.urgent = True  # the running commit may not cover them: the next one starts as it ends
            if st.commit is None:
                self._start_commit(st)

    def _start_commit(self, st):
        """Begin a commit of topic ``st``: the buffer is written out here, on the loop
        thread; the fsync runs in a worker thread (one commit in flight per topic) while
        appends go on; ``_commit_done`` publishes ``durable_seq`` and answers the waiters."""
        if st.commit is not None or self._closed_logs:
            return
        st.urgent = False
        started = time.perf_counter()
        try:
            token = begin_commit(st.log, wall_ms())
        except EdgelineError as e:
            self._commit_failed(st, e)
            return
        if token is None:
            self._wake(st)
            return
        if self._commit_pool is None:
            self._commit_pool = ThreadPoolExecutor(max_workers=max(1, min(len(self.topics), 8)),
                                                   thread_name_prefix="edgeline-commit")
        st.commit = token
        st.commit_started = started  # the commit's latency, from the write out (/metrics)
        self._commit_pool.submit(self._fsync, asyncio.get_running_loop(), st, token)

    def _fsync(self, loop, st, token):
        # The worker thread: the fsync, then straight back to the loop (one hop, not
        # run_in_executor's two: the loop is busiest exactly when commits queue up).
        error = None
        try:
            sync_commit(token)
        except BaseException as e:  # any failure fails the commit, never the worker
            error = e
        try:
            loop.call_soon_threadsafe(self._commit_done, st, token, error)
        except RuntimeError:
            pass  # the loop is closed: the process is ending

    def _commit_done(self, st, token, error):
        st.commit = None
        self.commit_latency.observe(st.cfg.name, time.perf_counter() - st.commit_started)
        try:
            end_commit(st.log, token, error)
        except EdgelineError as e:
            self._commit_failed(st, e)
            return
        self._wake(st)
        lg = st.log
        if lg.durable_seq < lg.last_seq:
            if st.waiters or st.urgent:
                self._start_commit(st)  # those who came during the fsync: the next commit, now
            elif st.timer is None and lg.sync == "group" and not self._closed_logs:
                st.timer = asyncio.get_running_loop().call_later(lg.group_ms / 1000.0, self._group_ms_passed, st)

    def _commit_failed(self, st, e):
        self.last_error = "%s: %s" % (st.cfg.name, e)
        log.error("agent: topic %s: commit failed: %s", st.cfg.name, e)
        waiters, st.waiters = st.waiters, []
        for _, fut in waiters:
            if not fut.done():
                fut.set_exception(RequestError(500, _COMMIT_FAILED % e))

    async def _settle_commits(self):
        """Shutdown: start no more commits, wait for those in flight (their fsync runs in
        a worker); the final flush then covers the rest."""
        self._closed_logs = True
        for st in self.topics.values():
            if st.timer is not None:
                st.timer.cancel()
                st.timer = None
            while st.commit is not None:  # _commit_done clears it (and reports a failure)
                await asyncio.sleep(0.001)
        if self._commit_pool is not None:
            self._commit_pool.shutdown(wait=False)
            self._commit_pool = None

    def _wake(self, st):
        durable = st.log.durable_seq
        if durable == st.woke_seq:
            return  # nothing became durable: no waiter or reader to answer (a waiter's seq is above)
        st.woke_seq = durable
        self._notify_readers()
        left = []
        for seq, fut in st.waiters:
            if seq <= durable:
                if not fut.done():
                    fut.set_result(True)
            else:
                left.append((seq, fut))
        st.waiters = left

    # ------------------------------------------------------------------ reading

    def _notify_readers(self):
        ev = self._changed
        if ev is not None:
            self._changed = None
            ev.set()

    def _received(self, topic, ringlog, n):
        """Downlink callback: n records of topic came from the cloud, durable."""
        # The hybrid clock's receive rule: what this node stamps from now on is later than
        # what it has received.
        self.clock.observe(ringlog.last_ts, wall_ms())
        rep = self.tables.get(topic)
        if rep is not None:
            self._feed_table(rep, sync.CLOUD_ORIGIN, ringlog, ringlog.last_seq - n + 1)
        self._notify_readers()

    def _readable(self, name, origin):
        """The log a read of (topic, origin) reads; RequestError(404) if there is none."""
        st = self.topics.get(name)
        if st is None:
            raise RequestError(404, "unknown topic %r (not in sync_topics or local_topics)" % name)
        node = self.cfg.node_id
        if origin is None:
            origin = sync.CLOUD_ORIGIN if st.down is not None else node
        if origin == sync.CLOUD_ORIGIN:
            if st.down is None:
                raise RequestError(404, "topic %r is %s: nothing comes from the cloud on it" % (name, st.cfg.direction))
            return st.down, origin
        if origin == node:
            if st.cfg.direction == "cloud_to_edge":
                raise RequestError(404, "topic %r is cloud_to_edge: this node writes nothing to it" % name)
            return st.log, origin
        raise RequestError(404, "origin %r: this node holds records of %r (cloud-to-edge records) and %r (its own)"
                          % (origin, sync.CLOUD_ORIGIN, node))

    @staticmethod
    def _query_int(request, name, default, lo, hi):
        v = request.query.get(name)
        if v is None:
            return default
        try:
            n = int(v)
        except ValueError:
            n = None
        if n is None or not lo <= n <= hi:
            raise RequestError(400, "%s must be an integer from %d to %d, got %r" % (name, lo, hi, v))
        return n

    async def handle_read(self, request):
        try:
            return web.json_response(await self._read(request))
        except RequestError as e:
            return self._error(e.status, str(e), e.headers)

    async def _read(self, request):
        """Records of a topic after ``after``: the cloud's by default on a topic that
        receives, else this node's own; only durable ones. With ``wait_ms`` and nothing
        new, wait up to that long for some (a long poll)."""
        lg, origin = self._readable(request.match_info["topic"], request.query.get("origin"))
        after = self._query_int(request, "after", 0, 0, (1 << 64) - 1)
        limit = self._query_int(request, "limit", 100, 1, MAX_READ_RECORDS)
        wait_ms = self._query_int(request, "wait_ms", 0, 0, MAX_WAIT_MS)
        deadline = time.monotonic() + wait_ms / 1000.0
        while True:
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            durable = lg.durable_seq
            recs = []
            if after < durable:
                recs = [r for r in lg.read(after + 1, min(limit, durable - after), MAX_READ_BYTES) if r.seq <= durable]
            left = deadline - time.monotonic()
            if recs or left <= 0 or self._closing:
                break
            try:
                await asyncio.wait_for(changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        shown = recs
        if origin == sync.CLOUD_ORIGIN and request.match_info["topic"] in self.tables:
            # a compacted pull's placeholders (no key, empty value) are seqs, not records
            shown = [r for r in recs if r.key is not None or r.value != PLACEHOLDER]
        return {
            "topic": lg.topic,
            "origin": origin,
            "first_seq": lg.first_seq,
            "last_seq": durable,
            "records": [record_to_json(r) for r in shown],
            "next_after": recs[-1].seq if recs else max(after, 0),
        }

    # ------------------------------------------------------------------ control

    def _no_uplink(self):
        why = "sync.enabled is false" if not self.cfg.sync.enabled else "no topic syncs with the gateway"
        return {"state": "disabled", "node_id": self.cfg.node_id, "reason": why, "topics": {}}

    async def handle_sync_status(self, _request):
        return web.json_response(self.uplink.status() if self.uplink is not None else self._no_uplink())

    async def handle_sync_action(self, request):
        action = request.match_info["action"]
        if action not in ("now", "pause", "resume"):
            return self._error(404, "unknown sync action %r (now, pause, resume)" % action)
        if self.uplink is None:
            return self._error(409, "the uplink is disabled: %s" % self._no_uplink()["reason"])
        {"now": self.uplink.sync_now, "pause": self.uplink.pause, "resume": self.uplink.resume}[action]()
        await asyncio.sleep(0)  # let the loop see it, so the state below is current
        return web.json_response({"ok": True, "action": action, "state": self.uplink.status()["state"]})

    def queue(self):
        topics = {}
        for name, st in self.topics.items():
            s = st.log.stats()
            ob = st.outbox
            gap = ob.gap() if ob is not None else None
            topics[name] = {
                "direction": st.cfg.direction,
                "received_seq": st.down.last_seq if st.down is not None else None,
                "sync": st.cfg.sync,
                "last_seq": s["last_seq"],
                "durable_seq": s["durable_seq"],
                "acked": ob.acked if ob is not None else None,
                "pending": ob.depth if ob is not None else 0,
                "gap": list(gap) if gap else None,
                "size_bytes": s["size_bytes"],
                "budget_bytes": s["budget_bytes"],
                "evicted": s["evicted"],
                "dropped": s["dropped"],
                "expired": s["expired"],
                "corrupt": s["corrupt"],
            }
        return {
            "node_id": self.cfg.node_id,
            "pending": sum(t["pending"] for t in topics.values()),
            "storage": self._storage_figures(),
            "topics": topics,
        }

    def _storage_figures(self):
        """What the agent takes of resources.max_storage: the logs and the dedupe windows."""
        s = self.store
        return {"used_bytes": s.used_total_bytes, "budget_bytes": s.max_storage_bytes, "logs_bytes": s.size_bytes,
                "dedupe_bytes": s.windows_bytes}

    async def handle_queue(self, _request):
        return web.json_response(self.queue())

    def health_reasons(self, up, failed):
        """The reasons (edgeline_host.health) this agent is not ok, from its facts: the
        uplink's status ``up``, the ``failed`` topics, the logs' counters, storage, disk
        and lock."""
        from .. import health as H

        hc = self.cfg.health
        reasons = []
        reasons += H.failed_topics(failed)
        reasons += H.lock_lost(self.lock_lost)
        reasons += H.auth_refused(up.get("refused"), up.get("last_error"))
        failing_ms = up.get("failing_for_ms")
        reasons += H.uplink_failing(failing_ms / 1000.0 if failing_ms is not None else None,
                                    hc.uplink_failing_ms / 1000.0, up.get("last_error"))
        corrupt = {}
        for name, st in self.topics.items():
            n = st.log.stats()["corrupt"]
            if st.down is not None and st.down is not st.log:
                n += st.down.stats()["corrupt"]
            corrupt[name] = n
        reasons += H.corrupt_records(corrupt)
        reasons += H.storage_nearly_full(self.store.used_total_bytes, self.store.max_storage_bytes,
                                         hc.storage_full_percent / 100.0)
        try:
            free = shutil.disk_usage(self.cfg.data_dir).free
        except OSError:
            free = None
        reasons += H.disk_low(free, hc.min_free_disk_bytes)
        return reasons

    def health(self):
        from .. import health as H

        failed = [n for n, st in self.topics.items()
                  if st.log.failure is not None or (st.down is not None and st.down.failure is not None)]
        up = self.uplink.status() if self.uplink is not None else self._no_uplink()
        last_error = self.last_error or up.get("last_error")
        summary = H.summarize(self.health_reasons(up, failed))
        return {
            "status": summary["status"],
            "reasons": summary["reasons"],
            "ok": summary["status"] == H.OK,
            "node_id": self.cfg.node_id,
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "storage": self._storage_figures(),
            "uplink": up["state"],
            "pending": sum(st.outbox.depth for st in self.topics.values() if st.outbox is not None),
            "ingested": self.ingested,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "mqtt": self.mqtt.stats() if self.mqtt is not None else None,
            "mqtt_endpoint": self.mqtt_endpoint.stats() if self.mqtt_endpoint is not None else None,
            "failed_topics": failed,
            "last_error": last_error,
        }

    def lock_lost(self):
        """True when the data directory's LOCK file was deleted or replaced under us
        (another agent could now start on it): for health."""
        return self.dirlock.lock_lost()

    async def handle_health(self, _request):
        return web.json_response(self.health())

    # ------------------------------------------------------------------ run

    def stop(self):
        if self._stop is not None:
            self._stop.set()

    async def _housekeeping(self):
        """Age retention, now and then; and logs that failed a write reopened."""
        while True:
            await asyncio.sleep(self.housekeeping_ms / 1000.0)
            now = wall_ms()
            for st in self.topics.values():
                if st.log.failure is not None:
                    self.recover(st)
                if st.cfg.retention_ms:
                    for lg in (st.log, st.down) if st.down is not None and st.down is not st.log else (st.log,):
                        try:
                            lg.apply_retention(now)
                        except EdgelineError as e:
                            self.last_error = "%s: %s" % (st.cfg.name, e)

    def _final_commit(self):
        """Shutdown: commit every log, answer the waiting producers. A log that failed a
        write is reopened first (its durable records are what it holds; nothing is
        owed). What could not be committed is in ``unflushed`` (topic -> why), for the
        stop line -- which then does not claim the logs were flushed."""
        self.unflushed = {}
        for st in self.topics.values():
            if st.timer is not None:
                st.timer.cancel()
                st.timer = None
            if st.log.failure is not None:
                self.recover(st)
            try:
                st.log.flush(wall_ms())
            except EdgelineError as e:
                self.unflushed[st.cfg.name] = "%s (durable up to seq %d)" % (e, st.log.durable_seq)
                log.error("agent: topic %s: final commit failed: %s", st.cfg.name, e)
                for _, fut in st.waiters:
                    if not fut.done():
                        fut.set_exception(RequestError(500, "commit failed: %s" % e))
                st.waiters = []
            self._wake(st)

    def stop_line(self):
        """What the agent says once stopped: true to what the final commit did."""
        if not self.unflushed:
            return "edgeline agent: stopped; logs flushed and closed"
        return "edgeline agent: stopped; logs closed, but not every record was made durable: %s" % "; ".join(
            "topic %s: %s" % kv for kv in sorted(self.unflushed.items()))

    async def run(self, install_signals=True):
        """Serve until ``stop()`` (or SIGTERM/SIGINT); then shut down cleanly."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        listen = self.cfg.ingest.http.listen if self.cfg.ingest.http is not None else None
        if listen is None:
            from .config import HttpIngest

            listen = HttpIngest().listen
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        uplink_task = housekeeping = keepalive = None
        from ..sdnotify import Notifier

        systemd = Notifier()  # Type=notify units (edgeline systemd-unit agent); nothing without $NOTIFY_SOCKET
        try:
            site = web.TCPSite(runner, listen.host, listen.port)
            await site.start()
            if self.uplink is not None:
                uplink_task = asyncio.ensure_future(self.uplink.run())
            housekeeping = asyncio.ensure_future(self._housekeeping())
            self.print("edgeline agent: node %s, %d topic(s), data in %s, %s on http://%s, %s" % (
                self.cfg.node_id, len(self.topics), self.cfg.data_dir,
                "ingest and control" if self.cfg.ingest.http is not None else "control (ingest off)", listen,
                "uplink to %s" % self.uplink.url if self.uplink is not None else "no uplink"))
            mqtt = self.cfg.ingest.mqtt
            if mqtt is not None and mqtt.broker is not None:
                from .mqtt_ingest import MqttSource

                self.mqtt = MqttSource(self, mqtt, **(self.mqtt_options or {}))
                await self.mqtt.start()
                self.print("edgeline agent: MQTT ingest from %s: %s" % (self.mqtt.broker, ", ".join(self.mqtt.filters)))
            if mqtt is not None and mqtt.listen is not None:
                from .mqtt_endpoint import MqttEndpoint

                self.mqtt_endpoint = MqttEndpoint(self, mqtt, **(self.mqtt_endpoint_options or {}))
                await self.mqtt_endpoint.start()
                self.print("edgeline agent: MQTT endpoint on %s:%d (MQTT 3.1.1 and 5, QoS 0 and 1)"
                           % (mqtt.listen.host, self.mqtt_endpoint.port))
            systemd.notify("READY=1", "STATUS=serving on http://%s, %d topic(s)" % (listen, len(self.topics)))
            keepalive = asyncio.ensure_future(systemd.keepalive())
            await self._stop.wait()
        finally:
            systemd.notify("STOPPING=1")
            if keepalive is not None:
                keepalive.cancel()
            self._closing = True
            if self.mqtt is not None:
                self.mqtt.pause()  # nothing more is appended; the commit below covers what was
            if self.mqtt_endpoint is not None:
                self.mqtt_endpoint.pause()
            if housekeeping is not None:
                housekeeping.cancel()
            # Commit everything and answer the producers still waiting, then stop serving.
            await self._settle_commits()  # no worker thread syncs a log while it is flushed and closed
            self._final_commit()
            await asyncio.sleep(0)
            if self.mqtt is not None:
                await self.mqtt.close()  # acknowledges what the commit covered, then disconnects
            if self.mqtt_endpoint is not None:
                await self.mqtt_endpoint.close()  # the same, to the endpoint's publishers
            await runner.cleanup()
            if uplink_task is not None:
                self.uplink.stop()
                try:
                    # run() returns after the exchange in flight; a hung one is cut short
                    # (safe: only an ACK moves a cursor, and the gateway dedupes a resend).
                    await asyncio.wait_for(uplink_task, 5)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
            self.close()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)


def board_config_path(beside, argv=None, environ=None):
    """The edge.yaml a Linux board's main.py starts the agent with: the first argument,
    else $EDGELINE_CONFIG, else /etc/edgeline/edge.yaml when it exists, else the
    edge.yaml in the directory ``beside`` (the board's own)."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if len(argv) > 1:
        return argv[1]
    if environ.get("EDGELINE_CONFIG"):
        return environ["EDGELINE_CONFIG"]
    if os.path.exists("/etc/edgeline/edge.yaml"):
        return "/etc/edgeline/edge.yaml"
    return os.path.join(beside, "edge.yaml")


def board_main(beside):
    """A Linux board's main.py: run the agent on board_config_path; one-line errors."""
    from .. import logsetup

    try:
        logsetup.setup()  # $EDGELINE_LOG_LEVEL, $EDGELINE_LOG_FORMAT
        run_agent(board_config_path(beside), print_fn=logsetup.service_print("edgeline.agent"))
    except DirInUse as e:
        sys.exit("edgeline: %s" % e)
    except ValueError as e:
        sys.exit("edgeline: error: %s" % e)
    except (EdgelineError, OSError) as e:
        sys.exit("edgeline: error: %s" % e)


def run_agent(config_path, print_fn=print):
    """``edgeline agent --config PATH``: load, open, serve until a signal."""
    from .config import load_config

    cfg = load_config(config_path)
    agent = Agent(cfg, print_fn=print_fn)
    asyncio.run(agent.run())
    print_fn(agent.stop_line())
