"""The replica state of one table topic, sans-IO (docs/spec/tables.md).

Theory of operation
-------------------
A table write is a record: its identity ``(origin, seq)`` is the write's *dot*, and its
value carries the *causal context* of the key at the writer -- a version vector, writer ->
highest seq of that writer's writes to the key the writer had seen (a dotted version
vector in the manner of Riak). A version that another version's context covers has been
seen by that writer and is superseded; versions none of the others covers are concurrent
*siblings*. Per key (per field of a set or map) this module keeps

* ``vv``       the join of every dot and context applied to the key, so a duplicate or a
               superseded write arriving late is recognised and ignored, and
* siblings     the versions no applied context covers: (writer, seq, ts, value).

and the visible state is a deterministic function of the siblings (the topic's strategy),
so every replica that holds the same writes shows the same thing, whatever order they came
in. Nothing is resolved by writing: a conflict stays in the state until a write whose
context covers the siblings replaces them, and is *shown* resolved in the meantime.

A version vector is a flat tuple ``(writer, seq, writer, seq, ...)`` sorted by writer:
small on a board, and the same bytes everywhere. Deletes are versions whose value is
``TOMBSTONE``. A key whose only sibling is a tombstone is dropped by ``collect`` once the
caller says every dot of it is causally stable; its vv is folded into the table's
``floor``, which becomes the context of the next write to an absent key.

Table kinds: ``register`` (one value per key, resolved by the strategy), ``counter``
(per-writer running totals; the value is their sum), ``set`` (add-wins: an element is in
the set when any sibling of its field is an add) and ``map`` (each field a register,
last write wins per field). No I/O, no clock: ts are hybrid-clock values the caller gives.
"""
from .errors import EdgelineError

try:
    from micropython import const
except ImportError:
    const = lambda x: x  # noqa: E731

LAST_WRITE_WINS = "last_write_wins"
FIRST_WRITE_WINS = "first_write_wins"
CLOUD_WINS = "cloud_wins"
EDGE_WINS = "edge_wins"
KEEP_BOTH = "keep_both"
CUSTOM_MERGE = "custom_merge"
STRATEGIES = (LAST_WRITE_WINS, FIRST_WRITE_WINS, CLOUD_WINS, EDGE_WINS, KEEP_BOTH, CUSTOM_MERGE)

REGISTER = "register"
COUNTER = "counter"
SET = "set"
MAP = "map"
KINDS = (REGISTER, COUNTER, SET, MAP)

CONCURRENT_WRITE = "concurrent_write"
UPDATE_DELETE = "update_delete"
DELETE_UPDATE = "delete_update"
ORDERING = "ordering"
MERGE_FAILED = "merge_failed"

CLOUD = "cloud"  # the writer id of the cloud (gateway) in every context
FORMAT_VERSION = 1
OP_PUT = 0
OP_DELETE = 1
OP_COUNT = 2
OP_FIELDS = 3
_SHARDS = const(16)


class TableError(EdgelineError):
    """A table write or setting the table cannot take (bad context, wrong kind)."""


class _Tombstone:
    def __repr__(self):
        return "TOMBSTONE"


TOMBSTONE = _Tombstone()


class _Missing:
    def __repr__(self):
        return "MISSING"


MISSING = _Missing()


class Siblings:
    """What a key shows while its concurrent versions stand unresolved (keep_both, or a
    custom merge that failed): their values, oldest first by (ts, writer)."""

    def __init__(self, values):
        self.values = values

    def __eq__(self, other):
        return isinstance(other, Siblings) and self.values == other.values

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Siblings(%r)" % (self.values,)


# -- version vectors: flat tuples (w, s, w, s, ...) sorted by writer ---------------------

def vv_get(vv, writer):
    for i in range(0, len(vv), 2):
        if vv[i] == writer:
            return vv[i + 1]
    return 0


def vv_join(a, b):
    """The entry-wise maximum of two version vectors."""
    if not a:
        return b
    if not b:
        return a
    out = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and a[i] < b[j]):
            out.append(a[i])
            out.append(a[i + 1])
            i += 2
        elif i >= len(a) or b[j] < a[i]:
            out.append(b[j])
            out.append(b[j + 1])
            j += 2
        else:
            out.append(a[i])
            out.append(a[i + 1] if a[i + 1] > b[j + 1] else b[j + 1])
            i += 2
            j += 2
    return tuple(out)


