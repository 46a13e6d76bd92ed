"""The gateway's HTTP API (aiohttp): the sync transport's route, publishing and queries.

Theory of operation
-------------------
``GatewayApi(gateway).app()`` is the gateway's aiohttp application: ``POST /v1/sync``
(the HTTP transport, transports/http.py, with its session table) and the JSON API
around the gateway:

* ``POST /v1/topics/{topic}/publish`` takes JSON records as the agent's ingest does
  (jsonrecords.py), checks the topic (of the topics file, not ``edge_to_cloud``), the
  body size and each record's ``max_record_bytes``, then ``Gateway.publish``: the answer
  (``first_seq``, ``last_seq``, ``"durable": true``) comes once they are durable.
  Without a publish token only loopback clients may publish; with one, the request
  must carry ``Authorization: Bearer <token>``.
* Table topics (``kind: table``): ``GET /v1/tables``, ``GET /v1/tables/{topic}``
  (visible state), ``GET /v1/tables/{topic}/{key}`` (value, siblings, version),
  ``GET /v1/tables/{topic}/conflicts``, and the cloud's writes ``PUT`` / ``DELETE
  /v1/tables/{topic}/{key}`` (``tables.TableRoutes``), authorized as publishing is. A
  publish request to a table topic is a list of keyed puts, each formed as a PUT is.
* ``GET /v1/records?topic=T[&origin=O][&incarnation=HEX][&from=N][&to=N][&limit=N]``
  (records of an origin's topic with two or more log incarnations carry theirs),
  ``GET /v1/status[?origin=O]``, ``GET /v1/gaps[?origin=O][&topic=T]``,
  ``GET /healthz`` (and ``GET /v1/health``, the same: ``status`` ok/degraded/failing with
  its ``reasons``, ``ok``, the counters, edges' protocol errors per reason, refused nodes),
  ``GET /metrics`` (Prometheus text format; gateway/metrics.py, docs/metrics.md).
  A record is given in the form of the agent's read API (``jsonrecords.row_to_json``): key
  as text, value decoded from CBOR, either as base64 beside it (``key_base64``,
  ``value_base64``) when it is not UTF-8 / CBOR.

A refused request is a one-line JSON error with its status (``{"error": ...}``), also
for a path or method with no route and an unexpected failure (httperrors.py). The application starts the
gateway (its committer) on startup and closes it (and its store) on cleanup.
"""
import hmac

from aiohttp import web

from edgeline import sync

from .. import tables
from ..httperrors import json_errors
from ..jsonrecords import RequestError, parse_records, row_to_json
from ..metrics import metrics_handler
from ..transports.http import HttpGatewayTransport
from .metrics import registry_for

MAX_PUBLISH_BODY_BYTES = 1 << 20  # a publish request's body; larger is 413
MAX_QUERY_RECORDS = 100000


