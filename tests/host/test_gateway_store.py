"""The gateway store: receiver rules W1-W3, group commit, durability across reopen."""
import random
import sqlite3

import pytest

from edgeline import sync
from edgeline_host.gateway.store import GatewayStore


def Batch(origin, topic, first, ents):
    # a BATCH event of the sync protocol, with its origin
    return (origin, sync.Batch(topic, first, 1000, [[e[0] - 1000, e[1], e[2]] for e in ents]))


def Gap(origin, topic, first, last, reason):
    return (origin, sync.Gap(topic, first, last, reason))


def entries(first, n, tag=b"v"):
    return [(1000 + s, None if s % 3 else b"k%d" % s, tag + b"%d" % s) for s in range(first, first + n)]


@pytest.fixture
def store(tmp_path):
    st = GatewayStore(str(tmp_path / "gw.db"))
    yield st
    st.close()


def test_in_order_batches_move_the_mark(store):
    assert store.commit([Batch("e1", "t", 1, entries(1, 5))], 10) == [5]
    assert store.commit([Batch("e1", "t", 6, entries(6, 3))], 11) == [8]
    rows = store.records("t", "e1")
    assert [r["seq"] for r in rows] == list(range(1, 9))
    assert rows[2]["key"] == b"k3" and rows[0]["key"] is None and rows[4]["value"] == b"v5"
    assert store.marks("e1") == {"t": 8}


def test_duplicates_and_overlaps_store_nothing_twice(store):
    store.commit([Batch("e1", "t", 1, entries(1, 5))], 10)
    # a replay, and an overlapping batch whose stored part differs: the first copy wins
    assert store.commit([Batch("e1", "t", 1, entries(1, 5, b"X"))], 11) == [5]
    assert store.commit([Batch("e1", "t", 3, entries(3, 5, b"Y"))], 12) == [7]
    rows = store.records("t", "e1")
    assert [r["seq"] for r in rows] == list(range(1, 8))
    assert [r["value"][:1] for r in rows] == [b"v"] * 5 + [b"Y"] * 2
    assert rows[0]["ts"] == 1001
    assert store.status("e1")[0]["records"] == 7


def test_a_batch_beyond_the_mark_is_refused(store):
    store.commit([Batch("e1", "t", 1, entries(1, 5))], 10)
    assert store.commit([Batch("e1", "t", 7, entries(7, 2))], 11) == [5]
    assert [r["seq"] for r in store.records("t", "e1")] == [1, 2, 3, 4, 5]


def test_gaps_cover_lost_seqs(store):
    assert store.commit([Gap("e1", "t", 1, 40, "evicted")], 10) == [40]
    assert store.commit([Batch("e1", "t", 41, entries(41, 2))], 11) == [42]
    assert store.commit([Gap("e1", "t", 30, 42, "evicted")], 12) == [42]  # duplicate
    assert store.commit([Gap("e1", "t", 50, 60, "expired")], 13) == [42]  # beyond: refused
    assert store.commit([Gap("e1", "t", 40, 45, "corrupt")], 14) == [45]  # overlapping
    g = store.gaps("e1", "t")
    assert [(x["first"], x["last"], x["reason"]) for x in g] == [(1, 40, "evicted"), (43, 45, "corrupt")]
    assert store.status("e1")[0]["lost"] == 43


def test_streams_are_independent(store):
    out = store.commit(
        [Batch("e1", "t", 1, entries(1, 2)), Batch("e2", "t", 1, entries(1, 3)), Batch("e1", "u", 1, entries(1, 1))],
        10,
    )
    assert out == [2, 3, 1]
    assert store.marks("e1") == {"t": 2, "u": 1}
    assert [(r["origin"], r["seq"]) for r in store.records("t")] == [("e1", 1), ("e1", 2), ("e2", 1), ("e2", 2), ("e2", 3)]
    assert [r["seq"] for r in store.records("t", "e2", from_seq=2, to_seq=2)] == [2]


def test_marks_and_records_survive_reopen(tmp_path):
    p = str(tmp_path / "gw.db")
    st = GatewayStore(p)
    st.commit([Batch("e1", "t", 1, entries(1, 4)), Gap("e2", "t", 1, 9, "evicted")], 10)
    st.close()
    st = GatewayStore(p)
    assert st.mark("e1", "t") == 4 and st.mark("e2", "t") == 9 and st.mark("e3", "t") == 0
    assert st.commit([Batch("e1", "t", 3, entries(3, 3))], 11) == [5]
    st.close()


