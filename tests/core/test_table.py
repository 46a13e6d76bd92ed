"""Table replicas (docs/spec/tables.md): the case tables of the merge rules, per strategy
and conflict type, on CPython and MicroPython. Every case is also replayed in every
delivery order, with duplicates, and must show the same thing each time.
"""
from edgeline import codec
from edgeline.table import (CLOUD_WINS, CONCURRENT_WRITE, COUNTER, CUSTOM_MERGE, DELETE_UPDATE, EDGE_WINS,
                            FIRST_WRITE_WINS, KEEP_BOTH, LAST_WRITE_WINS, MAP, MISSING, OP_COUNT, OP_DELETE,
                            OP_FIELDS, OP_PUT, ORDERING, SET, STRATEGIES, TOMBSTONE, UPDATE_DELETE, Siblings,
                            Table, TableError, chosen, field_value, read_value, resolve, sort_items, vv_get,
                            vv_join, write_value)
from support import raises

S1 = "store-1"
S2 = "store-2"
C = "cloud"
D = TOMBSTONE


def merge_join(key, versions):
    """The custom merge of the cases: the live values joined oldest first; all deleted -> deleted."""
    live = [v[3] for v in versions if v[3] is not TOMBSTONE]
    return "+".join(live) if live else TOMBSTONE


def table(strategy, log=None):
    def seen(key, field, ctype, sibs):
        log.append(ctype)
    return Table(strategy=strategy, merge=merge_join if strategy == CUSTOM_MERGE else None,
                 on_conflict=None if log is None else seen)


def permutations(items):
    """Every order of items, one at a time (a generator: 5! lists at once do not fit a board)."""
    if len(items) <= 1:
        yield list(items)
        return
    for i in range(len(items)):
        for rest in permutations(items[:i] + items[i + 1:]):
            yield [items[i]] + rest


# A write: (writer, seq, ts, ctx, value). ctx is the version vector the writer had seen.
# Each case: name, writes, conflict types reported (in the delivery order given), and the
# visible value per strategy (LWW, FWW, cloud_wins, edge_wins, keep_both, custom_merge).
CASES = [
    ("one write", [(S1, 1, 10, (), "x")], [],
     ["x", "x", "x", "x", "x", "x"]),
    ("a write that has seen the other supersedes it", [(S1, 1, 10, (), "x"), (C, 1, 20, (S1, 1), "y")], [],
     ["y", "y", "y", "y", "y", "y"]),
    ("concurrent writes", [(S1, 1, 10, (), "x"), (C, 1, 20, (), "y")], [CONCURRENT_WRITE],
     ["y", "x", "y", "x", Siblings(["x", "y"]), "x+y"]),
    ("concurrent, the edge later", [(S1, 1, 30, (), "x"), (C, 1, 20, (), "y")], [CONCURRENT_WRITE],
     ["x", "y", "y", "x", Siblings(["y", "x"]), "y+x"]),
    ("same ts: the writer id breaks the tie", [(S1, 1, 10, (), "x"), (S2, 1, 10, (), "y")], [CONCURRENT_WRITE],
     ["y", "x", "y", "y", Siblings(["x", "y"]), "x+y"]),
    ("clock skew: the causally later write wins though its ts is older",
     [(S1, 1, 100, (), "old"), (C, 1, 50, (S1, 1), "new")], [ORDERING],
     ["new", "new", "new", "new", "new", "new"]),
    ("update/delete: the edge updated, the cloud deleted", [(S1, 1, 10, (), "x"), (C, 1, 20, (), D)],
     [UPDATE_DELETE], [MISSING, "x", MISSING, "x", "x", "x"]),
    ("delete/update: the edge deleted, the cloud updated", [(S1, 1, 10, (), D), (C, 1, 20, (), "y")],
     [DELETE_UPDATE], ["y", MISSING, "y", MISSING, "y", "y"]),
    ("update/delete between edges: the delete later", [(S1, 1, 10, (), "x"), (S2, 1, 20, (), D)],
     [UPDATE_DELETE], [MISSING, "x", MISSING, MISSING, "x", "x"]),
    ("delete/update between edges: the update later", [(S1, 1, 10, (), D), (S2, 1, 20, (), "y")],
     [DELETE_UPDATE], ["y", MISSING, "y", "y", "y", "y"]),
    ("concurrent deletes", [(S1, 1, 10, (), D), (C, 1, 20, (), D)], [CONCURRENT_WRITE],
     [MISSING, MISSING, MISSING, MISSING, MISSING, MISSING]),
    ("a write that has seen both siblings resolves them",
     [(S1, 1, 10, (), "x"), (C, 1, 20, (), "y"), (S2, 1, 5, (C, 1, S1, 1), "z")], [CONCURRENT_WRITE, ORDERING],
     ["z", "z", "z", "z", "z", "z"]),
    ("three-way conflict", [(S1, 1, 30, (), "a"), (S2, 1, 10, (), "b"), (C, 1, 20, (), "c")],
     [CONCURRENT_WRITE, CONCURRENT_WRITE],
     ["a", "b", "c", "a", Siblings(["b", "c", "a"]), "b+c+a"]),
    ("three-way, then a write that has seen two of them",
     [(S1, 1, 30, (), "a"), (S2, 1, 10, (), "b"), (C, 1, 20, (), "c"), (C, 2, 40, (C, 1, S1, 1), "d")],
     [CONCURRENT_WRITE, CONCURRENT_WRITE, CONCURRENT_WRITE],
     ["d", "b", "d", "b", Siblings(["b", "d"]), "b+d"]),
    ("a delete that has seen the write", [(S1, 1, 10, (), "x"), (C, 1, 20, (S1, 1), D)], [],
     [MISSING] * 6),
    ("a write after a delete it has seen", [(S1, 1, 10, (), "x"), (C, 1, 20, (S1, 1), D),
                                            (S2, 1, 30, (C, 1, S1, 1), "y")], [],
     ["y"] * 6),
    ("one writer's own writes never conflict", [(S1, 1, 10, (), "x"), (S1, 2, 11, (S1, 1), "y")], [],
     ["y"] * 6),
]


