"""Prometheus metrics of the agent and the gateway: the registry, the route, the names.

Theory of operation
-------------------
Each agent and each gateway owns a ``prometheus_client.CollectorRegistry`` (never the
process-wide default: tests run many agents in one process). Almost every metric is
read at scrape time, by a custom collector (agent/metrics.py, gateway/metrics.py), from
counters the service keeps anyway -- the logs' stats, the outboxes, the uplink's and the
MQTT sources' counters, the gateway store's streams -- so the hot path does no extra
bookkeeping for them. The one exception is the agent's commit latency histogram, which
observes once per group commit (not per record).

prometheus_client is imported at the first scrape, not before: a node nobody scrapes
(a Pi Zero) does not pay its import time and memory.

``GET /metrics`` answers in the text exposition format (version 0.0.4). Every family a
service can expose is always listed (with its HELP and TYPE), with samples when there is
something to count: a dashboard sees the same names on every node, and
docs/metrics.md lists exactly those names (tests/agent/test_metrics.py checks it).
"""
from aiohttp import web

__all__ = ["new_registry", "counter", "gauge", "metrics_handler"]

# What generate_latest writes (every name here is a legacy-valid one); Prometheus reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def new_registry(collector):
    """A registry of its own (never the process-wide one) holding ``collector``."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def counter(name, documentation, labels=()):
    """A counter family; ``name`` without ``_total`` (the exposition adds it)."""
    from prometheus_client.core import CounterMetricFamily

    return CounterMetricFamily(name, documentation, labels=list(labels))


def gauge(name, documentation, labels=()):
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, labels=list(labels))


def metrics_handler(make_registry):
    """An aiohttp handler for ``GET /metrics``; ``make_registry()`` is called at the first
    scrape (and prometheus_client imported then)."""
    made = []

    async def handle_metrics(_request):
        from prometheus_client import generate_latest

        if not made:
            made.append(make_registry())
        body = generate_latest(made[0])
        # the type carries its charset: aiohttp wants it in the header as is
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return handle_metrics
