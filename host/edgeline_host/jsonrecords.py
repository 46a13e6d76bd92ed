"""The JSON form of records: what producers send, what readers get back.

Theory of operation
-------------------
Records are CBOR values (with an optional key of bytes) inside edgeline; at the HTTP
edges of the system -- the agent's ingest and read API, MQTT ingest payloads, the
gateway's publish and query API -- they are JSON. This module is the one translation
both ways, so every API takes and gives the same shapes:

* In (``parse_records``): a body is one JSON item, a list of items, or
  ``{"records": [...]}``; an item is a bare value, or ``{"key": "...", "value": ...}``
  (an object with a ``value`` and at most a ``key`` besides) for a keyed record. Each
  becomes (key as UTF-8 bytes or None, value as CBOR). An MQTT payload
  (``record_from_payload``) is one item when it is UTF-8 JSON, else a byte string.
  ``NaN``, ``Infinity`` and numbers beyond a double (``1e999``) are refused (400, naming
  the record): Python's json takes them, but no API could give them back as JSON.
* Out (``record_to_json``; ``row_to_json`` for a gateway row): CBOR decoded to JSON by ``jsonable``:
  bytes become ``{"base64": ...}``, map keys text, and numbers JSON cannot carry (NaN,
  +-Infinity) become ``null`` -- the answer is always valid JSON, which strict parsers
  (browsers, Go, jq) refuse otherwise. A value that is not CBOR, or a key that is not
  UTF-8, is given as base64 beside it.

A request the API refuses is a ``RequestError``: an HTTP status and one line, raised
before anything is stored.
"""
import base64
import json

from edgeline import codec
from edgeline.errors import EdgelineError
from edgeline.log import Record


class RequestError(Exception):
    """A request refused: HTTP status, one line, extra response headers."""

    def __init__(self, status, message, headers=None, stored=0, detail=None):
        Exception.__init__(self, message)
        self.status = status
        self.headers = headers
        self.stored = stored  # records of the request appended before the error
        self.detail = detail  # fields for a program, beside "error" in the JSON answer


def parse_records(body):
    """The (keys, values) a JSON body holds, values already CBOR.

    One object, a list of objects, or ``{"records": [...]}``; each item is a bare value
    or ``{"key": "...", "value": ...}`` (an object with a ``value`` and at most a ``key``
    besides). RequestError(400) when it is none of these.
    """
    try:
        doc, not_finite = _loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(400, "the body is not valid JSON: %s" % e) from None
    except RecursionError:  # json's C parser recurses per level: deep input was a 500
        raise RequestError(400, "the body's JSON is nested too deep") from None
    if isinstance(doc, dict) and set(doc) == {"records"}:
        items = doc["records"]
        if not isinstance(items, list):
            raise RequestError(400, "\"records\" must be a list")
    elif isinstance(doc, list):
        items = doc
    else:
        items = [doc]
    if not items:
        raise RequestError(400, "no records in the body")
    if not_finite:
        for i, item in enumerate(items):
            bad = _not_finite_in(item)
            if bad is not None:
                raise RequestError(400, "record %d: %s" % (i, _not_finite_message(bad)))
        raise RequestError(400, _not_finite_message(not_finite[0]))  # outside the records
    keys = []
    values = []
    for i, item in enumerate(items):
        try:
            key, value = parse_item(item)
        except RequestError as e:
            raise RequestError(400, "record %d: %s" % (i, e)) from None
        keys.append(key)
        values.append(value)
    return keys, values


def parse_item(item):
    """(key, value) of one decoded JSON item: a bare value (key None), or
    ``{"key": ..., "value": ...}`` -- an object with a ``value`` and at most a ``key``
    besides, the key a string or null. The key as UTF-8 bytes, the value as CBOR;
    RequestError(400) when the key is not text or the value cannot be encoded."""
    key = None
    if isinstance(item, dict) and "value" in item and set(item) <= {"key", "value"}:
        key = item.get("key")
        if key is not None and not isinstance(key, str):
            raise RequestError(400, "\"key\" must be a string or null")
        item = item["value"]
    try:
        value = codec.dumps(item)
    except (EdgelineError, RecursionError) as e:
        raise RequestError(400, "cannot be encoded: %s" % e) from None
    try:
        return (key.encode("utf-8") if key is not None else None), value
    except UnicodeEncodeError:
        raise RequestError(400, "\"key\" is not valid UTF-8 (lone surrogate?)") from None


