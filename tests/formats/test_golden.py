"""Golden files of the ring-log format (tests/golden/log-v2/, and the v1 files of
tests/golden/log-v1/ every newer reader still opens) against code and spec.

Theory of operation
-------------------
Three readers must agree on the same bytes:

* the code writing them — tools/make_golden.py's sequence, run again now, must produce
  byte-identical files (the format did not change by accident);
* the code reading them — RingLog and Outbox open a copy and return every record and
  the cursor;
* a parser written here from the byte tables of docs/spec/log.md alone (struct and
  zlib.crc32, nothing imported from edgeline) — so the spec and the code say the same.

Version 2 added only the incarnation file; a v1 directory (no such file) opens as the
legacy incarnation and is upgraded in place, its segments and cursor untouched.

Then I6: erased flash (all 0xFF) and zero-filled space (all 0x00) never parse, neither as
a header nor as a frame, by the spec parser or by the log.
"""
import importlib.util
import os
import shutil
import struct
import zlib

import cbor2
import pytest

from edgeline import codec
from edgeline.errors import CorruptRecord
from edgeline.log import RingLog
from edgeline.logformat import encode_frame, pack_segment_header, parse_segment_header
from edgeline.outbox import Outbox, pack_cursor_slot, parse_cursor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "log-v1")
GOLDEN_V2 = os.path.join(ROOT, "tests", "golden", "log-v2")


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", os.path.join(ROOT, "tools", "make_golden.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mg = _load_make_golden()

SEG_NAMES = ["00000000000000000001.seg", "00000000000000000005.seg", "00000000000000000007.seg"]
FORMAT_FILES = SEG_NAMES + ["uplink.cur"]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _expected_records():
    return [(seq, ts, key, value) for seq, ts, key, value, _ in mg.RECORDS]


# ---------------------------------------------------------------- the spec, as a parser
# Written from docs/spec/log.md ("Segment header", "Frame", "Outbox cursor file") only.

SPEC_HDR = 32
SPEC_OVERHEAD = 26
SPEC_NO_KEY = 0xFFFF


def spec_segment_name(name):
    """base seq from '<20 digits>.seg', or None."""
    if len(name) != 24 or not name.endswith(".seg") or not name[:20].isdigit():
        return None
    return int(name[:20])


def spec_header(data):
    """dict of the header fields if data starts with a valid v1 header, else None."""
    if len(data) < SPEC_HDR:
        return None
    magic, version, flags, header_len, base_seq, first_ts, capacity, crc = struct.unpack_from(
        "<4sBBHQQII", data, 0)
    if magic != b"ELOG" or crc != zlib.crc32(data[0:28]):
        return None
    return dict(version=version, flags=flags, header_len=header_len, base_seq=base_seq,
                first_ts=first_ts, capacity=capacity)


def spec_frames(data, capacity):
    """(frames, end): the valid frames from offset 32 on, each (offset, seq, ts, key,
    value), and the offset where the valid prefix ends."""
    frames = []
    off = SPEC_HDR
    while len(data) - off >= SPEC_OVERHEAD:
        frame_len, seq, ts, key_len = struct.unpack_from("<IQQH", data, off)
        if frame_len < SPEC_OVERHEAD or frame_len > capacity - SPEC_HDR or off + frame_len > len(data):
            break
        k = 0 if key_len == SPEC_NO_KEY else key_len
        if SPEC_OVERHEAD + k > frame_len:
            break
        (crc,) = struct.unpack_from("<I", data, off + frame_len - 4)
        if crc != zlib.crc32(data[off:off + frame_len - 4]):
            break
        key = None if key_len == SPEC_NO_KEY else bytes(data[off + 22:off + 22 + k])
        value = bytes(data[off + 22 + k:off + frame_len - 4])
        frames.append((off, seq, ts, key, value))
        off += frame_len
    return frames, off


def spec_cursor(data):
    """(acked, [(slot, acked, generation) of each valid slot])."""
    valid = []
    for slot in (0, 1):
        o = slot * 16
        if len(data) < o + 16:
            continue
        acked, generation, crc = struct.unpack_from("<QII", data, o)
        if generation != 0 and crc == zlib.crc32(data[o:o + 12]):
            valid.append((slot, acked, generation))
    if not valid:
        return 0, valid
    return max(valid, key=lambda s: s[2])[1], valid


def spec_pack_header(base_seq, first_ts, capacity):
    head = b"ELOG" + struct.pack("<BBHQQI", 1, 0, 32, base_seq, first_ts, capacity)
    return head + struct.pack("<I", zlib.crc32(head))