def vv_covers(vv, stable):
    """True when every entry of vv is at or below stable's."""
    for i in range(0, len(vv), 2):
        if vv[i + 1] > vv_get(stable, vv[i]):
            return False
    return True


def vv_check(vv):
    """Refuse what is not a version vector (remote input): one-line TableError."""
    if type(vv) is not tuple:
        vv = tuple(vv)
    if len(vv) % 2:
        raise TableError("context has an odd number of items")
    prev = None
    for i in range(0, len(vv), 2):
        w = vv[i]
        s = vv[i + 1]
        if type(w) is not str or not w or type(s) is not int or s < 1:
            raise TableError("context entry %r: %r is not (writer, seq >= 1)" % (w, s))
        if prev is not None and not prev < w:
            raise TableError("context writers are not strictly sorted at %r" % w)
        prev = w
    return vv


# -- strategies: deterministic functions of the set of siblings --------------------------
# A sibling is the tuple (writer, seq, ts, value). Sorting by (ts, writer) is a total order
# on concurrent siblings: one writer's versions of a key are never concurrent.

def _later(a, b):
    return a[2] > b[2] or (a[2] == b[2] and a[0] > b[0])


def _pick(sibs, prefer):
    best = sibs[0]
    for s in sibs[1:]:
        if prefer(s, best):
            best = s
    return best


def _prefer_last(a, b):
    return _later(a, b)


def _prefer_first(a, b):
    return _later(b, a)


def _prefer_cloud(a, b):
    ac = a[0] == CLOUD
    bc = b[0] == CLOUD
    if ac != bc:
        return ac
    return _later(a, b)


def _prefer_edge(a, b):
    ac = a[0] == CLOUD
    bc = b[0] == CLOUD
    if ac != bc:
        return bc
    return _later(a, b)


_PREFER = {LAST_WRITE_WINS: _prefer_last, FIRST_WRITE_WINS: _prefer_first,
           CLOUD_WINS: _prefer_cloud, EDGE_WINS: _prefer_edge}


def chosen(strategy, sibs):
    """The sibling a picking strategy (last_write_wins, first_write_wins, cloud_wins,
    edge_wins) shows -- a tombstone means the key is absent -- or None for the others
    (keep_both, custom_merge) and for no siblings."""
    prefer = _PREFER.get(strategy)
    if prefer is None or not sibs:
        return None
    return _pick(sibs, prefer)


def ordered(sibs):
    """Siblings oldest first by (ts, writer): the order every strategy and merge sees."""
    out = list(sibs)
    out.sort(key=lambda s: (s[2], s[0]))
    return out


def _live_values(sibs):
    return [s[3] for s in ordered(sibs) if s[3] is not TOMBSTONE]


def resolve(strategy, sibs, merge=None, key=None):
    """The visible value of a register from its siblings: a value, MISSING or Siblings.

    ``merge(key, versions)`` (custom_merge) gets the siblings oldest first as
    (writer, seq, ts, value) tuples, tombstones as TOMBSTONE, and returns a value or
    TOMBSTONE; if it raises, the siblings stay visible (Siblings, or the one live value).
    """
    if not sibs:
        return MISSING
    if len(sibs) == 1:
        v = sibs[0][3]
        return MISSING if v is TOMBSTONE else v
    best = chosen(strategy, sibs)
    if best is not None:
        v = best[3]
        return MISSING if v is TOMBSTONE else v
    if strategy == CUSTOM_MERGE and merge is not None:
        try:
            v = merge(key, ordered(sibs))
        except Exception:  # a user's merge: any failure leaves the siblings standing
            v = None
            merge = None
        if merge is not None:
            return MISSING if v is TOMBSTONE else v
    live = _live_values(sibs)
    if not live:
        return MISSING
    if len(live) == 1:
        return live[0]
    return Siblings(live)


