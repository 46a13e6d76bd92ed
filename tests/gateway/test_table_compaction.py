"""Compaction of a table topic's cloud stream at the gateway (docs/spec/tables.md,
"Compaction of a table's cloud stream"; docs/spec/wire.md, "Compacted DATA"): an edge
that pulls once after many writes ends with the state of one that pulled after each, and
receives only the live records."""
import asyncio
import os
import random
import shutil
import tempfile

import aiohttp
import cbor2
import pytest
from aiohttp.test_utils import TestServer

from edgeline import codec, sync
from edgeline import table as T
from edgeline.inbox import PLACEHOLDER, append_data
from edgeline.log import Record, RingLog
from edgeline_host import tables
from edgeline_host.gateway import compaction
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway
from edgeline_host.gateway.topics import parse_topics
from edgeline_host.transports.http import HttpEdgeClient

KEY = bytes(range(32))
KEYS = {"edge-1": KEY, "edge-2": KEY[::-1], "edge-3": KEY[1:] + KEY[:1], "edge-4": KEY[2:] + KEY[:2]}
INC = bytes.fromhex("00000000000000a1")
W1 = "edge-1~" + INC.hex()


def topics(**settings):
    s = {"direction": "bidirectional", "kind": "table"}
    s.update(settings)
    return parse_topics({"inv": s}, KEYS, "topics.yaml")


class Edge:
    """An edge's downlink half: its log of the topic's cloud records and a table replica
    fed from it, as the agent keeps them (agent/service.py ``_feed_table``)."""

    def __init__(self, http, server, node, settings, where, compacted=True, max_records=100, gw=None):
        self.client = HttpEdgeClient(http, str(server.make_url("/v1/sync")), node, KEYS[node])
        self.log = RingLog(os.path.join(where, node), segment_bytes=1 << 16, budget_bytes=1 << 26, sync="none")
        self.rep = tables.Replica("inv", settings)
        self.caps = {"pull": True, compaction.CAPABILITY: True} if compacted else {"pull": True}
        self.max_records = max_records
        self.gw = gw  # given: after every DATA, the state equals the whole stream's up to there (K2)
        self.bytes = 0  # DATA bytes received (as encoded)
        self.records = 0  # DATA entries received
        self.connected = False

    async def pull_all(self):
        if not self.connected:
            await self.client.connect({"inv": INC}, capabilities=self.caps)
            self.connected = True
        while True:
            (data,) = await self.client.exchange(sync.Pull("inv", self.log.last_seq, self.max_records))
            assert type(data) is sync.Data, data
            if not data.entries:
                return
            self.bytes += len(codec.dumps([9, data.topic, data.first_seq, data.base_ts, data.entries]))
            self.records += len(data.entries)
            before = self.log.last_seq
            n = append_data(self.log, data)
            for r in self.log.read(before + 1, n, 1 << 26):
                self.rep.apply_record(T.CLOUD, r.seq, r.ts, r.key, r.value)
            if self.gw is not None:
                ref = tables.Replica("inv", self.rep.settings)
                for r in self.gw.store.pull("inv", 0, self.log.last_seq):
                    ref.apply_record(T.CLOUD, r.seq, r.ts, r.key, r.value)
                assert self.state() == _state(ref), "after a DATA ending at seq %d" % self.log.last_seq

    def state(self):
        return _state(self.rep)


def _state(rep):
    # every key's view, its context (the vv a next write carries), its siblings; per
    # field for set and map
    t = rep.table
    out = []
    for k in t.keys():
        v = t.view(k)
        v = sorted(v.items()) if isinstance(v, dict) else repr(v)
        if t.kind == T.COUNTER:
            out.append((k, v))
            continue
        fields = t.fields(k) or [None]
        out.append((k, v, [(f, t.context(k, f), sorted(repr(s) for s in t.siblings(k, f))) for f in fields]))
    return out


async def _with(tmp_path, tops, fn):
    gw = Gateway(str(tmp_path / "gw.db"), KEYS, topics=tops)
    server = TestServer(GatewayApi(gw).app())
    await server.start_server()
    await gw.start()
    where = tempfile.mkdtemp(dir=str(tmp_path))
    try:
        async with aiohttp.ClientSession() as http:
            return await fn(gw, http, server, where)
    finally:
        await server.close()
        await gw.close()
        shutil.rmtree(where, ignore_errors=True)


async def _settle(gw):
    for _ in range(500):
        if not gw._relay_pending:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("relays pending")


