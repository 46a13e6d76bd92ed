"""The append and frame-encode hot path allocates nothing per record after warm-up.

MicroPython only: micropython.heap_lock() makes any heap allocation raise MemoryError.
Both word sizes: the unix-port lane (64-bit) and the 32-bit lane (tests/firmware/
test_mp32.py), where a timestamp or a CRC >= 2**30 would be a heap object. The
timestamps are real hybrid-clock ones (epoch ms << 16, about 2**56): a HybridClock
stamps them into the frames (append's ts is the clock).
"""
import micropython

from edgeline import crc, logformat
from edgeline.clock import HybridClock
from edgeline.log import RingLog
from edgeline.logformat import pack_segment_header, segment_name
from support import rmtree, tempdir

try:
    from edgeline import crcnative
except (ImportError, SyntaxError, ValueError):  # no native emitter, or not built for this arch
    crcnative = None

EPOCH_MS = 1765000000000  # December 2025 in epoch ms: a big int on 32-bit

VALUE = b"0123456789abcdef" * 4  # 64 bytes
KEY = b"sensor-7"


def _locked(fn, log, n, key):
    # Arguments are passed explicitly: *args would itself allocate a tuple.
    micropython.heap_lock()
    try:
        fn(log, n, key)
    finally:
        micropython.heap_unlock()


def _clock():
    c = HybridClock(last_ts=EPOCH_MS << 16)
    c.now(EPOCH_MS)
    return c


def _append_many(log, n, clock):
    # key and the clock in one argument slot each: see _locked.
    for i in range(n):
        if i % 3 == 0:
            clock.tick(1)  # the counter runs on within a ms, then restarts
        log.append(VALUE, clock, _KEY[0])


_KEY = [None]


def _append_kw(log, n, clock):
    for i in range(n):
        clock.tick(1)
        log.append(VALUE, ts=clock, now_ms=i)


def test_append_allocates_nothing():
    d = tempdir("heap")
    # 64 KB segments, 1 KB write buffer: 600 appends (~54 KB, no rotation) drain the buffer ~50 times.
    log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20, sync="none")
    clock = _clock()
    log.append(VALUE, clock)  # warm-up: begins the segment...
    log.flush()  # ...and opens its file
    _KEY[0] = None
    _locked(_append_many, log, 300, clock)
    _KEY[0] = KEY
    _locked(_append_many, log, 300, clock)
    assert log.last_seq == 601
    last = clock.last
    log.close()
    log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20)
    assert log.last_seq == 601
    assert log.last_ts == last  # the stamped timestamps are the clock's, on disk
    first = log.read(1, 5)
    tail = log.read(597, 5)
    assert first[0].ts >> 16 == EPOCH_MS and tail[-1].ts >> 16 == EPOCH_MS + 200
    assert tail[-1].seq == 601 and tail[-1].key == KEY and tail[-1].ts == last
    recs = first + tail
    for i in range(1, len(recs)):
        assert recs[i].ts > recs[i - 1].ts
    log.close()
    rmtree(d)


def test_group_commit_allocates_nothing():
    d = tempdir("heap")
    log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20, sync="group", group_records=50, group_ms=10)
    clock = _clock()
    log.append(VALUE, ts=clock, now_ms=0)
    log.flush()
    _locked(_append_kw, log, 300, clock)
    assert log.durable_seq >= 250
    log.close()
    rmtree(d)


def test_sync_every_allocates_nothing():
    d = tempdir("heap")
    log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20, sync="every")
    clock = _clock()
    log.append(VALUE, clock)
    _KEY[0] = KEY
    _locked(_append_many, log, 50, clock)
    assert log.durable_seq == 51
    log.close()
    rmtree(d)


def _append_quiet(log, n, clock):
    # seq=False: append returns True, not the seq (a heap object on 32-bit past 2**30).
    for i in range(n):
        clock.tick(1)
        log.append(VALUE, clock, _KEY[0], i, False)


def test_appends_past_2_30_allocate_nothing():
    # A log whose next seq is just below 2**30, 2**31, 2**32 (an empty tail segment named
    # and headed so: recovery goes on from there): appends across the boundary, with
    # commits by count inside the locked run (group, every), allocate nothing; the
    # records read back with their seqs.
    for start, sync, n in ((2 ** 30 - 100, "group", 300), (2 ** 31 - 20, "every", 40), (2 ** 32 - 100, "none", 300)):
        d = tempdir("heapbig")
        f = open(d + "/" + segment_name(start), "wb")
        f.write(pack_segment_header(start, 0, 65536))
        f.close()
        log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20, sync=sync, group_records=7, group_ms=1 << 29)
        clock = _clock()
        log.append(VALUE, clock, None, 0, False)  # warm-up: begins the segment...
        log.flush()  # ...and opens its file
        _KEY[0] = KEY
        _locked(_append_quiet, log, n, clock)
        assert log.last_seq == start + n, (start, log.last_seq)
        assert log.durable_seq >= start + n - 7 or sync == "none"
        last = clock.last
        log.close()
        log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20)
        assert log.last_seq == start + n and log.first_seq == start
        recs = log.read(start + n - 3, 10)
        assert [r.seq for r in recs] == [start + n - 3, start + n - 2, start + n - 1, start + n]
        assert recs[-1].ts == last and recs[-1].key == KEY and recs[-1].value == VALUE
        log.close()
        rmtree(d)


_OUT = bytearray(8)
_HDR = VALUE[:22]


def _crc_many(fn, n, key):
    for _ in range(n):
        fn(_OUT, 2, _HDR, key, VALUE)


def test_frame_crc_allocates_nothing():
    # Every CRC implementation present here: logformat's choice, the portable one, and
    # the viper one where it imports (unix-port lane).
    fns = [logformat.frame_crc_into, crc.frame_crc_into]
    if crcnative is not None:
        fns.append(crcnative.frame_crc_into)
    for fn in fns:
        _crc_many(fn, 1, KEY)  # warm-up
        _locked(_crc_many, fn, 100, KEY)
        _locked(_crc_many, fn, 100, None)


def _stamp_many(clock, n, buf):
    for _ in range(n):
        clock.tick(7)
        clock.stamp_into(buf, 12)
        clock.stamp_into(buf, 12)


def test_clock_stamp_allocates_nothing():
    clock = _clock()
    buf = bytearray(22)
    _stamp_many(clock, 1, buf)
    _locked(_stamp_many, clock, 1000, buf)
    assert clock.last == ((EPOCH_MS + 7007) << 16) | 1
