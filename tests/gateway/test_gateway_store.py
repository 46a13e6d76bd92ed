"""The gateway store: receiver rules W1-W3, group commit, durability across reopen."""
import random
import sqlite3

import pytest

from edgeline import sync
from edgeline_host.gateway.store import LEGACY, GatewayStore


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
    # the database fails on the group's second item (as a full disk would)
    store._db.execute("CREATE TEMP TRIGGER fail BEFORE INSERT ON chunks WHEN NEW.first = 1 AND NEW.stream <> 1 "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    bad = Batch("e1", "u", 1, entries(1, 1))
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([Batch("e1", "t", 3, entries(3, 2)), bad], 11)
    store._db.execute("DROP TRIGGER fail")
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


def test_replays_and_overlaps_store_each_seq_once(store):
    # every identity lies in at most one chunk: replays, overlaps and partial batches
    store.commit([Batch("e1", "t", 1, entries(1, 10))], 1)
    for first, n in [(1, 10), (5, 10), (3, 2), (11, 1), (12, 30), (1, 41)]:
        store.commit([Batch("e1", "t", first, entries(first, n, b"R"))], 2)
    chunks = store._db.execute("SELECT first, last FROM chunks ORDER BY first").fetchall()
    assert chunks == [(1, 10), (11, 14), (15, 41)]
    rows = store.records("t", "e1", limit=100)
    assert [r["seq"] for r in rows] == list(range(1, 42))
    assert [r["value"][:1] for r in rows] == [b"v"] * 10 + [b"R"] * 31
    assert store.status("e1")[0]["records"] == 41


def test_chunks_and_gaps_tile_the_mark(store):
    rnd = random.Random(11)
    seq = 1
    for _ in range(200):
        n = rnd.randint(1, 20)
        first = max(1, seq - rnd.randint(0, 25))  # often overlapping what is held
        if rnd.random() < 0.2:
            store.commit([Gap("e1", "t", first, first + n - 1, "evicted")], 1)
        else:
            store.commit([Batch("e1", "t", first, entries(first, n))], 1)
        seq = store.mark("e1", "t") + 1
    covered = store._db.execute("SELECT first, last FROM chunks UNION ALL SELECT first, last FROM gaps "
                                "ORDER BY first").fetchall()
    nxt = 1
    for first, last in covered:
        assert first == nxt and last >= first
        nxt = last + 1
    assert nxt == store.mark("e1", "t") + 1
    held = sum(last - first + 1 for first, last in store._db.execute("SELECT first, last FROM chunks"))
    assert held == store.status("e1")[0]["records"] == len(store.records("t", "e1", limit=10 ** 6))


def test_query_ranges_cross_chunk_boundaries(store):
    for first in range(1, 100, 7):
        store.commit([Batch("e1", "t", first, entries(first, 7))], 1)
    for lo, hi, limit in [(1, None, 1000), (5, 9, 1000), (7, 8, 1000), (8, 8, 1000), (50, None, 3), (99, 200, 10),
                          (106, None, 10), (1, 0, 10)]:
        want = list(range(lo, min(hi if hi is not None else 105, 105) + 1))[:limit]
        assert [r["seq"] for r in store.records("t", "e1", from_seq=lo, to_seq=hi, limit=limit)] == want, (lo, hi)
    r = store.records("t", "e1", from_seq=9, to_seq=9)[0]
    assert (r["ts"], r["key"], r["value"]) == (1009, b"k9", b"v9")


def test_a_version_1_file_is_migrated_in_place(tmp_path):
    p = str(tmp_path / "v1.db")
    db = sqlite3.connect(p, isolation_level=None)
    db.executescript(_V1_SCHEMA)
    db.execute("INSERT INTO streams (id, origin, topic, mark, records) VALUES (1, 'e1', 't', 2600, 2590)")
    db.execute("INSERT INTO streams (id, origin, topic, mark, records, lost) VALUES (2, 'e2', 't', 3, 3, 0)")
    db.execute("INSERT INTO gaps VALUES (1, 11, 20, 'evicted', 5)")
    rows = [(1, s, 100 + s, b"k" if s % 2 else None, b"v%d" % s, 7) for s in list(range(1, 11)) + list(range(21, 2601))]
    rows += [(2, s, 50, None, b"w%d" % s, 8) for s in (1, 2, 3)]
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.close()
    st = GatewayStore(p)
    got = st.records("t", "e1", limit=10 ** 6)
    assert [(r["seq"], r["ts"], r["key"], r["value"], r["stored_ms"]) for r in got] == \
        [(s, ts, k, v, sm) for _, s, ts, k, v, sm in rows if _ == 1]
    assert [r["value"] for r in st.records("t", "e2")] == [b"w1", b"w2", b"w3"]
    assert st.mark("e1", "t") == 2600 and st.gaps("e1")[0]["first"] == 11
    assert st._db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'records'").fetchone()[0] == 0
    assert st._db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert st.commit([Batch("e1", "t", 2601, entries(2601, 1))], 9) == [2601]
    st.close()


def test_a_newer_file_is_refused_untouched(tmp_path):
    from edgeline_host.gateway.store import StoreVersionError

    p = str(tmp_path / "v9.db")
    db = sqlite3.connect(p)
    db.execute("PRAGMA user_version = 9")
    db.close()
    with pytest.raises(StoreVersionError, match="schema version 9; this gateway knows up to 3"):
        GatewayStore(p)
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 9
    assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


_V1_SCHEMA = """
CREATE TABLE streams (id INTEGER PRIMARY KEY, origin TEXT NOT NULL, topic TEXT NOT NULL,
    mark INTEGER NOT NULL DEFAULT 0, records INTEGER NOT NULL DEFAULT 0, lost INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL DEFAULT 0, UNIQUE (origin, topic));
CREATE TABLE records (stream INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, key BLOB,
    value BLOB NOT NULL, stored_ms INTEGER NOT NULL, PRIMARY KEY (stream, seq)) WITHOUT ROWID;
CREATE TABLE gaps (stream INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, reason TEXT NOT NULL,
    reported_ms INTEGER NOT NULL, PRIMARY KEY (stream, first)) WITHOUT ROWID;
"""


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


def test_publishes_to_one_topic_in_one_group_are_stored_as_one_chunk(tmp_path):
    """Concurrent publishers (cloud table writes) share a commit: each gets its own marks,
    and a run of publishes to one topic costs one chunk (one statement), not one each --
    a run ends at another topic, a ts going back, or 10,000 records."""
    from edgeline.sync import CLOUD_ORIGIN
    from edgeline_host.gateway.store import Delivered, Publish

    p = str(tmp_path / "gw.db")
    st = GatewayStore(p)
    items = [(CLOUD_ORIGIN, Publish("t", [(100, b"a", b"1"), (101, b"b", b"2")])),
             (CLOUD_ORIGIN, Publish("t", [(102, None, b"3")])),
             (CLOUD_ORIGIN, Publish("t", [])),
             (CLOUD_ORIGIN, Publish("u", [(103, None, b"x")])),
             (CLOUD_ORIGIN, Publish("t", [(104, b"c", b"4")])),
             (CLOUD_ORIGIN, Publish("t", [(50, None, b"5")])),  # a ts back: a chunk of its own
             ("e1", Delivered("t", 1)),
             (CLOUD_ORIGIN, Publish("t", [(105, None, b"6")]))]
    assert st.commit(items, 10) == [2, 3, 3, 1, 4, 5, 1, 6]
    assert st._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 5
    st.close()
    st = GatewayStore(p)
    assert [(r.seq, r.ts, r.key, r.value) for r in st.pull("t", 0, 10)] == [
        (1, 100, b"a", b"1"), (2, 101, b"b", b"2"), (3, 102, None, b"3"), (4, 104, b"c", b"4"), (5, 50, None, b"5"),
        (6, 105, None, b"6")]
    assert [r[2:] for r in st.stream_records("u")] == [(1, 103, None, b"x")]
    big = [(CLOUD_ORIGIN, Publish("t", [(200 + i, None, b"v")] * 1)) for i in range(10001)]
    assert st.commit(big, 11)[-1] == 10007
    assert st._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 7
    assert st.published("t") == 10007 and len(list(st.stream_records("t"))) == 10007
    st.close()


# ------------------------------------------------------------------ incarnations (schema 3)

_GOLDEN_V2 = __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.dirname(
    __import__("os").path.abspath(__file__))), "golden", "gateway-store-v2", "edgeline-gateway.db")