def _body(kind, rnd):
    if kind == "counter":
        return {"add": rnd.randint(-3, 5)}
    if kind in ("set", "map"):
        f = rnd.choice(["a", "b", "c"])
        if kind == "set":
            return {"add": [f]} if rnd.random() < 0.7 else {"remove": [f]}
        return {"put": {f: rnd.randint(0, 9)}} if rnd.random() < 0.7 else {"delete": [f]}
    return rnd.randint(0, 99)


CASES = [("register", "last_write_wins"), ("register", "keep_both"), ("register", "first_write_wins"),
         ("counter", None), ("set", None), ("map", None)]


@pytest.mark.parametrize("kind, strategy", CASES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_edge_that_pulls_once_ends_like_one_that_pulled_after_every_write(tmp_path, kind, strategy, seed):
    """Random cloud writes and deletes, and edge writes (relayed; some concurrent with
    the cloud's, from a stale context), on a few keys; edge-2 pulls compacted DATA after
    every step, edge-3 once at the end (compacted, a few records per DATA), edge-1 (the
    writer) plain DATA once at the end. All four replicas show the same state and
    version vectors; edge-3 received fewer records, and its log holds every seq (no gap:
    placeholders for the seqs left out)."""
    settings = {"type": kind}
    if strategy:
        settings["conflict_resolution"] = strategy

    async def fn(gw, http, server, where):
        rnd = random.Random(seed)
        rep = gw.tables["inv"]
        s = rep.settings
        eager = Edge(http, server, "edge-2", s, where)
        lazy = Edge(http, server, "edge-3", s, where, max_records=7, gw=gw)  # pages: each a true state
        once = Edge(http, server, "edge-4", s, where, max_records=1000)  # the rest fits one DATA
        plain = Edge(http, server, "edge-1", s, where, compacted=False)
        writer = HttpEdgeClient(http, str(server.make_url("/v1/sync")), "edge-1", KEYS["edge-1"])
        await writer.connect({"inv": INC})
        mine = plain.rep  # edge-1's replica: its own writes and what it pulled (the agent's)
        seq = 0
        for step in range(120):
            key = rnd.choice(["k1", "k2", "k3", "k4"])
            delete = kind == "register" and rnd.random() < 0.15
            if rnd.random() < 0.6:
                await gw.table_write("inv", [(key, None if delete else _body(kind, rnd), delete)])
            else:
                if rnd.random() < 0.5:  # edge-1 catches up first; else its context may be stale
                    await plain.pull_all()
                value = mine.form_write(key, W1, None if delete else _body(kind, rnd), delete)
                seq += 1
                rec = Record(seq, 1000 + step, key.encode(), value)
                (ack,) = await writer.exchange(sync.batch_from_records("inv", [rec]))
                assert ack.seq == seq
                mine.apply_record(W1, seq, 1000 + step, key.encode(), value)
                await _settle(gw)
            if rnd.random() < 0.5:
                await eager.pull_all()
        await _settle(gw)
        for e in (eager, lazy, plain, once):
            await e.pull_all()
        want = _state(rep)
        assert eager.state() == want
        assert lazy.state() == want
        assert once.state() == want
        assert plain.state() == want
        published = gw.store.published("inv")
        assert lazy.log.last_seq == published and eager.log.last_seq == published
        assert plain.records == published  # no capability: every record
        assert once.records < published and lazy.records <= published
        assert lazy.rep.malformed == eager.rep.malformed == 0  # placeholders are not malformed records
        # every seq is in the log: a record or a placeholder, never a hole
        seen = [r.seq for r in lazy.log.read(1, published + 1, 1 << 26)]
        assert seen == list(range(1, published + 1))
        placeholders = sum(1 for r in lazy.log.read(1, published + 1, 1 << 26) if r.value == PLACEHOLDER)
        assert placeholders == published - lazy.records
        for e in (eager, lazy, plain, once):
            e.log.close()
        return published, lazy.records

    published, sent = asyncio.run(_with(tmp_path, topics(**settings), fn))
    assert sent <= published


def test_a_catch_up_sends_only_the_live_record_of_each_key_and_a_restart_serves_the_same(tmp_path):
    """1,000 writes to 10 keys while an edge is away: it receives one record per key
    (the stream's last one included), with the seqs between left out; after a restart of
    the gateway (the replica rebuilt from the store) a second edge receives the same."""
    async def fn(gw, http, server, where):
        for i in range(100):
            await gw.table_write("inv", [("k%d" % j, i * 10 + j, False) for j in range(10)])
        e = Edge(http, server, "edge-2", gw.tables["inv"].settings, where, max_records=1000)
        await e.pull_all()
        assert e.records == 10 and e.log.last_seq == 1000
        assert sorted(e.rep.table.items()) == [("k%d" % j, 990 + j) for j in range(10)]
        async with http.get(server.make_url("/healthz")) as r:
            assert (await r.json())["table_seqs_left_out"] == 990
        e.log.close()
        return e.bytes

    first = asyncio.run(_with(tmp_path, topics(), fn))

    async def again(gw, http, server, where):
        e = Edge(http, server, "edge-3", gw.tables["inv"].settings, where, max_records=1000)
        await e.pull_all()
        assert e.records == 10 and e.log.last_seq == 1000
        e.log.close()
        return e.bytes

    assert asyncio.run(_with(tmp_path, topics(), again)) == first


def _put(ctx, value):
    return codec.dumps(T.write_value(T.OP_PUT, ctx, value))


def test_the_horizon_and_the_end_of_the_stream():
    """Compactor.plan: seqs above the horizon (committed, not yet fed) are always sent;
    a DATA always ends in a record (the last one at or below the horizon when the seqs up
    to it were left out); at most n. A relay is live by its own dot."""
    c = compaction.Compactor(tables.TableSettings())
    c.feed(1, 10, b"z", _put((), 0))
    c.feed(2, 10, b"a", _put(("cloud", 1), 1))  # cloud writes: each supersedes the cloud's earlier ones (C1)
    c.feed(3, 10, b"b", _put((), 3))
    c.feed(4, 10, b"a", _put((), 2))
    c.feed(5, 10, b"z", _put((), 5))
    c.feed(6, 10, b"z", _put((), 6))
    assert c.live() == [3, 4, 6]
    assert c.plan(0, 6, 10) == [(3, 2), (4, 0), (6, 1)]
    assert c.plan(0, 6, 1) == [(3, 2)]
    assert c.plan(4, 6, 10) == [(6, 1)]
    assert c.plan(6, 6, 10) == []
    assert c.plan(0, 9, 10) == [(3, 2), (4, 0), (6, 1), (7, 0), (8, 0), (9, 0)]  # 7..9 not fed yet
    c.feed(8, 10, b"z", _put((), 8))
    c.feed(9, 10, b"z", _put((), 9))  # out of order: the horizon waits for 7
    assert c.horizon == 6 and c.plan(0, 9, 10) == [(3, 2), (4, 0), (6, 1), (7, 0), (8, 0), (9, 0)]
    c.feed(7, 10, b"c", tables.relay_value(W1, 5, 10, _put((), 7)))  # a relay of edge-1's write 5
    assert c.horizon == 9
    assert c.live() == [3, 4, 7, 9]
    assert c.plan(0, 9, 10) == [(3, 2), (4, 0), (7, 2), (9, 1)]
    # the edge's next write to c supersedes the relayed one; its own relay comes later
    c.feed(10, 10, b"c", tables.relay_value(W1, 6, 10, _put((), 8)))
    assert c.live() == [3, 4, 9, 10] and sorted(c._at) == [("cloud", 3), ("cloud", 4), ("cloud", 9), (W1, 6)]
    # with no PULL at all, what it remembers stays bounded by the live dots
    for seq in range(11, 20011):
        c.feed(seq, 10, b"k%d" % (seq % 10), _put((), seq))
    assert len(c._at) < 9000 and c.live()[-10:] == list(range(20001, 20011))


GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "table-v1", "data-compacted.cbor")


