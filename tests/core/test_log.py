"""RingLog behaviour on real files; runs under CPython (pytest) and MicroPython (mptest)."""
import os
import struct

from edgeline.errors import ConfigError, CorruptRecord
from edgeline.log import RingLog
from edgeline.logformat import encode_frame, pack_segment_header, segment_name
from support import raises, tempdir, rmtree


from support import value_of, fill, check_contiguous


def test_append_read_roundtrip():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=512, budget_bytes=8192)
    assert log.last_seq == 0 and log.first_seq == 1
    assert fill(log, 30) == list(range(1, 31))
    recs = log.read(1, 100)
    assert [r.seq for r in recs] == list(range(1, 31))
    assert recs[4].value == value_of(5) and recs[4].ts == (1004 << 16) and recs[4].key is None
    log.close()
    rmtree(d)


def test_keyed_records_and_empty_values():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=512, budget_bytes=4096)
    log.append(b"", ts=1, key=b"")
    log.append(b"v", ts=2, key=b"shelf-7")
    log.append(b"w", ts=3)
    log.close()
    log = RingLog(d, segment_bytes=512, budget_bytes=4096)
    r = log.read(1, 10)
    assert (r[0].key, r[0].value) == (b"", b"")
    assert (r[1].key, r[1].value) == (b"shelf-7", b"v")
    assert r[2].key is None
    log.close()
    rmtree(d)


def test_seqs_consecutive_across_segments():
    # I1
    d = tempdir("log")
    log = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    fill(log, 100)
    log.flush()
    assert log.segment_count > 5
    check_contiguous(log, 1, 100)
    names = sorted(n for n in os.listdir(d) if n.endswith(".seg"))
    prev_last = 0
    for name in names:
        data = open(d + "/" + name, "rb").read()
        base = struct.unpack_from("<Q", data, 8)[0]
        assert name == segment_name(base)
        assert base == prev_last + 1
        off = 32
        seq = base
        while off < len(data):
            flen, fseq = struct.unpack_from("<IQ", data, off)
            assert fseq == seq
            seq += 1
            off += flen
        prev_last = seq - 1
    assert prev_last == 100
    log.close()
    rmtree(d)


def test_read_from_any_seq_and_limits():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=300, budget_bytes=1 << 20)
    fill(log, 60)
    for start in (1, 2, 17, 33, 59, 60):
        recs = log.read(start, 5)
        assert [r.seq for r in recs] == list(range(start, min(start + 5, 61)))
    assert log.read(61, 5) == []
    assert log.read(0, 2)[0].seq == 1
    # max_bytes: at least one record, then stop once the values reach the limit
    recs = log.read(10, 100, 1)
    assert len(recs) == 1
    recs = log.read(10, 100, 25)
    assert 1 < len(recs) < 10
    log.close()
    rmtree(d)


def test_reopen_continues_and_keeps_last_ts():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=400, budget_bytes=1 << 20)
    fill(log, 25)
    log.close()
    log = RingLog(d, segment_bytes=400, budget_bytes=1 << 20)
    assert log.last_seq == 25 and log.durable_seq == 25
    assert log.last_ts == (1024 << 16)
    assert log.append(value_of(26), ts=5) == 26
    check_contiguous(log, 1, 26)
    log.close()
    rmtree(d)


def test_torn_tail_is_truncated_and_appending_continues():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=4096, budget_bytes=1 << 20)
    fill(log, 10)
    log.close()
    tail = d + "/" + segment_name(1)
    good = os.stat(tail)[6]
    frame = encode_frame(11, 7, None, value_of(11))
    for cut in (1, 4, 10, len(frame) - 1):
        f = open(tail, "ab")
        f.write(frame[:cut])
        f.close()
        log = RingLog(d, segment_bytes=4096, budget_bytes=1 << 20)
        assert log.last_seq == 10
        assert os.stat(tail)[6] == good  # I5
        log.close()
    log = RingLog(d, segment_bytes=4096, budget_bytes=1 << 20)
    assert log.append(value_of(11), ts=1) == 11
    check_contiguous(log, 1, 11)
    log.close()
    rmtree(d)


def test_tail_with_header_only_or_garbage_header():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    fill(log, 12)
    log.close()
    last_base = sorted(n for n in os.listdir(d) if n.endswith(".seg"))[-1]
    base = int(last_base[:20])
    p = d + "/" + last_base
    data = open(p, "rb").read()
    # header only: its frames vanished
    f = open(p, "wb")
    f.write(data[:32])
    f.close()
    log = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    assert log.last_seq == base - 1
    assert log.append(value_of(base), ts=9) == base
    log.close()
    # a torn header
    f = open(p, "wb")
    f.write(data[:13])
    f.close()
    log = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    assert log.last_seq == base - 1
    check_contiguous(log, 1, base - 1)
    log.close()
    rmtree(d)


