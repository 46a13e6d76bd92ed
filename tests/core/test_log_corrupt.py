"""Bit rot in an old segment: skipped, counted, warned about, reported as a gap (I8).

In a file of its own so that it has the heap to itself under MicroPython's 64 KB.
"""
import os
import struct

from edgeline.log import RingLog
from edgeline.outbox import Outbox
from support import Warnings, fill, rmtree, tempdir, value_of


def test_bit_rot_skipped_and_counted():
    # I8: flip a byte inside an old segment; the rest stays readable, loss is counted
    d = tempdir("log")
    log = RingLog(d, segment_bytes=600, budget_bytes=1 << 20)
    fill(log, 60)
    log.close()
    names = sorted(n for n in os.listdir(d) if n.endswith(".seg"))
    assert len(names) >= 3
    p = d + "/" + names[1]
    data = bytearray(open(p, "rb").read())
    base = struct.unpack_from("<Q", data, 8)[0]
    # corrupt the value of the 3rd frame of segment 2
    off = 32
    for _ in range(2):
        off += struct.unpack_from("<I", data, off)[0]
    data[off + 24] ^= 0x40
    f = open(p, "wb")
    f.write(data)
    f.close()
    w = Warnings()
    log = RingLog(d, segment_bytes=600, budget_bytes=1 << 20, warn=w)
    seqs = []
    seq = 1
    while seq <= 60:
        recs = log.read(seq, 7)
        for r in recs:
            assert r.value == value_of(r.seq)
            seqs.append(r.seq)
        seq = recs[-1].seq + 1
    lost = base + 2
    assert seqs == [s for s in range(1, 61) if s != lost], seqs
    assert log.corrupt == 1
    assert len(w.lines) == 1 and ("records %d..%d" % (lost, lost)) in w.lines[0]
    # reading again does not count twice; the outbox reports the gap
    log.read(1, 100)
    assert log.corrupt == 1
    ob = Outbox(log, "uplink")
    ob.ack(lost - 1)
    assert ob.peek(10) == []
    assert ob.gap() == (lost, lost)
    ob.ack(lost)
    assert ob.peek(1)[0].seq == lost + 1
    log.close()
    # a length byte smashed: framing lost, resync finds the next frame
    data[off + 24] ^= 0x40
    data[off + 1] ^= 0x7F
    f = open(p, "wb")
    f.write(data)
    f.close()
    log = RingLog(d, segment_bytes=600, budget_bytes=1 << 20, warn=w)
    got = [r.seq for r in log.read(1, 100)]
    assert lost not in got and lost + 1 in got and len(got) == 59
    log.close()
    rmtree(d)
