"""The agent's Prometheus metrics (``GET /metrics``; every one in docs/metrics.md).

``AgentCollector(agent)`` reads, at scrape time, what the agent keeps anyway: each
topic's log stats and outbox, the uplink's status, the MQTT sources' counters, the
dedupe windows'. The commit latency histogram is the one metric observed as it happens
(``Agent._commit_done``, once per group commit). Counters read from a log (appended,
evicted, ...) restart with the process, as Prometheus counters may; ``appended`` and
``synced`` are seqs, so they carry on across restarts and reset only with a new log.
"""
import time

from edgeline.clock import ts_physical_ms

from ..metrics import counter, gauge, new_registry

# What Uplink.status()["state"] can be, and "disabled" (no uplink): edgeline_agent_uplink_state.
UPLINK_STATES = ("disabled", "idle", "connecting", "connected", "backing_off", "open", "paused", "stopped")

# A group commit is one write and one fsync: from well under a millisecond (tmpfs) to
# seconds (an SD card under load).
COMMIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# (stats key, metric name without edgeline_agent_ and _total, help) of both MQTT sources
_MQTT_COUNTERS = (
    ("received", "received", "PUBLISH messages received"),
    ("stored", "stored", "messages stored as records"),
    ("refused", "refused", "messages refused (not stored)"),
    ("redelivered", "redelivered", "resent messages recognised as already stored"),
    ("connects", "connects", "connections made"),
    ("acks_lost", "acks_lost", "acknowledgements that could not be sent"),
)


def registry_for(agent):
    """A new registry with ``agent``'s collector (at the first scrape)."""
    return new_registry(AgentCollector(agent, agent.commit_latency))


class CommitLatency:
    """The commit latency histogram, per topic: ``observe(topic, seconds)`` once per
    commit. Kept here rather than as a prometheus_client Histogram, whose ``_created``
    series would be one more family per histogram in the exposition."""

    def __init__(self, buckets=COMMIT_BUCKETS_S):
        self.bounds = buckets
        self.topics = {}  # topic -> [counts per bucket (not cumulative) + the +Inf one, sum of seconds]

    def observe(self, topic, seconds):
        h = self.topics.get(topic)
        if h is None:
            h = self.topics[topic] = [[0] * (len(self.bounds) + 1), 0.0]
        i = 0
        for b in self.bounds:
            if seconds <= b:
                break
            i += 1
        h[0][i] += 1
        h[1] += seconds

    def family(self):
        from prometheus_client.core import HistogramMetricFamily

        fam = HistogramMetricFamily("edgeline_agent_commit_duration_seconds", "Group commits: from writing the buffer "
                                    "out to the end of its fsync, per topic", labels=["topic"])
        for topic in sorted(self.topics):
            counts, total = self.topics[topic]
            buckets = []
            n = 0
            for bound, c in zip(list(self.bounds) + [float("inf")], counts):
                n += c
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), n))
            fam.add_metric([topic], buckets, total)
        return fam


