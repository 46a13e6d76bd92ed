"""Every key docs/config.md lists either acts or is refused: the config never pretends.

docs/config.md's reference has one table per mapping of edge.yaml; each table's header
names the mapping (``| key in `edge.sync` | ...``), each row a key. This test reads those
tables and holds every key to one of two promises:

* ``REFUSED``: nothing acts on the key yet. Loading an edge.yaml that sets it raises one
  ConfigError line that names the key and the issue that brings it, the doc's row says
  "not yet" with that issue, and only the value that means what edgeline does anyway (if
  any) is accepted.
* ``ACTED_ON``: the key is named by test functions that would fail if it were ignored
  (checked to exist, by AST; they run with the rest of the suite).

And config.py's schema (its ``*_KEYS``) and the doc's tables list the same keys.
"""
import ast
import copy
import os
import re

import pytest

from edgeline.errors import ConfigError
from edgeline_host.agent import config as cfgmod
from edgeline_host.agent.config import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "config.md")

# The mapping each schema tuple of config.py holds the keys of ("[]": each list entry).
SCHEMA = {
    "TOP_KEYS": "",
    "EDGE_KEYS": "edge",
    "SYNC_KEYS": "edge.sync",
    "RETRY_KEYS": "edge.sync.retry",
    "BREAKER_KEYS": "edge.sync.circuit_breaker",
    "RESOURCE_KEYS": "edge.resources",
    "TOPIC_KEYS": "edge.sync_topics[]",
    "LOCAL_TOPIC_KEYS": "edge.local_topics[]",
    "MESH_KEYS": "edge.mesh",
    "INGEST_KEYS": "edge.ingest",
    "HTTP_KEYS": "edge.ingest.http",
    "MQTT_KEYS": "edge.ingest.mqtt",
    "HEALTH_KEYS": "edge.health",
    "DEDUPE_KEYS": "edge.ingest.dedupe",
}

# key -> (a value that is refused, the value that is accepted as "what edgeline does
# anyway" or None, the issue that will implement the key)
REFUSED = {
    "edge.location": ({"lat": 37.7749, "lon": -122.4194, "name": "Store #001"}, None, 12),
    "edge.resources.max_memory": ("256MB", 0, 13),
    "edge.resources.max_cpu_percent": (80, 100, 13),
    "edge.resources.max_file_descriptors": (1024, 0, 13),
    "edge.resources.max_connections": (100, 0, 13),
    "edge.mesh.enabled": (True, False, 12),
    "edge.mesh.discovery": ("mdns", None, 12),
    "edge.mesh.peers": (["10.0.0.2:7420"], None, 12),
    "edge.mesh.listen": ("0.0.0.0:7420", None, 12),
    "edge.mesh.max_peers": (3, None, 12),
    "edge.mesh.gossip_interval_secs": (30, None, 12),
    "edge.mesh.replicated_topics": (["a"], None, 12),
}

_C = "tests/agent/test_config.py::"
_TOPICS = [_C + "test_agent_opens_each_topic_log_with_its_settings"]
_UPLINK = _C + "test_agent_uplink_takes_the_sync_settings"
_HTTP_INGEST = ["tests/agent/test_agent.py::test_ingest_syncs_each_record_exactly_once_and_local_stays"]
_MQTT_INGEST = ["tests/agent/test_mqtt_ingest.py::test_routing_values_and_refusals",
                "tests/agent/test_mqtt_ingest.py::test_without_a_map_the_mqtt_topic_is_the_topic"]
_TABLES = ["tests/agent/test_agent_tables.py::test_config_takes_table_topics_and_refuses_what_does_not_act_by_name",
           "tests/agent/test_agent_tables.py::test_writes_take_their_context_from_the_replica_and_meet_the_clouds",
           "tests/agent/test_agent_tables.py::test_a_counter_adds_up_within_one_request_and_across_writers"]
_RETRY = [_UPLINK, _C + "test_retry_delay"]
_DEDUPE = ["tests/agent/test_idempotent_ingest.py::test_producer_id_and_request_seq_and_the_window_bound"]
_BREAKER = [_UPLINK, "tests/agent/test_uplink.py::test_gateway_down_then_up_and_the_breaker"]

