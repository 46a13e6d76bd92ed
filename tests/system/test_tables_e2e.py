"""Issue 10, end to end with real processes: a gateway and two store agents edit the same
table keys as the cloud does, one store offline for a while and the other SIGKILLed;
after healing, the gateway and each agent show the same state for everything each has
received, and the conflict is listed once, with its resolution, at the gateway, at each
store, and through the CLI.

What an edge receives: the topic's cloud stream, through the downlink -- the cloud's
writes and every edge's writes the gateway relays into it (tables.md, "Relayed writes"):
so all three end with the same table.
"""
import asyncio
import json
import os
import subprocess
import sys
import time

import aiohttp
import pytest

from procs import Proc, free_port, process_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = process_env(ROOT)
EDGELINE = [sys.executable, "-m", "edgeline_host.cli"]
WAIT_S = 60  # for the dust to settle; a timeout is a failure, never a measurement

TOPICS = """\
inv:
  direction: bidirectional
  kind: table
  conflict_resolution: %(strategy)s
"""

# A WebAssembly merge (tables.md, ABI 1): [0, n], n the length of the input it is given --
# the same versions give the same bytes, so every replica shows the same number
LENGTH_WAT = '''(module (memory (export "memory") 1)
  (func (export "edgeline_abi_version") (result i32) (i32.const 1))
  (func (export "edgeline_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "edgeline_merge") (param $p i32) (param $n i32) (result i64)
    (i32.store8 (i32.const 2048) (i32.const 0x82)) (i32.store8 (i32.const 2049) (i32.const 0x00))
    (i32.store8 (i32.const 2050) (i32.const 0x19))
    (i32.store8 (i32.const 2051) (i32.shr_u (local.get $n) (i32.const 8)))
    (i32.store8 (i32.const 2052) (local.get $n))
    (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 5))))'''

CONFIG = """\
edge:
  node_id: %(node)s
  data_dir: %(data)s
  key: "%(key)s"
  cloud_endpoint: http://127.0.0.1:%(gw)d
  sync:
    interval_secs: 1
    retry: {initial_ms: 50, max_ms: 300}
    circuit_breaker: {failures: 0}
  sync_topics:
    - {topic: inv, direction: bidirectional, kind: table, conflict_resolution: %(strategy)s, sync: every}
  ingest:
    http: {listen: "127.0.0.1:%(port)d"}
"""


