"""Golden table writes (tests/golden/table-v1/) against docs/spec/tables.md, "Encoding".

cbor2 reads each file as an independent reader and every field is checked against the
spec's layout; then edgeline.table reads it and writes it back byte for byte.
"""
import os

import cbor2

from edgeline import codec
from edgeline.table import OP_DELETE, OP_PUT, TOMBSTONE, field_value, read_value, write_value

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "table-v1")


def _read(name):
    with open(os.path.join(GOLDEN, name + ".cbor"), "rb") as f:
        return f.read()


def _is_ctx(ctx):
    writers = ctx[0::2]
    return (isinstance(ctx, list) and len(ctx) % 2 == 0 and writers == sorted(set(writers))
            and all(isinstance(w, str) for w in writers) and all(isinstance(s, int) and s >= 1 for s in ctx[1::2]))


def test_golden_files_follow_the_layout():
    assert cbor2.loads(_read("put")) == [1, 0, ["cloud", 3, "store-1", 7], {"qty": 5}]
    assert cbor2.loads(_read("delete")) == [1, 1, ["store-1", 7], None]
    assert cbor2.loads(_read("counter")) == [1, 2, [], 12]
    version, op, ops = cbor2.loads(_read("map"))
    assert (version, op) == (1, 3)
    assert ops == [["qty", 0, ["cloud", 1], 5], ["note", 1, [], None]]
    for name in ("put", "delete", "counter"):
        v = cbor2.loads(_read(name))
        assert len(v) == 4 and _is_ctx(v[2])
        assert (v[3] is None) == (v[1] == 1)
    for f in ops:
        assert _is_ctx(f[2]) and (f[3] is None) == (f[1] == 1)


def test_edgeline_reads_and_rewrites_them_byte_for_byte():
    for name in ("put", "delete", "counter"):
        data = _read(name)
        [(field, op, ctx, value)] = read_value(codec.loads(data))
        assert field is None
        assert codec.dumps(write_value(op, ctx, value)) == data
        assert (value is TOMBSTONE) == (op == OP_DELETE)
    data = _read("map")
    ops = read_value(codec.loads(data))
    assert [o[1] for o in ops] == [OP_PUT, OP_DELETE]
    assert codec.dumps(field_value(ops)) == data


def test_a_relayed_write_follows_the_layout_and_is_rewritten_byte_for_byte():
    from edgeline_host.tables import OP_RELAY, read_relay, relay_value

    data = _read("relay")
    item = cbor2.loads(data)
    assert item[:5] == [1, OP_RELAY, "store-1", 7, 1000] and OP_RELAY == 4
    assert cbor2.loads(item[5]) == [1, 0, ["cloud", 3], {"qty": 5}]
    writer, seq, ts, value = read_relay(codec.loads(data))
    assert (writer, seq, ts) == ("store-1", 7, 1000)
    assert read_value(codec.loads(value)) == [(None, OP_PUT, ("cloud", 3), {"qty": 5})]
    assert relay_value(writer, seq, ts, value) == data


CONFLICT_IDENT = ("sku-1", None, "update_delete", (("cloud", 4), ("store-1~00000000000000a1", 3)))
CONFLICT_ROW = {"key": "sku-1", "field": None, "type": "update_delete",
                "versions": [{"writer": "cloud", "seq": 4, "ts": 7000, "deleted": True},
                             {"writer": "store-1~00000000000000a1", "seq": 3, "ts": 7001, "value": {"qty": 5}}],
                "found_by": ["store-1~00000000000000a1", 3]}


def test_the_conflict_log_file_follows_the_layout(tmp_path):
    """tables.md, "The conflict log file": header, one entry, read by struct and cbor2
    alone; edgeline reads it and writes the same bytes."""
    import struct
    import zlib

    from edgeline_host.tables import ConflictLog

    with open(os.path.join(GOLDEN, "conflicts.cl"), "rb") as f:
        data = f.read()
    magic, version, flags, reserved, crc = struct.unpack_from("<4sHHII", data, 0)
    assert (magic, version, flags, reserved) == (b"ELCL", 1, 0, 0) and crc == zlib.crc32(data[:12])
    (n,) = struct.unpack_from("<I", data, 16)
    assert len(data) == 16 + 4 + n + 4
    assert struct.unpack_from("<I", data, 20 + n)[0] == zlib.crc32(data[16:20 + n])
    key, field, ctype, dots, row = cbor2.loads(data[20:20 + n])
    assert (key, field, ctype, dots) == ("sku-1", None, "update_delete", ["cloud", 4, "store-1~00000000000000a1", 3])
    assert row == CONFLICT_ROW
    p = tmp_path / "inv.cl"
    p.write_bytes(data)
    c = ConflictLog(str(p))
    assert c.rows == [(CONFLICT_IDENT, CONFLICT_ROW)] and c.cut_bytes == 0
    c.close()
    fresh = ConflictLog(str(tmp_path / "new.cl"))
    fresh.append(CONFLICT_IDENT, CONFLICT_ROW)
    fresh.close()
    assert (tmp_path / "new.cl").read_bytes() == data