class GatewayApi:
    """The HTTP API of ``gateway``; ``sync`` is its HTTP transport (``sync.sessions``)."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.sync = HttpGatewayTransport(gateway)

    def app(self):
        gw = self.gateway
        app = web.Application(client_max_size=gw.max_message_bytes * 4, middlewares=[json_errors])
        self.sync.attach(app)
        tables.TableRoutes(lambda: gw.tables, self._table_write, self._authorized).attach(app)
        app.router.add_post("/v1/topics/{topic}/publish", self.handle_publish)
        app.router.add_get("/v1/records", self.handle_records)
        app.router.add_get("/v1/status", self.handle_status)
        app.router.add_get("/v1/gaps", self.handle_gaps)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get("/v1/health", self.handle_health)
        # GET /metrics (docs/metrics.md); the registry is made at the first scrape
        app.router.add_get("/metrics", metrics_handler(lambda: registry_for(gw, lambda: len(self.sync.sessions))))
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app):
        await self.gateway.start()

    async def _cleanup(self, _app):
        await self.gateway.close()

    # ------------------------------------------------------------------ publish

    async def handle_publish(self, request):
        try:
            return web.json_response(await self._publish(request))
        except RequestError as e:
            return web.json_response({"error": str(e)}, status=e.status, headers=e.headers)

    def _authorized(self, request):
        token = self.gateway.publish_token
        if token is None:
            remote = request.remote or ""
            if remote == "::1" or remote.startswith("127.") or remote.startswith("::ffff:127."):
                return
            raise RequestError(403, "publishing is open to loopback clients only (start the gateway with "
                                    "--publish-token-file to publish from elsewhere)")
        got = request.headers.get("Authorization", "")
        want = "Bearer " + token
        if not hmac.compare_digest(got.encode("utf-8", "replace"), want.encode("utf-8")):
            raise RequestError(401, "publishing needs the header 'Authorization: Bearer <token>' with the "
                                    "gateway's publish token", {"WWW-Authenticate": "Bearer"})

    async def _publish(self, request):
        """Parse, check, stamp and commit one publish request; its JSON answer."""
        gw = self.gateway
        self._authorized(request)
        name = request.match_info["topic"]
        topic = gw.topics.get(name)
        if topic is None:
            raise RequestError(404, "unknown topic %r: the gateway publishes only the topics of its topics file "
                                    "(--topics)" % name)
        if not topic.publishes:
            raise RequestError(409, "topic %r is edge_to_cloud: the gateway does not publish to it" % name)
        if request.content_length is not None and request.content_length > MAX_PUBLISH_BODY_BYTES:
            raise RequestError(413, "the body is over %d bytes" % MAX_PUBLISH_BODY_BYTES)
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > MAX_PUBLISH_BODY_BYTES:
                raise RequestError(413, "the body is over %d bytes" % MAX_PUBLISH_BODY_BYTES)
        if name in gw.tables:
            return await self._publish_table(name, bytes(body))
        keys, values = parse_records(bytes(body))
        if len(values) > gw.max_batch_records:
            raise RequestError(413, "%d records in one request; at most %d" % (len(values), gw.max_batch_records))
        for i, (k, v) in enumerate(zip(keys, values)):
            size = len(v) + (len(k) if k is not None else 0)
            if size > topic.max_record_bytes:
                raise RequestError(413, "record %d is %d bytes (key and CBOR value), over max_record_bytes %d of "
                                        "topic %r" % (i, size, topic.max_record_bytes, name))
        try:
            first, last = await gw.publish(name, values, keys)
        except Exception as e:  # noqa: BLE001 - nothing of the request was stored
            gw.store_failed(e)
            raise RequestError(503, "could not store: %s" % (str(e).splitlines() or ["?"])[0],
                               {"Retry-After": "1"}) from None
        return {"topic": name, "origin": sync.CLOUD_ORIGIN, "first_seq": first, "last_seq": last, "durable": True}

    async def _publish_table(self, name, body):
        """A publish request to a table topic: ``{"key": k, "value": v}`` items (or a
        list of them, or {"records": [...]}), each a PUT of its key."""
        doc = tables.parse_body(body) if body else None
        if isinstance(doc, dict) and set(doc) == {"records"}:
            doc = doc["records"]
        items = doc if isinstance(doc, list) else [doc]
        writes = []
        for i, it in enumerate(items):
            if not isinstance(it, dict) or set(it) != {"key", "value"} or not isinstance(it["key"], str):
                raise RequestError(400, "record %d: a write to table topic %r is {\"key\": \"...\", \"value\": "
                                        "...} (deletes: DELETE /v1/tables/%s/<key>)" % (i, name, name))
            writes.append((it["key"], it["value"], False))
        if len(writes) > self.gateway.max_batch_records:
            raise RequestError(413, "%d records in one request; at most %d" % (len(writes),
                                                                            self.gateway.max_batch_records))
        first, last = await self._stored(name, writes)
        return {"topic": name, "origin": sync.CLOUD_ORIGIN, "first_seq": first, "last_seq": last, "durable": True}

    async def _stored(self, name, writes):
        gw = self.gateway
        topic = gw.topics[name]
        if not topic.publishes:
            raise RequestError(409, "topic %r is edge_to_cloud: the gateway does not write to it" % name)
        try:
            return await gw.table_write(name, writes, topic.max_record_bytes)
        except (tables.WriteError, RequestError):
            raise
        except Exception as e:  # noqa: BLE001 - the write in progress was not stored
            gw.store_failed(e)
            raise RequestError(503, "could not store: %s" % (str(e).splitlines() or ["?"])[0],
                               {"Retry-After": "1"}) from None

    async def _table_write(self, name, key, body, delete):
        _first, seq = await self._stored(name, [(key, body, delete)])
        return {"topic": name, "key": key, "origin": sync.CLOUD_ORIGIN, "seq": seq, "durable": True}

    # ------------------------------------------------------------------ queries

    @staticmethod
    def _int(request, name, default):
        v = request.query.get(name)
        if v is None:
            return default
        try:
            return int(v)
        except ValueError:
            raise RequestError(400, "%s must be an integer, got %r" % (name, v)) from None

    async def handle_records(self, request):
        topic = request.query.get("topic")
        if not topic:
            raise RequestError(400, "topic is required: /v1/records?topic=T[&origin=O][&from=N][&to=N][&limit=N]")
        rows = self.gateway.store.records(
            topic,
            origin=request.query.get("origin"),
            from_seq=self._int(request, "from", 1),
            to_seq=self._int(request, "to", None),
            limit=min(self._int(request, "limit", 1000), MAX_QUERY_RECORDS),
            incarnation=request.query.get("incarnation"),
        )
        return web.json_response({"records": [row_to_json(r) for r in rows]})

    async def handle_status(self, request):
        origin = request.query.get("origin")
        gw = self.gateway
        return web.json_response({"streams": gw.store.status(origin), "downlinks": gw.downlinks(origin),
                                  "incarnations": gw.store.incarnation_report(origin)})

    async def handle_gaps(self, request):
        return web.json_response({"gaps": self.gateway.store.gaps(request.query.get("origin"),
                                                                  request.query.get("topic"))})

    async def handle_health(self, _request):
        gw = self.gateway
        h = gw.health()  # status, reasons, ok (true only when status is ok), errors_by_reason, refused_nodes
        h.update({"sessions": len(self.sync.sessions), "commits": gw.committer.commits,
                  "items": gw.committer.items, "rejected": gw.rejected,
                  "store_failures": gw.store_failures, "published": gw.published,
                  "pulls": gw.pulls, "refused_pulls": gw.refused_pulls, "compressed_batches": dict(gw.cbatches),
                  "new_incarnations": gw.new_incarnations, "relayed": gw.relayed,
                  "relays_pending": sum(len(v) for v in gw._relay_pending.values()),
                  "tombstones_collected": gw.collected,
                  "table_seqs_left_out": sum(c.left_out for c in gw._compactors.values()),
                  "table_settings_mismatch": [{"topic": t, "node": n, "type": v[0], "conflict_resolution": v[1]}
                                              for (t, n), v in sorted(gw.table_mismatches.items())]})
        return web.json_response(h)