# ---------------------------------------------------------------- the golden directory

def test_golden_directory_holds_what_the_readme_says():
    assert sorted(os.listdir(GOLDEN)) == sorted(FORMAT_FILES + ["README.md"])
    readme = _read(os.path.join(GOLDEN, "README.md")).decode()
    for name in FORMAT_FILES:
        assert "### " + name in readme


# (a) the code still writes these bytes

def test_code_writes_the_golden_bytes(tmp_path):
    out = str(tmp_path / "log")
    mg.write_log(out)
    assert sorted(os.listdir(out)) == sorted(FORMAT_FILES + ["incarnation"])
    for name in FORMAT_FILES:
        got = _read(os.path.join(out, name))
        assert got == _read(os.path.join(GOLDEN, name)), "%s differs from the v1 golden file" % name
        assert got == _read(os.path.join(GOLDEN_V2, name)), "%s differs from the v2 golden file" % name
    assert _read(os.path.join(out, "incarnation")) == _read(os.path.join(GOLDEN_V2, "incarnation"))


def test_make_golden_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "g"
    assert mg.main(["--out", str(out)]) == 0
    assert mg.main(["--out", str(out)]) == 2
    assert "never regenerated" in capsys.readouterr().out
    for name in FORMAT_FILES + ["README.md", "incarnation"]:
        assert _read(str(out / name)) == _read(os.path.join(GOLDEN_V2, name))


# (b) the code reads them

@pytest.fixture
def golden_copy(tmp_path):
    path = str(tmp_path / "log")
    shutil.copytree(GOLDEN, path)
    return path


def test_code_reads_every_record_and_the_cursor(golden_copy):
    warnings = []
    # Default segment_bytes on purpose: existing segments keep the capacity in their header.
    log = RingLog(golden_copy, warn=warnings.append)
    assert (log.first_seq, log.last_seq, log.durable_seq, log.segment_count) == (1, 8, 8, 3)
    recs = log.read(1, 100, 1 << 20)
    assert [(r.seq, r.ts, r.key, r.value) for r in recs] == _expected_records()
    assert [r.seq for r in log.read(6, 100, 1 << 20)] == [6, 7, 8]
    assert log.last_ts == mg.RECORDS[-1][1]
    ob = Outbox(log, "uplink")
    assert (ob.acked, ob.depth, ob.gap()) == (5, 3, None)
    assert [r.seq for r in ob.peek()] == [6, 7, 8]
    assert log.stats()["corrupt"] == 0 and warnings == []
    # Opening a clean log changes nothing on disk and leaves foreign files alone; a v1
    # log is upgraded: the legacy incarnation (all zeros) is written beside it.
    for name in FORMAT_FILES + ["README.md"]:
        assert _read(os.path.join(golden_copy, name)) == _read(os.path.join(GOLDEN, name))
    assert log.incarnation == bytes(8)
    assert _read(os.path.join(golden_copy, "incarnation")) == spec_incarnation_file(bytes(8))
    # And the log continues right after the tail's last frame (I5, G3).
    assert log.append(b"next", ts=mg.RECORDS[-1][1] + 1) == 9
    ob.close()
    log.close()
    tail = _read(os.path.join(golden_copy, SEG_NAMES[-1]))
    assert tail[:129] == _read(os.path.join(GOLDEN, SEG_NAMES[-1]))
    assert len(tail) == 129 + 26 + 4


def test_code_reads_the_v2_golden_log(tmp_path):
    path = str(tmp_path / "log")
    shutil.copytree(GOLDEN_V2, path)
    log = RingLog(path)
    assert log.incarnation == mg.INCARNATION
    assert [(r.seq, r.ts, r.key, r.value) for r in log.read(1, 100, 1 << 20)] == _expected_records()
    assert Outbox(log, "uplink").acked == 5
    log.close()
    for name in os.listdir(GOLDEN_V2):
        assert _read(os.path.join(path, name)) == _read(os.path.join(GOLDEN_V2, name)), name


def test_spec_parser_reads_the_incarnation_file(tmp_path):
    data = _read(os.path.join(GOLDEN_V2, "incarnation"))
    # docs/spec/log.md, "Incarnation file": magic, version, flags, reserved, id, crc
    magic, version, flags, reserved, inc, crc = struct.unpack("<4sBBH8sI", data)
    assert (magic, version, flags, reserved) == (b"EINC", 1, 0, 0)
    assert crc == zlib.crc32(data[:16])
    assert inc == mg.INCARNATION and data == spec_incarnation_file(inc)
    # erased or zeroed, torn or rotted: not a valid file, so a log with segments refuses it
    for bad in (b"\x00" * 20, b"\xff" * 20, data[:19], data[:12] + b"\x00" + data[13:]):
        path = str(tmp_path / ("bad%d" % len(os.listdir(str(tmp_path)))))
        shutil.copytree(GOLDEN_V2, path)
        _write(os.path.join(path, "incarnation"), bad)
        with pytest.raises(CorruptRecord, match="incarnation: corrupt"):
            RingLog(path)


