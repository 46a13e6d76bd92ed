"""Table topics at the agent: a replica fed by its own writes and the cloud's records,
rebuilt from the logs at start, read and written over HTTP (docs/agent.md, "Table
topics"; docs/spec/tables.md)."""
import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edgeline import codec, fastpath, sync
from edgeline import table as T
from edgeline.errors import ConfigError
from edgeline.inbox import append_data
from edgeline.log import Record
from edgeline_host.agent.config import parse_config
from edgeline_host.agent.service import Agent

KEY_HEX = "11" * 32


def config(tmp_path, edge=None, **table):
    t = {"topic": "inv", "direction": "bidirectional", "sync": "every", "kind": "table"}
    t.update(table)
    e = {"node_id": "store-1", "data_dir": "data", "key": KEY_HEX, "cloud_endpoint": "http://127.0.0.1:9",
         "sync_topics": [t], "ingest": {"http": {"listen": "127.0.0.1:0"}}}
    e.update(edge or {})
    return parse_config({"edge": e}, base_dir=str(tmp_path))


def cloud_records(agent, records):
    """Records of the cloud's stream of topic inv arriving as the downlink delivers them."""
    st = agent.topics["inv"]
    before = st.down.last_seq
    append_data(st.down, sync.batch_from_records("inv", records, sync.Data), 0)
    agent._received("inv", st.down, st.down.last_seq - before)


def cloud_put(seq, ts, key, value, ctx=()):
    return Record(seq, ts, key.encode(), codec.dumps(T.write_value(T.OP_PUT, ctx, value)))