def record_from_payload(payload):
    """(key, value) of one MQTT payload: the key as bytes or None, the value as CBOR.

    A payload that is UTF-8 JSON is decoded and taken as one item of an HTTP ingest
    body: a bare value, or ``{"key": "...", "value": ...}`` for a keyed record. Any
    other payload (not UTF-8, not JSON, empty) is stored as it is, a byte string.
    RequestError(400) for a JSON key that is not text."""
    try:
        doc, not_finite = _loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, codec.dumps(bytes(payload))
    if not_finite:
        raise RequestError(400, _not_finite_message(not_finite[0]))
    return parse_item(doc)


class _NotFinite:
    """Where a JSON text had NaN, Infinity, -Infinity or a number too large for a
    double (1e999): Python's json takes them, as floats that no strict JSON reader
    would give back. ``_loads`` puts this in their place, so the error can name them."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


class _NotFiniteSeen(Exception):
    """Raised by the shared decoder's hooks: the text has a non-finite number."""


def _refuse_constant(name):
    raise _NotFiniteSeen()


def _finite_float(text):
    f = float(text)
    if f - f != 0.0:  # inf (or nan): the literal overflowed a double
        raise _NotFiniteSeen()
    return f


# One decoder for every call: json.loads with hooks builds a decoder and a scanner per
# call, and this runs for every ingest request. Its hooks keep no state, they only raise,
# so it is safe from any thread; the rare text with a non-finite number is decoded again
# by _loads_marking, which says where.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _loads(text):
    """(document, [_NotFinite found]): json.loads that marks non-finite numbers."""
    try:
        return _DECODER.decode(text), []
    except _NotFiniteSeen:
        return _loads_marking(text)


def _loads_marking(text):
    found = []

    def constant(name):
        found.append(_NotFinite(name))
        return found[-1]

    def number(text):
        f = float(text)
        if f - f != 0.0:  # inf (or nan): the literal overflowed a double
            found.append(_NotFinite(text))
            return found[-1]
        return f

    return json.loads(text, parse_constant=constant, parse_float=number), found


def _not_finite_in(item):
    """The first _NotFinite inside a decoded JSON item, or None."""
    if isinstance(item, _NotFinite):
        return item
    if isinstance(item, dict):
        item = item.values()
    if isinstance(item, (list, type({}.values()))):
        for x in item:
            bad = _not_finite_in(x)
            if bad is not None:
                return bad
    return None


def _not_finite_message(bad):
    return ("%s is not a finite number: JSON has none, and edgeline stores only what every API can give back "
            "(send null or a string instead)" % bad.text)


def jsonable(v):
    """A decoded CBOR value as something ``json.dumps`` turns into valid JSON."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None  # JSON has no NaN or Infinity
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def record_to_json(r):
    """A Record as JSON for the agent's read API: the value decoded from CBOR (bytes
    inside it as {"base64": ...}); a value or key that is not CBOR / UTF-8 as base64
    beside it (``value_base64``, ``key_base64``)."""
    out = {"seq": r.seq, "ts": r.ts, "key": None, "value": None}
    if r.key is not None:
        try:
            out["key"] = r.key.decode("utf-8")
        except UnicodeDecodeError:
            out["key_base64"] = base64.b64encode(r.key).decode()
    try:
        out["value"] = jsonable(codec.loads(r.value))
    except EdgelineError:
        out["value_base64"] = base64.b64encode(r.value).decode()
    return out


def row_to_json(row):
    """A row of the gateway's store (``GatewayStore.records``) for its query API: the
    record in the form ``record_to_json`` gives the agent's read API, with the row's
    ``origin``, ``topic`` and ``stored_ms`` besides (and ``incarnation`` where the store
    gives it: a stream with more than one log incarnation)."""
    out = {"origin": row["origin"], "topic": row["topic"]}
    if "incarnation" in row:  # the stream has two or more log incarnations: which one
        out["incarnation"] = row["incarnation"]
    out.update(record_to_json(Record(row["seq"], row["ts"], row["key"], row["value"])))
    out["stored_ms"] = row["stored_ms"]
    return out
