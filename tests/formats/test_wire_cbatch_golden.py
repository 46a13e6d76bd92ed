"""Golden compressed batches (tests/golden/wire-v2-cbatch/) against docs/spec/wire.md,
"Compressed batches": read with cbor2 and zstandard, the columnar bodies with the core's
decoder (its own golden files pin it: docs/spec/columnar.md), and the generator still
writes the same bytes (the zstd frame: the same records)."""
import importlib.util
import os

import cbor2
import zstandard

from edgeline import columnar

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden", "wire-v2-cbatch")
V2 = os.path.join(ROOT, "tests", "golden", "wire-v2")


def _read(stem, where=GOLDEN):
    with open(os.path.join(where, stem + ".cbor"), "rb") as f:
        return f.read()


def _expand(cbatch):
    """The BATCH a CBATCH carries, by the spec's words (C2), read independently."""
    assert cbatch[0] == 11 and len(cbatch) >= 4
    topic, encoding, body = cbatch[1], cbatch[2], cbatch[3]
    assert type(encoding) is str and type(body) is bytes
    if encoding == "zstd-columnar-1":
        p = zstandard.get_frame_parameters(body)
        assert p.content_size != zstandard.CONTENTSIZE_UNKNOWN and p.dict_id == 0
        dobj = zstandard.ZstdDecompressor().decompressobj()
        body2 = dobj.decompress(body)
        assert dobj.eof and not dobj.unused_data and len(body2) == p.content_size
        body = body2
    else:
        assert encoding == "columnar-1"
    recs = columnar.decode(body)
    first, base = recs[0][0], recs[0][1]
    assert [r[0] for r in recs] == list(range(first, first + len(recs)))  # consecutive
    return [5, topic, first, base, [[r[1] - base, r[2], r[3]] for r in recs]]


def test_handshake_offers_and_accepts():
    hello = cbor2.loads(_read("hello"))
    old = cbor2.loads(_read("hello", V2))
    assert hello[0] == 1 and hello[1] == 2
    assert hello[4]["encodings"] == ["zstd-columnar-1", "columnar-1"]
    assert {k: v for k, v in hello[4].items() if k != "encodings"} == {"max_message_bytes": 16384}
    assert hello[5] == old[5]
    welcome = cbor2.loads(_read("welcome"))
    v2 = cbor2.loads(_read("welcome", V2))
    assert welcome[:3] == v2[:3]  # same proof, same marks
    assert welcome[3] == dict(v2[3], encodings=["zstd-columnar-1", "columnar-1"])
    for m in (hello[4], welcome[3]):  # canonical key order, as the spec asks of senders
        enc = [cbor2.dumps(k) for k in m]
        assert enc == sorted(enc)


def test_cbatch_carries_the_golden_batch():
    raw = _read("cbatch-columnar")
    cb = cbor2.loads(raw)
    assert cbor2.dumps(cb) == raw
    assert cb[:3] == [11, "temp", "columnar-1"]
    assert _expand(cb) == cbor2.loads(_read("batch", V2))
    # 100 sensor records, zstd'd: the plain BATCH beside it, and far smaller
    plain = cbor2.loads(_read("batch-sensors"))
    zb = cbor2.loads(_read("cbatch-zstd"))
    assert zb[:3] == [11, "sensors", "zstd-columnar-1"]
    assert _expand(zb) == plain and len(plain[4]) == 100
    assert len(_read("cbatch-zstd")) * 10 < len(_read("batch-sensors"))


def test_generator_still_writes_these_bytes():
    spec = importlib.util.spec_from_file_location("mkcb", os.path.join(ROOT, "tools", "make_wire_cbatch_golden.py"))
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    msgs = mk.messages()
    assert sorted(s + ".cbor" for s, _, _ in msgs) == sorted(n for n in os.listdir(GOLDEN) if n.endswith(".cbor"))
    for stem, _who, data in msgs:
        if stem == "cbatch-zstd":  # zstd's bytes may change between library versions; what they hold may not
            assert _expand(cbor2.loads(data)) == _expand(cbor2.loads(_read(stem)))
        else:
            assert data == _read(stem), stem
