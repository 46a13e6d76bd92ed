"""Table topics at the gateway: a replica fed by edges and the cloud, rebuilt at start,
read and written over HTTP (docs/gateway.md, "Table topics"; docs/spec/tables.md)."""
import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edgeline import codec, sync
from edgeline import table as T
from edgeline.errors import ConfigError
from edgeline.log import Record
from edgeline_host import tables
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.gateway.topics import parse_topics
from edgeline_host.transports.http import HttpEdgeClient

KEY = bytes(range(32))
KEYS = {"edge-1": KEY, "edge-2": KEY[::-1]}
INC = bytes.fromhex("00000000000000a1")
W1 = "edge-1~" + INC.hex()  # the writer id of edge-1's log of that incarnation
LATE = 1 << 62  # a hybrid-clock ts later than any the gateway stamps now


def topics(**settings):
    s = {"direction": "bidirectional", "kind": "table"}
    s.update(settings)
    return parse_topics({"inv": s, "plain": {"direction": "bidirectional"}}, KEYS, "topics.yaml")


def put(seq, ts, key, value, ctx=()):
    return Record(seq, ts, key.encode(), codec.dumps(T.write_value(T.OP_PUT, ctx, value)))


def merge_join(key, versions):  # a custom merge for the tests: the live values joined
    return "+".join(v[3] for v in versions if v[3] is not T.TOMBSTONE)


def merge_broken(key, versions):
    raise ValueError("no merge for %r" % (key,))


