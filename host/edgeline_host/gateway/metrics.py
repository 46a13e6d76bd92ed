"""The gateway's Prometheus metrics (``GET /metrics``; every one in docs/metrics.md).

``GatewayCollector(gateway, sessions)`` reads, at scrape time, the store's streams
(records, lost, mark, last update, per origin node and topic), its gaps, the downlinks,
the gateway's counters (health's refused nodes and protocol errors among them) and the
table replicas' conflict rows; ``sessions`` is a callable giving the open HTTP sync
sessions. Nothing is counted twice on the hot path. The store's counts live in the
database, so the per-stream counters carry on across gateway restarts.

The gateway does not know how far behind an edge's own log it is in seqs (an edge says
its head only for table topics); in time it does: ``edgeline_gateway_newest_record_age_seconds``
is how old the newest record it holds of a stream is (by the record's timestamp; the
record is read once per new mark, then cached), ``edgeline_gateway_stream_updated_age_seconds``
how long since the stream last moved, and the edge's ``edgeline_agent_queue_records`` and
``edgeline_agent_oldest_unsent_age_seconds`` are its lag. For the cloud-to-edge topics,
the gateway does know each node's lag: ``edgeline_gateway_downlink_pending_records``.
"""
import time

from edgeline.clock import ts_physical_ms
from edgeline.sync import CLOUD_ORIGIN

from ..metrics import counter, gauge, new_registry

HEALTH_STATES = ("ok", "degraded", "failing")


def registry_for(gateway, sessions):
    return new_registry(GatewayCollector(gateway, sessions))


