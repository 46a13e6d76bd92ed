"""The contracts between RingLog, its outboxes and the Store (docs/core.md, "How the log,
its outboxes and the store work together").

The store and the outboxes use RingLog's small public API (consumers, claimed bytes,
reclaim and evict) and log.py only the Store's; no module of the log reaches into
another object's private attributes. The source check reads the modules with ``ast``,
so it runs on CPython only; the behaviour tests run under MicroPython too.
"""
import os

try:
    import ast
except ImportError:  # MicroPython: no ast module
    ast = None

from edgeline.log import RingLog
from edgeline.outbox import Outbox
from edgeline.store import Store
from support import fill, rmtree, tempdir

# Modules whose classes talk to each other: each may touch only its own privates.
MODULES = ("log.py", "fastpath.py", "logformat.py", "store.py", "outbox.py")


def foreign_private_uses(source, filename):
    """["file:line: expr._name"] for every private attribute the source reads or writes
    on anything but ``self`` (another object's internals)."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__"):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id == "self":
            continue
        out.append((node.lineno, node.col_offset, ast.unparse(node)))
    return ["%s:%d: %s" % (filename, line, text) for line, _, text in sorted(out)]


def test_no_module_of_the_log_touches_another_objects_privates():
    if ast is None:
        return
    import edgeline

    core = os.path.dirname(os.path.abspath(edgeline.__file__))
    found = []
    for name in MODULES:
        with open(os.path.join(core, name), encoding="utf-8") as f:
            found += foreign_private_uses(f.read(), name)
    assert found == [], "private attributes used across objects:\n" + "\n".join(found)


def test_the_check_sees_a_reach_into_the_log():
    if ast is None:
        return
    # what store.py and outbox.py did before RingLog had a public API for them
    old = "def used(lg, ob):\n    ob.log._consumers.append(ob)\n    return lg._size + lg._allowed_end\n"
    assert foreign_private_uses(old, "old.py") == [
        "old.py:2: ob.log._consumers",
        "old.py:3: lg._size",
        "old.py:3: lg._allowed_end",
    ]


def test_reclaim_waits_for_every_consumer():
    d = tempdir("contract")
    log = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    fill(log, 40)
    assert log.segment_count > 2
    assert not log.remove_oldest()  # no consumer: nothing is acknowledged
    a = Outbox(log, "a")
    b = Outbox(log, "b")
    a.ack(40)
    assert not log.remove_oldest()  # b has acknowledged nothing
    b.ack(40)
    segments = log.segment_count
    assert log.remove_oldest()
    assert log.segment_count == segments - 1 and log.evicted == 0 and log.reclaimed > 0
    b.close()
    assert log.consumers == [a]
    b.close()  # closing twice is harmless
    log.close()
    rmtree(d)


def test_evict_counts_what_no_consumer_acknowledged_and_keeps_the_tail():
    d = tempdir("contract")
    log = RingLog(d, segment_bytes=256, budget_bytes=1 << 20)
    ob = Outbox(log)
    fill(log, 40)
    while log.remove_oldest(True):
        pass
    assert log.segment_count == 1  # the tail stays (I2)
    assert log.evicted == log.first_seq - 1 and log.reclaimed == 0
    assert ob.gap() == (1, log.first_seq - 1)
    log.close()
    rmtree(d)


def test_store_counts_what_its_logs_claim():
    d = tempdir("contract")
    store = Store(d, budget_bytes=1 << 20)
    a = store.log("a", segment_bytes=512, budget_bytes=8192)
    b = store.log("b", segment_bytes=512, budget_bytes=8192)
    fill(a, 10)
    fill(b, 3)
    assert a.claimed_bytes >= a.size_bytes > 0
    assert store.used_bytes() == a.claimed_bytes + b.claimed_bytes
    b.close()  # a closed log no longer counts
    assert store.used_bytes() == a.claimed_bytes and list(store.logs) == ["a"]
    store.close()
    rmtree(d)
