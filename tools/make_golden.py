"""Write the golden files of the ring-log format, version 2 (docs/spec/log.md).

    python tools/make_golden.py [--out DIR] [--force]

Writes, with the real RingLog and Outbox over real files, a small log directory: two
sealed segments and a tail, keyed, unkeyed and empty-keyed records, CBOR and raw values,
an empty value, the cursor file of consumer "uplink" after two acks (so both of its
slots are valid) and the log's incarnation file (a fixed id, written before the log is
opened, as a new log would have written a random one), plus a README.md with an annotated hex dump of every file. Everything
is fixed — timestamps included, no clock is read — so two runs write identical bytes.

The golden files are a compatibility contract: tests/formats/test_golden.py checks that the
code still writes exactly these bytes, still reads them, and that a parser written from
the spec's byte tables agrees. A format change gets a new version and a new directory
(tests/golden/log-vN/); they are never regenerated, hence --force. Version 2 added only
the incarnation file: its segments and cursor are byte for byte those of
tests/golden/log-v1/, which the test checks.
"""
import os
import struct
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(_ROOT, "core") not in sys.path:
    sys.path.insert(0, os.path.join(_ROOT, "core"))

DEFAULT_OUT = os.path.join(_ROOT, "tests", "golden", "log-v2")
INCARNATION = bytes.fromhex("0123456789abcdef")  # the golden log's incarnation id

SEGMENT_BYTES = 256
BUDGET_BYTES = 4096
CONSUMER = "uplink"
ACKS = (2, 5)  # the cursor after these: slot 0 = (2, gen 1), slot 1 = (5, gen 2)

_MS0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def _ts(ms, logical=0):
    return ((_MS0 + ms) << 16) | logical


# (seq, ts, key, value bytes, value as Python or None when the value is raw bytes).
# CBOR values are spelled out as bytes so these files do not depend on edgeline's codec;
# the test decodes them with cbor2 and with edgeline.codec.
RECORDS = [
    (1, _ts(0), None, b"hello", None),
    (2, _ts(1000), b"sensor-1",
     bytes.fromhex("a26174fb40358000000000006272681828"), {"t": 21.5, "rh": 40}),
    (3, _ts(1000, 1), b"", b"", None),  # empty key (key_len 0) and empty value
    (4, _ts(2000), None, bytes(range(64)), None),
    (5, _ts(3000), b"sensor-2",
     bytes.fromhex("860121657468726565f6f54200ff"), [1, -2, "three", None, True, b"\x00\xff"]),
    (6, _ts(4000), None, b"A" * 100, None),
    (7, _ts(5000), b"k", b"x" * 40, None),
    (8, _ts(6000), None, b"tail", None),
]

# Which segment each record lands in (base seqs), for the README and the tests.
SEGMENTS = [(1, (1, 2, 3, 4)), (5, (5, 6)), (7, (7, 8))]


def write_log(path):
    """Write the golden log into the directory path (created; must hold no log)."""
    from edgeline.log import RingLog
    from edgeline.outbox import Outbox
    from edgeline.storage import FileStorage

    os.makedirs(path, exist_ok=True)
    inc_path = os.path.join(path, "incarnation")
    if not os.path.exists(inc_path):
        # docs/spec/log.md, "Incarnation file": what a new log writes, with a fixed id
        import zlib

        head = b"EINC" + struct.pack("<BBH", 1, 0, 0) + INCARNATION
        with open(inc_path, "wb") as f:
            f.write(head + struct.pack("<I", zlib.crc32(head)))
    log = RingLog(path, storage=FileStorage(), segment_bytes=SEGMENT_BYTES, budget_bytes=BUDGET_BYTES,
                  full_policy="reject", sync="none")
    if log.last_seq:
        raise SystemExit("make_golden: %s already holds a log" % path)
    ob = Outbox(log, CONSUMER)
    for seq, ts, key, value, _ in RECORDS:
        got = log.append(value, ts=ts, key=key)
        if got != seq:
            raise SystemExit("make_golden: record %d got seq %d" % (seq, got))
    for seq in ACKS:
        ob.ack(seq)
    ob.close()
    log.close()