async def with_agent(cfg, fn):
    agent = Agent(cfg, print_fn=lambda *_: None)
    server = TestServer(agent.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async def call(method, path, **kw):
                async with http.request(method, server.make_url(path), **kw) as r:
                    return r.status, await r.json()

            return await fn(agent, call)
    finally:
        await server.close()
        agent.close()


def test_config_takes_table_topics_and_refuses_what_does_not_act_by_name(tmp_path):
    cfg = config(tmp_path, type="map")
    assert cfg.topics[0].table.type == "map"
    assert cfg.topics[0].full_policy == "reject"  # a table keeps every write (its replica is rebuilt from them)
    cfg = config(tmp_path, conflict_resolution="keep_both")
    assert cfg.topics[0].table.strategy == "keep_both"
    # edge.conflict_resolution: the strategy of the register tables that give none
    cfg = config(tmp_path, edge={"conflict_resolution": "cloud_wins"})
    assert cfg.topics[0].table.strategy == "cloud_wins"
    cfg = config(tmp_path, edge={"conflict_resolution": "cloud_wins"}, conflict_resolution="edge_wins")
    assert cfg.topics[0].table.strategy == "edge_wins"
    cfg = config(tmp_path, edge={"conflict_resolution": "cloud_wins"}, type="counter")
    assert cfg.topics[0].table.strategy == "last_write_wins"  # a counter merges by its type
    for table, words in [
        ({"conflict_resolution": {"custom_merge": {"wasm": "m.wasm"}}},
         "edge.sync_topics[0].conflict_resolution.custom_merge.wasm: %s cannot be loaded" % (tmp_path / "m.wasm")),
        ({"kind": "stream", "conflict_resolution": "cloud_wins"},
         "edge.sync_topics[0].conflict_resolution: only a table topic has it"),
        ({"type": "bag"}, "edge.sync_topics[0].type: must be one of"),
        ({"full_policy": "drop_oldest"}, "edge.sync_topics[0].full_policy: a table topic keeps every write"),
        ({"retention": "7d"}, "edge.sync_topics[0].retention: a table topic keeps every write"),
        ({"edge": {"conflict_resolution": "newest"}}, "edge.conflict_resolution: must be one of"),
        ({"edge": {"conflict_resolution": {"custom_merge": {"wasm": "m.wasm"}}}},
         "edge.conflict_resolution.custom_merge.wasm: %s cannot be loaded" % (tmp_path / "m.wasm")),
    ]:
        with pytest.raises(ConfigError) as ei:
            config(tmp_path, **table)
        assert str(ei.value).startswith("edge.yaml: " + words), str(ei.value)


def test_writes_take_their_context_from_the_replica_and_meet_the_clouds(tmp_path):
    cfg = config(tmp_path)

    async def fn(agent, call):
        me = agent._own_writer(agent.topics["inv"])
        assert me.startswith("store-1~")  # its log's incarnation: a wiped store is a new writer
        s, a = await call("PUT", "/v1/tables/inv/sku-1", json={"qty": 5})
        assert (s, a) == (200, {"topic": "inv", "key": "sku-1", "origin": "store-1", "seq": 1, "durable": True})
        # the cloud saw it and wrote over it: superseded, no conflict
        cloud_records(agent, [cloud_put(1, 2 ** 62, "sku-1", {"qty": 9}, (me, 1))])
        s, k = await call("GET", "/v1/tables/inv/sku-1")
        assert k["value"] == {"qty": 9} and k["version"] == {"cloud": 1, me: 1} and "conflict" not in k
        # ingest of keyed records is a write each, its context from the replica (it has seen cloud:1)
        s, a = await call("POST", "/v1/topics/inv/records", json=[{"key": "sku-1", "value": {"qty": 3}},
                                                                    {"key": "sku-2", "value": 1}])
        assert s == 200 and a["last_seq"] == 3
        lg = agent.topics["inv"].log
        (r,) = lg.read(2, 1)
        assert T.read_value(codec.loads(r.value)) == [(None, T.OP_PUT, ("cloud", 1, me, 1), {"qty": 3})]
        # a cloud write concurrent with it (it had seen only store-1:1): a conflict, LWW shows the later
        cloud_records(agent, [cloud_put(2, 2 ** 62 + 5, "sku-1", {"qty": 7}, ("cloud", 1, me, 1))])
        s, k = await call("GET", "/v1/tables/inv/sku-1")
        assert k["value"] == {"qty": 7} and k["conflict"] == "concurrent_write" and k["resolution"] == "use_cloud"
        s, c = await call("GET", "/v1/tables/inv/conflicts")
        assert [(x["key"], x["type"]) for x in c["conflicts"]] == [("sku-1", "concurrent_write")]
        # a delete that has seen both resolves it
        s, a = await call("DELETE", "/v1/tables/inv/sku-1")
        assert s == 200 and a["seq"] == 4
        s, state = await call("GET", "/v1/tables/inv")
        assert [(x["key"], x["value"]) for x in state["keys"]] == [("sku-2", 1)]
        # refused before anything is stored: an unkeyed record, a bad body, a topic that is no table
        s, e = await call("POST", "/v1/topics/inv/records", json=[{"key": "x", "value": 1}, 5])
        assert s == 400 and "record 1: topic 'inv' is a table: every record needs a key" in e["error"]
        s, e = await call("PUT", "/v1/tables/inv/x", data=b"{")
        assert s == 400 and "not valid JSON" in e["error"]
        s, e = await call("GET", "/v1/tables/nope")
        assert s == 404
        assert lg.last_seq == 4
        return state

    before = asyncio.run(with_agent(cfg, fn))

    async def again(agent, call):  # rebuilt from the logs at start
        s, state = await call("GET", "/v1/tables/inv")
        s, c = await call("GET", "/v1/tables/inv/conflicts")
        return state, c

    after, conflicts = asyncio.run(with_agent(cfg, again))
    assert after["keys"] == before["keys"]
    assert after["applied"] + after["ignored"] == 6


def test_a_counter_adds_up_within_one_request_and_across_writers(tmp_path):
    async def fn(agent, call):
        s, a = await call("POST", "/v1/topics/inv/records", json=[{"key": "sku", "value": {"add": 5}},
                                                                    {"key": "sku", "value": {"add": -2}}])
        assert s == 200
        s, a = await call("PUT", "/v1/tables/inv/sku", json={"add": 10})
        cloud_records(agent, [Record(1, 1, b"sku", codec.dumps(T.write_value(T.OP_COUNT, (), 100)))])
        s, k = await call("GET", "/v1/tables/inv/sku")
        s2, e = await call("DELETE", "/v1/tables/inv/sku")
        return k, s2

    k, s = asyncio.run(with_agent(config(tmp_path, type="counter"), fn))
    assert k["value"] == 113 and sorted(k["totals"].values()) == [13, 100]
    assert s == 409


def test_relayed_writes_of_other_edges_apply_with_their_own_dots(tmp_path):
    from edgeline_host import tables

    async def fn(agent, call):
        me = agent._own_writer(agent.topics["inv"])
        s, a = await call("PUT", "/v1/tables/inv/k", json="mine")
        mine = agent.topics["inv"].log.read(1, 1)[0]
        other = codec.dumps(T.write_value(T.OP_PUT, (), "theirs"))
        cloud_records(agent, [
            Record(1, 5, b"k", tables.relay_value(me, 1, mine.ts, mine.value)),  # its own, back: a duplicate
            Record(2, 6, b"k", tables.relay_value("store-2~00000000000000b2", 4, 2 ** 62, other)),
            Record(3, 7, b"k", codec.dumps([1, 4, "x"])),  # a malformed relay: counted, left out
            Record(4, 8, b"k", other + b"\x00"),  # trailing bytes: malformed too
        ])
        s, k = await call("GET", "/v1/tables/inv/k")
        s, d = await call("GET", "/v1/tables")
        return k, d["tables"][0]

    k, d = asyncio.run(with_agent(config(tmp_path), fn))
    assert k["value"] == "theirs" and k["conflict"] == "concurrent_write"
    assert [(v["writer"].split("~")[0], v["seq"]) for v in k["versions"]] == [("store-1", 1), ("store-2", 4)]
    assert (d["applied"], d["ignored"], d["malformed"]) == (2, 1, 2)


def test_a_webassembly_merge_named_in_edge_yaml_runs_at_the_agent(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent / "gateway"))
    from test_gateway_tables import wasm_file

    name = wasm_file(tmp_path, "length")  # relative to the config file's folder
    cfg = config(tmp_path, conflict_resolution={"custom_merge": {"wasm": name}})

    async def fn(agent, call):
        await call("PUT", "/v1/tables/inv/k", json="mine")
        cloud_records(agent, [cloud_put(1, 2 ** 62, "k", "theirs")])
        return (await call("GET", "/v1/tables/inv/k"))[1]

    k = asyncio.run(with_agent(cfg, fn))
    assert k["resolution"] == "merged" and isinstance(k["value"], int) and k["value"] > 40


