"""CRC-32 of a frame written into a buffer without a big int: the portable version.

Theory of operation
-------------------
On a 32-bit MicroPython port small ints stop at 2**30 - 1, so three CRC-32 values in
four are heap objects and ``binascii.crc32`` allocates its result on every call. This
module computes the same CRC-32 (IEEE, reflected, the one docs/spec/log.md and binascii
use) with the running value kept as two 16-bit small ints, ``lo`` and ``hi``, and packs
the result straight into the frame buffer: nothing is allocated per call.

The table is the 16-entry nibble table (two lookups a byte), split into its low and high
16-bit halves: two tuples of 16 small ints (64 bytes of data). A 256-entry table would halve the lookups but cost 1 KB
of a board's RAM; this module is only loaded where there is no native emitter for
crcnative.py's viper version and the word is 32 bits (CircuitPython, MicroPython's
WebAssembly port), so it is a fallback and its table is kept small.

logformat.py chooses the implementation at import (see ``frame_crc_into`` there); tests
check that every implementation writes the same four bytes as binascii
(tests/core/test_crc.py).
"""
from struct import pack_into

_TL = (0x0000, 0x1064, 0x20C8, 0x30AC, 0x4190, 0x51F4, 0x6158, 0x713C,
                  0x8320, 0x9344, 0xA3E8, 0xB38C, 0xC2B0, 0xD2D4, 0xE278, 0xF21C)
_TH = (0x0000, 0x1DB7, 0x3B6E, 0x26D9, 0x76DC, 0x6B6B, 0x4DB2, 0x5005,
                  0xEDB8, 0xF00F, 0xD6D6, 0xCB61, 0x9B64, 0x86D3, 0xA00A, 0xBDBD)


def frame_crc_into(out, off, a, b, c):
    """Write CRC-32(a + b + c) little-endian at out[off:off + 4]; b may be None.

    a, b and c are bytes-like (the frame's header, key and value)."""
    tl = _TL
    th = _TH
    lo = 0xFFFF
    hi = 0xFFFF
    n = 0
    d = a
    while True:
        if d is not None:
            for x in d:
                lo ^= x
                i = lo & 15
                lo = ((lo >> 4) | ((hi & 15) << 12)) ^ tl[i]
                hi = (hi >> 4) ^ th[i]
                i = lo & 15
                lo = ((lo >> 4) | ((hi & 15) << 12)) ^ tl[i]
                hi = (hi >> 4) ^ th[i]
        n += 1
        if n == 1:
            d = b
        elif n == 2:
            d = c
        else:
            break
    pack_into("<HH", out, off, lo ^ 0xFFFF, hi ^ 0xFFFF)


def frame_crc_check(mv, start, end):
    """True if the CRC-32 of mv[start:end] equals the four bytes little-endian at
    mv[end:end + 4]: a frame checked where it lies in a read buffer, no slice, no int
    beyond 16 bits (the read side's check; mv is any buffer, indexed in place)."""
    tl = _TL
    th = _TH
    lo = 0xFFFF
    hi = 0xFFFF
    for j in range(start, end):
        lo ^= mv[j]
        i = lo & 15
        lo = ((lo >> 4) | ((hi & 15) << 12)) ^ tl[i]
        hi = (hi >> 4) ^ th[i]
        i = lo & 15
        lo = ((lo >> 4) | ((hi & 15) << 12)) ^ tl[i]
        hi = (hi >> 4) ^ th[i]
    return (lo ^ 0xFFFF) == mv[end] | (mv[end + 1] << 8) and (hi ^ 0xFFFF) == mv[end + 2] | (mv[end + 3] << 8)
