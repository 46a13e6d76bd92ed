"""Write the golden messages of the sync protocol, version 2 (docs/spec/wire.md).

    python tools/make_wire_golden.py [--out DIR] [--force]

Runs the golden conversation -- every message type once, from HELLO to the gateway's
ERROR -- through a real EdgeConnection and GatewayConnection with a fixed key, fixed
nonces and fixed records (no clock, no randomness), and writes each message's bytes to
<name>.cbor, plus a README.md with an annotated dump of each. Two runs write identical
bytes.

The conversation itself is defined once, in tests/core/test_sync.py
(golden_conversation), which replays it on CPython and MicroPython and asserts the
encoder still writes exactly these bytes and the decoder reads them;
tests/formats/test_wire_golden.py checks them against the spec with cbor2 and hmac. A wire
change gets a new version and directory (tests/golden/wire-vN/); they are never
regenerated, hence --force. Version 2 changed only HELLO (its incarnations); the files of
version 1 stay in tests/golden/wire-v1/, and its HELLO is still accepted.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(_ROOT, "core"), os.path.join(_ROOT, "tests", "core")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

DEFAULT_OUT = os.path.join(_ROOT, "tests", "golden", "wire-v2")


def messages():
    """[(stem, sender, bytes)] of the golden conversation, as the code writes it now."""
    import test_sync

    senders = dict((stem, who) for stem, who, _ in test_sync.golden_conversation())
    return [(stem, senders[stem], data) for stem, data, _ in test_sync.replay()]


def _hex_lines(data):
    for i in range(0, len(data), 16):
        yield "    %04x  %s" % (i, " ".join("%02x" % b for b in data[i:i + 16]))


def readme(msgs):
    import cbor2
    import test_sync

    out = [
        "# Golden files: sync protocol (wire) version 2",
        "",
        "Written by `tools/make_wire_golden.py` from the conversation in",
        "`tests/core/test_sync.py` (`golden_conversation`), replayed there on CPython and",
        "MicroPython; checked against `docs/spec/wire.md` with cbor2 and hmac by",
        "`tests/formats/test_wire_golden.py`. Never regenerate these: a wire change is a new",
        "version with its own directory.",
        "",
        "Fixed inputs: node `%s`; key bytes 0x20..0x3f" % test_sync.NODE,
        "(`%s`);" % test_sync.KEY.hex(),
        "client nonce bytes 0xc0..0xcf, server nonce bytes 0xd0..0xdf; the edge's",
        "max_message_bytes 16384, the gateway's defaults (1 MiB, 1000 records). Timestamps",
        "are `(ms << 16) | logical` with ms counted from %d; the batch's third entry" % test_sync.MS0,
        "has a ts below base_ts (a negative ts_delta). The HELLO names topic `temp`'s",
        "incarnation `0123456789abcdef`; `config` is not in it (legacy incarnation).",
        "",
        "| file | sender | bytes |",
        "|---|---|---|",
    ]
    for stem, who, data in msgs:
        out.append("| `%s.cbor` | %s | %d |" % (stem, who, len(data)))
    for stem, who, data in msgs:
        out += ["", "### %s.cbor" % stem, "", "```", "  %r" % (cbor2.loads(data),)]
        out += list(_hex_lines(data))
        out.append("```")
    return "\n".join(out) + "\n"


def main(argv):
    out = DEFAULT_OUT
    force = "--force" in argv
    if "--out" in argv:
        out = argv[argv.index("--out") + 1]
    if os.path.exists(os.path.join(out, "hello.cbor")) and not force:
        sys.exit("make_wire_golden: %s already holds golden files (--force to overwrite)" % out)
    os.makedirs(out, exist_ok=True)
    msgs = messages()
    for stem, _, data in msgs:
        with open(os.path.join(out, stem + ".cbor"), "wb") as f:
            f.write(data)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme(msgs))
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