def conflict_type(sibs):
    """The conflict type of a set of two or more concurrent siblings."""
    tomb = None
    upd = None
    for s in sibs:  # the latest of each kind, so the answer does not depend on order
        if s[3] is TOMBSTONE:
            if tomb is None or _later(s, tomb):
                tomb = s
        elif upd is None or _later(s, upd):
            upd = s
    if tomb is None or upd is None:
        return CONCURRENT_WRITE
    tc = tomb[0] == CLOUD
    uc = upd[0] == CLOUD
    if tc != uc:
        return UPDATE_DELETE if tc else DELETE_UPDATE
    return UPDATE_DELETE if _later(tomb, upd) else DELETE_UPDATE


def _vv(st):
    return st[1:1 + st[0]]


def _sibs(st):
    return [st[i:i + 4] for i in range(1 + st[0], len(st), 4)]


def field_ok(x):
    """True for what may be a set element or a map field (tables.md, "Encoding"): text,
    an integer (not a bool) or bytes -- hashable, and ordered by ``sort_items``."""
    t = type(x)
    return t is str or t is int or t is bytes


def _rank(x):
    # CBOR major type order: integers (0, 1), byte strings (2), text (3)
    t = type(x)
    if t is int:
        return 0
    if t is bytes:
        return 1
    return 2


def sort_items(items):
    """Sort keys, set elements or map fields in place in the one order every replica
    shows (tables.md, "Order"): integers by value, then byte strings, then text, each
    by value (text by code point: its UTF-8 bytes, so CPython and MicroPython agree).
    A list of one type (the usual case) is sorted as it is, no key tuples made."""
    t = None
    for x in items:
        if t is None:
            t = type(x)
        elif type(x) is not t:
            items.sort(key=lambda x: (_rank(x), x))
            return items
    items.sort()
    return items


# -- the replica ---------------------------------------------------------------------------