def spec_incarnation_file(inc):
    # docs/spec/log.md, "Incarnation file", from its table alone
    head = b"EINC" + struct.pack("<BBH", 1, 0, 0) + inc
    return head + struct.pack("<I", zlib.crc32(head))


def test_code_helpers_match_the_golden_bytes():
    for name in SEG_NAMES:
        data = _read(os.path.join(GOLDEN, name))
        base, first_ts, cap = parse_segment_header(data[:32], name)
        assert pack_segment_header(base, first_ts, cap) == data[:32]
        frames, end = spec_frames(data, cap)
        assert end == len(data)
        for off, seq, ts, key, value in frames:
            enc = encode_frame(seq, ts, key, value)
            assert enc == data[off:off + len(enc)]
    cur = _read(os.path.join(GOLDEN, "uplink.cur"))
    assert parse_cursor(cur)[:2] == (5, 2)
    assert pack_cursor_slot(2, 1) + pack_cursor_slot(5, 2) == cur


# (c) the spec, read independently, agrees

def test_spec_parser_reads_the_golden_segments():
    records = []
    for i, name in enumerate(SEG_NAMES):
        data = _read(os.path.join(GOLDEN, name))
        hdr = spec_header(data)
        assert hdr is not None, name
        assert (hdr["version"], hdr["flags"], hdr["header_len"]) == (1, 0, 32)
        assert hdr["base_seq"] == spec_segment_name(name)
        assert hdr["capacity"] == mg.SEGMENT_BYTES
        assert len(data) <= hdr["capacity"]
        frames, end = spec_frames(data, hdr["capacity"])
        assert end == len(data), "%s: bytes after the last valid frame" % name
        assert frames[0][1] == hdr["base_seq"]  # I1: base_seq is the first frame's seq
        assert frames[0][2] == hdr["first_ts"]
        assert [f[1] for f in frames] == list(mg.SEGMENTS[i][1])
        if i + 1 < len(SEG_NAMES):
            # Sealed because the next record would not fit.
            nxt = _read(os.path.join(GOLDEN, SEG_NAMES[i + 1]))
            (next_len,) = struct.unpack_from("<I", nxt, 32)
            assert len(data) + next_len > hdr["capacity"]
        records += [f[1:] for f in frames]
    seqs = [r[0] for r in records]
    assert seqs == list(range(1, len(seqs) + 1))  # I1 across segment boundaries
    assert records == _expected_records()


def test_spec_parser_agrees_with_the_code(golden_copy):
    log = RingLog(golden_copy)
    code = [(r.seq, r.ts, r.key, r.value) for r in log.read(1, 100, 1 << 20)]
    spec = []
    for name in SEG_NAMES:
        data = _read(os.path.join(golden_copy, name))
        spec += [f[1:] for f in spec_frames(data, spec_header(data)["capacity"])[0]]
    assert code == spec
    acked, valid = spec_cursor(_read(os.path.join(golden_copy, "uplink.cur")))
    assert valid == [(0, 2, 1), (1, 5, 2)]  # both slots valid, generations 1 and 2
    assert Outbox(log, "uplink").acked == acked == 5
    log.close()


def test_cbor_values_decode_the_same_with_cbor2_and_edgeline():
    cbor = [(v, py) for _, _, _, v, py in mg.RECORDS if py is not None]
    assert len(cbor) == 2
    for raw, py in cbor:
        assert cbor2.loads(raw) == py
        assert codec.loads(raw) == py
        assert codec.dumps(py) == raw == cbor2.dumps(py)


