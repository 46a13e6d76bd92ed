"""Cost of the end-to-end envelope (docs/spec/e2e.md) per record, against encoding the value.

    python tools/bench/bench_e2e.py [--records N] [--json]

One workload (WORK below) runs on every runtime: seal then unseal N records of a 12-byte
and of a 100-byte CBOR value, each under its own identity, and, as the baseline of the
same run on the same runtime, the core codec's ``dumps`` of the value (what an append
pays today). Runtimes: CPython with the host module (``edgeline_host.e2ecrypto``,
`cryptography`), CPython with the core module (the Python AES fallback: what a runtime
without a native AES pays), and MicroPython's unix port with the core module
(``cryptolib`` AES, from source; a board runs it as .mpy). Figures are microseconds per
record and the ratio to the baseline; nothing is asserted.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

WORK = r"""
import sys
sys.path[:0] = [%(core)r, %(host)r]
try:
    from time import ticks_us, ticks_diff
except ImportError:
    from time import perf_counter
    def ticks_us():
        return int(perf_counter() * 1e6)
    def ticks_diff(a, b):
        return a - b
from edgeline import codec
N = %(n)d
MODE = %(mode)r
if MODE == "host":
    from edgeline_host import e2ecrypto as m
    tk = m.DerivedKeys("sensors/temp", 1, bytes(32))
    def seal(i, v):
        return m.seal(tk, "node-1", None, i, i << 16, None, v)
    def unseal(i, e):
        return m.unseal({1: tk}, "node-1", None, i, i << 16, None, e)
else:
    from edgeline import e2e as m
    tk = m.TopicKey("sensors/temp", 1, bytes(32))
    def seal(i, v):
        return m.seal(tk, "node-1", None, i, i << 16, None, v)
    def unseal(i, e):
        return m.unseal(tk, "node-1", None, i, i << 16, None, e)
out = {}
for name, value in (("12B", {"t": 21.5}), ("100B", {"sensor": "boiler-room-3", "readings": [1.5, 2.25, 3.0, 4.5, 5.75, 6.0, 7.25, 8.5], "ok": True})):
    t = ticks_us()
    for i in range(1, N + 1):
        b = codec.dumps(value)
    base = ticks_diff(ticks_us(), t) / N
    envs = []
    t = ticks_us()
    for i in range(1, N + 1):
        envs.append(seal(i, b))
    s = ticks_diff(ticks_us(), t) / N
    t = ticks_us()
    for i in range(1, N + 1):
        unseal(i, envs[i - 1])
    u = ticks_diff(ticks_us(), t) / N
    out[name] = [len(b), len(envs[0]), base, s, u]
print("RESULT " + repr(out))
"""


def run(exe, mode, n):
    code = WORK % {"core": os.path.join(ROOT, "core"), "host": os.path.join(ROOT, "host"), "n": n, "mode": mode}
    heap = ["-X", "heapsize=16m"] if "micropython" in os.path.basename(exe) else []
    p = subprocess.run([exe] + heap + ["-c", code], capture_output=True, text=True, timeout=600)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        raise RuntimeError("%s %s failed:\n%s%s" % (exe, mode, p.stdout, p.stderr))
    import ast

    return ast.literal_eval(line[-1][7:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    runs = [("CPython, host (cryptography)", sys.executable, "host"),
            ("CPython, core (Python AES)", sys.executable, "core")]
    mp = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.path.exists(mp):
        runs.append(("MicroPython unix, core (cryptolib)", mp, "core"))
    for label, exe, mode in runs:
        n = a.records if mode == "host" or "Micro" in label else max(200, a.records // 5)
        for size, (plain, sealed, base, s, u) in sorted(run(exe, mode, n).items()):
            rows.append({"runtime": label, "value": size, "plain_bytes": plain, "envelope_bytes": sealed,
                         "encode_us": round(base, 2), "seal_us": round(s, 2), "unseal_us": round(u, 2),
                         "seal_x_encode": round(s / base, 1) if base else None, "records": n})
    if a.json:
        print(json.dumps(rows))
        return 0
    print("%-36s %-5s %6s %6s %9s %8s %8s %6s" % ("runtime", "value", "plain", "sealed", "encode_us", "seal_us",
                                                  "open_us", "seal/x"))
    for r in rows:
        print("%-36s %-5s %6d %6d %9.2f %8.2f %8.2f %6.1f" % (r["runtime"], r["value"], r["plain_bytes"],
                                                            r["envelope_bytes"], r["encode_us"], r["seal_us"],
                                                            r["unseal_us"], r["seal_x_encode"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