NEW = "0123456789abcdef"


def test_golden_schema_2_store_is_migrated_to_legacy_incarnations(tmp_path):
    import shutil

    p = str(tmp_path / "gw.db")
    shutil.copy(_GOLDEN_V2, p)
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    st = GatewayStore(p)
    assert st._db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert st._db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'streams_v2'").fetchone()[0] == 0
    # every stream is the legacy incarnation; marks, records, gaps, publishes unchanged
    assert {(r["origin"], r["topic"], r["incarnation"], r["mark"], r["records"], r["lost"], r["current"])
            for r in st.status()} == {("edge-1", "telemetry", LEGACY, 10, 7, 3, True),
                                     ("edge-2", "telemetry", LEGACY, 3, 3, 0, True),
                                     ("cloud", "config", LEGACY, 2, 2, 0, True)}
    assert st.marks("edge-1") == {"telemetry": 10} == st.marks("edge-1", {"telemetry": LEGACY})
    rows = st.records("telemetry", "edge-1")
    assert [(r["seq"], r["value"]) for r in rows] == [(s, b"t%d" % s) for s in (1, 2, 3, 4, 5, 9, 10)]
    assert "incarnation" not in rows[0]  # one incarnation: records look as they did
    assert [(g["first"], g["last"], g["reason"]) for g in st.gaps("edge-1")] == [(6, 8, "evicted")]
    assert [r.value for r in st.pull("config", 0, 10)] == [b"\x0a", b"\x0b"] and st.published("config") == 2
    assert st.delivered("edge-1", "config")[0] == 2
    # a replay of what the legacy log already sent changes nothing
    assert st.commit([Batch("edge-1", "telemetry", 1, entries(1, 10))], 20) == [10]
    # a new incarnation of edge-1's telemetry starts at mark 0 and is stored
    assert st.marks("edge-1", {"telemetry": NEW}) == {}
    assert st.commit([Batch("edge-1", "telemetry", 1, entries(1, 3, b"n")) + (NEW,)], 21) == [3]
    st.close()
    st = GatewayStore(p)  # reopened: all of it durable
    assert st.marks("edge-1", {"telemetry": NEW}) == {"telemetry": 3} and st.mark("edge-1", "telemetry") == 10
    assert st.incarnations_of("edge-1", "telemetry") == [LEGACY, NEW]
    st.close()