def test_a_failed_group_stores_nothing_and_keeps_marks(store):
    store.commit([Batch("e1", "t", 1, entries(1, 2))], 10)
    bad = Batch("e1", "u", 1, [(1, None, None)])  # NULL value violates the schema
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([Batch("e1", "t", 3, entries(3, 2)), bad], 11)
    assert store.mark("e1", "t") == 2 and store.mark("e1", "u") == 0
    assert [r["seq"] for r in store.records("t", "e1")] == [1, 2]
    assert store.commit([Batch("e1", "t", 3, entries(3, 2))], 12) == [4]


def test_random_deliveries_match_the_model(store):
    # batches and gaps delivered duplicated, reordered and dropped: the store holds each
    # seq exactly once, in order, and the mark is the contiguous prefix delivered
    rnd = random.Random(5)
    truth = {}
    sends = []
    seq = 1
    while seq < 300:
        n = rnd.randint(1, 12)
        if rnd.random() < 0.15:
            sends.append(Gap("e1", "t", seq, seq + n - 1, "evicted"))
        else:
            sends.append(Batch("e1", "t", seq, entries(seq, n)))
            for s in range(seq, seq + n):
                truth[s] = b"v%d" % s
        seq += n
    mark = 0
    for _ in range(2000):
        it = sends[min(len(sends) - 1, int(rnd.expovariate(0.3)) + _next_index(sends, mark))]
        mark = store.commit([it], 1)[0]
        if mark >= seq - 1:
            break
    assert mark == seq - 1
    rows = store.records("t", "e1", limit=10000)
    assert [r["seq"] for r in rows] == sorted(truth)
    assert all(r["value"] == truth[r["seq"]] for r in rows)


def _next_index(sends, mark):
    for i, (_origin, ev) in enumerate(sends):
        first = ev.first_seq if isinstance(ev, sync.Batch) else ev.first
        if first > mark:
            return max(0, i - 2)
    return len(sends) - 1


def test_publish_numbers_records_and_pull_reads_them_back(tmp_path):
    from edgeline.sync import CLOUD_ORIGIN
    from edgeline_host.gateway.store import Delivered, Publish

    p = str(tmp_path / "gw.db")
    st = GatewayStore(p)
    pub = [(CLOUD_ORIGIN, Publish("cmd", [(7000 + i, b"k" if i % 2 else None, b"c%d" % i) for i in range(5)]))]
    # a publish and an edge's batch of the same topic in one group: separate streams
    assert st.commit(pub + [Batch("e1", "cmd", 1, entries(1, 2))], 10) == [5, 2]
    assert st.commit([(CLOUD_ORIGIN, Publish("cmd", [(8000, None, b"last")]))], 11) == [6]
    assert st.published("cmd") == 6 and st.published("other") == 0
    got = st.pull("cmd", 2, 3)
    assert [(r.seq, r.ts, r.key, r.value) for r in got] == [(3, 7002, None, b"c2"), (4, 7003, b"k", b"c3"),
                                                           (5, 7004, None, b"c4")]
    assert [r.seq for r in st.pull("cmd", 0, 100)] == [1, 2, 3, 4, 5, 6]
    assert st.pull("cmd", 6, 10) == [] and st.pull("cmd", 9, 10) == [] and st.pull("nope", 0, 10) == []
    assert st.delivered("e1", "cmd") is None
    assert st.commit([("e1", Delivered("cmd", 4)), ("e2", Delivered("cmd", 6))], 12) == [4, 6]
    assert st.last_published_ts() == 8000
    # only the gateway publishes, and the gateway sends no batches: a programming error
    with pytest.raises(ValueError):
        st.commit([("e1", Publish("cmd", [(1, None, b"x")]))], 13)
    with pytest.raises(ValueError):
        st.commit([Batch("e1", "new-topic", 1, entries(1, 1)), Batch(CLOUD_ORIGIN, "cmd", 7, entries(7, 1))], 13)
    # that failed group left nothing behind, not even the stream it had begun
    assert st.mark("e1", "new-topic") == 0 and st.commit([Batch("e1", "new-topic", 1, entries(1, 1))], 14) == [1]
    st.close()
    st = GatewayStore(p)  # all of it is durable
    assert st.published("cmd") == 6 and st.delivered("e1", "cmd") == (4, 12) and st.delivered("e2", "cmd") == (6, 12)
    assert [r.value for r in st.pull("cmd", 5, 10)] == [b"last"] and st.last_published_ts() == 8000
    assert [r["seq"] for r in st.records("new-topic", "e1")] == [1]
    st.close()
