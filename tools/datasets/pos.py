"""Point-of-sale transactions, reproducible: the spec's retail use case ("POS transactions
streamed from stores", topic ``pos.transactions``; /work/shared/seeds/002, "Use Cases").

    python tools/datasets/pos.py [--n 100] [--seed 1] [--store S017]

One record per completed sale at one store's registers, keyed by its transaction id::

    key   b"S017-R2-000123"
    value {"txn": "S017-R2-000123", "store": "S017", "register": 2, "cashier": "c-0412",
           "items": [{"sku": "SKU-100234", "name": "Milk 1L", "qty": 1, "price": 1.29}, ...],
           "subtotal": 12.97, "tax": 1.07, "total": 14.04, "currency": "USD",
           "payment": "card", "loyalty": "L-00012345" or null}

Sales arrive as a Poisson process (mean 20 s apart) over 4 registers and 9 cashiers;
1-6 lines from a catalogue of 240 products (prices fixed per product, a few common items
bought far more often), quantity mostly 1; tax 8.25 % rounded to the cent; card, cash or
mobile; a loyalty id on 40 % of sales. ``records(n, seed)`` returns [(seq, ts, key, value)]
as an edge log holds them (value CBOR-encoded by edgeline.codec). Same seed, same records.
Prints the records as JSON lines.
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

MS0 = 1765180800000  # 2025-12-08T08:00:00Z, the store opens
_WORDS = ("Milk", "Bread", "Eggs", "Coffee", "Apples", "Rice", "Pasta", "Soap", "Tea", "Juice", "Cheese",
          "Butter", "Yogurt", "Cereal", "Chips", "Water")
_SIZES = ("1L", "500g", "12pk", "250g", "1kg", "2L", "6pk", "")


def catalogue(seed=1):
    rnd = random.Random(seed * 7919 + 1)
    out = []
    for i in range(240):
        name = ("%s %s" % (_WORDS[i % len(_WORDS)], _SIZES[(i // len(_WORDS)) % len(_SIZES)])).strip()
        out.append(("SKU-%06d" % (100000 + i * 37), name, round(rnd.uniform(0.5, 25.0), 2)))
    return out


def values(n, seed=1, store="S017"):
    """[(ms, key, python value)] of n sales."""
    rnd = random.Random(seed)
    cat = catalogue(seed)
    weights = [1.0 / (1 + i) for i in range(len(cat))]  # a few items far more common
    cashiers = ["c-%04d" % rnd.randint(1, 9999) for _ in range(9)]
    counters = [0] * 5
    ms = MS0
    out = []
    for _ in range(n):
        ms += max(1, int(rnd.expovariate(1 / 20000.0)))
        reg = rnd.randint(1, 4)
        counters[reg] += 1
        txn = "%s-R%d-%06d" % (store, reg, counters[reg])
        lines = []
        for _ in range(rnd.choice((1, 1, 2, 2, 3, 4, 5, 6))):
            sku, name, price = rnd.choices(cat, weights)[0]
            lines.append({"sku": sku, "name": name, "qty": rnd.choice((1, 1, 1, 1, 2, 3)), "price": price})
        subtotal = round(sum(x["qty"] * x["price"] for x in lines), 2)
        tax = round(subtotal * 0.0825, 2)
        v = {"txn": txn, "store": store, "register": reg, "cashier": cashiers[rnd.randint(0, 8)], "items": lines,
             "subtotal": subtotal, "tax": tax, "total": round(subtotal + tax, 2), "currency": "USD",
             "payment": rnd.choice(("card", "card", "card", "cash", "mobile")),
             "loyalty": "L-%08d" % rnd.randint(1, 99999999) if rnd.random() < 0.4 else None}
        out.append((ms, txn.encode(), v))
    return out


def records(n, seed=1, store="S017"):
    return [(i + 1, ms << 16, key, codec.dumps(v)) for i, (ms, key, v) in enumerate(values(n, seed, store))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--store", default="S017")
    a = ap.parse_args(argv)
    for i, (ms, key, v) in enumerate(values(a.n, a.seed, a.store)):
        print(json.dumps({"seq": i + 1, "ts": ms << 16, "key": key.decode(), "value": v}, separators=(",", ":")))


if __name__ == "__main__":
    main()