def test_strategies_in_the_order_of_the_case_columns():
    assert STRATEGIES == (LAST_WRITE_WINS, FIRST_WRITE_WINS, CLOUD_WINS, EDGE_WINS, KEEP_BOTH, CUSTOM_MERGE)


def test_case_table_per_strategy_in_the_order_given():
    for name, writes, types, expect in CASES:
        for strategy, want in zip(STRATEGIES, expect):
            log = []
            t = table(strategy, log)
            for w in writes:
                assert t.apply("k", w[0], w[1], w[2], w[3], w[4]) is True, (name, w)
            got = t.view("k")
            assert got == want, (name, strategy, got, want)
            assert log == types, (name, strategy, log, types)


def test_case_table_in_every_delivery_order_with_duplicates():
    for name, writes, types, expect in CASES:
        for order in permutations(writes):
            for strategy, want in zip(STRATEGIES, expect):
                t = table(strategy)
                for w in order + order[:1]:
                    t.apply("k", w[0], w[1], w[2], w[3], w[4])
                assert t.view("k") == want, (name, strategy, order)


def test_a_conflict_is_reported_wherever_the_siblings_meet():
    # whatever the order, a concurrent pair is seen as a conflict of the same type
    writes = [(S1, 1, 10, (), "x"), (C, 1, 20, (), D)]
    for order in permutations(writes):
        log = []
        t = table(LAST_WRITE_WINS, log)
        for w in order:
            t.apply("k", *w)
        assert log == [UPDATE_DELETE], (order, log)
        assert t.conflicts == {UPDATE_DELETE: 1}


def test_duplicates_and_superseded_late_writes_change_nothing():
    t = table(LAST_WRITE_WINS)
    assert t.apply("k", S1, 1, 10, (), "x") is True
    assert t.apply("k", S1, 1, 10, (), "x") is False
    assert t.apply("k", C, 1, 20, (S1, 2), "y") is True   # has seen S1's write 2, not here yet
    assert t.apply("k", S1, 2, 11, (S1, 1), "late") is False
    assert t.view("k") == "y"
    assert t.siblings("k") == [(C, 1, 20, "y")]
    assert t.context("k") == (C, 1, S1, 2)


