"""The log and outbox on littlefs2 (ESP32, RP2040 firmware's file system) via the VFS."""
import os

from vfs_scenario import run_scenario


def test_log_on_littlefs2():
    run_scenario(os.VfsLfs2, 512, 64)