def test_after_a_write_error_the_replica_is_rebuilt_from_what_the_reopened_log_kept(tmp_path, monkeypatch):
    """Writes appended while an fsync failed are applied to the replica; the reopened log
    keeps only what reached the disk whole -- and so must the replica (never showing a
    write the log dropped)."""
    from edgeline_host.agent import service

    calls = []

    def failing(token):
        calls.append(token)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        return fastpath.sync_commit(token)

    monkeypatch.setattr(service, "sync_commit", failing)
    cfg = config(tmp_path, sync="group", group_ms="1h", group_records=1000000)

    async def fn(agent, call):
        st = agent.topics["inv"]
        answers = await asyncio.gather(*[agent._table_write("inv", k, k.upper(), False) for k in "abc"],
                                       return_exceptions=True)
        assert all(isinstance(a, service.RequestError) and a.status == 500 for a in answers), answers
        shown = [k["key"] for k in agent.tables["inv"].state_json()["keys"]]
        assert agent.recover(st)
        kept = [r.key for r in st.log.read(1, 10)]
        s, state = await call("GET", "/v1/tables/inv")
        s2, a = await call("PUT", "/v1/tables/inv/d", json="D")
        s3, after = await call("GET", "/v1/tables/inv")
        return shown, kept, state, s2, after

    shown, kept, state, s2, after = asyncio.run(with_agent(cfg, fn))
    assert shown == ["a", "b", "c"] and kept == [b"a"]  # a reached the file; b and c were in the buffer
    assert [k["key"] for k in state["keys"]] == ["a"]
    assert s2 == 200 and [(k["key"], k["value"]) for k in after["keys"]] == [("a", "A"), ("d", "D")]


def test_the_hello_reports_what_the_replica_applied_and_what_this_node_wrote(tmp_path):
    """tables.md, "Reports at the gateway": the uplink's HELLO carries [held, head] per
    table topic, read when the HELLO is made; the gateway keeps it for collection."""
    from edgeline_host.gateway.api import GatewayApi
    from edgeline_host.gateway.gateway import Gateway
    from edgeline_host.gateway.topics import parse_topics

    keys = {"store-1": bytes.fromhex(KEY_HEX)}
    gw = Gateway(str(tmp_path / "gw.db"), keys, topics=parse_topics(
        {"inv": {"direction": "bidirectional", "kind": "table"}}, keys, "topics.yaml"))

    async def main():
        server = TestServer(GatewayApi(gw).app())
        await server.start_server()
        agent = Agent(config(tmp_path, {"cloud_endpoint": str(server.make_url("/v1/sync"))}),
                      print_fn=lambda *_: None)
        try:
            st = agent.topics["inv"]
            await agent._table_write("inv", "a", "A", False)
            await agent._table_write("inv", "b", "B", False)
            cloud_records(agent, [cloud_put(1, 1, "c", "C")])
            report = agent._table_reports()
            up = agent.uplink
            await up.transport.start()
            try:
                await up._connect()
            finally:
                await up.transport.close()
            return report, gw._reports.get(("inv", "store-1")), bytes(st.log.incarnation).hex()
        finally:
            agent.close()
            await server.close()

    report, kept, inc = asyncio.run(main())
    assert report == {"tables": {"inv": [1, 2, "register", "last_write_wins"]}}
    assert kept == [None, (1, 2, inc)]  # the gateway's settings are the same: no mismatch
    # a cloud_to_edge table: the node writes nothing to it (its log is the cloud's stream)
    down = Agent(config(tmp_path / "down", direction="cloud_to_edge"), print_fn=lambda *_: None)
    try:
        cloud_records(down, [cloud_put(1, 1, "c", "C"), cloud_put(2, 2, "d", "D")])
        assert down._table_reports() == {"tables": {"inv": [2, 0, "register", "last_write_wins"]}}
    finally:
        down.close()


