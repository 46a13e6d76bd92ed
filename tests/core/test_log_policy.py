"""RingLog sync and full policies, retention and the device Store (both runtimes)."""
import os

from edgeline.errors import LogFull
from edgeline.log import RingLog
from edgeline.logformat import segment_name
from edgeline.outbox import Outbox
from edgeline.store import Store
from support import check_contiguous, fill, rmtree, tempdir, value_of


def test_sync_every_is_durable_on_return():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=1024, budget_bytes=1 << 20, sync="every")
    log.append(b"a", ts=1)
    assert log.durable_seq == 1
    assert os.stat(d + "/" + segment_name(1))[6] == 32 + 27
    log.close()
    rmtree(d)


def test_group_commit_by_count_and_time():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=4096, budget_bytes=1 << 20, sync="group", group_records=5, group_ms=100)
    for i in range(4):
        log.append(b"x", ts=i, now_ms=0)
    assert log.durable_seq == 0
    log.append(b"x", ts=5, now_ms=1)
    assert log.durable_seq == 5
    log.append(b"y", ts=6, now_ms=50)
    assert log.durable_seq == 5
    log.tick(120)
    assert log.durable_seq == 6
    log.append(b"z", ts=7, now_ms=130)
    log.append(b"z", ts=8, now_ms=230)  # 100 ms since the last commit
    assert log.durable_seq == 8
    log.close()
    rmtree(d)


def test_rotation_does_not_move_the_count_boundary():
    # A seal commits the old segment, but commits by count stay every group_records
    # appends: moved to "seal + group_records", a batch straddling the seal would miss
    # it and wait out group_ms (issue 9, hole 5: alternating 5 ms and 995 ms rounds).
    for many in (False, True):
        d = tempdir("log")
        log = RingLog(d, segment_bytes=300, budget_bytes=1 << 20, sync="group", group_records=10, group_ms=10 ** 9)
        sealed = 0
        for batch in range(12):
            if many:
                log.append_many([b"v%03d" % i for i in range(5)], ts=batch, now_ms=0)
            else:
                for i in range(5):
                    log.append(b"v%03d" % i, ts=batch, now_ms=0)
            if batch % 2:
                assert log.durable_seq == log.last_seq == 5 * (batch + 1), (many, batch, log.durable_seq)
            sealed = log.segment_count
        assert sealed > 3  # segments of 300 bytes: rotation in the middle of batches
        log.close()
        rmtree(d)


def test_sync_none_is_durable_only_at_flush():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=4096, budget_bytes=1 << 20, sync="none")
    for i in range(50):
        log.append(b"x", ts=i, now_ms=i * 1000)
    assert log.durable_seq == 0
    log.flush()
    assert log.durable_seq == 50
    log.close()
    rmtree(d)


def test_drop_oldest_counts_evicted():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=256, budget_bytes=1024, full_policy="drop_oldest")
    fill(log, 100)
    assert log.size_bytes <= 1024
    assert log.first_seq > 1
    assert log.evicted == log.first_seq - 1
    assert log.last_seq == 100
    check_contiguous(log, log.first_seq, 100)
    log.close()
    rmtree(d)


def test_evicting_everything_keeps_seq():
    # I2: the tail segment survives eviction and carries the next seq across reopen
    d = tempdir("log")
    log = RingLog(d, segment_bytes=256, budget_bytes=512, full_policy="drop_oldest")
    fill(log, 40)
    log.close()
    log = RingLog(d, segment_bytes=256, budget_bytes=512, full_policy="drop_oldest")
    assert log.last_seq == 40
    assert log.segment_count >= 1
    assert log.append(b"again", ts=1) == 41
    log.close()
    rmtree(d)


def test_reject_raises_log_full_and_loses_nothing():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=256, budget_bytes=768, full_policy="reject")
    n = 0
    try:
        while True:
            log.append(value_of(n + 1), ts=n)
            n += 1
    except LogFull as e:
        assert "reject" in str(e)
    assert n > 5 and log.last_seq == n and log.evicted == 0
    check_contiguous(log, 1, n)
    # an acknowledging consumer frees space
    ob = Outbox(log, "uplink")
    ob.ack(n)
    assert log.append(value_of(n + 1), ts=1) == n + 1
    assert log.reclaimed > 0
    log.close()
    rmtree(d)


