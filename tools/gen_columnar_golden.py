"""Write the golden batches of the columnar encoding, version 1 (docs/spec/columnar.md).

    python tools/gen_columnar_golden.py [--out DIR] [--force]

The batches -- their records fixed, no clock, no randomness -- are defined once, in
tests/core/test_columnar.py (golden_batches), which encodes them on CPython and
MicroPython and asserts the bytes of these files, and decodes the files back to the
records. Each batch goes to <stem>.col, plus a README.md with a hex dump of each. A format
change gets a new version and directory (tests/golden/columnar-vN/); these are never
regenerated, hence --force.
"""
import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(_ROOT, "core"), os.path.join(_ROOT, "tests", "core")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

DEFAULT_OUT = os.path.join(_ROOT, "tests", "golden", "columnar-v1")

README_HEAD = """# Golden files: columnar batches, format version 1

Written by `tools/gen_columnar_golden.py` from `golden_batches()` in
`tests/core/test_columnar.py`, which encodes the same records on CPython and MicroPython
and asserts these bytes, and decodes each file back to its records. Specified in
`docs/spec/columnar.md`. Never regenerate these: a format change is a new version with
its own directory.

Records: timestamps are `(ms << 16) | logical` from ms 1700000000000; values are CBOR as
`edgeline.codec` writes it (maps in the key order shown), except where said.

| file | records | bytes | what |
|---|---|---|---|
"""

WHAT = {
    "empty": "no records: version and count only",
    "sensors": "the demo's sensor maps (sensor, value, unit, n): one shape, decimal floats",
    "board": 'a board\'s `[seq, "soil-moisture", float]` arrays: columns by position',
    "mixed": "keys, seq gaps, a ts going back, a non-CBOR value, a tag, -0.0, a NaN payload, Gorilla floats",
}


def batches():
    import test_columnar
    from edgeline.columnar import encode

    return [(stem, recs, encode(recs)) for stem, recs in test_columnar.golden_batches()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true", help="overwrite existing golden files")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    lines = [README_HEAD]
    dumps = []
    for stem, recs, data in batches():
        path = os.path.join(a.out, stem + ".col")
        if os.path.exists(path) and not a.force:
            with open(path, "rb") as f:
                if f.read() != data:
                    sys.exit("%s differs from what the code writes now; refusing without --force" % path)
        with open(path, "wb") as f:
            f.write(data)
        lines.append("| `%s.col` | %d | %d | %s |\n" % (stem, len(recs), len(data), WHAT.get(stem, "")))
        dumps.append("\n### %s.col\n\n```\n" % stem)
        for i in range(0, len(data), 16):
            dumps.append("%04x  %s\n" % (i, " ".join("%02x" % b for b in data[i:i + 16])))
        dumps.append("```\n")
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write("".join(lines + dumps))
    print("wrote %d golden batches to %s" % (len(lines) - 1, a.out))


if __name__ == "__main__":
    main()
