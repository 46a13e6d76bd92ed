"""The log and outbox on littlefs2 (ESP32, RP2040 firmware's file system) via the VFS."""
import os

from vfs_scenario import run_scenario, run_unsynced_read


def test_log_on_littlefs2():
    run_scenario(os.VfsLfs2, 512, 64)


def test_reading_records_not_yet_committed_on_littlefs():
    # littlefs shows a file's new bytes to another handle only once they are synced.
    # Reading (peek, gap) records still in the write buffer must see them, not take
    # them for rot -- a board's uplink asks gap() first, and a false gap would tell the
    # gateway these records were lost (they would never be sent).
    from edgeline import codec
    from edgeline.log import RingLog
    from edgeline.outbox import Outbox
    from flashfile import FileBlockDevice
    from support import tempdir

    dev = FileBlockDevice(tempdir("lfsread") + "/flash.img", 512, 64)
    os.VfsLfs2.mkfs(dev)
    os.mount(os.VfsLfs2(dev), "/flash")
    try:
        log = RingLog("/flash/t", segment_bytes=2048, budget_bytes=8192, sync="group", group_records=16)
        ob = Outbox(log)
        log.append(codec.dumps({"n": 1}), ts=5, now_ms=0)
        assert ob.gap() is None
        assert [r.seq for r in log.read(1, 10, 4096)] == [1]
        log.append(codec.dumps({"n": 2}), ts=6, now_ms=1)
        assert [r.seq for r in ob.peek(16, 4096)] == [1, 2]
        assert log.corrupt == 0
        log.close()
    finally:
        os.umount("/flash")


def test_unsynced_records_read_back_on_littlefs2():
    run_unsynced_read(os.VfsLfs2, 512, 64)