class AgentCollector:
    """A prometheus_client custom collector of one Agent."""

    def __init__(self, agent, latency):
        self.agent = agent
        self.latency = latency

    def collect(self):
        a = self.agent
        yield from self._topics(a)
        yield self.latency.family()
        yield from self._storage(a)
        yield from self._uplink(a)
        yield from self._ingest(a)
        conflicts = gauge("edgeline_agent_table_conflicts", "Conflict rows listed per table topic and conflict type "
                          "(GET /v1/tables/{topic}/conflicts)", ["topic", "type"])
        for name in sorted(a.tables):
            by_type = {}
            for ident in a.tables[name].rows:
                by_type[ident[2]] = by_type.get(ident[2], 0) + 1
            for ctype, n in sorted(by_type.items()):
                conflicts.add_metric([name, str(ctype)], n)
        yield conflicts
        yield from self._mqtt("mqtt_ingest", "MQTT ingest from a broker", a.mqtt, (
            ("dropped", "dropped", "messages the topic's drop_newest policy dropped"),
            ("overflow", "overflow", "QoS 0 messages dropped: too many waiting behind a held one")))
        yield from self._mqtt("mqtt_endpoint", "the agent's own MQTT endpoint", a.mqtt_endpoint, (
            ("protocol_errors", "protocol_errors", "connections closed for a protocol error"),
            ("connects_refused", "connects_refused", "CONNECTs refused (login, client id)")))

    @staticmethod
    def _topics(a):
        p = "edgeline_agent_"
        appended = counter(p + "records_appended", "Records appended to the topic's own log (its last seq)", ["topic"])
        received = counter(p + "records_received", "Records of the cloud held in the topic's downlink log "
                           "(its last seq)", ["topic"])
        durable = gauge(p + "durable_seq", "The last seq of the topic's own log known durable", ["topic"])
        synced = counter(p + "records_synced", "Records the gateway acknowledged (the outbox cursor's seq; "
                         "seqs reported as a gap count too)", ["topic"])
        sent = counter(p + "records_sent", "Records sent to the gateway since start", ["topic"])
        gaps = counter(p + "gaps_sent", "Gaps (evicted or lost seq ranges) reported to the gateway since start",
                       ["topic"])
        evicted = counter(p + "records_evicted", "Records evicted to make room (drop_oldest) since start", ["topic"])
        dropped = counter(p + "records_dropped", "Records dropped on arrival (drop_newest) since start", ["topic"])
        expired = counter(p + "records_expired", "Records removed by age retention since start", ["topic"])
        corrupt = counter(p + "records_corrupt", "Corrupt records found while reading since start", ["topic"])
        depth = gauge(p + "queue_records", "Records owed to the gateway", ["topic"])
        age = gauge(p + "oldest_unsent_age_seconds", "Age of the oldest record owed to the gateway (0: none owed)",
                    ["topic"])
        size = gauge(p + "log_size_bytes", "Bytes the topic's own log takes", ["topic"])
        budget = gauge(p + "log_budget_bytes", "The topic's storage budget", ["topic"])
        dupes = counter(p + "dedupe_hits", "Ingest requests answered from the topic's dedupe window", ["topic"])
        conflicts = counter(p + "dedupe_conflicts", "Ingest requests refused: their key came with another body",
                            ["topic"])
        now_ms = time.time() * 1000.0
        for name, st in a.topics.items():
            lg = st.log
            s = lg.stats()
            if st.cfg.direction == "cloud_to_edge":
                received.add_metric([name], s["last_seq"])
            else:
                appended.add_metric([name], s["last_seq"])
                durable.add_metric([name], s["durable_seq"])
                size.add_metric([name], s["size_bytes"])
                budget.add_metric([name], s["budget_bytes"])
                evicted.add_metric([name], s["evicted"])
                dropped.add_metric([name], s["dropped"])
                expired.add_metric([name], s["expired"])
                if st.down is not None:
                    received.add_metric([name], st.down.last_seq)
            bad = s["corrupt"] + (st.down.stats()["corrupt"] if st.down is not None and st.down is not lg else 0)
            corrupt.add_metric([name], bad)
            if st.window is not None:
                dupes.add_metric([name], st.window.hits)
                conflicts.add_metric([name], st.window.conflicts)
            ob = st.outbox
            if ob is None:
                continue
            synced.add_metric([name], ob.acked)
            depth.add_metric([name], ob.depth)
            age.add_metric([name], _oldest_age_s(lg, ob, now_ms))
        up = a.uplink.status()["topics"] if a.uplink is not None else {}
        for name, t in up.items():
            sent.add_metric([name], t["records_sent"])
            gaps.add_metric([name], t["gaps_sent"])
        return (appended, received, durable, synced, sent, gaps, evicted, dropped, expired, corrupt, depth, age, size,
                budget, dupes, conflicts)

    @staticmethod
    def _storage(a):
        f = a._storage_figures()
        used = gauge("edgeline_agent_storage_used_bytes", "What the agent takes of resources.max_storage (logs and "
                     "dedupe windows)")
        used.add_metric([], f["used_bytes"])
        budget = gauge("edgeline_agent_storage_budget_bytes", "resources.max_storage")
        budget.add_metric([], f["budget_bytes"])
        start = gauge("edgeline_agent_start_time_seconds", "When the agent started (Unix time)")
        start.add_metric([], a.started_ms / 1000.0)
        return used, budget, start

    @staticmethod
    def _uplink(a):
        p = "edgeline_agent_uplink_"
        state = gauge(p + "state", "1 for the uplink's current state, 0 for the others", ["state"])
        failures = counter(p + "failures", "Connects and exchanges with the gateway that failed")
        sessions = counter(p + "sessions", "Sessions opened with the gateway (handshakes that ended in WELCOME)")
        requests = counter(p + "requests", "Requests sent to the gateway")
        sent = counter(p + "sent_bytes", "Request bytes sent to the gateway, handshakes included")
        refused = gauge(p + "refused", "1 while the gateway refuses this node (bad_proof, unknown_node)")
        if a.uplink is None:
            current = "disabled"
        else:
            s = a.uplink.status()
            current = s["state"]
            failures.add_metric([], s["total_failures"])
            sessions.add_metric([], s["sessions"])
            requests.add_metric([], s["requests"])
            sent.add_metric([], s["bytes_sent"])
            refused.add_metric([], 1 if s["refused"] else 0)
        for name in UPLINK_STATES:
            state.add_metric([name], 1 if name == current else 0)
        return state, failures, sessions, requests, sent, refused

    @staticmethod
    def _ingest(a):
        p = "edgeline_agent_"
        records = counter(p + "ingested_records", "Records appended by every ingest source (HTTP, MQTT, tables API)")
        requests = counter(p + "http_ingest_requests", "HTTP ingest requests by outcome: ok, duplicate (answered "
                           "from the dedupe window), or the refusal's status code", ["outcome"])
        dupes = counter(p + "dedupe_duplicates", "Ingest requests answered from a dedupe window, not stored again")
        records.add_metric([], a.ingested)
        dupes.add_metric([], a.duplicates)
        for outcome, n in sorted(a.ingest_requests.items()):
            requests.add_metric([outcome], n)
        return records, requests, dupes

    @staticmethod
    def _mqtt(kind, what, source, extra):
        p = "edgeline_agent_%s_" % kind
        out = []
        stats = source.stats() if source is not None else None
        for key, name, help_text in _MQTT_COUNTERS + extra:
            c = counter(p + name, "%s: %s" % (what, help_text))
            if stats is not None:
                c.add_metric([], stats[key])
            out.append(c)
        unacked = gauge(p + "unacknowledged", "%s: messages stored but not yet acknowledged" % what)
        if stats is not None:
            unacked.add_metric([], stats["unacknowledged"])
        out.append(unacked)
        return out


def _oldest_age_s(lg, ob, now_ms):
    """Seconds since the oldest record ``ob`` owes was stamped; 0 when it owes none."""
    if ob.depth <= 0:
        return 0.0
    recs = lg.read(max(ob.acked + 1, lg.first_seq), 1, 1)
    if not recs:
        return 0.0
    return max(0.0, (now_ms - ts_physical_ms(recs[0].ts)) / 1000.0)
