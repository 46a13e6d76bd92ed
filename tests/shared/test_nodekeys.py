"""nodekeys and yamlfile: the gateway's keys and topics files go through the one YAML
loader, which refuses duplicate keys as edge.yaml's does (issue 8: they silently kept
the last one)."""
import pytest

from edgeline.errors import ConfigError
from edgeline_host.gateway.topics import load_topics
from edgeline_host.nodekeys import load_keys, load_token

KEY_HEX = bytes(range(32)).hex()


def test_keys_file_loads_and_refuses_a_node_named_twice(tmp_path):
    p = tmp_path / "keys.yaml"
    p.write_text("edge-1: %s\nedge-2: %s\n" % (KEY_HEX, KEY_HEX))
    assert load_keys(str(p)) == {"edge-1": bytes(range(32)), "edge-2": bytes(range(32))}
    p.write_text("edge-1: %s\nedge-2: %s\nedge-1: %s\n" % (KEY_HEX, KEY_HEX, "00" * 32))
    with pytest.raises(ConfigError, match=r"keys.yaml:3: invalid YAML: .*duplicate key 'edge-1' \(first on line 1\)"):
        load_keys(str(p))


@pytest.mark.parametrize("text, match", [
    ("", "must be a mapping of node_id: key"),
    ("cloud: %s\n" % KEY_HEX, "'cloud' is reserved"),
    ("../x: %s\n" % KEY_HEX, "not a valid node id"),
    ("edge-1: 1234\n", "edge-1: key must be"),
    ("edge-1: [\n", "invalid YAML"),
])
def test_keys_file_errors_are_one_line(tmp_path, text, match):
    p = tmp_path / "keys.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_keys(str(p))
    assert "\n" not in str(e.value) and KEY_HEX not in str(e.value)


def test_keys_file_missing_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the keys file"):
        load_keys(str(tmp_path / "nope.yaml"))


def test_topics_file_refuses_a_topic_named_twice(tmp_path):
    p = tmp_path / "topics.yaml"
    p.write_text("setpoints: {}\nalarms: {}\n")
    assert sorted(load_topics(str(p), {"edge-1": b"k" * 32})) == ["alarms", "setpoints"]
    p.write_text("setpoints: {}\nsetpoints:\n  nodes: [edge-1]\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'setpoints' \(first on line 1\)"):
        load_topics(str(p), {"edge-1": b"k" * 32})


def test_publish_token(tmp_path):
    p = tmp_path / "token"
    p.write_text("s3cret-token-0123456789\n")
    assert load_token(str(p)) == "s3cret-token-0123456789"
    p.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16 printable"):
        load_token(str(p))