class Table:
    """One replica of one table topic, in memory.

    ``apply(key, writer, seq, ts, ctx, value, field=None)`` takes a write (from this
    node or another), returns True if it changed the state and False for a duplicate or
    a superseded write. ``context(key, field)`` is the ctx a new local write must carry.
    ``view(key)`` is what the key shows; ``siblings(key, field)`` the raw versions.
    ``on_conflict(key, field, type, sibs)`` is called when a write leaves two or more
    siblings (type one of the conflict types) or supersedes a version with a later ts
    (ORDERING: causality wins over the clock). Counts by type are in ``conflicts``.
    """

    def __init__(self, kind=REGISTER, strategy=LAST_WRITE_WINS, merge=None, on_conflict=None):
        if kind not in KINDS:
            raise TableError("unknown table kind %r" % (kind,))
        if strategy not in STRATEGIES:
            raise TableError("unknown conflict strategy %r" % (strategy,))
        if strategy == CUSTOM_MERGE and merge is None:
            raise TableError("custom_merge needs a merge function")
        self.kind = kind
        self.strategy = strategy
        self.merge = merge
        self.on_conflict = on_conflict
        self.conflicts = {}
        self.floor = ()
        # register: key -> (n, vv..., w, s, ts, v, w, s, ts, v, ...): n = len(vv), the vv's
        #           items inline and the siblings after them -- one object per key
        # set/map:  key -> {field: the same}
        # counter:  key -> (w, seq, total, w, seq, total, ...) sorted by writer
        # The keys are spread over _SHARDS small dicts: one dict of a few hundred keys
        # must grow into one contiguous block of several KB, which a board's fragmented
        # heap may not have while it still has tens of KB free in smaller pieces.
        self._keys = [{} for _ in range(_SHARDS)]
        self._names = {}

    def __len__(self):
        return sum(len(d) for d in self._keys)

    def _shard(self, key):
        return self._keys[hash(key) & (_SHARDS - 1)]

    def _name(self, w):
        # one string object per writer, shared by every key that names it
        n = self._names.get(w)
        if n is None:
            self._names[w] = w
            n = w
        return n

    def _intern(self, vv):
        return tuple(self._name(x) if i % 2 == 0 else x for i, x in enumerate(vv))

    def _report(self, key, field, ctype, sibs):
        self.conflicts[ctype] = self.conflicts.get(ctype, 0) + 1
        if self.on_conflict is not None:
            self.on_conflict(key, field, ctype, sibs)

    # -- writes --

    def _reg(self, key, field):
        st = self._shard(key).get(key)
        if self.kind == REGISTER:
            return st
        return None if st is None else st.get(field)

    def _set_reg(self, key, field, st):
        if self.kind == REGISTER:
            self._shard(key)[key] = st
            return
        d = self._shard(key).get(key)
        if d is None:
            d = {}
            self._shard(key)[key] = d
        d[field] = st

    def context(self, key, field=None):
        """The causal context a new write to key (field) made here must carry."""
        if self.kind == COUNTER:
            return ()
        st = self._reg(key, field)
        return self.floor if st is None else _vv(st)

    def apply(self, key, writer, seq, ts, ctx, value, field=None):
        if type(writer) is not str or not writer or type(seq) is not int or seq < 1:
            raise TableError("write dot (%r, %r) is not (writer, seq >= 1)" % (writer, seq))
        if type(ts) is not int or ts < 0:
            raise TableError("write ts %r is not a non-negative int" % (ts,))
        if self.kind == COUNTER:
            return self._apply_count(key, writer, seq, value)
        if (field is None) != (self.kind == REGISTER):
            raise TableError("a %s write %s a field" % (self.kind, "needs" if field is None else "has no"))
        if self.kind == SET and value is not TOMBSTONE and value is not True:
            raise TableError("a set write adds (True) or removes (TOMBSTONE) an element")
        if field is not None and not field_ok(field):
            raise TableError("an element or field is text, an integer or bytes (got a %s)" % type(field).__name__)
        ctx = vv_check(ctx)
        if seq <= vv_get(self.floor, writer):
            return False  # delivered everywhere and collected: a replay (tables.md, T6)
        st = self._reg(key, field)
        vv = () if st is None else _vv(st)
        if seq <= vv_get(vv, writer):
            return False  # a duplicate, or superseded by a write already applied
        writer = self._name(writer)
        kept = []
        skew = False
        if st is not None:
            for s in _sibs(st):
                # C1: a write supersedes its own writer's earlier ones, ctx or not
                if s[1] <= vv_get(ctx, s[0]) or s[0] == writer:
                    if s[2] > ts:
                        skew = True
                else:
                    kept.append(s)
        new = (writer, seq, ts, value)
        kept.append(new)
        vv = vv_join(vv, self._intern(vv_join(ctx, (writer, seq))))
        flat = [len(vv)]
        flat.extend(vv)
        for s in kept:
            flat.extend(s)
        self._set_reg(key, field, tuple(flat))
        if skew:
            self._report(key, field, ORDERING, kept)
        if len(kept) > 1:
            self._report(key, field, conflict_type(kept), kept)
        return True

    def _apply_count(self, key, writer, seq, total):
        if type(total) is not int:
            raise TableError("a counter write carries its writer's running total (an int)")
        st = self._shard(key).get(key, ())
        out = []
        done = False
        for i in range(0, len(st), 3):
            w = st[i]
            if not done and w == writer:
                if seq <= st[i + 1]:
                    return False
                out.extend((w, seq, total))
                done = True
                continue
            if not done and writer < w:
                out.extend((self._name(writer), seq, total))
                done = True
            out.extend(st[i:i + 3])
        if not done:
            out.extend((self._name(writer), seq, total))
        self._shard(key)[key] = tuple(out)
        return True

    def count_total(self, key, writer):
        """This writer's running total of a counter key (what its next write adds to)."""
        st = self._shard(key).get(key, ())
        for i in range(0, len(st), 3):
            if st[i] == writer:
                return st[i + 2]
        return 0

    # -- reads --

    def siblings(self, key, field=None):
        """The concurrent versions of key (field), oldest first: (writer, seq, ts, value)."""
        if self.kind == COUNTER:
            return []
        st = self._reg(key, field)
        if st is None:
            return []
        return ordered(_sibs(st))

    def view(self, key):
        """What key shows: its value, MISSING, or Siblings (see resolve)."""
        st = self._shard(key).get(key)
        if st is None:
            return MISSING
        if self.kind == REGISTER:
            return resolve(self.strategy, _sibs(st), self.merge, key)
        if self.kind == COUNTER:
            return sum(st[i] for i in range(2, len(st), 3))
        if self.kind == SET:
            out = []
            for f in st:
                if _live_values(_sibs(st[f])):
                    out.append(f)
            if not out:
                return MISSING
            return sort_items(out)
        out = {}
        for f in st:
            v = resolve(LAST_WRITE_WINS, _sibs(st[f]))
            if v is not MISSING:
                out[f] = v
        return out if out else MISSING

    def keys(self):
        """Every key the replica holds state for (visible or not), sorted."""
        ks = []
        for d in self._keys:
            ks.extend(d)
        return sort_items(ks)

    def items(self):
        """Sorted (key, visible) pairs of the keys that show something."""
        out = []
        for k in self.keys():
            v = self.view(k)
            if v is not MISSING:
                out.append((k, v))
        return out

    def fields(self, key):
        st = self._shard(key).get(key)
        if st is None or self.kind in (REGISTER, COUNTER):
            return []
        return sort_items(list(st))

    # -- tombstones --

    def collect(self, stable):
        """Drop the state of every key (field) whose only sibling is a tombstone and whose
        vv is at or below ``stable`` (a version vector of causally stable dots). Their vvs
        join ``floor``. Returns how many registers were dropped."""
        stable = vv_check(stable)
        if self.kind == COUNTER:
            return 0
        n = 0
        for key in self.keys():
            shard = self._shard(key)
            st = shard[key]
            if self.kind == REGISTER:
                if self._dead(st, stable):
                    self.floor = vv_join(self.floor, _vv(st))
                    del shard[key]
                    n += 1
                continue
            for f in list(st):
                if self._dead(st[f], stable):
                    self.floor = vv_join(self.floor, _vv(st[f]))
                    del st[f]
                    n += 1
            if not st:
                del shard[key]
        return n

    def _dead(self, st, stable):
        return len(st) == st[0] + 5 and st[-1] is TOMBSTONE and vv_covers(_vv(st), stable)


