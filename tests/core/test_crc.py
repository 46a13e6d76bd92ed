"""The frame CRC writers agree byte for byte with binascii.crc32; same file under CPython
and MicroPython (both lanes). Every implementation present on the runtime is checked:
logformat's choice, crc.py's portable one everywhere, and crcnative's viper one where it
imports (the unix-port lane: the test tree compiles it for the host's x64)."""
import struct
from binascii import crc32

from edgeline import crc, logformat

try:
    from edgeline import crcnative
except (ImportError, SyntaxError, ValueError):  # CPython, or no native emitter here
    crcnative = None


def _impls():
    out = [logformat.frame_crc_into, crc.frame_crc_into]
    if crcnative is not None:
        out.append(crcnative.frame_crc_into)
    return out


def _bytes(n, seed):
    # Deterministic pseudo-random contents (an LCG on small ints: both word sizes).
    b = bytearray(n)
    x = seed & 0xFFFF
    for i in range(n):
        x = (x * 75 + 74) % 65537
        b[i] = x & 0xFF
    return bytes(b)


def _check(fn, hdr, key, value):
    out = bytearray(7)
    out[0] = 0x5A
    out[5] = 0xA5
    fn(out, 1, hdr, key, value)
    exp = crc32(value, crc32(key, crc32(hdr)) if key else crc32(hdr))
    assert struct.unpack_from("<I", out, 1)[0] == exp, (fn, len(hdr), key, len(value))
    assert out[0] == 0x5A and out[5] == 0xA5  # nothing written outside the 4 bytes


def test_every_implementation_matches_binascii():
    for n in range(0, 301):
        hdr = _bytes(22, n)
        value = _bytes(n, n + 1)
        key = None if n % 3 == 0 else _bytes(n % 17, n + 2)
        for fn in _impls():
            _check(fn, hdr, key, value)


def test_edge_contents():
    # All zero and all 0xFF bytes, an empty key, bytearray and memoryview inputs.
    for fill in (0, 0xFF):
        for n in (0, 1, 2, 3, 4, 5, 255, 256, 1024):
            v = bytes([fill]) * n
            for fn in _impls():
                _check(fn, v, b"", v)
                _check(fn, bytearray(22), bytearray(v), memoryview(v))


def test_frames_match_encode_frame():
    # The bytes a log writes: encode_frame's CRC, for a key and none.
    for key in (None, b"k", b"sensor-7"):
        frame = logformat.encode_frame(123456, (1700000000000 << 16) | 7, key, b"v" * 40)
        hdr = frame[:logformat.FRAME_HEADER_BYTES]
        klen = 0 if key is None else len(key)
        value = frame[logformat.FRAME_HEADER_BYTES + klen:-4]
        for fn in _impls():
            out = bytearray(4)
            fn(out, 0, hdr, key, value)
            assert bytes(out) == frame[-4:]


def _checks():
    out = [logformat.frame_crc_check, crc.frame_crc_check]
    if crcnative is not None:
        out.append(crcnative.frame_crc_check)
    return out


def test_every_check_agrees_with_binascii():
    # The read side's check, over a range of a buffer with bytes around it: true for the
    # right CRC, false when any one of its four bytes or of the checked bytes is off.
    for n in (0, 1, 2, 3, 7, 22, 23, 64, 90, 255, 300):
        data = _bytes(n, n + 5)
        buf = bytearray(3 + n + 4 + 2)
        buf[3:3 + n] = data
        struct.pack_into("<I", buf, 3 + n, crc32(data))
        mv = memoryview(buf)
        for fn in _checks():
            assert fn(mv, 3, 3 + n) is True, (fn, n)
            for j in range(3 + n + 4 - 1, 2, -7 if n > 20 else -1):
                buf[j] ^= 0x10
                assert fn(mv, 3, 3 + n) is False, (fn, n, j)
                buf[j] ^= 0x10


def test_check_reads_frames_encode_frame_wrote():
    for key in (None, b"sensor-7"):
        frame = logformat.encode_frame(2 ** 31 + 5, (1700000000000 << 16) | 7, key, b"w" * 33)
        mv = memoryview(bytearray(frame))
        for fn in _checks():
            assert fn(mv, 0, len(frame) - 4)