def test_context_is_what_the_writer_has_seen():
    t = table(KEEP_BOTH)
    assert t.context("k") == ()
    t.apply("k", S2, 4, 10, (), "x")
    t.apply("k", C, 9, 20, (), "y")
    assert t.context("k") == (C, 9, S2, 4)
    ctx = t.context("k")
    t.apply("k", S1, 1, 30, ctx, "z")
    assert t.view("k") == "z"
    assert t.context("k") == (C, 9, S1, 1, S2, 4)


def test_keys_are_independent():
    t = table(LAST_WRITE_WINS)
    t.apply("a", S1, 1, 10, (), 1)
    t.apply("b", S1, 2, 11, (), 2)
    t.apply("b", C, 1, 5, (), 3)
    assert t.items() == [("a", 1), ("b", 2)]
    assert t.siblings("a") == [(S1, 1, 10, 1)]
    assert len(t.siblings("b")) == 2


def test_custom_merge_that_fails_leaves_the_siblings_visible():
    def broken(key, versions):
        raise ValueError("no")
    t = Table(strategy=CUSTOM_MERGE, merge=broken)
    t.apply("k", S1, 1, 10, (), "x")
    assert t.view("k") == "x"  # one version: nothing to merge
    t.apply("k", C, 1, 20, (), "y")
    assert t.view("k") == Siblings(["x", "y"])
    got = []
    t2 = Table(strategy=CUSTOM_MERGE, merge=lambda k, vs: got.append((k, vs)) or vs[0][3])
    t2.apply("k", C, 1, 20, (), "y")
    t2.apply("k", S1, 1, 10, (), "x")
    assert t2.view("k") == "x"
    assert got == [("k", [(S1, 1, 10, "x"), (C, 1, 20, "y")])]


def test_resolve_is_a_function_of_the_sibling_set():
    sibs = [(S1, 1, 30, "a"), (S2, 1, 10, "b"), (C, 1, 20, "c")]
    for order in permutations(sibs):
        assert resolve(LAST_WRITE_WINS, order) == "a"
        assert resolve(FIRST_WRITE_WINS, order) == "b"
        assert resolve(CLOUD_WINS, order) == "c"
        assert resolve(EDGE_WINS, order) == "a"
        assert resolve(KEEP_BOTH, order) == Siblings(["b", "c", "a"])
        assert resolve(CUSTOM_MERGE, order, merge_join) == "b+c+a"


def test_chosen_is_the_sibling_a_picking_strategy_shows():
    sibs = [(S1, 1, 30, "a"), (S2, 1, 10, TOMBSTONE), (C, 1, 20, "c")]
    for order in permutations(sibs):
        assert chosen(LAST_WRITE_WINS, order) == sibs[0]
        assert chosen(FIRST_WRITE_WINS, order) == sibs[1]
        assert chosen(CLOUD_WINS, order) == sibs[2]
        assert chosen(EDGE_WINS, order) == sibs[0]
        assert chosen(KEEP_BOTH, order) is None and chosen(CUSTOM_MERGE, order) is None
    assert chosen(LAST_WRITE_WINS, []) is None


def test_counter_adds_up_every_writer_in_any_order():
    writes = [(S1, 1, 5), (S1, 3, 8), (S2, 2, -2), (C, 1, 100), (S2, 5, -4)]
    for order in permutations(writes):
        t = Table(kind=COUNTER)
        for w, s, total in order + order[:2]:
            t.apply("sku-1", w, s, 0, (), total)
        assert t.view("sku-1") == 8 - 4 + 100, order
    t = Table(kind=COUNTER)
    t.apply("sku-1", S1, 1, 0, (), t.count_total("sku-1", S1) + 3)
    t.apply("sku-1", S1, 2, 0, (), t.count_total("sku-1", S1) + 4)
    assert t.view("sku-1") == 7 and t.count_total("sku-1", S1) == 7
    assert t.view("other") is MISSING
    raises(TableError, t.apply, "sku-1", S1, 3, 0, (), "seven")