# ---------------------------------------------------------------- README with hex dumps

def _hex(b):
    return " ".join("%02x" % c for c in b)


def _rows(lines, off, data, what):
    """One field: offset, up to 16 bytes of hex per row, and its meaning on the first row."""
    if not data:
        lines.append("    %04x  %-47s  %s" % (off, "(no bytes)", what))
        return
    for i in range(0, len(data), 16):
        lines.append(("    %04x  %-47s  %s" % (off + i, _hex(data[i:i + 16]), what if i == 0 else "")).rstrip())


def _describe_segment(name, data, sealed):
    magic, version, flags, hlen, base, first_ts, cap, crc = struct.unpack_from("<4sBBHQQII", data, 0)
    lines = []
    frames = []
    off = 32
    while off < len(data):
        flen = struct.unpack_from("<I", data, off)[0]
        frames.append((off, data[off:off + flen]))
        off += flen
    lines.append("### %s" % name)
    lines.append("")
    lines.append("%s segment, base_seq %d, %d records (seq %d-%d), %d of %d bytes."
                 % ("Sealed" if sealed else "Tail", base, len(frames), base, base + len(frames) - 1,
                    len(data), cap))
    lines.append("")
    lines.append("```")
    lines.append("  header")
    _rows(lines, 0, data[0:4], "magic %r" % magic.decode())
    _rows(lines, 4, data[4:5], "version %d" % version)
    _rows(lines, 5, data[5:6], "flags %d" % flags)
    _rows(lines, 6, data[6:8], "header_len %d" % hlen)
    _rows(lines, 8, data[8:16], "base_seq %d" % base)
    _rows(lines, 16, data[16:24], "first_ts %d (%d ms, logical %d)" % (first_ts, first_ts >> 16, first_ts & 0xFFFF))
    _rows(lines, 24, data[24:28], "capacity %d" % cap)
    _rows(lines, 28, data[28:32], "crc 0x%08x (bytes 0-27)" % crc)
    for foff, fr in frames:
        flen, seq, ts, klen = struct.unpack_from("<IQQH", fr, 0)
        k = 0 if klen == 0xFFFF else klen
        lines.append("  frame seq %d at offset %d, %d bytes" % (seq, foff, flen))
        _rows(lines, foff, fr[0:4], "frame_len %d" % flen)
        _rows(lines, foff + 4, fr[4:12], "seq %d" % seq)
        _rows(lines, foff + 12, fr[12:20], "ts %d (%d ms, logical %d)" % (ts, ts >> 16, ts & 0xFFFF))
        _rows(lines, foff + 20, fr[20:22], "key_len %s" % ("0xffff: no key" if klen == 0xFFFF else klen))
        if klen != 0xFFFF:
            _rows(lines, foff + 22, fr[22:22 + k], "key %r" % bytes(fr[22:22 + k]))
        value = bytes(fr[22 + k:flen - 4])
        pyval = [r[4] for r in RECORDS if r[0] == seq][0]
        what = "value, CBOR of %r" % (pyval,) if pyval is not None else "value, %d raw bytes" % len(value)
        _rows(lines, foff + 22 + k, value, what)
        _rows(lines, foff + flen - 4, fr[flen - 4:flen], "crc 0x%08x (frame bytes 0-%d)"
              % (struct.unpack_from("<I", fr, flen - 4)[0], flen - 5))
    lines.append("```")
    lines.append("")
    return lines


