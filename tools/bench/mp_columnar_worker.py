# The CPU workload bench_columnar.py runs, unchanged, under CPython and under MicroPython's
# unix port (compiled to .mpy there): encode and decode batches of records with the
# columnar encoding and, as the baseline, the CBOR of today's BATCH entries.
#
#   main([DATA_FILE, BATCH, REPS])
#
# DATA_FILE: one CBOR item, {dataset name: [[seq, ts, key, value], ...]} (written by
# bench_columnar.py from tools/datasets/). Prints one JSON line: per dataset the columnar
# bytes (to compare with CPython's: the encoder must write the same bytes everywhere) and
# microseconds per record for each of the four operations (best of REPS).
import json
import sys

try:
    from time import ticks_diff, ticks_us

    def _now():
        return ticks_us()

    def _us(t0):
        return ticks_diff(ticks_us(), t0)

except ImportError:
    from time import perf_counter

    def _now():
        return perf_counter()

    def _us(t0):
        return (perf_counter() - t0) * 1e6

from edgeline import codec
from edgeline.columnar import decode, encode


def _batches(recs, size):
    out = []
    for i in range(0, len(recs), size):
        out.append(recs[i:i + size])
    return out


def _wire(batch):
    # the CBOR of a BATCH message (wire.md): [5, topic, first_seq, base_ts, entries]
    base = batch[0][1]
    return codec.dumps([5, "t", batch[0][0], base, [[r[1] - base, r[2], r[3]] for r in batch]])


def main(argv):
    path, size, reps = argv[0], int(argv[1]), int(argv[2])
    with open(path, "rb") as f:
        data = codec.loads(f.read())
    result = {"impl": sys.implementation.name, "batch": size, "datasets": {}}
    for name in sorted(data):
        recs = [tuple(r) for r in data[name]]
        batches = _batches(recs, size)
        n = len(recs)
        best = {}
        col = [encode(b) for b in batches]
        wire = [_wire(b) for b in batches]
        ok = True
        for i in range(len(batches)):
            if decode(col[i]) != batches[i]:
                ok = False
        for _ in range(reps):
            for op in ("col_enc", "col_dec", "cbor_enc", "cbor_dec"):
                t0 = _now()
                if op == "col_enc":
                    for b in batches:
                        encode(b)
                elif op == "col_dec":
                    for c in col:
                        decode(c)
                elif op == "cbor_enc":
                    for b in batches:
                        _wire(b)
                else:
                    for w in wire:
                        codec.loads(w)
                us = _us(t0) / n
                if op not in best or us < best[op]:
                    best[op] = us
        best["col_bytes"] = sum(len(c) for c in col)
        best["cbor_bytes"] = sum(len(w) for w in wire)
        best["records"] = n
        best["ok"] = ok
        result["datasets"][name] = best
        col = wire = batches = recs = None
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