def test_set_add_wins():
    # (writes, visible): a write is (writer, seq, ts, ctx, element, True | TOMBSTONE)
    cases = [
        ([(S1, 1, 10, (), "a", True)], ["a"]),
        ([(S1, 1, 10, (), "a", True), (C, 1, 20, (S1, 1), "a", D)], MISSING),        # remove saw the add
        ([(S1, 1, 10, (), "a", True), (C, 1, 20, (), "a", D)], ["a"]),                # concurrent: add wins
        ([(S1, 1, 30, (), "a", D), (C, 1, 20, (), "a", True)], ["a"]),                # whatever the ts
        ([(S1, 1, 10, (), "a", True), (S2, 1, 11, (), "b", True),
          (C, 1, 20, (S1, 1), "a", D)], ["b"]),
        ([(S1, 1, 10, (), "b", True), (S2, 1, 11, (), "a", True)], ["a", "b"]),
    ]
    for writes, want in cases:
        for order in permutations(writes):
            t = Table(kind=SET)
            for w in order + order:
                t.apply("promo", w[0], w[1], w[2], w[3], w[5], field=w[4])
            assert t.view("promo") == want, (writes, order, t.view("promo"))


def test_map_merges_field_by_field():
    writes = [(S1, 1, 10, (), "qty", 5), (C, 1, 20, (), "price", 250), (S2, 1, 30, (), "qty", 7),
              (C, 2, 25, (C, 1), "price", D), (S1, 2, 40, (S1, 1), "note", "x")]
    for order in permutations(writes):
        t = Table(kind=MAP)
        for w in order:
            t.apply("sku", w[0], w[1], w[2], w[3], w[5], field=w[4])
        assert t.view("sku") == {"qty": 7, "note": "x"}, order
        assert t.fields("sku") == ["note", "price", "qty"]


def test_tombstones_are_collected_once_stable_and_the_floor_carries_them():
    a = table(FIRST_WRITE_WINS)
    b = table(FIRST_WRITE_WINS)
    for t in (a, b):
        t.apply("k", S1, 1, 10, (), "x")
        t.apply("k", C, 1, 20, (S1, 1), D)
        t.apply("j", S1, 2, 30, (), "live")
    assert a.collect((C, 0 + 1)) == 0       # S1:1 not yet stable
    assert a.collect((C, 1, S1, 1)) == 1
    assert a.keys() == ["j"] and a.floor == (C, 1, S1, 1)
    # a new write to the collected key carries the floor, so b (not collected yet)
    # sees it supersede the tombstone instead of a first-write-wins conflict with it
    ctx = a.context("k")
    assert ctx == (C, 1, S1, 1)
    for t in (a, b):
        t.apply("k", S2, 1, 40, ctx, "back")
        assert t.view("k") == "back" and len(t.siblings("k")) == 1
    # a key with siblings or a live value is never collected
    c = table(LAST_WRITE_WINS)
    c.apply("k", S1, 1, 10, (), D)
    c.apply("k", S2, 1, 10, (), D)
    assert c.collect((S1, 9, S2, 9)) == 0


def test_set_fields_are_collected_too():
    t = Table(kind=SET)
    t.apply("p", S1, 1, 10, (), True, field="a")
    t.apply("p", S1, 2, 11, (S1, 1), D, field="a")
    t.apply("p", S1, 3, 12, (), True, field="b")
    assert t.collect((S1, 2)) == 1
    assert t.fields("p") == ["b"] and t.view("p") == ["b"]


def test_bad_writes_are_refused_with_one_line():
    t = table(LAST_WRITE_WINS)
    for args in [("k", "", 1, 0, (), 1), ("k", S1, 0, 0, (), 1), ("k", S1, 1, -1, (), 1),
                 ("k", S1, 1, 0, (S1,), 1), ("k", S1, 1, 0, (S2, 1, S1, 1), 1),
                 ("k", S1, 1, 0, (S1, 0), 1), ("k", S1, 1, 0, (5, 1), 1)]:
        e = raises(TableError, t.apply, *args)
        assert "\n" not in str(e)
    raises(TableError, t.apply, "k", S1, 1, 0, (), 1, "field")
    raises(TableError, Table(kind=MAP).apply, "k", S1, 1, 0, (), 1)
    raises(TableError, Table(kind=SET).apply, "k", S1, 1, 0, (), "x", "f")
    raises(TableError, Table, "tree")
    raises(TableError, Table, strategy="newest")
    raises(TableError, Table, strategy=CUSTOM_MERGE)
    assert len(t) == 0


