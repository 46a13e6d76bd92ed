"""Seqs past 2**30, 2**31, 2**32 and 2**54: the log, its files and its outboxes stay right.

On a 32-bit board a seq past 2**30 - 1 is a heap object; the log keeps seqs on its
append path as small offsets from a per-segment base (docs/design-alloc-free-32bit.md,
fix 3). These tests run on CPython, the unix port and the 32-bit lane alike; the
allocation side is tests/mp/test_heap_lock.py's. A log reaches such seqs cheaply: a
directory whose only segment is an empty one named (and headed) by the seq opens with
that seq next, as a log whose last segment was just begun there does.
"""
import os

from edgeline.log import RingLog
from edgeline.logformat import SEGMENT_HEADER_BYTES, encode_frame, pack_segment_header, segment_name
from edgeline.outbox import Outbox
from support import rmtree, tempdir, value_of

STARTS = (2 ** 30 - 5, 2 ** 31 - 5, 2 ** 32 - 5, 2 ** 54 - 5)


def _open_at(d, start, **opts):
    # An empty tail segment named and headed by start: recovery resets it and goes on there.
    f = open(d + "/" + segment_name(start), "wb")
    f.write(pack_segment_header(start, 0, opts.get("segment_bytes", 65536)))
    f.close()
    log = RingLog(d, **opts)
    assert log.next_seq == start and log.last_seq == start - 1 == log.durable_seq
    return log


def _ops(log, base):
    # The same appends on any log (the same values: their sizes decide the rotations);
    # what they return, as offsets from base.
    out = []
    for i in range(12):
        key = b"k%d" % i if i % 3 == 0 else None
        r = log.append(value_of(i + 1), (1000 + i) << 16, key, None, i % 2 == 0)
        out.append(r - base if i % 2 == 0 else r)
        out.append(log.durable_seq - base)
    out.append(log.append_many([value_of(13 + j) for j in range(9)], ts=77 << 16) - base)
    out.append(log.durable_seq - base)
    log.flush()
    out.append(log.last_seq - base)
    out.append(log.segment_count)
    return out


def test_big_seqs_behave_as_small_ones():
    # Appends (seq returned or not), group commits and rotations at a big start do what
    # they do at seq 1: the same results offset by the start, the same segments.
    opts = {"segment_bytes": 400, "budget_bytes": 1 << 20, "sync": "group", "group_records": 4}
    d = tempdir("small")
    log = RingLog(d, **opts)
    want = _ops(log, 1)
    log.close()
    rmtree(d)
    assert want[-1] > 2  # segments rotated
    for start in STARTS:
        d = tempdir("big")
        log = _open_at(d, start, **opts)
        assert _ops(log, start) == want, start
        log.close()
        rmtree(d)


def test_big_seqs_on_disk_and_read_back():
    for start in STARTS:
        d = tempdir("bigdisk")
        log = _open_at(d, start, segment_bytes=320, budget_bytes=1 << 20, sync="none")
        for i in range(20):
            log.append(value_of(start + i), ts=i, key=b"key" if i % 4 == 0 else None, seq=False)
        log.close()
        log = RingLog(d, segment_bytes=320, budget_bytes=1 << 20)
        assert log.last_seq == start + 19 and log.first_seq == start
        seq = start
        while seq <= start + 19:
            recs = log.read(seq, 7)
            for r in recs:
                assert r.seq == seq and r.value == value_of(seq) and r.ts == seq - start, (start, r)
                assert r.key == (b"key" if (seq - start) % 4 == 0 else None)
                seq += 1
        # The frames are the format's, byte for byte: encode_frame's with the big seq.
        h = open(d + "/" + segment_name(start), "rb")
        data = h.read()
        h.close()
        off = SEGMENT_HEADER_BYTES
        seq = start
        while off < len(data):
            key = b"key" if (seq - start) % 4 == 0 else None
            frame = encode_frame(seq, seq - start, key, value_of(seq))
            assert data[off:off + len(frame)] == frame, (start, seq)
            off += len(frame)
            seq += 1
        assert seq > start + 2
        # Appending goes on after the reopen.
        assert log.append(b"more", 5) == start + 20
        log.close()
        rmtree(d)


def test_outbox_with_big_seqs():
    for start in STARTS:
        d = tempdir("bigob")
        log = _open_at(d, start, segment_bytes=320, budget_bytes=1280, sync="group", group_records=3)
        ob = Outbox(log, "uplink")
        assert ob.gap() == (1, start - 1)  # a new cursor: everything before the log's start
        ob.ack(start - 1)
        for i in range(6):
            log.append(value_of(start + i), ts=i, seq=False)
        recs = ob.peek(4)
        assert [r.seq for r in recs] == [start, start + 1, start + 2, start + 3]
        ob.ack(recs[-1].seq)
        ob.close()
        log.close()
        log = RingLog(d, segment_bytes=320, budget_bytes=1280)
        ob = Outbox(log, "uplink")
        assert ob.acked == start + 3 and ob.depth == 2
        assert [r.seq for r in ob.peek(10)] == [start + 4, start + 5]
        # Eviction past the cursor (a 4-segment budget): the gap names big seqs.
        for i in range(6, 40):
            log.append(value_of(start + i), ts=i, seq=False)
        g = ob.gap()
        assert g is not None and g[0] == start + 4 and start + 4 <= g[1] < start + 39, (start, g)
        ob.ack(g[1])
        recs = ob.peek(100)
        assert recs[0].seq == g[1] + 1 and recs[-1].seq == start + 39
        assert log.evicted == g[1] - start - 3
        ob.close()
        log.close()
        names = os.listdir(d)
        rmtree(d)
        assert "uplink.cur" in names