async def with_gateway(tmp_path, fn, tops):
    gw = Gateway(str(tmp_path / "gw.db"), KEYS, topics=tops)
    server = TestServer(GatewayApi(gw).app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            return await fn(gw, http, server)
    finally:
        await server.close()


async def edge_send(http, server, records, node="edge-1", inc=INC):
    c = HttpEdgeClient(http, str(server.make_url("/v1/sync")), node, KEYS[node])
    await c.connect({"inv": inc})
    return await c.exchange(sync.batch_from_records("inv", records))


async def get(http, server, path):
    async with http.get(server.make_url(path)) as r:
        return r.status, await r.json()


def test_topics_file_takes_table_settings_and_refuses_what_does_not_act_by_name():
    t = topics(type="register", conflict_resolution="cloud_wins")["inv"]
    assert (t.table.type, t.table.strategy) == ("register", "cloud_wins")
    assert topics()["inv"].table.strategy == "last_write_wins"
    assert topics()["plain"].table is None
    t = topics(conflict_resolution={"custom_merge": "tests.gateway.test_gateway_tables:merge_join"})["inv"]
    assert t.table.strategy == "custom_merge" and t.table.merge("k", [("w", 1, 1, "x"), ("v", 1, 2, "y")]) == "x+y"
    for settings, words in [
        ({"conflict_resolution": {"custom_merge": {"wasm": "m.wasm"}}},
         "inv.conflict_resolution.custom_merge.wasm: m.wasm cannot be loaded: FileNotFoundError"),
        ({"conflict_resolution": {"custom_merge": {"lua": "m.lua"}}},
         "inv.conflict_resolution: a WebAssembly merge is {custom_merge: {wasm: path}}"),
        ({"conflict_resolution": "newest"}, "inv.conflict_resolution: must be one of"),
        ({"conflict_resolution": "custom_merge"}, "inv.conflict_resolution: custom_merge names its function"),
        ({"conflict_resolution": {"custom_merge": "no.such.module:f"}}, "cannot be loaded"),
        ({"type": "tree"}, "inv.type: must be one of"),
        ({"kind": "queue"}, "inv.kind: must be one of stream, table"),
        ({"kind": "stream", "type": "counter"}, "inv.type: only a table topic has it"),
        ({"type": "counter", "conflict_resolution": "cloud_wins"}, "only a register uses a strategy"),
    ]:
        with pytest.raises(ConfigError) as ei:
            topics(**settings)
        assert words in str(ei.value) and "\n" not in str(ei.value), (settings, str(ei.value))


async def settle(gw, n):
    """Wait until the gateway has relayed n edge writes into cloud streams."""
    for _ in range(500):
        if gw.relayed >= n and not gw._relay_pending:
            assert gw.relayed == n
            return
        await asyncio.sleep(0.01)
    raise AssertionError("relayed %d of %d" % (gw.relayed, n))


def test_edge_and_cloud_writes_meet_conflicts_are_listed_once_and_a_restart_rebuilds(tmp_path):
    async def fn(gw, http, server):
        await gw.table_write("inv", [("c", "only-cloud", False)])  # cloud:1
        (ack,) = await edge_send(http, server, [put(1, 1000, "a", "edge"), put(2, 1001, "b", 7)])
        assert ack.seq == 2
        await settle(gw, 2)  # relayed as cloud:2 and cloud:3
        async with http.put(server.make_url("/v1/tables/inv/a"), json="cloud") as r:
            assert r.status == 200
            assert await r.json() == {"topic": "inv", "key": "a", "origin": "cloud", "seq": 4, "durable": True}
        # the cloud's write had seen the edge's (C1: the gateway's replica held it): no conflict
        st, k = await get(http, server, "/v1/tables/inv/a")
        assert st == 200 and k["value"] == "cloud" and k["version"] == {"cloud": 4, W1: 1}
        # now a concurrent edge write (its context lacks cloud:4): a conflict, LWW shows the later
        await edge_send(http, server, [Record(3, LATE, b"a", codec.dumps(T.write_value(T.OP_PUT, (W1, 1), "e2")))])
        st, k = await get(http, server, "/v1/tables/inv/a")
        assert k["value"] == "e2" and k["conflict"] == "concurrent_write" and k["resolution"] == "use_edge"
        assert [(v["writer"], v["seq"]) for v in k["versions"]] == [("cloud", 4), (W1, 3)]
        await settle(gw, 3)  # cloud:5
        # a duplicate of that batch changes nothing, is not relayed again, lists no conflict twice
        await edge_send(http, server, [Record(3, LATE, b"a", codec.dumps(T.write_value(T.OP_PUT, (W1, 1), "e2")))])
        st, c = await get(http, server, "/v1/tables/inv/conflicts")
        assert [(r["key"], r["type"], r["resolution"]) for r in c["conflicts"]] == [("a", "concurrent_write",
                                                                                      "use_edge")]
        assert c["counts"] == {"concurrent_write": 1} and c["resolutions"] == {"use_edge": 1}
        # a delete from the cloud that has seen both resolves them; the conflict shows superseded
        async with http.delete(server.make_url("/v1/tables/inv/a")) as r:
            assert r.status == 200 and (await r.json())["seq"] == 6
        assert gw.relayed == 3
        st, state = await get(http, server, "/v1/tables/inv")
        assert [(x["key"], x["value"]) for x in state["keys"]] == [("b", 7), ("c", "only-cloud")]
        st, c = await get(http, server, "/v1/tables/inv/conflicts")
        # ... and is an ordering conflict: the delete's ts is older than the edge's write it had seen
        assert [(r["type"], r["resolution"]) for r in c["conflicts"]] == [("concurrent_write", "superseded"),
                                                                          ("ordering", "causal")]
        # the edges receive the cloud's writes with their contexts, and the edges' writes
        # relayed with their own dots, in the topic's cloud stream
        c2 = HttpEdgeClient(http, str(server.make_url("/v1/sync")), "edge-2", KEYS["edge-2"])
        await c2.connect()
        (d,) = await c2.exchange(sync.Pull("inv", 0, 10))
        got = [(r.seq, r.key, codec.loads(r.value)) for r in sync.records_of(d)]
        assert [(s, k) for s, k, _ in got] == [(1, b"c"), (2, b"a"), (3, b"b"), (4, b"a"), (5, b"a"), (6, b"a")]
        assert T.read_value(got[3][2]) == [(None, T.OP_PUT, (W1, 1), "cloud")]
        assert T.read_value(got[5][2])[0][1:3] == (T.OP_DELETE, ("cloud", 4, W1, 3))
        relay = tables.read_relay(got[4][2])
        assert relay[:3] == (W1, 3, LATE) and T.read_value(codec.loads(relay[3]))[0][3] == "e2"
        return state

    before = asyncio.run(with_gateway(tmp_path, fn, topics()))

    async def again(gw, http, server):
        st, state = await get(http, server, "/v1/tables/inv")
        assert gw._relay_pending == {} and gw.relayed == 0  # every edge write was relayed before
        return state

    after = asyncio.run(with_gateway(tmp_path, again, topics()))
    assert after["keys"] == before["keys"]
    # every stored record, again: 3 edge writes, 3 cloud writes, 3 relays of the edge's
    assert after["applied"] + after["ignored"] == 9 and after["malformed"] == 0


def test_an_edge_write_stored_but_not_relayed_is_relayed_at_start_once(tmp_path):
    async def fn(gw, http, server):
        gw._relay_task.cancel()  # the gateway "stops" between storing and relaying
        await edge_send(http, server, [put(1, 1000, "a", "edge"), put(2, 1001, "b", 7)])
        assert gw.store.published("inv") == 0

    asyncio.run(with_gateway(tmp_path, fn, topics()))

    async def again(gw, http, server):
        await settle(gw, 2)
        st, h = await get(http, server, "/healthz")
        assert (h["relayed"], h["relays_pending"]) == (2, 0)
        rows = gw.store.pull("inv", 0, 10)
        return [tables.read_relay(codec.loads(r.value))[:2] for r in rows]

    assert asyncio.run(with_gateway(tmp_path, again, topics())) == [(W1, 1), (W1, 2)]

    async def third(gw, http, server):
        await asyncio.sleep(0.05)
        return gw.relayed, gw.store.published("inv")

    assert asyncio.run(with_gateway(tmp_path, third, topics())) == (0, 2)  # once


def test_strategies_act_at_the_gateway(tmp_path):
    async def fn(gw, http, server):
        await edge_send(http, server, [put(1, 1000, "a", "edge")])
        gw.tables["inv"].table.floor = ()  # the cloud writes as if it had not seen the edge's: concurrent
        await gw.publish("inv", [codec.dumps(T.write_value(T.OP_PUT, (), "cloud"))], [b"a"])
        st, k = await get(http, server, "/v1/tables/inv/a")
        return k

    k = asyncio.run(with_gateway(tmp_path / "1", fn, topics(conflict_resolution="edge_wins")))
    assert k["value"] == "edge" and k["resolution"] == "use_edge"
    k = asyncio.run(with_gateway(tmp_path / "2", fn, topics(conflict_resolution="keep_both")))
    assert k["siblings"] == ["edge", "cloud"] and k["resolution"] == "both"
    k = asyncio.run(with_gateway(tmp_path / "3", fn, topics(
        conflict_resolution={"custom_merge": "tests.gateway.test_gateway_tables:merge_join"})))
    assert k["value"] == "edge+cloud" and k["resolution"] == "merged"
    k = asyncio.run(with_gateway(tmp_path / "4", fn, topics(
        conflict_resolution={"custom_merge": "tests.gateway.test_gateway_tables:merge_broken"})))
    assert k["siblings"] == ["edge", "cloud"] and k["resolution"] == "merge_failed"
    assert k["merge_error"] == "ValueError: no merge for 'a'"


def test_counter_set_and_map_writes_from_the_api(tmp_path):
    async def counter(gw, http, server):
        total = 12
        await edge_send(http, server, [Record(1, 1000, b"sku", codec.dumps(T.write_value(T.OP_COUNT, (), total)))])
        for n in (5, -2):
            async with http.put(server.make_url("/v1/tables/inv/sku"), json={"add": n}) as r:
                assert r.status == 200
        async with http.delete(server.make_url("/v1/tables/inv/sku")) as r:
            assert r.status == 409 and "no delete" in (await r.json())["error"]
        async with http.put(server.make_url("/v1/tables/inv/sku"), json=3) as r:
            assert r.status == 400
        return (await get(http, server, "/v1/tables/inv/sku"))[1]

    k = asyncio.run(with_gateway(tmp_path / "c", counter, topics(type="counter")))
    assert k["value"] == 15 and k["totals"] == {W1: 12, "cloud": 3}

    async def set_(gw, http, server):
        async with http.put(server.make_url("/v1/tables/inv/tags"), json={"add": ["x", "y"]}) as r:
            assert r.status == 200
        async with http.put(server.make_url("/v1/tables/inv/tags"), json={"remove": ["x"]}) as r:
            assert r.status == 200
        return (await get(http, server, "/v1/tables/inv/tags"))[1]

    assert asyncio.run(with_gateway(tmp_path / "s", set_, topics(type="set")))["value"] == ["y"]

    async def map_(gw, http, server):
        async with http.put(server.make_url("/v1/tables/inv/m"), json={"put": {"qty": 5, "note": "n"}}) as r:
            assert r.status == 200
        async with http.put(server.make_url("/v1/tables/inv/m"), json={"delete": ["note"]}) as r:
            assert r.status == 200
        return (await get(http, server, "/v1/tables/inv/m"))[1]

    assert asyncio.run(with_gateway(tmp_path / "m", map_, topics(type="map")))["value"] == {"qty": 5}


def test_publish_to_a_table_topic_is_keyed_puts_and_bad_input_is_one_line(tmp_path):
    async def fn(gw, http, server):
        async with http.post(server.make_url("/v1/topics/inv/publish"),
                             json=[{"key": "a", "value": 1}, {"key": "a", "value": 2}]) as r:
            assert r.status == 200 and (await r.json())["last_seq"] == 2
        st, k = await get(http, server, "/v1/tables/inv/a")
        assert k["value"] == 2 and "conflict" not in k  # the second had seen the first
        async with http.post(server.make_url("/v1/topics/inv/publish"), json=[5]) as r:
            assert r.status == 400 and "is {\"key\"" in (await r.json())["error"]
        async with http.put(server.make_url("/v1/tables/inv/a"), data=b"{nope") as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
        async with http.put(server.make_url("/v1/tables/inv/a"), data=b"null") as r:
            assert r.status == 400 and "cannot be null" in (await r.json())["error"]
        st, e = await get(http, server, "/v1/tables/plain")
        assert st == 404 and "not a table topic" in e["error"]
        # an edge record that is not a table write is stored, counted, not applied
        (ack,) = await edge_send(http, server, [Record(1, 1, b"z", codec.dumps({"not": "a write"}))])
        assert ack.seq == 1
        st, d = await get(http, server, "/v1/tables")
        assert d["tables"][0]["malformed"] == 1 and "not a table write" in d["tables"][0]["last_malformed"]

    asyncio.run(with_gateway(tmp_path, fn, topics()))


def test_concurrent_cloud_writes_never_conflict_with_each_other_and_counters_lose_no_add(tmp_path):
    async def registers(gw, http, server):
        await edge_send(http, server, [put(1, 1000, "a", "edge")])
        got = await asyncio.gather(*[gw.table_write("inv", [("a", i, False)]) for i in range(40)])
        assert sorted(g[1] for g in got) == sorted(set(g[1] for g in got))  # each its own seq
        st, k = await get(http, server, "/v1/tables/inv/a")
        st, c = await get(http, server, "/v1/tables/inv/conflicts")
        return k, c, max(got, key=lambda g: g[1])

    k, c, last = asyncio.run(with_gateway(tmp_path / "r", registers, topics()))
    # the last cloud write stands alone: it superseded the cloud's earlier ones and the edge's it had seen
    assert [(v["writer"], v["seq"]) for v in k["versions"]] == [("cloud", last[1])] and c["conflicts"] == []

    async def counter(gw, http, server):
        await asyncio.gather(*[gw.table_write("inv", [("n", {"add": 1}, False)]) for _ in range(30)])
        await gw.table_write("inv", [("n", {"add": 2}, False), ("n", {"add": 3}, False)])  # one request, two
        return (await get(http, server, "/v1/tables/inv/n"))[1]

    assert asyncio.run(with_gateway(tmp_path / "c", counter, topics(type="counter")))["value"] == 35


# -- WebAssembly merges (tables.md, custom_merge, ABI version 1), built here from WAT text ----

_ABI = '''
  (func (export "edgeline_abi_version") (result i32) (i32.const %(abi)d))
  (func (export "edgeline_alloc") (param i32) (result i32) (i32.const 4096))'''
WAT = {
    # [0, n]: n the length of the input it was given (so the test sees the input's bytes)
    "length": '''(module (memory (export "memory") 1)%s
  (func (export "edgeline_merge") (param $p i32) (param $n i32) (result i64)
    (i32.store8 (i32.const 2048) (i32.const 0x82)) (i32.store8 (i32.const 2049) (i32.const 0x00))
    (i32.store8 (i32.const 2050) (i32.const 0x19))
    (i32.store8 (i32.const 2051) (i32.shr_u (local.get $n) (i32.const 8)))
    (i32.store8 (i32.const 2052) (local.get $n))
    (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 5))))''',
    "delete": '''(module (memory (export "memory") 1) (data (i32.const 1024) "\\81\\01")%s
  (func (export "edgeline_merge") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 2))))''',
    "trap": '''(module (memory (export "memory") 1)%s
  (func (export "edgeline_merge") (param i32 i32) (result i64) (unreachable)))''',
    "loop": '''(module (memory (export "memory") 1)%s
  (func (export "edgeline_merge") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))''',
    "garbage": '''(module (memory (export "memory") 1) (data (i32.const 1024) "\\ff")%s
  (func (export "edgeline_merge") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 1))))''',
    "true": '''(module (memory (export "memory") 1) (data (i32.const 1024) "\\81\\f5")%s
  (func (export "edgeline_merge") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 2))))''',
    "false": '''(module (memory (export "memory") 1) (data (i32.const 1024) "\\82\\f4\\01")%s
  (func (export "edgeline_merge") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 3))))''',
    "outside": '''(module (memory (export "memory") 1)%s
  (func (export "edgeline_merge") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 65000) (i64.const 32)) (i64.const 4000))))''',
    "imports": '''(module (import "env" "f" (func)) (memory (export "memory") 1)%s
  (func (export "edgeline_merge") (param i32 i32) (result i64) (i64.const 0)))''',
    "big": '''(module (memory (export "memory") 17)%s
  (func (export "edgeline_merge") (param i32 i32) (result i64) (i64.const 0)))''',
}


def wasm_file(tmp_path, name, abi=1):
    wasmtime = pytest.importorskip("wasmtime")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / (name + ".wasm")
    path.write_bytes(wasmtime.wat2wasm(WAT[name] % (_ABI % {"abi": abi})))
    return path.name


def wasm_topics(tmp_path, name, abi=1):
    return parse_topics({"inv": {"direction": "bidirectional", "kind": "table", "conflict_resolution": {
        "custom_merge": {"wasm": wasm_file(tmp_path, name, abi)}}}}, KEYS, "topics.yaml", str(tmp_path))


async def _concurrent(gw, http, server):
    await edge_send(http, server, [put(1, 1000, "a", "edge")])
    gw.tables["inv"].table.floor = ()
    await gw.publish("inv", [codec.dumps(T.write_value(T.OP_PUT, (), "cloud"))], [b"a"])
    st, k = await get(http, server, "/v1/tables/inv/a")
    st, c = await get(http, server, "/v1/tables/inv/conflicts")
    return k, c["conflicts"]


def test_a_webassembly_merge_gets_the_versions_and_its_answer_is_shown(tmp_path):
    k, rows = asyncio.run(with_gateway(tmp_path, _concurrent, wasm_topics(tmp_path, "length")))
    versions = [[x["writer"], x["seq"], x["ts"], False, x["value"]] for x in k["versions"]]
    assert k["value"] == len(codec.dumps({"key": "a", "versions": versions}))  # the input, as the ABI says
    assert k["resolution"] == "merged" and [r["resolution"] for r in rows] == ["merged"]
    k, rows = asyncio.run(with_gateway(tmp_path / "d", _concurrent, wasm_topics(tmp_path / "d", "delete")))
    assert k["present"] is False and k["resolution"] == "merged"


@pytest.mark.parametrize("name, why", [("trap", "unreachable"), ("loop", "fuel"), ("garbage", "not one CBOR item"),
                                       ("outside", "lies outside the module's memory"),
                                       ("true", "[True] is neither"), ("false", "[False, 1] is neither")])
def test_a_failing_webassembly_merge_leaves_the_siblings_and_is_reported(tmp_path, name, why):
    k, rows = asyncio.run(with_gateway(tmp_path, _concurrent, wasm_topics(tmp_path, name)))
    assert k["siblings"] == ["edge", "cloud"] and k["resolution"] == "merge_failed"
    assert why in k["merge_error"], k["merge_error"]
    assert [(r["resolution"], r["merge_error"]) for r in rows] == [("merge_failed", k["merge_error"])]


@pytest.mark.parametrize("name, abi, why", [("imports", 1, "imports env.f: a merge module may import nothing"),
                                            ("big", 1, "cannot be loaded"),
                                            ("length", 2, "speaks ABI version 2")])
def test_a_webassembly_merge_that_cannot_run_is_refused_at_start(tmp_path, name, abi, why):
    with pytest.raises(ConfigError) as ei:
        wasm_topics(tmp_path, name, abi)
    msg = str(ei.value)
    assert msg.startswith("topics.yaml: inv.conflict_resolution.custom_merge.wasm: ") and why in msg, msg
    assert "\n" not in msg


def test_writes_are_formed_with_the_core_codecs_bytes_and_limits():
    """form_write encodes through cbor2 (C): the same bytes as the core's codec, and a
    value the core could not carry or read back is refused the same way."""
    from edgeline.codec import CodecError

    bodies = [0, -1, 2 ** 64, -(2 ** 70), 1.5, float("inf"), "sku", "ü€😀", b"\x00", True, None, [1, [2, {"a": [3]}]],
              {"qty": 5, "loc": "A3", "tags": ["x", "y"], "n": {"m": 1.25}}, [[[]]] * 3]
    for b in bodies:
        assert tables._dumps(T.write_value(T.OP_PUT, ("cloud", 3, "edge-1~00", 9), b)) == codec.dumps(
            T.write_value(T.OP_PUT, ("cloud", 3, "edge-1~00", 9), b)), b
    def outcome(dumps, v):
        try:
            return dumps(T.write_value(T.OP_PUT, (), v))
        except CodecError:
            return "refused"

    refused = 0
    for levels in range(26, 38):  # around the core's limit, as lists and as maps
        for wrap in (lambda x: [x], lambda x: {"f": x}):
            deep = 1
            for _ in range(levels):
                deep = wrap(deep)
            got = outcome(tables._dumps, deep)
            assert got == outcome(codec.dumps, deep), levels
            refused += got == "refused"
    assert 0 < refused < 24
    assert outcome(tables._dumps, "\ud800") == outcome(codec.dumps, "\ud800") == "refused"
    rep = tables.Replica("inv", tables.TableSettings())
    with pytest.raises(CodecError):
        rep.form_write("k", "cloud", {"k": deep})


def test_reports_in_the_hello_are_read_strictly():
    assert tables.read_reports({"tables": {"inv": [3, 0], "bad": [1, -1], "t": [1], "u": "x", 7: [1, 2],
                                           "s": [4, 5, "register", "cloud_wins", "later"], "o": [1, 1, 2]}}) == {
        "inv": (3, 0, None), "s": (4, 5, ("register", "cloud_wins")), "o": (1, 1, None)}
    assert tables.read_reports({"pull": True}) == {} and tables.read_reports(None) == {}
    assert tables.stable_vector([{"cloud": 4, "b": 2}, {"cloud": 3, "b": 5, "c": 1}]) == ("b", 2, "cloud", 3)
    assert tables.stable_vector([]) == ()


def test_a_tombstone_is_collected_only_once_every_replica_reported_it_applied(tmp_path):
    """tables.md, "Tombstones and their collection" (T6): the gateway collects a delete's
    tombstone once the cloud and every node have applied it and every node's writes
    made before that are at the gateway; a replay of a collected write is ignored; a
    write concurrent with a delete, still in an edge's outbox when it reported, keeps
    the tombstone."""
    async def fn(gw, http, server):
        gw.collect_every_s = 0
        rep = gw.tables["inv"]

        async def report(node, held, head):
            c = HttpEdgeClient(http, str(server.make_url("/v1/sync")), node, KEYS[node])
            await c.connect({"inv": INC}, capabilities={"tables": {"inv": [held, head]}})
            return c

        e1 = await report("edge-1", 0, 0)
        (ack,) = await e1.exchange(sync.batch_from_records("inv", [put(1, 1000, "a", "edge")]))
        await settle(gw, 1)  # cloud:1 relays edge-1:1
        await gw.table_write("inv", [("a", None, True)])  # cloud:2 deletes it, having seen it
        assert rep.table.siblings("a")[0][3] is T.TOMBSTONE
        await report("edge-1", 2, 1)  # edge-1 applied the delete
        assert gw.stable("inv") == () and rep.collected == 0  # edge-2 never reported
        await report("edge-2", 1, 0)  # edge-2 has not applied the delete yet
        assert gw.stable("inv") == ("cloud", 1, W1, 1) and rep.collected == 0
        assert rep.table.siblings("a")
        await report("edge-2", 2, 0)
        assert gw.stable("inv") == ("cloud", 2, W1, 1) and rep.collected == 1 and gw.collected == 1
        assert not rep.table.siblings("a") and rep.table.floor == ("cloud", 2, W1, 1)
        # a replay of the collected writes (a peer re-sending old log) is ignored
        ignored = rep.ignored
        assert not rep.apply_record(W1, 1, 1000, b"a", put(1, 1000, "a", "edge").value)
        assert not rep.apply_record("cloud", 2, 1 << 40, b"a", codec.dumps(T.write_value(T.OP_DELETE, (W1, 1))))
        assert rep.ignored == ignored + 2 and not rep.table.siblings("a")
        # the next cloud write to the key takes the floor as its context (C2)
        await gw.table_write("inv", [("a", "again", False)])
        assert rep.table.context("a") == ("cloud", 3, W1, 1)

        # key b: edge-1 writes it, the cloud deletes it; edge-1 reports head 3 while its
        # write 3 (concurrent with the delete) is still in its outbox: not usable yet
        (ack,) = await e1.exchange(sync.batch_from_records("inv", [put(2, 1001, "b", "edge")]))
        await settle(gw, 2)  # cloud:4
        await gw.table_write("inv", [("b", None, True)])  # cloud:5
        await report("edge-2", 5, 0)
        await report("edge-1", 5, 3)
        assert gw.stable("inv") == ("cloud", 2, W1, 1) and rep.collected == 1  # edge-1's usable report: held 2
        # the write arrives: the tombstone was kept, so it meets it as a sibling everywhere
        e1 = await report("edge-1", 5, 3)
        (ack,) = await e1.exchange(sync.batch_from_records("inv", [put(3, LATE, "b", "late", (W1, 2))]))
        assert ack.seq == 3
        assert len(rep.table.siblings("b")) == 2 and rep.collected == 1
        assert gw.stable("inv") == ("cloud", 5, W1, 2)  # the report is usable now; b has two siblings: kept
        # both nodes hold the cloud stream to 5: of the relay index only the last entry at or
        # below it is kept (cloud:4 relays edge-1:2), it answers the same
        assert gw._relay_index["inv"] == {W1: ([4], [2])}
        assert gw.stable("inv") == ("cloud", 5, W1, 2)
        st, k = await get(http, server, "/v1/tables/inv/b")
        assert k["value"] == "late" and k["conflict"] == "update_delete"
        # an edge whose table settings differ from the topics file is reported (one line, /healthz)
        c = HttpEdgeClient(http, str(server.make_url("/v1/sync")), "edge-2", KEYS["edge-2"])
        await c.connect({"inv": INC}, capabilities={"tables": {"inv": [5, 0, "register", "cloud_wins"]}})
        st, h = await get(http, server, "/healthz")
        assert h["tombstones_collected"] == 1
        assert h["table_settings_mismatch"] == [{"topic": "inv", "node": "edge-2", "type": "register",
                                                 "conflict_resolution": "cloud_wins"}]
        c = HttpEdgeClient(http, str(server.make_url("/v1/sync")), "edge-2", KEYS["edge-2"])
        await c.connect({"inv": INC}, capabilities={"tables": {"inv": [5, 0, "register", "last_write_wins"]}})
        st, h = await get(http, server, "/healthz")
        assert h["table_settings_mismatch"] == []
        st, d = await get(http, server, "/v1/tables")
        return d["tables"][0]

    d = asyncio.run(with_gateway(tmp_path, fn, topics()))
    assert d["collected"] == 1


def _conflict_log(tmp_path, rows=3):
    p = tmp_path / "c.cl"
    c = tables.ConflictLog(str(p), max_rows=rows)
    return p, c


def test_the_conflict_log_cuts_a_torn_tail_at_every_byte_and_refuses_another_version(tmp_path):
    from edgeline.errors import ConfigError

    p, c = _conflict_log(tmp_path)
    idents = [("k%d" % i, None, "concurrent_write", (("cloud", i + 1), (W1, i + 1))) for i in range(2)]
    for i, ident in enumerate(idents):
        c.append(ident, {"key": "k%d" % i, "n": i})
    c.close()
    whole = p.read_bytes()
    one = 16 + (len(whole) - 16) // 2  # both entries are the same size
    for cut in range(16, len(whole) + 1):
        p.write_bytes(whole[:cut])
        c = tables.ConflictLog(str(p))
        kept = 2 if cut == len(whole) else 1 if cut >= one else 0
        assert [r[0] for r in c.rows] == idents[:kept], cut
        assert c.cut_bytes == cut - (16 if kept == 0 else one if kept == 1 else len(whole))
        c.append(("again", None, "ordering", ()), {"n": 9})  # appends after what it kept
        c.close()
        assert [r[0][0] for r in tables.ConflictLog(str(p)).rows] == [i[0] for i in idents[:kept]] + ["again"]
    for junk in (b"\x00" * 40, b"\xff" * 40, whole[16:20] + b"\x00" * 10):  # erased space, a bad CRC
        p.write_bytes(whole[:one] + junk)
        assert len(tables.ConflictLog(str(p)).rows) == 1
    p.write_bytes(b"ELCL\x02" + whole[5:])
    with pytest.raises(ConfigError) as e:
        tables.ConflictLog(str(p))
    assert "not a conflict log of version 1" in str(e.value)
    # a rewrite cut before its rename leaves <file>.tmp beside the whole file: removed
    p.write_bytes(whole)
    (tmp_path / "c.cl.tmp").write_bytes(whole[:20])
    assert len(tables.ConflictLog(str(p)).rows) == 2 and not (tmp_path / "c.cl.tmp").exists()


def test_the_conflict_log_is_rewritten_when_it_holds_twice_the_rows_kept(tmp_path):
    p, c = _conflict_log(tmp_path, rows=3)
    rep = tables.Replica("inv", tables.TableSettings(), c)
    for i in range(7):  # each key: two concurrent writes, a conflict
        rep.apply_record("a", 1, 10, b"k%d" % i, codec.dumps(T.write_value(T.OP_PUT, (), "x")))
        rep.apply_record("b", 1, 11, b"k%d" % i, codec.dumps(T.write_value(T.OP_PUT, (), "y")))
    rep.close()
    again = tables.ConflictLog(str(p), max_rows=3)
    assert again.entries < 6 and [r[1]["key"] for r in again.rows] == ["k4", "k5", "k6"]
    assert not (tmp_path / "c.cl.tmp").exists()


def test_a_restart_lists_the_conflicts_the_replay_does_not_meet_again(tmp_path):
    """Two edges write a key concurrently (a conflict), then the cloud's write supersedes
    both. A replay applies the cloud's stream first: the edges' writes arrive superseded
    and meet nothing -- the list comes from the conflict log. (The relays are held back,
    or the cloud stream would carry the edges' writes ahead of the cloud's.)"""
    async def fn(gw, http, server):
        gw._relay_task.cancel()
        await edge_send(http, server, [put(1, 1000, "a", "one")])
        await edge_send(http, server, [put(1, 1001, "a", "two")], node="edge-2")
        await gw.table_write("inv", [("a", "cloud", False)])
        st, c = await get(http, server, "/v1/tables/inv/conflicts")
        return c["conflicts"]

    before = asyncio.run(with_gateway(tmp_path, fn, topics()))
    assert [(r["type"], r["resolution"]) for r in before] == [("concurrent_write", "superseded")]

    async def again(gw, http, server):
        st, c = await get(http, server, "/v1/tables/inv/conflicts")
        return c["conflicts"]

    assert asyncio.run(with_gateway(tmp_path, again, topics())) == before
    assert (tmp_path / "gw.db.tables" / "inv.cl").exists()


def _fields_write(seq, ts, key, *ops):
    # a raw set/map write as an edge could send it: [1, 3, [[field, op, ctx, value], ...]]
    import cbor2

    return Record(seq, ts, key.encode(), cbor2.dumps([1, 3, [list(op) for op in ops]]))


def test_an_edge_write_whose_element_is_not_text_or_an_int_is_malformed_acknowledged_and_never_relayed(tmp_path):
    """A set element that is a map (or a list, a bool, a float) used to crash the feed
    after the commit (no ACK: the edge resent it forever) and every start after it."""
    tops = topics(type="set")
    bad = [_fields_write(1, 1000, "k", ({"x": 1}, 0, [], True)), _fields_write(2, 1001, "k", ([1], 0, [], True)),
           _fields_write(3, 1002, "k", (True, 0, [], True)), _fields_write(4, 1003, "k", (1.5, 0, [], True))]
    good = [_fields_write(5, 1004, "j", ("e", 0, [], True)), _fields_write(6, 1005, "j", (1, 0, [], True))]

    async def fn(gw, http, server):
        (ack,) = await edge_send(http, server, bad + good)
        assert ack.seq == 6
        await settle(gw, 2)  # the good ones only
        st, state = await get(http, server, "/v1/tables/inv")
        assert st == 200 and state["malformed"] == 4 and "element or field" in state["last_malformed"]
        assert [(x["key"], x["value"]) for x in state["keys"]] == [("j", [1, "e"])]
        rows = gw.store.pull("inv", 0, 10)
        assert [tables.read_relay(codec.loads(r.value))[:2] for r in rows] == [(W1, 5), (W1, 6)]
        async with http.delete(server.make_url("/v1/tables/inv/j")) as r:
            assert r.status == 200
        return state

    asyncio.run(with_gateway(tmp_path, fn, tops))
    gw = Gateway(str(tmp_path / "gw.db"), KEYS, topics=tops)  # starts with them in the store
    try:
        d = gw.tables["inv"].describe()
        assert d["malformed"] == 4 and gw._relay_pending == {}
        assert gw.tables["inv"].state_json()["keys"] == []
    finally:
        gw.store.close()


def test_a_record_the_table_cannot_apply_is_counted_malformed_never_raised(tmp_path, monkeypatch, caplog):
    # the backstop: whatever the checks let through and the table still raises on
    rep = tables.Replica("inv", tables.TableSettings())

    def boom(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(rep.table, "apply", boom)
    value = codec.dumps(T.write_value(T.OP_PUT, (), "x"))
    with caplog.at_level("ERROR"):
        assert rep.apply_record(W1, 7, 10, b"k", value) is False
        assert rep.apply_record(W1, 8, 10, b"k", value) is False
    assert rep.malformed == 2 and rep.last_malformed.startswith(W1 + " seq 8: KeyError")
    logged = [r.getMessage() for r in caplog.records if "could not be applied" in r.getMessage()]
    assert len(logged) == 1 and (W1 + " seq 7") in logged[0]


def test_a_conflict_log_write_that_fails_is_cut_and_the_next_rows_are_read_back(tmp_path):
    import errno

    p, c = _conflict_log(tmp_path, rows=100)
    ident = lambda i: ("k%d" % i, None, "concurrent_write", (("cloud", i + 1),))  # noqa: E731
    c.append(ident(0), {"n": 0})
    real = c._f

    class Torn:  # writes half the entry, then the disk is full
        def write(self, b):
            real.write(b[:len(b) // 2])
            real.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            real.close()

    c._f = Torn()
    with pytest.raises(OSError):
        c.append(ident(1), {"n": 1})
    c.append(ident(2), {"n": 2})  # reopened, the torn half cut first
    c.append(ident(3), {"n": 3})
    c.close()
    assert [r[0] for r in tables.ConflictLog(str(p)).rows] == [ident(0), ident(2), ident(3)]


def test_a_conflict_the_log_cannot_take_never_fails_the_write_that_met_it(tmp_path):
    rep = tables.Replica("inv", tables.TableSettings(), _conflict_log(tmp_path)[1])

    def broken(*a, **k):
        raise ValueError("I/O operation on closed file.")

    rep.conflict_log.append = broken
    assert rep.apply_record("a", 1, 10, b"k", codec.dumps(T.write_value(T.OP_PUT, (), "x")))
    assert rep.apply_record("b", 1, 11, b"k", codec.dumps(T.write_value(T.OP_PUT, (), "y")))
    assert rep.malformed == 0 and rep.conflict_log_errors == 1 and rep.describe()["conflict_log_errors"] == 1
    assert [r["type"] for r in rep.conflicts_json()["conflicts"]] == ["concurrent_write"]


def test_the_gateway_keeps_one_relay_mark_per_writer_and_reads_the_store_once_at_start(tmp_path, monkeypatch):
    W2 = "edge-2~" + INC.hex()

    async def fn(gw, http, server):
        await edge_send(http, server, [put(i, 1000 + i, "k%d" % i, i) for i in (1, 2, 3)])
        await edge_send(http, server, [put(i, 1000 + i, "k%d" % i, i) for i in (1, 2)], node="edge-2")
        await edge_send(http, server, [put(i, 1000 + i, "k%d" % i, i) for i in (3, 4, 5)])  # 3: a duplicate
        await settle(gw, 7)
        assert gw._relayed == {"inv": {W1: 5, W2: 2}}  # one mark per writer, not one entry per write
        await edge_send(http, server, [put(i, 1000 + i, "k%d" % i, i) for i in (1, 2, 3, 4, 5)])
        await asyncio.sleep(0.05)
        assert gw.relayed == 7
        return [tables.read_relay(codec.loads(r.value))[:2] for r in gw.store.pull("inv", 0, 20)]

    got = asyncio.run(with_gateway(tmp_path, fn, topics()))
    assert sorted(got) == [(W1, s) for s in range(1, 6)] + [(W2, 1), (W2, 2)]
    from edgeline_host.gateway.store import GatewayStore

    calls = []
    for name in ("stream_records", "records"):
        real = getattr(GatewayStore, name)
        monkeypatch.setattr(GatewayStore, name, lambda self, *a, _r=real, _n=name, **k: (calls.append(_n), _r(
            self, *a, **k))[1])
    gw = Gateway(str(tmp_path / "gw.db"), KEYS, topics=topics())
    try:
        assert calls == ["stream_records"] and gw._relay_pending == {}
        assert gw._relayed == {"inv": {W1: 5, W2: 2}}
    finally:
        gw.store.close()


def test_an_edge_write_whose_relay_would_be_over_the_topics_max_record_bytes_is_refused_by_name(tmp_path):
    """Relayed, it would be a record no edge limited to the topic's size could pull: the
    puller's PULL was refused for ever (too_large). It is kept stored, acknowledged, and
    neither applied at the gateway nor relayed; the count and the reason are shown."""
    tops = topics(max_record_bytes=200)
    small = put(1, 1000, "a", "x" * 100)
    big = put(2, 1001, "b", "y" * 170)  # 185 bytes as the edge wrote it; relayed, over 200
    assert len(big.key) + len(big.value) <= 200 < tables.relay_record_bytes(big.key, W1, 2, 1001, len(big.value))

    async def fn(gw, http, server):
        (ack,) = await edge_send(http, server, [small, big, put(3, 1002, "c", 1)])
        assert ack.seq == 3
        await settle(gw, 2)
        st, state = await get(http, server, "/v1/tables/inv")
        assert [x["key"] for x in state["keys"]] == ["a", "c"]
        assert state["too_large"] == 1 and "over the topic's max_record_bytes 200" in state["last_too_large"]
        assert state["last_too_large"].startswith(W1 + " seq 2:")
        # a puller that takes the topic's records (200 bytes and a DATA's overhead) takes every relay
        c2 = HttpEdgeClient(http, str(server.make_url("/v1/sync")), "edge-2", KEYS["edge-2"])
        await c2.connect(capabilities={"max_message_bytes": 300})
        got, after = [], 0
        while True:
            (d,) = await c2.exchange(sync.Pull("inv", after, 10))
            assert type(d) is sync.Data, d
            recs = list(sync.records_of(d))
            if not recs:
                break
            got += [tables.read_relay(codec.loads(r.value))[:2] for r in recs]
            after = recs[-1].seq
        assert got == [(W1, 1), (W1, 3)]
        return state["keys"]

    before = asyncio.run(with_gateway(tmp_path, fn, tops))
    gw = Gateway(str(tmp_path / "gw.db"), KEYS, topics=tops)
    try:
        d = gw.tables["inv"].state_json()
        assert d["keys"] == before and d["too_large"] == 1 and gw._relay_pending == {}
    finally:
        gw.store.close()


def test_the_size_of_a_relay_is_counted_without_building_it():
    for writer in ("e", W1, "x" * 30, "é" * 200):
        for seq, ts in ((1, 0), (23, 24), (255, 256), (65535, 65536), (1 << 32, 1 << 62)):
            for n in (0, 23, 24, 255, 256, 70000):
                want = 3 + len(tables.relay_value(writer, seq, ts, b"v" * n))
                assert tables.relay_record_bytes(b"abc", writer, seq, ts, n) == want, (writer, seq, ts, n)
