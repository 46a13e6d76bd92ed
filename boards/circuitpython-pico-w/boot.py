"""boot.py for edgeline on CircuitPython: make the CIRCUITPY drive writable by code.

CircuitPython lets either the USB host or Python code write the CIRCUITPY (FAT) drive,
never both. A logger must write its logs, so this remounts / writable for code -- which
makes the drive read-only to the computer it is plugged into. To edit files from the
computer again, hold GP15 to ground while the board resets: then the drive stays the
computer's and edgeline does not start logging (main.py sees the read-only file system
and says so on the serial console).
"""
import board
import digitalio
import storage

_keep_usb = digitalio.DigitalInOut(board.GP15)
_keep_usb.switch_to_input(pull=digitalio.Pull.UP)
if _keep_usb.value:  # not held low: edgeline owns the drive
    storage.remount("/", readonly=False)
_keep_usb.deinit()