# key -> tests that fail if the key is ignored
ACTED_ON = {
    "edge.node_id": [_UPLINK, "tests/agent/test_agent.py::test_ingest_syncs_each_record_exactly_once_and_local_stays"],
    "edge.data_dir": [_C + "test_agent_opens_each_topic_log_with_its_settings",
                      _C + "test_load_config_resolves_paths_against_the_file"],
    "edge.key": [_UPLINK, "tests/agent/test_uplink.py::test_from_config"],
    "edge.key_file": [_UPLINK, "tests/agent/test_agent.py::test_missing_key_file_says_how_to_make_one"],
    "edge.cloud_endpoint": [_UPLINK, "tests/agent/test_uplink.py::test_from_config",
                            "tests/transports/test_mqtt_uplink.py::test_from_config_mqtt_and_mqtts_refused"],
    "edge.sync.enabled": [_UPLINK],
    "edge.sync.interval_secs": [_UPLINK, "tests/agent/test_uplink.py::test_interval_finds_records_nobody_notified_about"],
    "edge.sync.batch_size": [_UPLINK, "tests/agent/test_uplink.py::test_from_config"],
    "edge.sync.compression": [_UPLINK,
                              "tests/agent/test_wirecomp.py::test_each_compression_setting_over_http_exactly_once"],
    "edge.sync.bandwidth_limit": [_UPLINK, "tests/agent/test_uplink.py::test_bandwidth_limit_is_respected"],
    "edge.sync.max_queue_size": [_C + "test_max_queue_size_refuses_ingest_beyond_it"],
    "edge.sync.retry": _RETRY,
    "edge.sync.retry.initial_ms": _RETRY,
    "edge.sync.retry.max_ms": _RETRY,
    "edge.sync.retry.multiplier": _RETRY,
    "edge.sync.retry.jitter": _RETRY,
    "edge.sync.circuit_breaker": _BREAKER,
    "edge.sync.circuit_breaker.failures": _BREAKER,
    "edge.sync.circuit_breaker.open_secs": _BREAKER,
    "edge.resources.max_storage": _TOPICS,
    "edge.resources.eviction_policy": _TOPICS + ["tests/core/test_log_policy.py::test_store_budget_shared_by_priority"],
    "edge.sync_topics[].topic": _TOPICS,
    "edge.sync_topics[].direction": _TOPICS,
    "edge.sync_topics[].sync": _TOPICS,
    "edge.sync_topics[].group_records": _TOPICS,
    "edge.sync_topics[].group_ms": _TOPICS,
    "edge.sync_topics[].full_policy": _TOPICS,
    "edge.sync_topics[].priority": _TOPICS,
    "edge.sync_topics[].budget": _TOPICS,
    "edge.sync_topics[].retention": _TOPICS,
    "edge.sync_topics[].segment_size": _TOPICS,
    "edge.conflict_resolution": _TABLES,
    "edge.sync_topics[].kind": _TABLES,
    "edge.sync_topics[].type": _TABLES,
    "edge.sync_topics[].conflict_resolution": _TABLES,
    "edge.ingest.http": _HTTP_INGEST,
    "edge.ingest.http.listen": _HTTP_INGEST,
    "edge.ingest.mqtt": _MQTT_INGEST,
    "edge.ingest.mqtt.broker": _MQTT_INGEST,
    "edge.ingest.mqtt.topics": _MQTT_INGEST,
    "edge.ingest.mqtt.listen": ["tests/agent/test_mqtt_endpoint.py::test_paho_v311_and_v5_qos0_and_qos1_routed_by_the_map",
                                "tests/agent/test_mqtt_endpoint.py::test_config_listen_users_and_the_bridge"],
    "edge.ingest.mqtt.users": ["tests/agent/test_mqtt_endpoint.py::test_logins_from_ingest_mqtt_users"],
    "edge.ingest.mqtt.map": ["tests/agent/test_mqtt_ingest.py::test_routing_values_and_refusals"],
    "edge.health.uplink_failing_secs": [
        "tests/agent/test_health.py::test_uplink_failing_past_its_threshold_is_degraded_then_ok_again"],
    "edge.health.storage_full_percent": [
        "tests/agent/test_health.py::test_lost_lock_is_failing_and_disk_and_storage_thresholds_act"],
    "edge.health.min_free_disk": [
        "tests/agent/test_health.py::test_lost_lock_is_failing_and_disk_and_storage_thresholds_act"],
    "edge.ingest.dedupe": _DEDUPE,
    "edge.ingest.dedupe.max_entries": _DEDUPE,
    "edge.ingest.dedupe.max_age_secs": _DEDUPE,
}


def doc_tables():
    """{mapping path: {key: its row}} from docs/config.md's ``| key in `...` |`` tables."""
    tables = {}
    current = None
    for line in open(DOC, encoding="utf-8"):
        m = re.match(r"\| key in (`[^|]+) \|", line)
        if m:
            current = re.findall(r"`([^`]+)`", m.group(1))
            for prefix in current:
                tables.setdefault(prefix, {})
            continue
        if current is None:
            continue
        if not line.startswith("|"):
            current = None
            continue
        if line.startswith("|---"):
            continue
        key = re.match(r"\| `([^`]+)` \|", line)
        assert key, "a row of a key table must start with the key in backquotes: %r" % line
        for prefix in current:
            tables[prefix][key.group(1)] = line
    return tables


