"""The log and outbox on FAT (CircuitPython boards, some MicroPython boards) via the VFS."""
import os

from vfs_scenario import run_scenario


def test_log_on_fat():
    run_scenario(os.VfsFat, 512, 128)