def test_erased_bytes_never_parse():
    # I6: all-0x00 and all-0xFF after a valid header are not frames; such headers are invalid
    from edgeline.logformat import parse_segment_header

    assert parse_segment_header(b"\x00" * 32) is None
    assert parse_segment_header(b"\xff" * 32) is None
    for fillb in (b"\x00", b"\xff"):
        d = tempdir("log")
        f = open(d + "/" + segment_name(1), "wb")
        f.write(pack_segment_header(1, 0, 4096))
        f.write(fillb * 500)
        f.close()
        log = RingLog(d, segment_bytes=4096, budget_bytes=1 << 20)
        assert log.last_seq == 0
        assert log.read(1) == []
        assert log.append(b"x", ts=1) == 1
        log.close()
        rmtree(d)


def test_unknown_version_rejected():
    # I9
    d = tempdir("log")
    log = RingLog(d, segment_bytes=4096, budget_bytes=1 << 20)
    fill(log, 3)
    log.close()
    p = d + "/" + segment_name(1)
    data = bytearray(open(p, "rb").read())
    data[4] = 2
    from binascii import crc32

    struct.pack_into("<I", data, 28, crc32(bytes(data[:28])))
    f = open(p, "wb")
    f.write(data)
    f.close()
    e = raises(CorruptRecord, RingLog, d, segment_bytes=4096, budget_bytes=1 << 20)
    assert "version 2" in str(e)
    rmtree(d)


def test_config_errors_are_clear():
    d = tempdir("log")
    e = raises(ConfigError, RingLog, d, full_policy="drop_everything")
    assert "full_policy" in str(e)
    e = raises(ConfigError, RingLog, d, sync="sometimes")
    assert "sync" in str(e)
    e = raises(ConfigError, RingLog, d, segment_bytes=4096, budget_bytes=4096)
    assert "budget_bytes" in str(e)
    e = raises(ConfigError, RingLog, d, buffer_bytes=16)
    assert "buffer_bytes" in str(e)
    log = RingLog(d, segment_bytes=256, budget_bytes=4096)
    e = raises(ConfigError, log.append, b"x" * 300, ts=1)
    assert "does not fit" in str(e)
    e = raises(ConfigError, log.append, b"x", ts=-1)
    assert log.last_seq == 0
    log.close()
    rmtree(d)


def test_large_record_bigger_than_buffer():
    d = tempdir("log")
    log = RingLog(d, segment_bytes=8192, budget_bytes=1 << 20, buffer_bytes=256)
    big = bytes(range(256)) * 6
    log.append(b"a", ts=1)
    log.append(big, ts=2, key=b"k")
    log.append(b"c", ts=3)
    log.close()
    log = RingLog(d, segment_bytes=8192, budget_bytes=1 << 20, buffer_bytes=256)
    r = log.read(1, 10)
    assert [x.value for x in r] == [b"a", big, b"c"] and r[1].key == b"k"
    log.close()
    rmtree(d)


def test_append_many_matches_single_appends():
    # the batch path writes exactly what appending one by one writes
    a = tempdir("many")
    b = tempdir("one")
    n = 40
    values = [value_of(i + 1) for i in range(n)]
    keys = [None if i % 4 else b"k%d" % i for i in range(n)]
    opts = {"segment_bytes": 400, "budget_bytes": 1 << 20, "sync": "group", "group_records": 7}
    la = RingLog(a, **opts)
    lb = RingLog(b, **opts)
    assert la.append_many(values[:15], ts=5) == 1
    assert la.append_many(values[15:], ts=[i << 16 for i in range(15, n)], keys=keys[15:]) == 16
    for i in range(n):
        lb.append(values[i], ts=5 if i < 15 else i << 16, key=None if i < 15 else keys[i])
    assert la.last_seq == lb.last_seq == n
    assert la.durable_seq == lb.durable_seq
    assert la.segment_count == lb.segment_count > 2
    la.close()
    lb.close()
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        if name == "incarnation":  # each log's own random id
            continue
        assert open(a + "/" + name, "rb").read() == open(b + "/" + name, "rb").read(), name
    la = RingLog(a, **opts)
    assert la.append_many([], ts=1) == 0
    e = raises(ConfigError, la.append_many, [b"x", b"y"], ts=[1])
    assert "timestamps" in str(e)
    raises(ConfigError, la.append_many, [b"x"], ts=-1)
    assert la.last_seq == n
    la.close()
    rmtree(a)
    rmtree(b)

