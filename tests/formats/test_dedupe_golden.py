"""Golden file of the ingest dedupe window, format version 1 (tests/golden/dedupe-v1/).

Three readers agree on the same bytes: the code writing them (``write_golden`` below, run
again now, must produce byte-identical output); the code reading them (DedupeWindow
returns the entries); and a parser written here from docs/spec/ingest-dedupe.md's tables
alone (struct and zlib.crc32, nothing imported from edgeline_host). Erased space (all
0x00, all 0xFF) never parses as an entry.
"""
import os
import struct
import zlib

from emulator.faultfs import FaultStorage
from edgeline_host.agent.idempotency import DedupeWindow, producer_key

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "dedupe-v1", "window.dw")
T0 = 1700000000.0
MQTT_DIGEST = bytes(range(16))


def write_golden(fs, path="/d/~ingest-dedupe/t.dw"):
    """The sequence the golden file holds (see its README); returns the window."""
    t = [T0]
    w = DedupeWindow(path, max_entries=3, max_age_s=3600, storage=fs, clock=lambda: t[0])
    w.add(producer_key("sensor-7", 1), 1, 1, b"\x22" * 16)   # ENTRY, producer id + seq
    t[0] += 1
    w.add("k:order-1", 2, 4, b"\x11" * 16)            # ENTRY, Idempotency-Key
    t[0] += 1
    w.add(b"m:\x00\x05", 5, 5, MQTT_DIGEST)            # ENTRY, MQTT packet id 5
    w.discard(b"m:\x00\x05")                           # REMOVED: the packet id was reused
    t[0] += 1
    w.add(producer_key("sensor-7", 2), 6, 7, b"\x33" * 16)
    w.add(producer_key("sensor-7", 3), 8, 8, b"\x44" * 16)   # 4 live > 3: sensor-7:1 leaves, FLOOR 1
    w.sync()
    return w


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def spec_parse(data):
    """docs/spec/ingest-dedupe.md, from its tables only."""
    assert data[0:4] == b"ELDW"
    version, flags, reserved = struct.unpack_from("<HHI", data, 4)
    assert (version, flags, reserved) == (1, 0, 0)
    assert struct.unpack_from("<I", data, 12)[0] == zlib.crc32(data[0:12])
    off = 16
    out = []
    while off < len(data):
        kind, klen, dlen, res = data[off], data[off + 1], data[off + 2], data[off + 3]
        assert kind in (1, 2, 3) and 1 <= klen <= 255 and dlen <= 64 and res == 0
        first, last, added = struct.unpack_from("<QQQ", data, off + 4)
        key = data[off + 28:off + 28 + klen]
        digest = data[off + 28 + klen:off + 28 + klen + dlen]
        end = off + 28 + klen + dlen
        assert struct.unpack_from("<I", data, end)[0] == zlib.crc32(data[off:end])
        out.append((kind, key, first, last, added, digest))
        off = end + 4
    return out


EXPECTED = [
    (1, b"p:sensor-7:1", 1, 1, 1700000000000, b"\x22" * 16),
    (1, b"k:order-1", 2, 4, 1700000001000, b"\x11" * 16),
    (1, b"m:\x00\x05", 5, 5, 1700000002000, MQTT_DIGEST),
    (2, b"m:\x00\x05", 0, 0, 1700000002000, b""),
    (1, b"p:sensor-7:2", 6, 7, 1700000003000, b"\x33" * 16),
    (1, b"p:sensor-7:3", 8, 8, 1700000003000, b"\x44" * 16),
    (3, b"sensor-7", 1, 1, 1700000003000, b""),
]


def test_code_writes_the_golden_bytes():
    fs = FaultStorage()
    write_golden(fs)
    got = fs.contents("/d/~ingest-dedupe/t.dw")
    assert got == _read(GOLDEN), "window.dw differs from the golden file: the v1 format changed"


def test_spec_parser_reads_the_golden_file():
    assert spec_parse(_read(GOLDEN)) == EXPECTED


def test_code_reads_the_golden_file(tmp_path):
    path = str(tmp_path / "t.dw")
    with open(path, "wb") as f:
        f.write(_read(GOLDEN))
    w = DedupeWindow(path, max_entries=3, max_age_s=10 ** 9)
    w.recover(8)
    assert w.lookup("k:order-1") == (2, 4, b"\x11" * 16)
    assert w.lookup(producer_key("sensor-7", 1)) is None and w.floor("sensor-7") == 1
    assert w.lookup(b"m:\x00\x05") is None
    assert w.lookup(producer_key("sensor-7", 2)) == (6, 7, b"\x33" * 16)
    assert w.lookup(producer_key("sensor-7", 3)) == (8, 8, b"\x44" * 16)
    w.close()


def test_erased_space_never_parses():
    from edgeline_host.agent.idempotency import HEADER_BYTES, parse_entries

    for fill in (b"\x00", b"\xff"):
        data = b"\x00" * HEADER_BYTES + fill * 200
        assert list(parse_entries(data)) == []
