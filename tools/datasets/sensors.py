"""The demo's sensor records, reproducible: what `make demo` (host/edgeline_host/fleetdemo.py)
posts to an agent, and what its board appends.

    python tools/datasets/sensors.py [--n 100] [--seed 1] [--shape agent|board]

``agent`` (the default): per tick (200 ms, a few ms of jitter) one reading of each of
four sensors, ``{"sensor": "temp-<i>", "value": round(20 + random() * 5, 2), "unit": "C",
"n": n}`` -- fleetdemo.py's formula -- appended in one millisecond, so the hybrid clock's
logical counter numbers them 0..3. ``board``: the fleet demo board's records,
``[seq, "soil-moisture", (seq % 97) * 0.25]``, 8 per 250 ms tick.

``records(n, seed, shape)`` returns [(seq, ts, key, value)] as an edge log holds them: seq
from 1, ts = ms << 16 | logical, no key, the value CBOR-encoded (edgeline.codec). Same
seed, same records, on every run. Prints the records as JSON lines.
"""
import argparse
import json
import os
import random
import sys

_CORE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "core")
if _CORE not in sys.path:
    sys.path.insert(0, _CORE)

from edgeline import codec  # noqa: E402

MS0 = 1765152000000  # 2025-12-08T00:00:00Z


def values(n, seed=1, shape="agent"):
    """[(ms, logical, python value)] of n records."""
    rnd = random.Random(seed)
    out = []
    ms = MS0
    if shape == "board":
        per_tick, tick = 8, 250
    elif shape == "agent":
        per_tick, tick = 4, 200
    else:
        raise ValueError("shape is agent or board, not %r" % (shape,))
    while len(out) < n:
        for j in range(per_tick):
            i = len(out)
            if i == n:
                break
            if shape == "agent":
                v = {"sensor": "temp-%d" % (i % 4), "value": round(20 + rnd.random() * 5, 2), "unit": "C", "n": i}
            else:
                s = i + 1
                v = [s, "soil-moisture", (s % 97) * 0.25]
            out.append((ms, j, v))
        ms += tick + rnd.randint(0, 3)
    return out


def records(n, seed=1, shape="agent"):
    return [(i + 1, (ms << 16) | logical, None, codec.dumps(v)) for i, (ms, logical, v) in enumerate(values(n, seed, shape))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shape", choices=("agent", "board"), default="agent")
    a = ap.parse_args(argv)
    for i, (ms, logical, v) in enumerate(values(a.n, a.seed, a.shape)):
        print(json.dumps({"seq": i + 1, "ts": (ms << 16) | logical, "key": None, "value": v}, separators=(",", ":")))


if __name__ == "__main__":
    main()