def test_the_compacted_data_golden_file(tmp_path):
    """wire.md, "Compacted DATA": the golden bytes are the spec's hex, read field by field
    by cbor2, written by the gateway's encoder (compaction.data_of through a gateway
    connection) and stored by the edge's reader under seqs 3 and 9, placeholders
    between."""
    with open(GOLDEN, "rb") as f:
        raw = f.read()
    assert raw.hex() == "850963696e76011903e8828400416141010284054162410205"
    assert cbor2.loads(raw) == [9, "inv", 1, 1000, [[0, b"a", b"\x01", 2], [5, b"b", b"\x02", 5]]]
    data = compaction.data_of("inv", [Record(3, 1000, b"a", b"\x01"), Record(9, 1005, b"b", b"\x02")], [2, 5])
    gw = sync.GatewayConnection(lambda node: KEY, os.urandom)
    gw.state = "READY"  # the handshake is test_sync's; only the DATA's bytes are checked here
    assert gw.send(data) == raw
    edge = sync.EdgeConnection("edge-1", KEY, os.urandom)
    edge.state = "READY"
    edge.receive_data(raw)
    got = edge.next_event()
    assert type(got) is sync.Data and got.entries == data.entries
    lg = RingLog(str(tmp_path / "inv"), segment_bytes=4096, budget_bytes=1 << 16, sync="none")
    assert append_data(lg, got) == 9
    assert [(r.seq, r.ts, r.key, r.value) for r in lg.read(1, 20) if r.value != PLACEHOLDER] == \
        [(3, 1000, b"a", b"\x01"), (9, 1005, b"b", b"\x02")]
    lg.close()


