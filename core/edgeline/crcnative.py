"""CRC-32 of a frame written into a buffer by native code: the viper version.

Same contract as crc.py's ``frame_crc_into`` (its docstring explains why the CRC must
never become a Python int on a 32-bit board): the running value is a machine word in a
register and the result is stored byte by byte through ``ptr8``. Only ports with a
native emitter compile this module: ESP32 (xtensawin) and RP2040 (armv6m) when the
firmware build compiles it with the profile's ``-march``, and the unix port from source.
Elsewhere importing it fails (SyntaxError from source, ValueError for a .mpy of another
architecture, ImportError where it was not compiled) and logformat.py falls back. The
table is the 16-entry nibble table as 64 bytes (a board's RAM is worth more than the
second lookup a byte costs in native code).
"""
import sys

import micropython

# CircuitPython has no viper emitter: importing this module fails there (ImportError).
_CP = sys.implementation.name in ("circuitpython",)

_T = (b"\x00\x00\x00\x00d\x10\xb7\x1d\xc8 n;\xac0\xd9&\x90A\xdcv\xf4QkkXa\xb2M<q\x05P"
      b" \x83\xb8\xedD\x93\x0f\xf0\xe8\xa3\xd6\xd6\x8c\xb3a\xcb\xb0\xc2d\x9b\xd4\xd2\xd3\x86x\xe2\n\xa0\x1c\xf2\xbd\xbd")


if _CP:
    raise ImportError("no native emitter on CircuitPython")
if not _CP:

    @micropython.viper
    def frame_crc_into(out, off: int, a, b, c):
        t = ptr32(_T)
        crc = uint(0xFFFFFFFF)
        d = a
        k = 0
        while k < 3:
            if k == 1:
                d = b
            elif k == 2:
                d = c
            k += 1
            if not d:  # None (no key) or empty
                continue
            p = ptr8(d)
            n = int(len(d))
            i = 0
            while i < n:
                crc ^= uint(p[i])
                crc = (crc >> 4) ^ uint(t[crc & 15])
                crc = (crc >> 4) ^ uint(t[crc & 15])
                i += 1
        crc ^= uint(0xFFFFFFFF)
        o = ptr8(out)
        o[off] = crc & 0xFF
        o[off + 1] = (crc >> 8) & 0xFF
        o[off + 2] = (crc >> 16) & 0xFF
        o[off + 3] = (crc >> 24) & 0xFF

    @micropython.viper
    def frame_crc_check(mv, start: int, end: int) -> bool:
        # crc.py's frame_crc_check, in a register: the read side's check.
        t = ptr32(_T)
        p = ptr8(mv)
        crc = uint(0xFFFFFFFF)
        i = start
        while i < end:
            crc ^= uint(p[i])
            crc = (crc >> 4) ^ uint(t[crc & 15])
            crc = (crc >> 4) ^ uint(t[crc & 15])
            i += 1
        crc ^= uint(0xFFFFFFFF)
        got = uint(p[end]) | (uint(p[end + 1]) << 8) | (uint(p[end + 2]) << 16) | (uint(p[end + 3]) << 24)
        return crc == got