def test_new_incarnation_is_a_new_stream_and_reported(store):
    store.commit([Batch("e1", "t", 1, entries(1, 5)), Gap("e1", "t", 6, 7, "evicted"),
                  Batch("e1", "t", 8, entries(8, 2))], 10)
    assert store.mark("e1", "t") == 9
    # the wiped log's seqs restart at 1 under its new incarnation: stored, not duplicates
    assert store.commit([Batch("e1", "t", 1, entries(1, 4, b"n")) + (NEW,)], 11) == [4]
    assert store.commit([Batch("e1", "t", 1, entries(1, 4, b"n")) + (NEW,)], 12) == [4]  # its replay is one
    assert store.mark("e1", "t") == 9 and store.mark("e1", "t", NEW) == 4
    rows = store.records("t", "e1")
    # default order: the incarnation first seen first, then the new one; each row says which
    assert [(r["incarnation"], r["seq"], r["value"]) for r in rows] == \
        [(LEGACY, s, b"v%d" % s) for s in (1, 2, 3, 4, 5, 8, 9)] + [(NEW, s, b"n%d" % s) for s in (1, 2, 3, 4)]
    assert [r["seq"] for r in store.records("t", "e1", incarnation=NEW, from_seq=2)] == [2, 3, 4]
    assert [(s["incarnation"], s["current"], s["mark"]) for s in store.status("e1")] == \
        [(LEGACY, False, 9), (NEW, True, 4)]
    assert store.gaps("e1")[0]["incarnation"] == LEGACY
    rep = store.incarnation_report()
    assert len(rep) == 1 and (rep[0]["origin"], rep[0]["topic"]) == ("e1", "t")
    old, new = rep[0]["incarnations"]
    assert (old["incarnation"], old["current"], old["last_seq_seen"], old["records"], old["lost"], old["gaps"],
            old["unknown_after"]) == (LEGACY, False, 9, 7, 2, [[6, 7, "evicted"]], 9)
    assert (new["incarnation"], new["current"], new["last_seq_seen"], new["unknown_after"]) == (NEW, True, 4, None)
    assert new["first_seen_ms"] == 11


def test_a_failed_commit_forgets_a_new_incarnation(store):
    store.commit([Batch("e1", "t", 1, entries(1, 2))], 10)
    bad = ("cloud", sync.Batch("t", 1, 0, []))
    with pytest.raises(ValueError):
        store.commit([Batch("e1", "t", 1, entries(1, 2)) + (NEW,), bad], 11)
    assert store.incarnations_of("e1", "t") == [LEGACY] and store.incarnation_report() == []
    assert store.commit([Batch("e1", "t", 1, entries(1, 2)) + (NEW,)], 12) == [2]