def test_an_agent_catches_up_through_compacted_data_and_rebuilds_the_same_table(tmp_path):
    """End to end in one process: a gateway with 300 cloud writes to 5 keys, an agent
    (its uplink and downlink over HTTP) that was away pulls the topic: it receives the
    5 live records, its log holds every seq (placeholders between), its table is the
    gateway's, nothing is counted malformed or lost; restarted, it rebuilds the same
    table from its logs."""
    from edgeline_host.agent.config import parse_config
    from edgeline_host.agent.service import Agent

    key_hex = "11" * 32
    keys = {"store-1": bytes.fromhex(key_hex)}
    gw = Gateway(str(tmp_path / "gw.db"), keys, topics=parse_topics(
        {"inv": {"direction": "bidirectional", "kind": "table"}}, keys, "topics.yaml"))

    def agent_config(url):
        t = {"topic": "inv", "direction": "bidirectional", "sync": "every", "kind": "table"}
        return parse_config({"edge": {"node_id": "store-1", "data_dir": "data", "key": key_hex, "cloud_endpoint": url,
                                      "sync_topics": [t], "ingest": {"http": {"listen": "127.0.0.1:0"}}}},
                            base_dir=str(tmp_path))

    async def main():
        server = TestServer(GatewayApi(gw).app())
        await server.start_server()
        await gw.start()
        url = str(server.make_url("/v1/sync"))
        try:
            for i in range(30):
                await gw.table_write("inv", [("k%d" % (j % 5), i * 10 + j, False) for j in range(10)])
            want = gw.tables["inv"].state_json()["keys"]
            agent = Agent(agent_config(url), print_fn=lambda *_: None)
            try:
                up = agent.uplink
                await up.transport.start()
                try:
                    await up._connect()
                    rounds = 0
                    while up.downlink.due():
                        await up._pull_round()
                        rounds += 1
                        assert rounds < 50
                finally:
                    await up.transport.close()
                rep = agent.tables["inv"]
                down = agent.topics["inv"].down
                recs = down.read(1, 1000, 1 << 20)
                got = (rep.state_json()["keys"], rep.malformed, down.last_seq, [r.seq for r in recs],
                       [r.seq for r in recs if r.value != PLACEHOLDER])
                # the read API shows records, not the placeholders, and pages past them
                api = TestServer(agent.app())
                await api.start_server()
                try:
                    async with aiohttp.ClientSession() as http:
                        async with http.get(api.make_url("/v1/topics/inv/records?limit=1000")) as r:
                            body = await r.json()
                finally:
                    await api.close()
                got += ([rec["seq"] for rec in body["records"]], body["next_after"])
            finally:
                agent.close()
            agent = Agent(agent_config(url), print_fn=lambda *_: None)
            try:
                again = (agent.tables["inv"].state_json()["keys"], agent.tables["inv"].malformed)
            finally:
                agent.close()
            return want, got, again, gw.store.gaps()
        finally:
            await server.close()
            await gw.close()

    want, (state, malformed, last, seqs, live, shown, next_after), again, gaps = asyncio.run(main())
    assert shown == live and next_after == 300
    assert state == want and malformed == 0
    assert last == 300 and seqs == list(range(1, 301))
    assert live == [296, 297, 298, 299, 300]  # the last write of each key
    assert again == (want, 0)
    assert gaps == []


# -- K2 as a property: the live records alone give the state of the whole stream ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

WRITERS = ("cloud", "e1", "e2")


def _apply(table, rec):
    w, seq, ts, key, ctx, value, field = rec
    if table.kind == T.COUNTER:
        return table.apply(key, w, seq, ts, ctx, value)
    return table.apply(key, w, seq, ts, ctx, value, field)


