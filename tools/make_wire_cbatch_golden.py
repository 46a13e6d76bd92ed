"""Write the golden messages of compressed batches (docs/spec/wire.md, "Compressed batches").

    python tools/make_wire_cbatch_golden.py [--out DIR] [--force]

Fixed inputs, as tests/golden/wire-v2/ (node, key, nonces, the edge's max_message_bytes
16384, the gateway's defaults): a handshake through a real EdgeConnection and
GatewayConnection over edgeline_host.wirecomp's codecs in which the edge offers both
encodings and the gateway accepts both, then

* ``cbatch-columnar.cbor``: the golden BATCH of version 2 (tests/golden/wire-v2/batch.cbor)
  as a ``columnar-1`` CBATCH;
* ``batch-sensors.cbor`` and ``cbatch-zstd.cbor``: 100 of the demo's sensor records
  (tools/datasets/sensors.py, seed 1) as a plain BATCH and as a ``zstd-columnar-1`` CBATCH.

The columnar bytes are the same on every run and runtime; a zstd frame's bytes may differ
between zstd library versions, so tests/formats/test_wire_cbatch_golden.py checks the
zstd file by what it decodes to, and the others byte for byte. Never regenerated (--force).
"""
import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(_ROOT, "core"), os.path.join(_ROOT, "host"), os.path.join(_ROOT, "tools", "datasets")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

DEFAULT_OUT = os.path.join(_ROOT, "tests", "golden", "wire-v2-cbatch")
KEY = bytes(range(0x20, 0x40))
NODE = "node-1"
CLIENT_NONCE = bytes(range(0xC0, 0xD0))
SERVER_NONCE = bytes(range(0xD0, 0xE0))


def messages():
    """[(stem, sender, bytes)] as the code writes them now."""
    import cbor2
    import sensors

    from edgeline import sync
    from edgeline.log import Record
    from edgeline_host import fastcbor, wirecomp

    ec = wirecomp.EdgeCodec()
    e = sync.EdgeConnection(NODE, KEY, lambda n: CLIENT_NONCE, max_message_bytes=16384, codec=ec.codec)
    ec.conn = e
    gc = wirecomp.GatewayCodec()
    g = sync.GatewayConnection({NODE: KEY}.get, lambda n: SERVER_NONCE, codec=gc.codec)
    gc.conn = g
    g.wirecodec = gc
    out = []

    def edge(stem, ev):
        data = e.send(ev)
        g.receive_data(data)
        got = g.next_event()
        if stem:
            out.append((stem, "edge", bytes(data)))
        return got

    def gateway(stem, ev):
        data = g.send(ev)
        e.receive_data(data)
        got = e.next_event()
        if stem:
            out.append((stem, "gateway", bytes(data)))
        return got

    hello = edge("hello", sync.Hello(capabilities={"encodings": wirecomp.offer("zstd")},
                                     incarnations={"temp": bytes.fromhex("0123456789abcdef")}))
    gateway(None, sync.Challenge())
    edge(None, sync.Auth())
    welcome = gateway("welcome", sync.Welcome(marks={"temp": 2, "config": 0},
                                              limits=wirecomp.welcome_limits(g, hello.capabilities)))
    ec.encoding = wirecomp.choose("zstd", welcome.limits)
    with open(os.path.join(_ROOT, "tests", "golden", "wire-v2", "batch.cbor"), "rb") as f:
        golden = cbor2.loads(f.read())
    # three records: sent plain by an edge (no smaller compressed), so written directly
    data = fastcbor.dumps(wirecomp.compress_batch(golden, wirecomp.COLUMNAR))
    g.receive_data(data)
    assert g.next_event() == sync.Batch(*golden[1:])
    out.append(("cbatch-columnar", "edge", data))
    recs = [Record(*r) for r in sensors.records(100)]
    plain = sync.batch_from_records("sensors", recs)
    out.append(("batch-sensors", "edge", sync.CORE_CODEC.dumps([sync.Batch.TYPE] + plain.values())))
    ec.encoding = wirecomp.ZSTD_COLUMNAR
    got = edge("cbatch-zstd", sync.batch_from_records("sensors", recs))
    assert got == plain
    return out


def readme(msgs):
    import cbor2

    out = [
        "# Golden files: compressed batches (CBATCH) within wire version 2",
        "",
        "Written by `tools/make_wire_cbatch_golden.py`; checked against `docs/spec/wire.md`",
        "(\"Compressed batches\") by `tests/formats/test_wire_cbatch_golden.py`. Never",
        "regenerated. Fixed inputs as `tests/golden/wire-v2/` (node `node-1`, key bytes",
        "0x20..0x3f, client nonce 0xc0..0xcf, server nonce 0xd0..0xdf, the edge's",
        "max_message_bytes 16384, the gateway's defaults).",
        "",
        "* `hello.cbor`: the edge offers `zstd-columnar-1`, `columnar-1` (capability `encodings`).",
        "* `welcome.cbor`: the gateway accepts both (limits `encodings`, in the edge's order).",
        "* `cbatch-columnar.cbor`: `tests/golden/wire-v2/batch.cbor`'s records as a `columnar-1` CBATCH.",
        "* `batch-sensors.cbor`: 100 sensor records (tools/datasets/sensors.py, seed 1) as a plain BATCH;",
        "  `cbatch-zstd.cbor`: the same records as a `zstd-columnar-1` CBATCH (its zstd bytes may",
        "  differ from another zstd version's; the test checks what they decode to).",
        "",
        "| file | sender | bytes |",
        "|---|---|---|",
    ]
    for stem, who, data in msgs:
        out.append("| `%s.cbor` | %s | %d |" % (stem, who, len(data)))
    for stem, _who, data in msgs:
        if stem in ("batch-sensors", "cbatch-zstd"):
            continue
        out += ["", "### %s.cbor" % stem, "", "```", "  %r" % (cbor2.loads(data),)]
        for i in range(0, len(data), 16):
            out.append("    %04x  %s" % (i, " ".join("%02x" % b for b in data[i:i + 16])))
        out.append("```")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true", help="overwrite existing golden files")
    a = ap.parse_args(argv)
    if os.path.exists(os.path.join(a.out, "hello.cbor")) and not a.force:
        sys.exit("%s holds golden files already: they are never regenerated (--force to overwrite)" % a.out)
    os.makedirs(a.out, exist_ok=True)
    msgs = messages()
    for stem, _who, data in msgs:
        with open(os.path.join(a.out, stem + ".cbor"), "wb") as f:
            f.write(data)
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(readme(msgs))
    print("wrote %d files to %s" % (len(msgs) + 1, a.out))


if __name__ == "__main__":
    main()
