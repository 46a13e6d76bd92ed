"""The log and outbox on FAT (CircuitPython boards, some MicroPython boards) via the VFS."""
import os

from vfs_scenario import run_scenario, run_unsynced_read


def test_log_on_fat():
    run_scenario(os.VfsFat, 512, 128)


def test_unsynced_records_read_back_on_fat():
    run_unsynced_read(os.VfsFat, 512, 128)