def test_vv_join():
    assert vv_join((), (S1, 2)) == (S1, 2)
    assert vv_join((C, 3, S2, 1), (S1, 2, S2, 4)) == (C, 3, S1, 2, S2, 4)


# The bytes of a table write inside a record value (tables.md, "Encoding"): golden vectors.
GOLDEN = [
    (write_value(OP_PUT, (C, 3, S1, 7), {"qty": 5}),
     "8401008465636c6f7564036773746f72652d3107a16371747905"),
    (write_value(OP_DELETE, (S1, 7), TOMBSTONE), "840101826773746f72652d3107f6"),
    (write_value(OP_COUNT, (), 12), "840102800c"),
    (field_value([("qty", OP_PUT, (C, 1), 5), ("note", OP_DELETE, (), None)]),
     "830103828463717479008265636c6f7564010584646e6f74650180f6"),
]


def _hex(b):
    return "".join("%02x" % x for x in b)


def test_encoding_golden_vectors():
    for value, hexed in GOLDEN:
        data = codec.dumps(value)
        assert _hex(data) == hexed, (value, _hex(data))
        ops = read_value(codec.loads(data))
        assert ops, hexed
    assert read_value(GOLDEN[0][0]) == [(None, OP_PUT, (C, 3, S1, 7), {"qty": 5})]
    assert read_value(GOLDEN[1][0]) == [(None, OP_DELETE, (S1, 7), TOMBSTONE)]
    assert read_value(GOLDEN[3][0]) == [("qty", OP_PUT, (C, 1), 5), ("note", OP_DELETE, (), TOMBSTONE)]
    assert OP_FIELDS == 3


def test_malformed_encodings_are_refused():
    for bad in [None, [], [2, 0, [], 1], [1, 9, [], 1], [1, 0, [S1], 1], [1, 0, {}, 1], [1, 1, [], 5],
                [1, 0, []], [1, 3, [[1, 2]]], [1, 3, "x"], [1, 0, [S1, 1, S1, 2], 1]]:
        e = raises(TableError, read_value, bad)
        assert "\n" not in str(e), bad



def test_a_write_supersedes_its_own_writers_earlier_writes_without_a_context():
    # C1: a writer that forgot its own write in the context still replaces it
    for order in permutations([(S1, 1, 10, (), "x"), (S1, 2, 5, (), "y"), (C, 1, 7, (), "z")]):
        t = table(KEEP_BOTH)
        for w in order:
            t.apply("k", *w)
        assert t.view("k") == Siblings(["y", "z"]), order


def test_the_conflict_type_of_many_siblings_does_not_depend_on_their_order():
    # the latest update (store-3 at 40) against the latest delete (store-2 at 30): both
    # edges, the update later -> delete/update, whichever sibling came first
    sibs = [(S1, 1, 10, "a"), (S2, 1, 30, D), ("store-3", 1, 40, "b"), (C, 1, 20, D)]
    from edgeline.table import conflict_type
    for order in permutations(sibs):
        assert conflict_type(order) == DELETE_UPDATE, order


class _Rand:
    # a tiny LCG: the same sequence on every runtime (no `random` module needed)
    def __init__(self, seed):
        self.x = seed

    def below(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.x >> 8) % n


def _model_view(strategy, writes, key):
    kw = [w for w in writes if w[0] == key]
    sibs = []
    for w in kw:
        covered = False
        for o in kw:
            if o is not w and (vv_get(o[4], w[1]) >= w[2] or (o[1] == w[1] and o[2] > w[2])):
                covered = True
        if not covered:
            sibs.append((w[1], w[2], w[3], w[5]))
    return resolve(strategy, sibs, merge_join, key)


