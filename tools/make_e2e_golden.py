"""Write the test vectors of the end-to-end envelope, version 1 (docs/spec/e2e.md).

    python tools/make_e2e_golden.py [--out DIR] [--force]

The vectors are sealed by ``edgeline_host.e2ecrypto`` (the `cryptography` package), not by
the core module the boards run, so the core's test (tests/core/test_e2e.py, on CPython
and MicroPython) checks the boards' code against an independent implementation. Fixed
keys, headers and values: two runs write identical bytes. Writes vectors.json (read by
the tests) and README.md (the same, annotated). A format change gets a new directory
(tests/golden/e2e-v2/); these files are never regenerated, hence --force.
"""
import argparse
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(_ROOT, "core"), os.path.join(_ROOT, "host")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from edgeline_host import e2ecrypto  # noqa: E402

DEFAULT_OUT = os.path.join(_ROOT, "tests", "golden", "e2e-v1")
SECRET_1 = bytes(range(32))
SECRET_2 = bytes(range(0x40, 0x60))
# A table register put (docs/spec/tables.md, "Encoding"): [1, 0, ["cloud", 3, "store-1", 7], value]
TABLE_PREFIX = bytes.fromhex("84 01 00 84 65636c6f7564 03 6773746f72652d31 07")

# name, what, secret, topic, key_id, origin, incarnation, seq, ts, key, prefix, value
CASES = [
    ("stream", "stream record, legacy incarnation, no key, key id 1; value {\"t\": 21.5}",
     SECRET_1, "sensors/temp", 1, "node-1", None, 1, 1733616000000 << 16, None, b"",
     bytes.fromhex("a1 61 74 fb 4035800000000000")),
    ("rotated", "stream record, incarnation set, key id 300 (a rotated key); 40-byte value: three counter blocks",
     SECRET_2, "pos/sales", 300, "store-7.till-2", bytes.fromhex("0123456789abcdef"), 2 ** 40 + 5,
     (1733616000123 << 16) | 7, None, b"", bytes(range(40))),
    ("table", "table register put: key readable, the write's ctx readable and authenticated (prefix); value {\"qty\": 5}",
     SECRET_1, "inventory", 1, "store-1", bytes.fromhex("00000000000000ff"), 8, 1733616000500 << 16,
     b"sku-1", TABLE_PREFIX, bytes.fromhex("a1 63717479 05")),
    ("empty-key", "a record whose key is the empty byte string (not absent: another header); value null",
     SECRET_1, "sensors/temp", 1, "node-1", None, 2, 1733616000001 << 16, b"", b"", b"\xf6"),
]


def _hex(b):
    return None if b is None else bytes(b).hex()


def vectors():
    out = []
    for name, what, secret, topic, kid, origin, inc, seq, ts, key, prefix, value in CASES:
        dk = e2ecrypto.DerivedKeys(topic, kid, secret)
        ad = e2ecrypto.associated_data(kid, topic, origin, inc, seq, ts, key, prefix)
        env = e2ecrypto.seal(dk, origin, inc, seq, ts, key, value, prefix)
        out.append({"name": name, "what": what, "topic_key": _hex(secret), "topic": topic, "key_id": kid,
                    "origin": origin, "incarnation": _hex(inc), "seq": seq, "ts": ts, "key": _hex(key),
                    "prefix": _hex(prefix), "value": _hex(value), "enc_key": _hex(dk.enc_key),
                    "iv_key": _hex(dk.iv_key), "mac_key": _hex(dk.mac_key), "ad": _hex(ad),
                    "iv": _hex(e2ecrypto._mac(dk.iv_key, ad)[:16]), "envelope": _hex(env)})
    return out


def readme(vecs):
    lines = ["# Test vectors of the end-to-end envelope, version 1 (docs/spec/e2e.md)", "",
             "Written by `tools/make_e2e_golden.py` with `edgeline_host.e2ecrypto` (the `cryptography`",
             "package); checked by `tests/core/test_e2e.py` (the boards' code, on CPython and MicroPython)",
             "and `tests/shared/test_e2ecrypto.py` (both implementations, and the spec's copy of them).",
             "`vectors.json` is what the tests read; hex throughout, `null` for an absent field",
             "(incarnation: the legacy all-zero one). Never regenerated: a new format version gets",
             "a new directory.", "",
             "`sensors%2Ftemp.e2e.json` beside them is an operator's topic key file of format 1",
             "(spec, \"Key management\"; written by hand, not by this tool): key id 1 is the",
             "\"stream\" vector's topic key, retired; 2 active; 3 revoked and purged.", ""]
    for v in vecs:
        lines += ["## %s" % v["name"], "", v["what"], "", "```"]
        for k in ("topic_key", "topic", "key_id", "origin", "incarnation", "seq", "ts", "key", "prefix",
                  "value", "enc_key", "iv_key", "mac_key", "ad", "iv", "envelope"):
            lines.append("%-12s %s" % (k, "null" if v[k] is None else v[k]))
        lines += ["```", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true", help="overwrite existing files")
    a = ap.parse_args(argv)
    path = os.path.join(a.out, "vectors.json")
    if os.path.exists(path) and not a.force:
        print("%s exists: golden files are never regenerated (--force to overwrite)" % path)
        return 1
    os.makedirs(a.out, exist_ok=True)
    vecs = vectors()
    with open(path, "w") as f:
        json.dump(vecs, f, indent=1)
        f.write("\n")
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(readme(vecs))
    print("wrote %d vectors to %s" % (len(vecs), a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
