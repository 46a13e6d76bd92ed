"""A log of many segments on littlefs2 within a board's heap: filled, then reopened.

Each file opened leaves about 1 KB of garbage between the segment table's entries, so a
table grown entry by entry -- rotation after rotation, or header after header in
recovery -- soon needs a contiguous block a fragmented heap no longer has (the profile
soak hit it with 256 segments on a 267 KB heap). RingLog._recover allocates the table
whole, with room for as many segments as the budget allows.
"""
import gc
import os

from edgeline.log import RingLog
from flashfile import FileBlockDevice
from support import check_contiguous, fill, rmtree, tempdir


def test_reopen_many_segments_on_littlefs2():
    host = tempdir("many")
    dev = FileBlockDevice(host + "/flash.img", 512, 1024)  # the chip on the host's disk
    os.VfsLfs2.mkfs(dev)
    os.mount(os.VfsLfs2(dev), "/flash")
    try:
        opts = {"segment_bytes": 128, "budget_bytes": 128 * 220, "sync": "none"}
        log = RingLog("/flash/many", **opts)
        while log.segment_count < 200:
            fill(log, 1)
        log.flush()
        last = log.last_seq
        log.close()
        for _ in range(3):
            log = None  # the old table goes before the new one is built
            gc.collect()  # as after a reboot: the heap is not littered with the old log
            log = RingLog("/flash/many", **opts)
            assert log.segment_count >= 200 and log.last_seq == last, (log.segment_count, log.last_seq)
            check_contiguous(log, log.first_seq, last)
            log.close()
    finally:
        os.umount("/flash")
        dev.f.close()
        rmtree(host)