def _describe_cursor(name, data):
    lines = ["### %s" % name, "",
             "Cursor of consumer %r after ack(%d) then ack(%d): each update wrote the slot not"
             % (CONSUMER, ACKS[0], ACKS[1]),
             "holding the current value, so both slots are valid; the larger generation wins"
             " (acked %d)." % ACKS[1], "", "```"]
    for slot in (0, 1):
        o = slot * 16
        acked, gen, crc = struct.unpack_from("<QII", data, o)
        lines.append("  slot %d" % slot)
        _rows(lines, o, data[o:o + 8], "acked seq %d" % acked)
        _rows(lines, o + 8, data[o + 8:o + 12], "generation %d" % gen)
        _rows(lines, o + 12, data[o + 12:o + 16], "crc 0x%08x (slot bytes 0-11)" % crc)
    lines.append("```")
    lines.append("")
    return lines


def _describe_incarnation(name, data):
    magic, version, flags, _res, inc, crc = struct.unpack_from("<4sBBH8sI", data, 0)
    lines = ["### %s" % name, "", "The log's incarnation id, written before its first segment.", "", "```"]
    _rows(lines, 0, data[0:4], "magic %r" % magic.decode())
    _rows(lines, 4, data[4:5], "version %d" % version)
    _rows(lines, 5, data[5:6], "flags %d" % flags)
    _rows(lines, 6, data[6:8], "reserved")
    _rows(lines, 8, data[8:16], "incarnation %s" % inc.hex())
    _rows(lines, 16, data[16:20], "crc 0x%08x (bytes 0-15)" % crc)
    lines.append("```")
    lines.append("")
    return lines


def write_readme(path):
    names = sorted(os.listdir(path))
    segs = [n for n in names if n.endswith(".seg")]
    lines = [
        "# Golden files: ring log format version 2",
        "",
        "Written by `tools/make_golden.py` with the real RingLog and Outbox (segment_bytes %d,"
        % SEGMENT_BYTES,
        "fixed timestamps); checked by `tests/formats/test_golden.py` against the code and against",
        "a parser written from `docs/spec/log.md`. Never regenerate these: a format change is a",
        "new version with its own directory. This README is itself a file the log must ignore.",
        "",
        "| file | holds |",
        "|---|---|",
    ]
    for i, (base, seqs) in enumerate(SEGMENTS):
        lines.append("| `%s` | %s segment: records %d-%d |" % (
            segs[i], "sealed" if i < len(SEGMENTS) - 1 else "tail", seqs[0], seqs[-1]))
    lines.append("| `incarnation` | the log's incarnation id %s |" % INCARNATION.hex())
    lines.append("| `%s.cur` | outbox cursor of %r: acked %d, both slots valid |" % (CONSUMER, CONSUMER, ACKS[-1]))
    lines += [
        "",
        "Records: ts is `(ms << 16) | logical` with ms counted from %d; seq 2 and 5 carry CBOR" % _MS0,
        "values, seq 3 has an empty key (key_len 0, unlike key_len 0xffff: no key) and an empty",
        "value. Each sealed segment ends where the next record would not fit in its 256 bytes.",
        "All integers are little-endian; every crc is CRC32 (zlib.crc32).",
        "",
    ]
    for i, name in enumerate(segs):
        with open(os.path.join(path, name), "rb") as f:
            lines += _describe_segment(name, f.read(), i < len(segs) - 1)
    with open(os.path.join(path, CONSUMER + ".cur"), "rb") as f:
        lines += _describe_cursor(CONSUMER + ".cur", f.read())
    with open(os.path.join(path, "incarnation"), "rb") as f:
        lines += _describe_incarnation("incarnation", f.read())
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="Write the ring-log v2 golden files.")
    ap.add_argument("--out", default=DEFAULT_OUT, help="directory to write (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace the golden files already there")
    args = ap.parse_args(argv)
    out = args.out
    if os.path.isdir(out) and os.listdir(out):
        if not args.force:
            print("make_golden: %s is not empty; golden files are never regenerated (use --force)" % out)
            return 2
        for name in os.listdir(out):
            if name.endswith((".seg", ".cur", ".md", ".tmp")) or name == "incarnation":
                os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    write_log(out)
    write_readme(out)
    print("make_golden: wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