def doc_keys():
    """{full key path: its row}; a local topic's keys are the synced topic's (one table)."""
    return {"%s.%s" % (prefix, key): row for prefix, rows in doc_tables().items()
            if not prefix.startswith("edge.local_topics") for key, row in rows.items()}


def test_doc_tables_are_found():
    tables = doc_tables()
    assert set(tables) == set(SCHEMA.values()) - {"", "edge.ingest.http", "edge.ingest.mqtt", "edge.ingest.dedupe"}
    assert len(doc_keys()) >= 40


def test_every_doc_key_is_either_refused_or_acted_on():
    keys = set(doc_keys())
    assert not set(REFUSED) & set(ACTED_ON)
    assert keys - set(REFUSED) - set(ACTED_ON) == set(), "neither refused nor acted on"
    assert (set(REFUSED) | set(ACTED_ON)) - keys == set(), "not in docs/config.md"


def _plain(path):
    """A key path without list markers, a local topic's key as the synced topic's."""
    return path.replace("[]", "").replace("edge.local_topics.", "edge.sync_topics.")


def test_the_schema_and_the_doc_list_the_same_keys():
    assert {n for n in dir(cfgmod) if n.endswith("_KEYS") and not n.startswith("_")} == set(SCHEMA)
    schema = {_plain(("%s.%s" % (prefix, key)).lstrip(".")) for name, prefix in SCHEMA.items()
              for key in getattr(cfgmod, name)}
    # a mapping with a table of its own is documented by that table
    documented = {_plain(k) for k in doc_keys()} | {_plain(p) for p in doc_tables()} | {"edge"}
    assert schema - documented == set(), "in config.py, not in docs/config.md"
    assert documented - schema == set(), "in docs/config.md, not in config.py"


def _doc_with(path, value):
    """A valid edge.yaml mapping with ``path`` (a doc key) set to ``value``, and the field
    path a message about it names."""
    doc = {"edge": {"node_id": "n1", "sync": {"enabled": False},
                    "sync_topics": [{"topic": "a", "direction": "edge_to_cloud"}]}}
    parts = path.split(".")[1:]
    node = doc["edge"]
    field = "edge"
    for part in parts[:-1]:
        if part.endswith("[]"):
            node = node[part[:-2]][0]
            field += ".%s[0]" % part[:-2]
        else:
            node = node.setdefault(part, {})
            field += "." + part
    node[parts[-1]] = copy.deepcopy(value)
    return doc, field + "." + parts[-1]


@pytest.mark.parametrize("path", sorted(REFUSED))
def test_refused_keys_are_refused_by_name_and_marked_not_yet(path):
    refused, accepted, issue = REFUSED[path]
    doc, field = _doc_with(path, refused)
    with pytest.raises(ConfigError) as ei:
        parse_config(doc, source="edge.yaml")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("edge.yaml: %s: " % field), msg
    assert "not implemented yet (issue #%d); " % issue in msg, msg
    if accepted is not None:
        doc, _ = _doc_with(path, accepted)
        parse_config(doc, source="edge.yaml")
    row = doc_keys()[path]
    assert "**not yet** (issue #%d)" % issue in row, row
    if accepted is not None:
        assert "`%s`" % str(accepted).lower() in row, row  # the doc says which value is accepted


@pytest.mark.parametrize("path", sorted(ACTED_ON))
def test_keys_acted_on_are_named_by_tests_that_exist(path):
    row = doc_keys()[path]
    assert "not yet" not in row.lower(), row
    leaf = path.rsplit(".", 1)[1]
    files = set()
    for ref in ACTED_ON[path]:
        file, name = ref.split("::")
        tree = ast.parse(open(os.path.join(ROOT, file), encoding="utf-8").read())
        names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert name in names, "%s: no test %s" % (path, ref)
        files.add(file)
    # a sanity check of the mapping: the key's name is written in one of those files
    assert any(leaf in open(os.path.join(ROOT, f), encoding="utf-8").read() for f in files), path


@pytest.mark.parametrize("settings", [{"conflict_resolution": {"custom_merge": {"lua": "merge.lua"}}},
                                      {"kind": "stream", "conflict_resolution": "cloud_wins"}])
def test_the_gateway_topics_file_refuses_table_settings_that_do_not_act_by_name(settings):
    # kind, type and conflict_resolution act at the gateway (tests/gateway/test_gateway_tables.py);
    # a merge is Python or WebAssembly, nothing else, and a stream has no conflicts to resolve
    from edgeline_host.gateway.topics import parse_topics

    with pytest.raises(ConfigError) as ei:
        parse_topics({"setpoints": dict(settings, direction="cloud_to_edge")}, {}, "topics.yaml")
    assert str(ei.value).startswith("topics.yaml: setpoints.conflict_resolution: ")
    assert "\n" not in str(ei.value)
