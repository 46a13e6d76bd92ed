"""A board's table replica in a board's heap (docs/spec/tables.md, "Memory").

Its own file so that under MicroPython the heap holds only the table module and this
test, as on a board whose application keeps a replica of a config or promotions table.
"""
try:
    import gc
    gc.mem_alloc
except (ImportError, AttributeError):  # CPython has no mem_alloc
    gc = None

from edgeline.table import KEEP_BOTH, Siblings, Table

C = "cloud"
S1 = "store-1"
S2 = "store-2"
# 150 keys on MicroPython's 64-bit unix port, where every object is about twice its size
# on the boards' 32-bit cores: about 300 keys' worth of a board's heap. Measured on this
# port: about 180 bytes of heap per key (docs/spec/tables.md, "Memory"); up to 210 keys
# fit the 64 KB heap beside the module, so 150 leaves room for the heap's fragmentation.
KEYS = 150


def fill(n):
    # every key written by the cloud then by the board (a context of two writers); one
    # key in ten with a standing conflict (three siblings' worth of state)
    t = Table(strategy=KEEP_BOTH)
    ts = 1700000000000 << 16
    for i in range(n):
        key = "sku-%d" % i
        t.apply(key, C, i + 1, ts + i, (), i)
        t.apply(key, S1, i + 1, ts + i + 1, t.context(key), i + 1)
        if i % 10 == 0:
            t.apply(key, S2, i + 1, ts + i, (), -i)
    return t


def test_a_replica_of_a_few_hundred_keys_fits_the_heap():
    if gc:
        gc.collect()
        before = gc.mem_alloc()
    t = fill(KEYS)
    assert len(t) == KEYS
    assert t.view("sku-5") == 6 and t.view("sku-10") == Siblings([-10, 11])
    assert t.context("sku-10") == (C, 11, S1, 11, S2, 11)
    if gc:
        gc.collect()
        used = gc.mem_alloc() - before
        print("table of %d keys: %d bytes of heap" % (KEYS, used))
        import sys

        if sys.maxsize > 2 ** 32:  # the 64-bit unix port (the WebAssembly port's GC runs only between calls)
            # the replica itself, not the harness beside it: half of a 64 KB heap at most
            # (187 B per key measured: 28 KB; a board's 32-bit objects are about half)
            assert used <= 32768, used