def test_spec_parser_whole_and_cut_at_every_byte():
    # Any prefix of a segment parses as a prefix of its frames, never as something else.
    for name in SEG_NAMES:
        data = _read(os.path.join(GOLDEN, name))
        full, _ = spec_frames(data, 256)
        offsets = [f[0] for f in full] + [len(data)]
        for cut in range(len(data) + 1):
            part = data[:cut]
            if cut < SPEC_HDR:
                assert spec_header(part) is None
                continue
            frames, end = spec_frames(part, 256)
            n = len([o for o in offsets[1:] if o <= cut])
            assert frames == full[:n] and end == offsets[n]
        for garbage in (b"\x00" * 40, b"\xff" * 40, bytes(range(40))):
            assert spec_frames(data + garbage, 256) == (full, len(data))


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 40, b"\xff" * 40, b"\x1a\x00\x00\x00junk"])
def test_code_recovers_every_cut_of_the_golden_tail(tmp_path, garbage):
    # The tail cut at every byte (a torn write), with or without garbage after the cut:
    # recovery keeps exactly the complete frames and truncates the rest (I5).
    tail = _read(os.path.join(GOLDEN, SEG_NAMES[-1]))
    full, _ = spec_frames(tail, 256)
    ends = [f[0] for f in full[1:]] + [len(tail)]
    for cut in range(len(tail) + 1):
        path = str(tmp_path / ("c%d" % cut))
        shutil.copytree(GOLDEN, path)
        _write(os.path.join(path, SEG_NAMES[-1]), tail[:cut] + garbage)
        log = RingLog(path)
        n = len([e for e in ends if e <= cut])
        assert log.last_seq == 6 + n, cut
        assert [r.seq for r in log.read(7, 100, 1 << 20)] == [7, 8][:n]
        log.close()
        kept = _read(os.path.join(path, SEG_NAMES[-1]))
        if n:
            assert kept == tail[:ends[n - 1]]
        shutil.rmtree(path)


# (d) I6: erased and zeroed bytes are never data

@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_erased_header_is_not_a_header(fill):
    blank = bytes([fill]) * SPEC_HDR
    assert spec_header(blank) is None
    assert parse_segment_header(blank) is None


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_erased_frame_length_is_invalid(fill):
    # frame_len 0 is below 26 and 0xFFFFFFFF above any capacity - 32.
    body = spec_pack_header(1, 0, 256) + bytes([fill]) * 224
    assert spec_frames(body, 256) == ([], SPEC_HDR)


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_erased_tail_body_yields_no_records(tmp_path, fill):
    path = str(tmp_path / "log")
    os.mkdir(path)
    _write(os.path.join(path, "00000000000000000007.seg"),
           spec_pack_header(7, 1 << 16, 256) + bytes([fill]) * 224)
    log = RingLog(path, segment_bytes=256, budget_bytes=1024)
    assert (log.last_seq, log.next_seq) == (6, 7)  # the seq comes from the name
    assert log.read(1) == []
    assert log.append(b"v", ts=2 << 16) == 7
    assert [r.value for r in log.read(1)] == [b"v"]
    log.close()


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_erased_tail_header_resets_the_tail(golden_copy, fill):
    # Recovery step 4: a tail with no valid header is reset; its frames are not trusted.
    p = os.path.join(golden_copy, SEG_NAMES[-1])
    data = _read(p)
    _write(p, bytes([fill]) * SPEC_HDR + data[SPEC_HDR:])
    log = RingLog(golden_copy)
    assert (log.first_seq, log.last_seq) == (1, 6)
    assert [r.seq for r in log.read(1, 100, 1 << 20)] == [1, 2, 3, 4, 5, 6]
    assert log.append(b"v", ts=mg.RECORDS[-1][1] + 1) == 7
    log.close()


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_erased_sealed_segment_yields_no_records(golden_copy, fill):
    # A sealed segment whose frames are erased after a valid header: nothing parses,
    # the lost seqs are counted as corrupt (I8) and the rest of the log reads.
    p = os.path.join(golden_copy, SEG_NAMES[0])
    data = _read(p)
    _write(p, data[:SPEC_HDR] + bytes([fill]) * (len(data) - SPEC_HDR))
    assert spec_frames(_read(p), 256) == ([], SPEC_HDR)
    warnings = []
    log = RingLog(golden_copy, warn=warnings.append)
    assert [r.seq for r in log.read(1, 100, 1 << 20)] == [5, 6, 7, 8]
    assert log.corrupt == 4 and len(warnings) == 1
    log.close()


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_erased_sealed_header_skips_the_segment(golden_copy, fill):
    p = os.path.join(golden_copy, SEG_NAMES[1])
    data = _read(p)
    _write(p, bytes([fill]) * SPEC_HDR + data[SPEC_HDR:])
    warnings = []
    log = RingLog(golden_copy, warn=warnings.append)
    assert [r.seq for r in log.read(1, 100, 1 << 20)] == [1, 2, 3, 4, 7, 8]
    assert log.corrupt == 2 and warnings
    log.close()