def cli(*args):
    p = subprocess.run(EDGELINE + list(args), env=ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


@pytest.mark.parametrize("merge", ["last_write_wins", "wasm"])
def test_two_stores_and_the_cloud_edit_one_table_through_an_outage_and_a_kill(tmp_path, merge):
    asyncio.run(_scenario(tmp_path, merge))


async def _scenario(tmp_path, merge):
    strategy = merge
    if merge == "wasm":
        wasmtime = pytest.importorskip("wasmtime")
        (tmp_path / "merge.wasm").write_bytes(wasmtime.wat2wasm(LENGTH_WAT))
        strategy = "{custom_merge: {wasm: merge.wasm}}"  # beside the topics file and each edge.yaml
    gw_port = free_port()
    dead_port = free_port()  # nobody listens: a store configured with it is offline
    keys = {"store-1": "a1" * 32, "store-2": "b2" * 32}
    (tmp_path / "keys.yaml").write_text("".join("%s: %s\n" % kv for kv in keys.items()))
    (tmp_path / "topics.yaml").write_text(TOPICS % {"strategy": strategy})
    gateway = Proc("gateway", EDGELINE + ["gateway", "--keys", str(tmp_path / "keys.yaml"), "--db",
                                          str(tmp_path / "gw.db"), "--listen", "127.0.0.1:%d" % gw_port,
                                          "--topics", str(tmp_path / "topics.yaml")],
                   gw_port, "/healthz", str(tmp_path / "gateway.log"), ENV)
    stores = {}
    for node in keys:
        port = free_port()
        for name, gw in (("online", gw_port), ("offline", dead_port)):
            (tmp_path / ("%s-%s.yaml" % (node, name))).write_text(CONFIG % {
                "node": node, "data": str(tmp_path / node), "key": keys[node], "gw": gw, "port": port,
                "strategy": strategy})
        stores[node] = Proc(node, EDGELINE + ["agent", "--config", str(tmp_path / ("%s-online.yaml" % node))],
                            port, "/v1/health", str(tmp_path / ("%s.log" % node)), ENV)
    gw_url = "http://127.0.0.1:%d" % gw_port
    url = {n: "http://127.0.0.1:%d" % p.port for n, p in stores.items()}
    s1, s2 = stores["store-1"], stores["store-2"]
    procs = [gateway, s1, s2]
    try:
        async with aiohttp.ClientSession() as http:
            async def put(base, key, value):
                async with http.put("%s/v1/tables/inv/%s" % (base, key), json=value) as r:
                    body = await r.json()
                    assert r.status == 200 and body["durable"] is True, body
                    return body

            async def table(base):
                async with http.get(base + "/v1/tables/inv") as r:
                    assert r.status == 200
                    return {x["key"]: x.get("value", x.get("siblings")) for x in (await r.json())["keys"]}

            async def key(base, k):
                async with http.get("%s/v1/tables/inv/%s" % (base, k)) as r:
                    return await r.json()

            async def conflicts(base):
                async with http.get(base + "/v1/tables/inv/conflicts") as r:
                    return (await r.json())["conflicts"]

            async def until(what, check):
                deadline = time.monotonic() + WAIT_S
                while True:
                    got = await check()
                    if got:
                        return got
                    assert time.monotonic() < deadline, "timed out waiting for %s" % what
                    await asyncio.sleep(0.2)

            async def shows(base, want):
                async def check():
                    return await table(base) == want
                await until("%s to show %r (it shows %r)" % (base, want, await table(base)), check)

            await gateway.start(http)
            await s1.start(http)
            await s2.start(http)

            # 1. all online: each store writes its key, the cloud writes over store-1's (it has seen it)
            await put(url["store-1"], "a", "s1-a")
            await put(url["store-2"], "b", "s2-b")
            await shows(gw_url, {"a": "s1-a", "b": "s2-b"})
            await put(gw_url, "a", "cloud-a")
            cli("gateway", "table", "inv", "c", "--put", '"cloud-c"', "--gateway", gw_url)
            await shows(url["store-1"], {"a": "cloud-a", "b": "s2-b", "c": "cloud-c"})
            await shows(url["store-2"], {"a": "cloud-a", "b": "s2-b", "c": "cloud-c"})

            # 2. store-2 goes offline (killed, back without its gateway) and writes c and d;
            #    meanwhile the cloud writes c too (concurrently: neither has seen the other),
            #    store-1 writes a and is SIGKILLed right after its durable answer, and the
            #    cloud writes b (having seen store-2's b) through `edgeline publish`
            s2.kill()
            s2.argv = EDGELINE + ["agent", "--config", str(tmp_path / "store-2-offline.yaml")]
            await s2.start(http)
            await put(url["store-2"], "c", "s2-c")
            await put(url["store-2"], "d", "s2-d")
            await put(gw_url, "c", "cloud-c2")
            await put(url["store-1"], "a", "s1-a2")
            s1.kill()
            cli("publish", "inv", '{"key": "b", "value": "cloud-b"}', "--gateway", gw_url)
            await s1.start(http)  # rebuilt from its log: its write to a is there
            assert (await table(url["store-1"]))["a"] == "s1-a2"

            # 3. store-2 comes back online: everything settles
            s2.stop()
            s2.argv = EDGELINE + ["agent", "--config", str(tmp_path / "store-2-online.yaml")]
            await s2.start(http)
            gw_state = {"a": "s1-a2", "b": "cloud-b", "c": "cloud-c2", "d": "s2-d"}
            resolution = "use_cloud"
            if merge == "wasm":  # c shows the merge's answer: the length of its input
                await until("the merge at the gateway", lambda: _merged(key, gw_url))
                gw_state["c"] = (await key(gw_url, "c"))["value"]
                assert isinstance(gw_state["c"], int) and gw_state["c"] > 40
                resolution = "merged"
            await shows(gw_url, gw_state)
            await shows(url["store-1"], gw_state)
            await shows(url["store-2"], gw_state)

            # the conflict on c met at the gateway and at each store the same: both
            # versions, last write wins (the cloud's, written after store-2's), listed once
            for base in (gw_url, url["store-1"], url["store-2"]):
                k = await key(base, "c")
                assert [(v["writer"].split("~")[0], v["value"]) for v in k["versions"]] == \
                    [("store-2", "s2-c"), ("cloud", "cloud-c2")], k
                assert (k["conflict"], k["resolution"]) == ("concurrent_write", resolution), k
                rows = await conflicts(base)
                assert [(r["key"], r["type"], r["resolution"]) for r in rows] == \
                    [("c", "concurrent_write", resolution)], rows
            # the replicas agree on every key's versions and version vector
            for k in gw_state:
                want = await key(gw_url, k)
                for base in (url["store-1"], url["store-2"]):
                    got = await key(base, k)
                    assert (got["versions"], got["version"]) == (want["versions"], want["version"]), (base, k)

            # the CLI shows them
            out = cli("gateway", "conflicts", "inv", "--gateway", gw_url)
            assert "inv: 1 conflict(s) (concurrent_write 1)" in out and resolution in out, out
            out = cli("edge", "table", "inv", "c", "--agent", url["store-2"])
            assert out.startswith('c = %s\nconflict: concurrent_write, resolved %s\n' % (
                json.dumps(gw_state["c"]), resolution)), out
            out = json.loads(cli("edge", "conflicts", "--json", "--agent", url["store-2"]))
            assert [r["key"] for r in out["tables"][0]["conflicts"]] == ["c"]
            out = cli("edge", "table", "inv", "--agent", url["store-1"])
            assert 'a = "s1-a2"' in out and 'd = "s2-d"' in out, out

            # a gateway restart rebuilds the same table from its store
            gateway.kill()
            await gateway.start(http)
            assert await table(gw_url) == gw_state
    finally:
        for p in procs:
            if p.proc is not None:
                p.stop()


async def _merged(key, base):
    k = await key(base, "c")
    return len(k.get("versions", ())) == 2 and k.get("resolution") == "merged"