class GatewayCollector:
    def __init__(self, gateway, sessions):
        self.gateway = gateway
        self.sessions = sessions
        self._newest = {}  # (node, topic, incarnation) -> (mark, wall ms of the record at it)

    def collect(self):
        gw = self.gateway
        p = "edgeline_gateway_"
        yield from self._streams(gw, p, self._newest)
        yield from self._downlinks(gw, p)
        h = gw.health()
        health = gauge(p + "health", "1 for the gateway's health status (GET /healthz), 0 for the others", ["status"])
        for s in HEALTH_STATES:
            health.add_metric([s], 1 if h["status"] == s else 0)
        errors = counter(p + "protocol_errors", "Exchanges ended by a protocol error, by its name (bad_proof and "
                         "unknown_node are refused authentications)", ["reason"])
        for reason, n in sorted(h["errors_by_reason"].items()):
            errors.add_metric([reason], n)
        refused = counter(p + "refused", "Connections of a node refused (authentication), by node and reason",
                          ["node", "reason"])
        for r in h["refused_nodes"]:
            refused.add_metric([r["node"], r["reason"]], r["count"])
        sessions = gauge(p + "http_sessions", "Open sync sessions of the HTTP transport")
        sessions.add_metric([], self.sessions())
        yield from (health, errors, refused, sessions)
        for name, value, help_text in (
                ("commits", gw.committer.commits, "Group commits of the store"),
                ("committed_items", gw.committer.items, "Items (batches, gaps, publishes) the group commits carried"),
                ("rejected_exchanges", gw.rejected, "Exchanges with an edge that ended in a protocol error"),
                ("store_failures", gw.store_failures, "Group commits the store could not make (edges retry)"),
                ("records_published", gw.published, "Records published to cloud-to-edge topics since start"),
                ("pulls", gw.pulls, "PULLs answered with DATA since start"),
                ("refused_pulls", gw.refused_pulls, "PULLs answered with ERROR since start"),
                ("new_incarnations", gw.new_incarnations, "Topics an edge came back to with a new log since start"),
                ("table_relays", gw.relayed, "Edge table writes relayed into cloud streams since start"),
                ("tombstones_collected", gw.collected, "Table tombstones collected at causal stability since start")):
            c = counter(p + name, help_text)
            c.add_metric([], value)
            yield c
        pending = gauge(p + "table_relays_pending", "Edge table writes waiting to be relayed")
        pending.add_metric([], sum(len(v) for v in gw._relay_pending.values()))
        conflicts = gauge(p + "table_conflicts", "Conflict rows listed per table topic and conflict type "
                          "(GET /v1/tables/{topic}/conflicts)", ["topic", "type"])
        for name in sorted(gw.tables):
            by_type = {}
            for ident in gw.tables[name].rows:
                by_type[ident[2]] = by_type.get(ident[2], 0) + 1
            for ctype, n in sorted(by_type.items()):
                conflicts.add_metric([name, str(ctype)], n)
        yield from (pending, conflicts)

    @staticmethod
    def _streams(gw, p, newest):
        labels = ["node", "topic"]
        stored = counter(p + "records_stored", "Records stored from a node's topic (every log incarnation)", labels)
        lost = counter(p + "records_lost", "Records a node reported lost in gaps (evicted, expired, corrupt)", labels)
        mark = gauge(p + "stream_seq", "The highest seq stored of the node's current log of the topic", labels)
        age = gauge(p + "stream_updated_age_seconds", "Seconds since the gateway last stored anything of the "
                    "node's topic (records or a gap)", labels)
        gaps = counter(p + "gaps", "Gaps (seq ranges an edge reported lost) stored, by reason", labels + ["reason"])
        lag = gauge(p + "newest_record_age_seconds", "Age of the newest record stored of the node's topic, by its "
                    "timestamp: how far behind the node the gateway is, in time", labels)
        per = {}
        for s in gw.store.status():
            if s["origin"] == CLOUD_ORIGIN:
                continue  # the cloud's own streams: records_published, downlinks
            k = (s["origin"], s["topic"])
            row = per.setdefault(k, [0, 0, 0, 0, None])
            row[0] += s["records"]
            row[1] += s["lost"]
            if s["current"]:
                row[2] = s["mark"]
                row[4] = s["incarnation"]
            row[3] = max(row[3], s["updated_ms"] or 0)
        now_ms = time.time() * 1000.0
        for (node, topic), (n, nlost, m, updated, inc) in sorted(per.items()):
            stored.add_metric([node, topic], n)
            lost.add_metric([node, topic], nlost)
            mark.add_metric([node, topic], m)
            if updated:
                age.add_metric([node, topic], max(0.0, (now_ms - updated) / 1000.0))
            newest_ms = _newest_ms(gw, newest, node, topic, inc, m)
            if newest_ms is not None:
                lag.add_metric([node, topic], max(0.0, (now_ms - newest_ms) / 1000.0))
        for k, n in sorted(gw.store.gap_counts().items()):
            gaps.add_metric(list(k), n)
        return stored, lost, mark, age, lag, gaps

    @staticmethod
    def _downlinks(gw, p):
        labels = ["node", "topic"]
        pending = gauge(p + "downlink_pending_records", "Records of a cloud-to-edge topic published but not yet "
                        "acknowledged by the node (its lag)", labels)
        delivered = gauge(p + "downlink_delivered_seq", "The seq of a cloud-to-edge topic the node acknowledged",
                          labels)
        for d in gw.downlinks():
            pending.add_metric([d["node"], d["topic"]], d["pending"])
            delivered.add_metric([d["node"], d["topic"]], d["delivered"])
        return pending, delivered



def _newest_ms(gw, cache, node, topic, inc, mark):
    """Wall ms of the record at seq ``mark`` of the stream (its newest), read once per
    mark; None if the stream holds no record there (a gap at its end, or none yet)."""
    key = (node, topic, inc)
    hit = cache.get(key)
    if hit is not None and hit[0] == mark:
        return hit[1]
    ms = None
    if mark:
        rows = gw.store.records(topic, origin=node, from_seq=mark, to_seq=mark, limit=1, incarnation=inc)
        if rows:
            ms = ts_physical_ms(rows[0]["ts"])
    cache[key] = (mark, ms)
    return ms
