"""The log and outbox on littlefs2 (ESP32, RP2040 firmware's file system) via the VFS."""
import os

from vfs_scenario import run_scenario, run_unsynced_read


def test_log_on_littlefs2():
    run_scenario(os.VfsLfs2, 512, 64)


def test_unsynced_records_read_back_on_littlefs2():
    run_unsynced_read(os.VfsLfs2, 512, 64)
