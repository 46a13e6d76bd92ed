"""`edgeline key topic create|rotate|revoke|list`: the operator's topic key files
(docs/spec/e2e.md, "Key management"), and sealing and opening with what they hold."""
import json
import os
import stat

import pytest
from click.testing import CliRunner

from edgeline.e2e import E2EError
from edgeline.errors import ConfigError
from edgeline_host import topickeys
from edgeline_host.cli import cli

HDR = ("store-7", None, 1, 5 << 16, None)


def _run(*args):
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.output


def test_create_rotate_revoke_through_the_cli(tmp_path):
    d = str(tmp_path / "keys")
    code, out = _run("key", "topic", "create", "pos/sales", "--dir", d)
    assert code == 0 and "key id 1 active" in out
    path = topickeys.path_for(d, "pos/sales")
    assert os.path.basename(path) == "pos%2Fsales.e2e.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys1, active = topickeys.topic_keys(d, "pos/sales")
    assert active == 1
    old = keys1.seal(1, *HDR, b"\x01")

    code, out = _run("key", "topic", "create", "pos/sales", "--dir", d)
    assert code == 1 and "has keys already" in out

    code, out = _run("key", "topic", "rotate", "pos/sales", "--dir", d)
    assert code == 0 and "key id 2 active" in out
    keys2, active = topickeys.topic_keys(d, "pos/sales")
    assert active == 2
    new = keys2.seal(2, *HDR, b"\x02")
    assert keys2.unseal(*HDR, old) == b"\x01" and keys2.unseal(*HDR, new) == b"\x02"  # the retired key still reads
    code, out = _run("key", "topic", "list", "pos/sales", "--dir", d)
    assert out.splitlines() == ["1 retired", "2 active"]

    code, out = _run("key", "topic", "revoke", "pos/sales", "--id", "2", "--dir", d)
    assert code == 0 and "no active key: rotate" in out
    _, active = topickeys.topic_keys(d, "pos/sales")
    assert active is None
    code, out = _run("key", "topic", "revoke", "pos/sales", "--id", "1", "--purge", "--dir", d)
    assert code == 0 and "purged" in out
    keys3, _ = topickeys.topic_keys(d, "pos/sales")
    with pytest.raises(E2EError, match="unknown key id 1"):
        keys3.unseal(*HDR, old)
    assert keys3.unseal(*HDR, new) == b"\x02"  # revoked, not purged: still readable
    code, out = _run("key", "topic", "list", "pos/sales", "--dir", d)
    assert out.splitlines() == ["1 revoked, purged", "2 revoked"]
    code, out = _run("key", "topic", "rotate", "pos/sales", "--dir", d)
    assert "key id 3 active" in out

    # no key's bytes in anything printed
    doc = json.load(open(path))
    for k in doc["keys"]:
        if k["key"]:
            assert k["key"] not in out


def test_refusals_are_one_line(tmp_path):
    d = str(tmp_path)
    code, out = _run("key", "topic", "rotate", "nope", "--dir", d)
    assert code == 1 and "no keys for topic 'nope'" in out and len(out.strip().splitlines()) == 1
    topickeys.create(d, "t")
    code, out = _run("key", "topic", "revoke", "t", "--id", "9", "--dir", d)
    assert code == 1 and "no key id 9" in out
    path = topickeys.path_for(d, "t")
    doc = json.load(open(path))
    for broken in ({"format": 2}, dict(doc, topic="u"), dict(doc, keys=[{"id": 0, "state": "active", "key": "00" * 32}]),
                   dict(doc, keys=[{"id": 1, "state": "active", "key": "00" * 31}]),
                   dict(doc, keys=[{"id": 1, "state": "active", "key": "00" * 32}, {"id": 2, "state": "active", "key": "11" * 32}]),
                   dict(doc, keys=[{"id": 1, "state": "lost", "key": "00" * 32}])):
        with open(path, "w") as f:
            json.dump(broken, f)
        with pytest.raises(ConfigError):
            topickeys.load(d, "t")
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(ConfigError, match="cannot read it"):
        topickeys.load(d, "t")


def test_golden_key_file_of_format_1_opens_the_stream_vector():
    """tests/golden/e2e-v1/sensors%2Ftemp.e2e.json: a key file of format 1 (docs/spec/e2e.md,
    "Key management") with a retired, an active and a purged key; its key id 1 is the
    topic key of the "stream" test vector."""
    golden = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "e2e-v1")
    keys, active = topickeys.topic_keys(golden, "sensors/temp")
    assert active == 2 and sorted(keys.by_id) == [1, 2]
    assert topickeys.describe(golden, "sensors/temp") == [(1, "retired"), (2, "active"), (3, "revoked, purged")]
    with open(os.path.join(golden, "vectors.json")) as f:
        v = {x["name"]: x for x in json.load(f)}["stream"]
    assert keys.unseal(v["origin"], None, v["seq"], v["ts"], None, bytes.fromhex(v["envelope"])) == bytes.fromhex(v["value"])