def test_seeded_convergence_of_three_replicas_every_strategy():
    # The property test (tests/properties/test_table_convergence.py) in small, runnable on
    # a board: random writes and deliveries between the cloud and two edges, then healed.
    for strategy in STRATEGIES:
        for seed in (1, 2, 3):
            rnd = _Rand(seed)
            names = [C, S1, S2]
            tables = [table(strategy) for _ in names]
            seqs = [0, 0, 0]
            held = [[], [], []]
            history = []
            for _ in range(30):
                i = rnd.below(3)
                if rnd.below(2):
                    key = "ab"[rnd.below(2)]
                    seqs[i] += 1
                    value = D if rnd.below(3) == 0 else "v%d" % rnd.below(9)
                    w = (key, names[i], seqs[i], rnd.below(6), tables[i].context(key), value)
                    history.append(w)
                    held[i].append(w)
                    tables[i].apply(*w)
                elif held[i]:
                    j = rnd.below(3)
                    w = held[i][rnd.below(len(held[i]))]
                    if tables[j].apply(*w):
                        held[j].append(w)
            for t in tables:
                for k in range(2 * len(history)):
                    t.apply(*history[(k * 7 + seed) % len(history)])
                for w in history:
                    t.apply(*w)
            want = []
            for key in "ab":
                v = _model_view(strategy, history, key)
                if v is not MISSING:
                    want.append((key, v))
            for t in tables:
                assert t.items() == want, (strategy, seed, t.items(), want)


def test_keys_of_several_types_are_listed():
    t = table(LAST_WRITE_WINS)
    t.apply("b", S1, 1, 10, (), 1)
    t.apply(7, S1, 2, 10, (), 2)
    t.apply(b"k", S1, 3, 10, (), 3)
    assert len(t.items()) == 3 and t.view(7) == 2


def test_elements_fields_and_keys_of_several_types_have_one_order():
    # integers, then bytes, then text (tables.md, "Order"): never a TypeError, the same
    # order on every runtime and in every delivery order. (Bytes and text are not mixed in
    # one table here: MicroPython's unix port warns on every bytes/str comparison a dict
    # lookup makes; sort_items is checked on them directly.)
    writes = [(S1, 1, 10, (), "a"), (S1, 2, 11, (), 1), (S2, 1, 12, (), 70), (S2, 2, 13, (), -5),
              (C, 1, 14, (), "B")]
    for kind in (SET, MAP):
        for order in permutations(writes):
            t = Table(kind=kind)
            for w in order:
                t.apply("k", w[0], w[1], w[2], w[3], True, field=w[4])
            assert t.fields("k") == [-5, 1, 70, "B", "a"], (kind, order)
            if kind == SET:
                assert t.view("k") == [-5, 1, 70, "B", "a"]
            else:
                assert len(t.view("k")) == 5
    t = Table(kind=SET)
    t.apply("k", S1, 1, 10, (), True, field=1)
    t.apply("k", S1, 2, 11, (S1, 1), D, field=1)
    t.apply("k", S1, 3, 12, (), True, field="a")
    assert t.view("k") == ["a"] and t.fields("k") == [1, "a"]
    t = table(LAST_WRITE_WINS)
    for i, k in enumerate(["b", 7, -1, "a"]):
        t.apply(k, S1, i + 1, 10, (), i)
    assert t.keys() == [-1, 7, "a", "b"]
    assert sort_items(["b", b"z", 3, "a", b"a", -2]) == [-2, 3, b"a", b"z", "a", "b"]
    assert sort_items([b"b", b"a"]) == [b"a", b"b"] and sort_items([]) == []
    assert sort_items(["\u00e9", "z", "\U0001f600", "A"]) == ["A", "z", "\u00e9", "\U0001f600"]


def test_an_element_or_field_that_is_not_text_an_int_or_bytes_is_refused():
    for bad in [{"x": 1}, [1], True, False, 1.5, None]:
        for kind in (SET, MAP):
            if bad is None:
                continue
            e = raises(TableError, Table(kind=kind).apply, "k", S1, 1, 0, (), True, bad)
            assert "\n" not in str(e)
        raises(TableError, read_value, [1, 3, [[bad, 0, [], True]]])
    assert read_value([1, 3, [[b"e", 0, [], True], [-3, 1, [], None]]]) == [
        (b"e", OP_PUT, (), True), (-3, OP_DELETE, (), TOMBSTONE)]