def test_a_restart_lists_the_conflicts_met_before_it(tmp_path):
    """The agent's own write and the cloud's meet (a conflict), then its next write
    supersedes both. Its replay applies its own log first: the cloud's write arrives
    superseded and meets nothing -- the list after the restart is the conflict log's."""
    cfg = config(tmp_path)

    async def fn(agent, call):
        await call("PUT", "/v1/tables/inv/k", json="mine")
        cloud_records(agent, [cloud_put(1, 2 ** 62, "k", "theirs")])
        await call("PUT", "/v1/tables/inv/k", json="settled")
        return (await call("GET", "/v1/tables/inv/conflicts"))[1]["conflicts"]

    before = asyncio.run(with_agent(cfg, fn))
    assert [(r["type"], r["resolution"]) for r in before] == [("concurrent_write", "superseded")]

    async def again(agent, call):
        return (await call("GET", "/v1/tables/inv/conflicts"))[1]["conflicts"]

    assert asyncio.run(with_agent(cfg, again)) == before
    assert (tmp_path / "data" / "~table-conflicts" / "inv.cl").exists()


def test_a_conflict_log_it_cannot_read_stops_the_agent_in_one_line_leaving_nothing_open(tmp_path):
    cfg = config(tmp_path)
    folder = tmp_path / "data" / "~table-conflicts"
    folder.mkdir(parents=True)
    (folder / "inv.cl").write_bytes(b"not a conflict log at all")
    with pytest.raises(ConfigError) as e:
        Agent(cfg, print_fn=lambda *_: None)
    assert "inv.cl: not a conflict log of version 1" in str(e.value) and "\n" not in str(e.value)
    (folder / "inv.cl").unlink()
    Agent(cfg, print_fn=lambda *_: None).close()  # the data directory's lock was released


def test_a_conflict_log_that_cannot_be_written_never_fails_a_stored_write(tmp_path):
    """A rewrite of the conflict log that fails (ENOSPC) used to leave its file closed:
    every later conflict raised ValueError out of applying the record that met it (the
    agent's write answered 500 though stored; the downlink's records here). Each key
    below is written here and by the cloud concurrently: one conflict per key."""
    import errno

    cfg = config(tmp_path)

    async def fn(agent, call):
        clog = agent.tables["inv"].conflict_log
        clog.max_rows = 1  # every second row asks for a rewrite

        def full(rows):
            raise OSError(errno.ENOSPC, "No space left on device")

        clog._rewrite = full
        for i in range(4):
            s, j = await call("PUT", "/v1/tables/inv/k%d" % i, json="mine")
            assert s == 200 and j["durable"], (i, s, j)
            cloud_records(agent, [cloud_put(i + 1, 1, "k%d" % i, "theirs")])
        s, j = await call("PUT", "/v1/tables/inv/k0", json="settled")
        assert s == 200
        s, c = await call("GET", "/v1/tables/inv/conflicts")
        assert [(r["key"], r["type"]) for r in c["conflicts"]] == [("k%d" % i, "concurrent_write") for i in range(4)]
        assert clog.rewrite_errors >= 1 and agent.tables["inv"].conflict_log_errors == 0
        return c["conflicts"]

    before = asyncio.run(with_agent(cfg, fn))

    async def again(agent, call):  # every row was written, though the file was never rewritten
        return (await call("GET", "/v1/tables/inv/conflicts"))[1]["conflicts"]

    assert [r["key"] for r in asyncio.run(with_agent(cfg, again))] == [r["key"] for r in before]


def test_a_relayed_write_with_an_element_a_replica_cannot_hold_is_malformed_and_the_agent_restarts(tmp_path):
    """A gateway before this check relayed set writes whose element was a map: applying
    one crashed the agent's downlink and every start while the relay was in its log."""
    import cbor2

    from edgeline_host import tables

    cfg = config(tmp_path, type="set")
    bad = cbor2.dumps([1, 3, [[{"x": 1}, 0, [], True]]])
    good = cbor2.dumps([1, 3, [[1, 0, [], True], ["a", 0, [], True]]])

    async def fn(agent, call):
        cloud_records(agent, [Record(1, 5, b"s", tables.relay_value("store-2", 1, 5, bad)),
                              Record(2, 6, b"s", tables.relay_value("store-2", 2, 6, good))])
        s, d = await call("GET", "/v1/tables/inv")
        return s, d

    for _ in range(2):  # fed by the downlink, then rebuilt from the log at start
        s, d = asyncio.run(with_agent(cfg, fn if _ == 0 else lambda a, call: call("GET", "/v1/tables/inv")))
        assert s == 200 and d["malformed"] == 1 and d["keys"] == [{"key": "s", "value": [1, "a"]}], d
