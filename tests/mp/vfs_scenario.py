"""One log-and-outbox scenario run on a VFS mount; shared by test_vfs_fat/test_vfs_lfs."""
import os

from edgeline.log import RingLog
from edgeline.outbox import Outbox
from flashfile import FileBlockDevice
from support import check_contiguous, fill, tempdir, rmtree


def run_scenario(vfs_class, block_size, block_count):
    host = tempdir("vfs")
    dev = FileBlockDevice(host + "/flash.img", block_size, block_count)
    vfs_class.mkfs(dev)
    os.mount(vfs_class(dev), "/flash")
    try:
        log = RingLog("/flash/telemetry", segment_bytes=2048, budget_bytes=8192, sync="group", group_records=10, buffer_bytes=256)
        ob = Outbox(log, "uplink")
        for _ in range(6):
            fill(log, 50)
        assert log.evicted > 0
        g = ob.gap()
        ob.ack(g[1])
        batch = ob.peek(20)
        ob.ack(batch[-1].seq)
        acked = ob.acked
        log.close()
        # remount (a reboot) and reopen
        os.umount("/flash")
        os.mount(vfs_class(dev), "/flash")
        log = RingLog("/flash/telemetry", segment_bytes=2048, budget_bytes=8192, buffer_bytes=256)
        ob = Outbox(log, "uplink")
        assert log.last_seq == 300 and ob.acked == acked
        check_contiguous(log, log.first_seq, 300)
        # a torn tail on this file system is truncated on reopen
        log.close()
        names = sorted(n for n in os.listdir("/flash/telemetry") if n.endswith(".seg"))
        f = open("/flash/telemetry/" + names[-1], "ab")
        f.write(b"\x40\x00\x00\x00torn")
        f.close()
        log = RingLog("/flash/telemetry", segment_bytes=2048, budget_bytes=8192, buffer_bytes=256)
        assert log.last_seq == 300
        assert log.append(b"after", ts=1) == 301
        log.close()
    finally:
        os.umount("/flash")
        dev.f.close()
        rmtree(host)


def run_unsynced_read(vfs_class, block_size, block_count):
    """Records appended but not committed read back whole, and are no gap: on this file
    system a second handle sees only synced bytes (RingLog.read commits first)."""
    host = tempdir("vfs")
    dev = FileBlockDevice(host + "/flash.img", block_size, block_count)
    vfs_class.mkfs(dev)
    os.mount(vfs_class(dev), "/flash")
    try:
        log = RingLog("/flash/unsynced", segment_bytes=4096, budget_bytes=16384, sync="none", buffer_bytes=256)
        ob = Outbox(log, "uplink")
        fill(log, 3)
        log.flush()
        ob.ack(3)
        fill(log, 20)  # more than the write buffer holds: most reach the file unsynced
        assert log.durable_seq == 3
        assert ob.gap() is None and log.corrupt == 0
        recs = log.read(4, 100)
        assert [r.seq for r in recs] == list(range(4, 24)), [r.seq for r in recs]
        check_contiguous(log, 1, 23)
        assert log.corrupt == 0
        log.close()
    finally:
        os.umount("/flash")
        dev.f.close()
        rmtree(host)
