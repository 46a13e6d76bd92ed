"""``machine`` on the emulated board: the unix port's module plus ``reset()``.

emulator/ptyboard.py packs this file into the board's ROM as ``machine.mpy``; ``machine``
is one of MicroPython's extensible built-in modules, so importing it finds this file, and
``umachine`` is still the built-in one. A hard reset is what ``mpremote reset`` asks for
(``machine.reset()``): the process is killed -- unflushed data is lost, as when a real
board's reset line is pulled -- and the board boots afresh in the friendly REPL, running
boot.py and main.py.
"""
import time

from umachine import *  # noqa: F401,F403

_firmware = None  # set by emulator/boardrom.py at boot


def reset():
    _firmware.send(ord("H"))
    while True:  # the bridge kills this process
        time.sleep_ms(1000)