# -- the encoding of a table write inside a record value (tables.md, "Encoding") ----------

def write_value(op, ctx, value=None):
    """The CBOR-ready record value of a register/counter write: [1, op, ctx, value]."""
    return [FORMAT_VERSION, op, list(ctx), None if value is TOMBSTONE else value]


def field_value(ops):
    """The record value of a set/map write: [1, 3, [[field, op, ctx, value], ...]]."""
    return [FORMAT_VERSION, OP_FIELDS,
            [[f, op, list(ctx), None if op == OP_DELETE else v] for f, op, ctx, v in ops]]


def read_value(data):
    """Decode a record value into [(field, op, ctx, value), ...]; field None for a
    register or counter write, value TOMBSTONE for a delete. TableError if malformed."""
    if type(data) is not list or len(data) < 3 or data[0] != FORMAT_VERSION:
        raise TableError("not a table write of format %d" % FORMAT_VERSION)
    op = data[1]
    if op == OP_FIELDS:
        if len(data) != 3 or type(data[2]) is not list:
            raise TableError("a field write is [1, 3, [ops]]")
        out = []
        for item in data[2]:
            if type(item) is not list or len(item) != 4:
                raise TableError("a field op is [field, op, ctx, value]")
            if not field_ok(item[0]):
                raise TableError("an element or field is text, an integer or bytes (got a %s)"
                                 % type(item[0]).__name__)
            out.append(_one(item[0], item[1], item[2], item[3]))
        return out
    if len(data) != 4:
        raise TableError("a table write is [1, op, ctx, value]")
    return [_one(None, op, data[2], data[3])]


def _one(field, op, ctx, value):
    if op not in (OP_PUT, OP_DELETE, OP_COUNT):
        raise TableError("unknown table op %r" % (op,))
    if type(ctx) is not list:
        raise TableError("a context is an array")
    if op == OP_DELETE:
        if value is not None:
            raise TableError("a delete carries null")
        value = TOMBSTONE
    return (field, op, vv_check(ctx), value)