def test_drop_newest_counts_dropped():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=256, budget_bytes=768, full_policy="drop_newest")
    results = [log.append(value_of(log.next_seq), ts=i) for i in range(100)]
    kept = [s for s in results if s]
    assert kept == list(range(1, len(kept) + 1))
    assert log.dropped == results.count(0) > 0
    assert log.evicted == 0
    check_contiguous(log, 1, len(kept))
    log.close()
    rmtree(d)


def test_reclaims_acknowledged_before_evicting():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=256, budget_bytes=1024, full_policy="drop_oldest")
    ob = Outbox(log, "uplink")
    fill(log, 100)
    evicted_before = log.evicted
    assert evicted_before > 0
    assert ob.gap() == (1, evicted_before)
    ob.ack(evicted_before)
    while True:
        r = ob.peek(20)
        if not r:
            break
        ob.ack(r[-1].seq)
    assert ob.acked == 100 and ob.gap() is None and ob.depth == 0
    # everything is acknowledged: making room now loses nothing
    fill(log, 8)
    assert log.evicted == evicted_before
    assert log.reclaimed > 0
    log.close()
    rmtree(d)


def test_retention_by_age():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=256, budget_bytes=1 << 20, retention_ms=1000)
    for i in range(60):
        log.append(value_of(i + 1), ts=(i * 100) << 16)  # one record per 100 ms
    n = log.apply_retention(now_ms=6000)
    assert n > 0
    first = log.first_seq
    assert log.expired == first - 1
    # every removed segment's records are older than the cutoff
    assert ((first - 2) * 100) < 5000 + 100
    check_contiguous(log, first, 60)
    assert log.apply_retention(now_ms=6000) == 0
    log.close()
    rmtree(d)


def test_store_budget_shared_by_priority():
    d = tempdir("store")
    st = Store(d, budget_bytes=2048)
    low = st.log("debug/trace", segment_bytes=256, budget_bytes=2048, full_policy="drop_oldest", priority=1)
    high = st.log("sales", segment_bytes=256, budget_bytes=2048, full_policy="reject", priority=9)
    fill(low, 60)
    assert st.size_bytes <= 2048
    low_first = low.first_seq
    n = 0
    try:
        for _ in range(200):
            high.append(value_of(high.next_seq), ts=1)
            n += 1
    except LogFull:
        pass
    assert n > 10
    assert st.size_bytes <= 2048
    # the low-priority drop_oldest log gave up its space, counted
    assert low.first_seq > low_first and low.evicted == low.first_seq - 1
    assert high.evicted == 0
    check_contiguous(high, 1, n)
    assert "%2F" in os.listdir(d)[0] or "%2F" in os.listdir(d)[1]
    st.close()
    rmtree(d)


def test_retention_ignores_an_empty_tail():
    # after a crash the tail can come back empty (no header, so no first_ts): the segment
    # before it must not expire on that account
    d = tempdir("ret")
    log = RingLog(d, segment_bytes=128, budget_bytes=4096, retention_ms=5)
    log.append(b"x" * 14, ts=1000 << 16)
    log.append(b"x" * 14, ts=1001 << 16)
    log.append(b"y" * 14, ts=1002 << 16)  # seals segment 1, begins segment 3
    log.close()
    tail = d + "/" + segment_name(3)
    f = open(tail, "wb")  # the tail's bytes never made it to disk
    f.close()
    log = RingLog(d, segment_bytes=128, budget_bytes=4096, retention_ms=5)
    assert (log.first_seq, log.last_seq) == (1, 2)
    assert log.apply_retention(1011) == 0 and log.expired == 0
    log.append(b"z", ts=1012 << 16)  # the tail gets its header and first_ts
    assert log.apply_retention(1020) == 1 and log.first_seq == 3
    log.close()
    rmtree(d)
