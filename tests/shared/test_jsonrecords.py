"""jsonrecords: the one JSON form of records, shared by the agent's and the gateway's APIs.
Numbers JSON cannot carry become null on both (the gateway gave ``Infinity`` before
issue 8: not JSON)."""
import json
import math

import pytest

from edgeline import codec
from edgeline.log import Record
from edgeline_host.jsonrecords import (RequestError, jsonable, parse_records, record_from_payload, record_to_json,
                                       row_to_json)


def test_jsonable_gives_valid_json_for_every_float():
    v = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "x": 1.5, "b": b"\x00\xff", 3: [True, None]}
    out = json.dumps(jsonable(v), allow_nan=False)
    assert json.loads(out) == {"nan": None, "inf": None, "-inf": None, "x": 1.5, "b": {"base64": "AP8="},
                               "3": [True, None]}


def test_agent_and_gateway_render_a_value_alike():
    raw = codec.dumps({"t": math.inf, "n": 1})
    row = {"origin": "e1", "topic": "t", "seq": 1, "ts": 2, "key": b"k", "value": raw, "stored_ms": 3}
    assert row_to_json(row) == dict(record_to_json(Record(1, 2, b"k", raw)), origin="e1", topic="t", stored_ms=3)
    assert record_to_json(Record(1, 2, b"k", raw))["value"] == {"t": None, "n": 1}
    assert row_to_json(dict(row, key=b"\xff", value=b"\xff")) == {
        "origin": "e1", "topic": "t", "seq": 1, "ts": 2, "key": None, "value": None, "key_base64": "/w==",
        "value_base64": "/w==", "stored_ms": 3}
    assert record_to_json(Record(1, 2, b"\xff", b"\xff")) == {"seq": 1, "ts": 2, "key": None, "value": None,
                                                            "key_base64": "/w==", "value_base64": "/w=="}


def test_parse_records_and_payloads():
    keys, values = parse_records(b'{"records": [1, {"key": "k", "value": {"a": 2}}]}')
    assert keys == [None, b"k"] and [codec.loads(v) for v in values] == [1, {"a": 2}]
    with pytest.raises(RequestError, match="record 0: \"key\" must be a string or null") as e:
        parse_records(b'[{"key": 1, "value": 2}]')
    assert e.value.status == 400
    assert record_from_payload(b"\xff\x00") == (None, codec.dumps(b"\xff\x00"))
    assert record_from_payload(b'{"key": "k", "value": 3}') == (b"k", codec.dumps(3))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1E400"])
def test_not_finite_numbers_are_refused_naming_the_record(literal):
    body = '[1, {"ok": 2.5}, {"key": "k", "value": {"deep": [0, %s]}}]' % literal
    with pytest.raises(RequestError) as e:
        parse_records(body.encode())
    assert e.value.status == 400
    assert str(e.value).startswith("record 2: %s is not a finite number" % literal), str(e.value)
    with pytest.raises(RequestError, match="record 0: NaN"):
        parse_records(b'{"records": [NaN]}')
    with pytest.raises(RequestError) as e:
        record_from_payload(('{"t": %s}' % literal).encode())
    assert e.value.status == 400 and "%s is not a finite number" % literal in str(e.value)
    # Large but finite numbers, and floats in general, are kept as they are.
    keys, values = parse_records(b'[1.7976931348623157e308, 0.1, -2.5e-300]')
    assert [codec.loads(v) for v in values] == [1.7976931348623157e308, 0.1, -2.5e-300]
