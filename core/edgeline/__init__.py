"""edgeline core: the crash-proof ring log, outbox, codec and clock shared by every device.

Dependency-free; runs unchanged on MicroPython, CircuitPython and CPython.
"""

__version__ = "0.1.0"
