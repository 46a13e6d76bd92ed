"""The append and frame-encode hot path allocates nothing per record after warm-up.

MicroPython only: micropython.heap_lock() makes any heap allocation raise MemoryError.
"""
import micropython

from edgeline.log import RingLog
from support import rmtree, tempdir

VALUE = b"0123456789abcdef" * 4  # 64 bytes
KEY = b"sensor-7"


def _locked(fn, log, n, key):
    # Arguments are passed explicitly: *args would itself allocate a tuple.
    micropython.heap_lock()
    try:
        fn(log, n, key)
    finally:
        micropython.heap_unlock()


def _append_many(log, n, key):
    ts = 1 << 40
    for _ in range(n):
        log.append(VALUE, ts, key)
        ts += 1


def _append_kw(log, n, key):
    for i in range(n):
        log.append(VALUE, ts=i, now_ms=i)


def test_append_allocates_nothing():
    d = tempdir("heap")
    # 64 KB segments, 1 KB write buffer: 600 appends (~54 KB, no rotation) drain the buffer ~50 times.
    log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20, sync="none")
    log.append(VALUE, ts=1)  # warm-up: begins the segment...
    log.flush()  # ...and opens its file
    _locked(_append_many, log, 300, None)
    _locked(_append_many, log, 300, KEY)
    assert log.last_seq == 601
    log.close()
    log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20)
    assert log.last_seq == 601
    log.close()
    rmtree(d)


def test_group_commit_allocates_nothing():
    d = tempdir("heap")
    log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20, sync="group", group_records=50, group_ms=10)
    log.append(VALUE, ts=1, now_ms=0)
    log.flush()
    _locked(_append_kw, log, 300, None)
    assert log.durable_seq >= 250
    log.close()
    rmtree(d)


def test_sync_every_allocates_nothing():
    d = tempdir("heap")
    log = RingLog(d, segment_bytes=65536, budget_bytes=1 << 20, sync="every")
    log.append(VALUE, ts=1)
    _locked(_append_many, log, 50, KEY)
    assert log.durable_seq == 51
    log.close()
    rmtree(d)
