"""jsonrecords: the one JSON form of records, shared by the agent's and the gateway's APIs.
Numbers JSON cannot carry become null on both (the gateway gave ``Infinity`` before
issue 8: not JSON)."""
import json
import math

import pytest

from edgeline import codec
from edgeline.log import Record
from edgeline_host.jsonrecords import (RequestError, jsonable, parse_records, record_from_payload, record_to_json,
                                       value_to_json)


def test_jsonable_gives_valid_json_for_every_float():
    v = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "x": 1.5, "b": b"\x00\xff", 3: [True, None]}
    out = json.dumps(jsonable(v), allow_nan=False)
    assert json.loads(out) == {"nan": None, "inf": None, "-inf": None, "x": 1.5, "b": {"base64": "AP8="},
                               "3": [True, None]}


def test_agent_and_gateway_render_a_value_alike():
    raw = codec.dumps({"t": math.inf, "n": 1})
    assert value_to_json(raw) == {"cbor": {"t": None, "n": 1}}
    assert record_to_json(Record(1, 2, None, raw))["value"] == {"t": None, "n": 1}
    assert value_to_json(b"\xff") == {"base64": "/w=="}
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