def _value(kind, rec):
    # the record value of a write, as its writer stores it
    _w, _seq, _ts, _key, ctx, value, field = rec
    if kind == T.COUNTER:
        return codec.dumps(T.write_value(T.OP_COUNT, (), value))
    if field is not None:
        op = T.OP_DELETE if value is T.TOMBSTONE else T.OP_PUT
        return codec.dumps(T.field_value([(field, op, ctx, None if value is T.TOMBSTONE else value)]))
    if value is T.TOMBSTONE:
        return codec.dumps(T.write_value(T.OP_DELETE, ctx))
    return codec.dumps(T.write_value(T.OP_PUT, ctx, value))


def _snapshot(table):
    out = []
    for k in table.keys():
        v = table.view(k)
        v = sorted(v.items()) if isinstance(v, dict) else repr(v)
        if table.kind == T.COUNTER:
            out.append((k, v))
            continue
        fields = table.fields(k) or [None]
        out.append((k, v, [(f, table.context(k, f), sorted(repr(s) for s in table.siblings(k, f))) for f in fields]))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=hs.sampled_from([T.REGISTER, T.SET, T.COUNTER]),
       ops=hs.lists(hs.tuples(hs.sampled_from(WRITERS), hs.sampled_from(["a", "b", "c"]), hs.integers(0, 9),
                              hs.booleans(), hs.integers(0, 3)), min_size=4, max_size=60),
       cut=hs.integers(0, 1000))
def test_the_live_records_give_the_state_of_the_whole_stream(kind, ops, cut):
    """Writers (the cloud, two edges) write from their own replicas, which catch up with
    the stream now and then (else their contexts are stale: concurrent writes, siblings);
    the edges' writes are relayed into the stream later, in batches (a write superseded
    only by one still waiting is not left out). An edge that applied the stream up to any
    point, then only the live records after it (as a compacted DATA gives them), ends
    like one that applied every record."""
    settings = tables.TableSettings(kind)
    comp = compaction.Compactor(settings)
    stream = []  # the cloud stream: records in cloud seq order (seq = index + 1)
    pending = []  # edge writes applied at the gateway, not yet relayed
    own = {w: T.Table(kind) for w in WRITERS}  # each writer's replica
    seen = {w: 0 for w in WRITERS}  # how much of the stream each writer's replica applied
    seqs = {w: 0 for w in WRITERS}
    totals = {}

    def publish(rec):
        stream.append(rec)
        w, seq, ts, key, _ctx, _v, _f = rec
        value = _value(kind, rec)
        if w != "cloud":
            value = tables.relay_value(w, seq, ts, value)
        comp.feed(len(stream), ts, key.encode(), value)

    for n, (w, key, v, delete, sync_now) in enumerate(ops):
        if sync_now == 0:  # the writer catches up with the stream
            for rec in stream[seen[w]:]:
                _apply(own[w], rec)
            seen[w] = len(stream)
        field = None
        if kind == T.COUNTER:
            total = totals.get((w, key), 0) + v - 4
            totals[(w, key)] = total
            value, ctx = total, ()
        elif kind == T.SET:
            field = "x%d" % (v % 3)
            value = T.TOMBSTONE if delete else True
            ctx = own[w].context(key, field)
        else:
            value = T.TOMBSTONE if delete else v
            ctx = own[w].context(key)
        seqs[w] = len(stream) + 1 if w == "cloud" else seqs[w] + 1
        rec = (w, seqs[w], 1000 + n, key, ctx, value, field)
        _apply(own[w], rec)
        if w == "cloud":
            publish(rec)
        else:
            pending.append(rec)
        if sync_now == 1 and pending:  # the relay task runs
            for r in pending:
                publish(r)
            del pending[:]
        if n == cut % len(ops):
            comp.live()  # a compacted PULL in between: the live set is kept and pruned
    full = T.Table(kind)
    for rec in stream:
        _apply(full, rec)
    lazy = T.Table(kind)
    p = cut % (len(stream) + 1)  # where the edge's log was
    for rec in stream[:p]:
        _apply(lazy, rec)
    plan = comp.plan(p, len(stream), 1 << 30)
    sent = [s for s, _k in plan]
    assert sent == sorted(set(sent)) and all(s > p for s in sent)
    assert sum(k for _s, k in plan) + len(plan) == len(stream) - p  # every seq after p: sent or left out
    for s in sent:
        _apply(lazy, stream[s - 1])
    assert _snapshot(lazy) == _snapshot(full)
    assert comp.replica.malformed == 0
