"""crc.py's portable, allocation-free CRC-32 equals binascii.crc32 on random frames
(hypothesis; CPython). The MicroPython lanes check all implementations on a fixed list
(tests/core/test_crc.py)."""
import struct
from binascii import crc32

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeline import crc, logformat


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.one_of(st.none(), st.binary(max_size=40)),
       st.binary(max_size=600), st.integers(0, 9))
def test_portable_crc_matches_binascii(hdr, key, value, off):
    exp = crc32(value, crc32(key, crc32(hdr)) if key is not None else crc32(hdr))
    for fn in (crc.frame_crc_into, logformat.frame_crc_into):
        out = bytearray(off + 4)
        fn(out, off, hdr, key, value)
        assert struct.unpack_from("<I", out, off)[0] == exp
