"""The ring log and its outboxes against a plain in-memory reference model (stateful).

Theory of operation
-------------------
`LogMachine` drives a real `RingLog` with one to two `Outbox` consumers (or none) through
random programs of appends (one by one and through ``append_many``), flushes, group-commit
ticks, reads, peeks and acks, gap acks, retention, clean close-and-reopen (sometimes with
another full or sync policy), and crash-and-reopen, and after every step compares it
with `Model`: a dict of the records present plus the few numbers docs/spec/log.md says the
log keeps (next seq, durable seq, cursors, counters) and the segment boundaries, which the
spec's budget and retention rules work on ("Budgets, policies and retention").

The model is written from the spec, not from log.py: segment rotation when the next frame
would not fit, the reclaim order (fully acknowledged sealed segments first, then the full
policy), retention by the successor's first_ts, and the durability rules (a record is
durable after flush or after its segment is sealed; peek and ack commit first; a seal does
not move the count boundary of group commit).

Crashes. Over real files (`FileStorage` in a temp dir) a crash is emulated the way SIGKILL
leaves things: the log object is dropped without flush or close — its write buffer is
gone, bytes already written to files stay (unsynced or not). Over `FaultStorage` the
crash is a power cut: ``lost`` (unsynced writes vanish), ``torn`` (no cut armed: every
write issued persists) or ``reorder`` (a seeded subset of unsynced writes persists).
Either way the model then accepts any recovered end between the durable seq and the last
seq (exactly the durable seq for ``lost``), and never below the durable seq (G1, G3).
Because the invariants read the whole log after every step (and a read writes the buffer
out), the crash rule first runs a short program of its own — appends, retention, flush —
with no checks in between, so buffered-only state is what the crash meets.

An empty tail (its file exists but no frame survived) has no first_ts. When it is certain
no header survived (``lost``, or a write buffer big enough that the header always goes
out with its first frame) the model says retention may not use it to expire the segment
before it; otherwise (a small buffer can write a header alone) it accepts either outcome.

Where log.py and its docs leave room, the model accepts both readings and says so at the
spot: ``tick`` under sync none, and where ``append_many`` commits on time.

Run time: about 25 s for both machines at the settings below (300 examples of up to 50
steps each); for a soak raise ``max_examples``. Hypothesis' own statistics
(``--hypothesis-show-statistics``) list how often each crash outcome and each full
policy's refusal were reached.
"""
import shutil
import tempfile

import pytest
import os

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edgeline.errors import ConfigError, LogFull
from edgeline.log import (
    DROP_NEWEST,
    DROP_OLDEST,
    REJECT,
    SYNC_EVERY,
    SYNC_GROUP,
    SYNC_NONE,
    RingLog,
)
from edgeline.logformat import segment_name
from edgeline.outbox import Outbox
from edgeline.storage import FileStorage

try:
    from emulator.faultfs import FaultStorage
except ImportError:  # the emulator is optional here: without it, the second machine is skipped
    FaultStorage = None

HDR = 32
OVERHEAD = 26
MAX_KEY = 8
CONSUMER_NAMES = ("uplink", "mesh-1")
POLICIES = (DROP_OLDEST, REJECT, DROP_NEWEST)
SYNCS = (SYNC_EVERY, SYNC_GROUP, SYNC_NONE)

# first_ts of an empty tail: STRICT_NONE = it has none (retention must not use it);
# UNKNOWN = a header may have survived alone, either retention outcome is accepted.
STRICT_NONE = None
UNKNOWN = "unknown"


class ModelSeg:
    def __init__(self, base, first_ts):
        self.base = base
        self.first_ts = first_ts
        self.size = 0  # header + frames, 0 while the segment holds no frame

    def __repr__(self):
        return "Seg(base=%d, ts=%r, size=%d)" % (self.base, self.first_ts, self.size)


class Model:
    """What docs/spec/log.md says a log holds; no file format, no I/O."""

    def __init__(self, segment_bytes, budget_bytes, full_policy, sync, group_records, group_ms,
                 retention_ms, consumers):
        self.segment_bytes = segment_bytes
        self.budget_bytes = budget_bytes
        self.full_policy = full_policy
        self.sync = sync
        self.group_records = group_records
        self.group_ms = group_ms
        self.retention_ms = retention_ms
        self.recs = {}  # seq -> (ts, key, value)
        self.segs = []
        self.next_seq = 1
        self.durable = 0
        self.counted = 0  # last_seq at the last commit: commits by count run from here, not from a seal
        self.commit_ms = None
        self.acked = [0] * consumers
        self.reset_counters()

    def reset_counters(self):
        self.counters = {"evicted": 0, "expired": 0, "reclaimed": 0, "dropped": 0, "corrupt": 0}

    # -- positions
    @property
    def last_seq(self):
        return self.next_seq - 1

    @property
    def first_seq(self):
        return self.segs[0].base if self.segs else self.next_seq

    @property
    def size(self):
        return sum(s.size for s in self.segs)

    def min_acked(self):
        return min(self.acked) if self.acked else 0

    # -- reads
    def read(self, from_seq, max_records, max_bytes):
        out = []
        nbytes = 0
        seq = max(from_seq, 1, self.first_seq)
        while seq <= self.last_seq and len(out) < max_records and nbytes < max_bytes:
            ts, key, value = self.recs[seq]
            out.append((seq, ts, key, value))
            nbytes += len(value)
            seq += 1
        return out

    def gap(self, i):
        start = self.acked[i] + 1
        if start > self.last_seq:
            return None
        if start < self.first_seq:
            return (start, self.first_seq - 1)
        return None

    # -- commits
    @property
    def pending(self):
        """Records appended since the last commit (flush or seal)."""
        return self.last_seq - self.durable

    def flush(self, now_ms=None):
        if now_ms is not None:
            self.commit_ms = now_ms
        if self.durable < self.last_seq:  # a flush with nothing to commit moves no boundary
            self.counted = self.last_seq
        self.durable = self.last_seq

    def tick(self, now_ms):
        if self.commit_ms is None:
            self.commit_ms = now_ms
            return
        if self.pending and now_ms - self.commit_ms >= self.group_ms:
            self.flush(now_ms)

    # -- space
    def _remove_oldest(self, why):
        seg = self.segs.pop(0)
        nxt = self.segs[0].base
        acked = self.min_acked()
        for seq in range(seg.base, nxt):
            del self.recs[seq]
            # Removed after every consumer acknowledged it: no loss. Otherwise a loss
            # (a gap for a consumer, or simply gone when there is no consumer).
            if self.acked and seq <= acked:
                self.counters["reclaimed"] += 1
            else:
                self.counters[why] += 1

    def _free_oldest(self):
        if len(self.segs) < 2:
            return False
        if self.acked and self.min_acked() >= self.segs[1].base - 1:
            self._remove_oldest("reclaimed")
            return True
        if self.full_policy == DROP_OLDEST:
            self._remove_oldest("evicted")
            return True
        return False

    def append(self, ts, key, value, now_ms):
        """("ok", seq) | ("full",) | ("dropped",) | ("too_big",) — and the model moves."""
        flen = OVERHEAD + (0 if key is None else len(key)) + len(value)
        if flen > self.segment_bytes - HDR:
            return ("too_big",)
        tail = self.segs[-1] if self.segs else None
        empty_tail = tail is not None and tail.size == 0
        rotate = tail is None or (not empty_tail and tail.size + flen > self.segment_bytes)
        need = flen + HDR if (rotate or empty_tail) else flen
        while self.size + need > self.budget_bytes:
            if not self._free_oldest():
                if self.full_policy == REJECT:
                    return ("full",)
                self.counters["dropped"] += 1
                return ("dropped",)
        if rotate:
            if tail is not None:  # sealing makes the whole segment durable (I4)
                self.durable = self.last_seq
            tail = ModelSeg(self.next_seq, ts)
            self.segs.append(tail)
        if tail.size == 0:
            tail.first_ts = ts
            tail.size = HDR
        seq = self.next_seq
        self.recs[seq] = (ts, key, bytes(value))
        tail.size += flen
        self.next_seq += 1
        if self.sync == SYNC_EVERY:
            self.flush()
        elif self.sync == SYNC_GROUP:
            if self.last_seq - self.counted >= self.group_records:
                self.flush(now_ms)
            elif now_ms is not None:
                if self.commit_ms is None:
                    self.commit_ms = now_ms
                elif now_ms - self.commit_ms >= self.group_ms:
                    self.flush(now_ms)
        return ("ok", seq)

    def retention(self, now_ms, actual):
        """Segments retention removes; ``actual`` (what the log did) settles UNKNOWN only."""
        if not self.retention_ms:
            return 0
        limit = now_ms - self.retention_ms
        n = 0
        while len(self.segs) >= 2:
            ts = self.segs[1].first_ts
            if ts is STRICT_NONE:
                break
            if ts == UNKNOWN:
                if actual > n:
                    self._remove_oldest("expired")
                    n += 1
                break
            if (ts >> 16) >= limit:
                break
            self._remove_oldest("expired")
            n += 1
        return n

    # -- outbox
    def peek(self, i, max_records, max_bytes):
        start = self.acked[i] + 1
        if start > self.last_seq or start < self.first_seq:
            return []
        if self.durable < self.last_seq:
            self.flush()
        return self.read(start, max_records, max_bytes)

    def ack(self, i, seq):
        """None, or "config" when the log must refuse the ack."""
        if seq <= self.acked[i]:
            return None
        if seq > self.last_seq:
            return "config"
        if seq > self.durable:
            self.flush()
        self.acked[i] = seq
        return None

    # -- reopen
    def reopen(self, full_policy, sync):
        assert self.durable == self.last_seq  # close() flushed
        self.full_policy = full_policy
        self.sync = sync
        self.counted = self.durable
        self.commit_ms = None
        self.reset_counters()

    def crash(self, new_last, tail_file_exists, empty_ts):
        """The log came back ending at new_last; keep what survived."""
        for seq in [s for s in self.recs if s > new_last]:
            del self.recs[seq]
        if self.segs:
            tail = self.segs[-1]
            # Only the tail can lose frames: every sealed segment was synced (I4).
            assert tail.base <= new_last + 1, (tail, new_last)
            if tail.base > new_last:
                if tail_file_exists:
                    tail.size = 0
                    if tail.first_ts != STRICT_NONE:  # a strict empty tail stays strict
                        tail.first_ts = empty_ts
                else:
                    self.segs.pop()
            else:
                tail.size = HDR + sum(
                    OVERHEAD + (0 if self.recs[s][1] is None else len(self.recs[s][1])) + len(self.recs[s][2])
                    for s in range(tail.base, new_last + 1)
                )
        self.next_seq = new_last + 1
        self.durable = new_last
        self.counted = new_last
        self.commit_ms = None
        self.reset_counters()


values = st.one_of(st.binary(max_size=24), st.binary(max_size=190))
keys = st.one_of(st.none(), st.binary(max_size=MAX_KEY))
steps_ms = st.integers(0, 4000)
limits = st.tuples(st.integers(1, 8), st.integers(1, 400))
_append_op = st.tuples(st.just("append"), values, keys, steps_ms)
pre_crash_ops = st.lists(
    st.one_of(
        _append_op,
        _append_op,  # twice: appends are what fill a segment before the crash
        st.tuples(st.just("retention"), st.integers(0, 60000)),
        st.tuples(st.just("flush")),
    ),
    max_size=8,
)


class LogMachine(RuleBasedStateMachine):
    """Base machine; subclasses say where the files live and what a crash is."""

    crash_modes = ("kill",)

    def make_storage(self):
        raise NotImplementedError

    def crash_storage(self, mode, seed):
        raise NotImplementedError

    def drop_storage(self):
        pass

    # ---------------------------------------------------------------- setup

    @initialize(
        segment_bytes=st.sampled_from([256, 300, 512, 1024]),
        budget_segments=st.integers(2, 4),
        budget_extra=st.integers(0, 120),
        full_policy=st.sampled_from(POLICIES),
        sync=st.sampled_from(SYNCS),
        group_records=st.integers(1, 5),
        group_ms=st.integers(0, 3000),
        retention_ms=st.sampled_from([0, 2000, 10000]),
        buffer_bytes=st.sampled_from([None, 58, 64, 100, 4096]),
        consumers=st.integers(0, 2),
    )
    def setup(self, segment_bytes, budget_segments, budget_extra, full_policy, sync, group_records,
              group_ms, retention_ms, buffer_bytes, consumers):
        self.storage = self.make_storage()
        self.cfg = dict(
            segment_bytes=segment_bytes,
            budget_bytes=segment_bytes * budget_segments + budget_extra,
            full_policy=full_policy,
            sync=sync,
            group_records=group_records,
            group_ms=group_ms,
            retention_ms=retention_ms,
            buffer_bytes=buffer_bytes,
        )
        # The header goes out with its segment's first frame when the buffer holds both.
        self.header_with_frame = buffer_bytes is None or buffer_bytes >= segment_bytes
        self.names = CONSUMER_NAMES[:consumers]
        self.model = Model(segment_bytes, self.cfg["budget_bytes"], full_policy, sync, group_records,
                           group_ms, retention_ms, consumers)
        self.clock_ms = 1_700_000_000_000
        self.logical = 0
        self.prev_acked = [0] * consumers
        self.warnings = []
        self.open()

    def open(self):
        self.log = RingLog(self.path, storage=self.storage, warn=self.warnings.append, **self.cfg)
        self.outboxes = [Outbox(self.log, name) for name in self.names]

    def teardown(self):
        log = getattr(self, "log", None)
        if log is not None:
            for ob in self.outboxes:
                ob.close()
            log.close()
        self.drop_storage()

    # ---------------------------------------------------------------- helpers

    def next_ts(self, dt_ms):
        if dt_ms:
            self.clock_ms += dt_ms
            self.logical = 0
        else:
            self.logical += 1
        return (self.clock_ms << 16) | self.logical

    def do_append(self, value, key, dt_ms, with_now):
        ts = self.next_ts(dt_ms)
        now_ms = self.clock_ms if with_now else None
        evicted = self.model.counters["evicted"] + self.model.counters["reclaimed"]
        expect = self.model.append(ts, key, value, now_ms)
        if expect[0] in ("full", "dropped"):
            event("append: %s (%s)" % (expect[0], self.model.full_policy))
        elif self.model.counters["evicted"] + self.model.counters["reclaimed"] > evicted:
            event("append: made room by removing a segment")
        if expect[0] == "too_big":
            with pytest.raises(ConfigError):
                self.log.append(value, ts=ts, key=key, now_ms=now_ms)
        elif expect[0] == "full":
            with pytest.raises(LogFull):
                self.log.append(value, ts=ts, key=key, now_ms=now_ms)
        elif expect[0] == "dropped":
            assert self.log.append(value, ts=ts, key=key, now_ms=now_ms) == 0
        else:
            assert self.log.append(value, ts=ts, key=key, now_ms=now_ms) == expect[1]

    def do_retention(self, dt_ms):
        now_ms = self.clock_ms + dt_ms
        n = self.log.apply_retention(now_ms)
        assert n == self.model.retention(now_ms, n)
        if n:
            event("retention removed a segment")

    # ---------------------------------------------------------------- rules

    @rule(value=values, key=keys, dt_ms=steps_ms, with_now=st.booleans())
    def append(self, value, key, dt_ms, with_now):
        self.do_append(value, key, dt_ms, with_now)

    @rule(batch=st.lists(st.tuples(values, keys, st.integers(0, 1500)), min_size=1, max_size=12),
          with_now=st.booleans())
    def append_many(self, batch, with_now):
        # Appends dominate real use; a batch per step fills segments and budgets fast.
        for value, key, dt_ms in batch:
            self.do_append(value, key, dt_ms, with_now)

    @precondition(lambda self: hasattr(self.log, "append_many"))
    @rule(batch=st.lists(st.tuples(values, keys, st.integers(0, 1500)), max_size=12),
          one_ts=st.booleans(), with_keys=st.booleans(), with_now=st.booleans())
    def append_many_api(self, batch, one_ts, with_keys, with_now):
        # log.append_many is documented as the same appends one by one: the model does
        # exactly that. On LogFull the records before the refused one stay appended.
        vals = [v for v, _, _ in batch]
        ks = [k for _, k, _ in batch] if with_keys else None
        if one_ts:
            ts_arg = self.next_ts(batch[0][2] if batch else 0)
            tss = [ts_arg] * len(batch)
        else:
            tss = ts_arg = [self.next_ts(dt) for _, _, dt in batch]
        now_ms = self.clock_ms if with_now else None
        before = self.model.durable
        first = 0
        full = False
        for i, v in enumerate(vals):
            r = self.model.append(tss[i], None if ks is None else ks[i], v, now_ms)
            if r[0] == "full":
                full = True
                break
            if r[0] == "ok" and not first:
                first = r[1]
        if full:
            with pytest.raises(LogFull):
                self.log.append_many(vals, ts=ts_arg, keys=ks, now_ms=now_ms)
        else:
            assert self.log.append_many(vals, ts=ts_arg, keys=ks, now_ms=now_ms) == first
        if now_ms is not None and self.model.sync == SYNC_GROUP:
            # Not exactly one by one: the batch path checks the time once, after the
            # batch (log.tick), so commits on time fall elsewhere and shift the count
            # phase. What must hold: nothing durable is lost and no more than
            # group_records - 1 records wait. Then flush both to line them up again.
            d = self.log.durable_seq
            assert before <= d <= self.model.last_seq
            assert self.model.last_seq - d < self.model.group_records
            self.log.flush(now_ms)
            self.model.flush(now_ms)

    @rule(key=keys)
    def append_too_big(self, key):
        # One byte more than a segment can hold: refused, nothing changes.
        value = bytes(self.cfg["segment_bytes"] - HDR - OVERHEAD + 1)
        self.do_append(value, key, 0, False)

    @rule(with_now=st.booleans())
    def flush(self, with_now):
        now_ms = self.clock_ms if with_now else None
        self.log.flush(now_ms)
        self.model.flush(now_ms)

    @rule(dt_ms=steps_ms)
    def tick(self, dt_ms):
        self.clock_ms += dt_ms
        self.log.tick(self.clock_ms)
        if self.model.sync == SYNC_NONE:
            # The class doc says sync none is durable only at flush(); log.py's tick
            # commits anyway once group_ms passed. Either is safe; accept both.
            if self.log.durable_seq == self.model.last_seq > self.model.durable:
                self.model.flush(self.clock_ms)
            elif self.model.commit_ms is None:
                self.model.commit_ms = self.clock_ms
        else:
            self.model.tick(self.clock_ms)

    @rule(back=st.integers(-3, 40), lim=limits)
    def read(self, back, lim):
        from_seq = self.model.last_seq - back
        got = [(r.seq, r.ts, r.key, r.value) for r in self.log.read(from_seq, lim[0], lim[1])]
        assert got == self.model.read(from_seq, lim[0], lim[1])

    @precondition(lambda self: self.outboxes)
    @rule(data=st.data(), lim=limits)
    def peek_ack(self, data, lim):
        i = data.draw(st.integers(0, len(self.outboxes) - 1), label="consumer")
        got = [(r.seq, r.ts, r.key, r.value) for r in self.outboxes[i].peek(lim[0], lim[1])]
        assert got == self.model.peek(i, lim[0], lim[1])
        if got:
            k = data.draw(st.integers(0, len(got)), label="ack prefix")
            if k:
                self.outboxes[i].ack(got[k - 1][0])
                assert self.model.ack(i, got[k - 1][0]) is None

    @precondition(lambda self: self.outboxes)
    @rule(data=st.data())
    def ack_gap(self, data):
        i = data.draw(st.integers(0, len(self.outboxes) - 1), label="consumer")
        gap = self.outboxes[i].gap()
        assert gap == self.model.gap(i)
        if gap is not None:
            event("outbox saw a gap")
            assert self.outboxes[i].peek() == []
            self.outboxes[i].ack(gap[1])
            assert self.model.ack(i, gap[1]) is None

    @precondition(lambda self: self.outboxes)
    @rule(data=st.data(), delta=st.integers(-2, 2))
    def ack_out_of_range(self, data, delta):
        # At or below the cursor: ignored. Past the log's end: ConfigError, no move.
        i = data.draw(st.integers(0, len(self.outboxes) - 1), label="consumer")
        seq = self.model.acked[i] + delta if delta <= 0 else self.model.last_seq + delta
        if self.model.ack(i, seq) == "config":
            with pytest.raises(ConfigError):
                self.outboxes[i].ack(seq)
        else:
            self.outboxes[i].ack(seq)

    @rule(dt_ms=st.integers(0, 60000))
    def retention(self, dt_ms):
        self.do_retention(dt_ms)

    @rule(full_policy=st.sampled_from(POLICIES), sync=st.sampled_from(SYNCS), change=st.booleans())
    def close_reopen(self, full_policy, sync, change):
        for ob in self.outboxes:
            ob.close()
        self.log.close()
        self.model.flush()
        if change:
            self.cfg["full_policy"] = full_policy
            self.cfg["sync"] = sync
        self.model.reopen(self.cfg["full_policy"], self.cfg["sync"])
        self.open()

    @rule(ops=pre_crash_ops, data=st.data())
    def crash_reopen(self, ops, data):
        for op in ops:
            if op[0] == "append":
                self.do_append(op[1], op[2], op[3], False)
            elif op[0] == "retention":
                self.do_retention(op[1])
            else:
                self.log.flush()
                self.model.flush()
        mode = data.draw(st.sampled_from(self.crash_modes), label="crash mode")
        seed = data.draw(st.integers(0, 2**16), label="seed") if mode == "reorder" else 0
        m = self.model
        durable, last = m.durable, m.last_seq
        tail_base = m.segs[-1].base if m.segs else None
        self.crash_storage(mode, seed)
        self.open()
        new_last = self.log.last_seq
        # G1: every durable record comes back; G3: no seq at or below durable is reused.
        assert durable <= new_last <= last, (durable, new_last, last)
        if mode == "lost":
            assert new_last == durable
        exists = tail_base is not None and self.storage.exists(self.path + "/" + segment_name(tail_base))
        event("crash %s: lost %s records, tail file %s" % (
            mode, "no" if new_last == last else "all" if tail_base is not None and new_last < tail_base else "some",
            "present" if exists else "missing"))
        strict = mode == "lost" or self.header_with_frame
        m.crash(new_last, exists, STRICT_NONE if strict else UNKNOWN)

    # ---------------------------------------------------------------- invariants

    @invariant()
    def matches_model(self):
        if not hasattr(self, "log"):
            return
        lg, m = self.log, self.model
        assert lg.last_seq == m.last_seq
        assert lg.next_seq == m.next_seq
        assert lg.first_seq == m.first_seq
        assert lg.durable_seq == m.durable
        assert m.durable <= lg.last_seq
        assert lg.segment_count == len(m.segs), (lg.segment_count, m.segs)
        got = [(r.seq, r.ts, r.key, r.value) for r in lg.read(1, 1 << 30, 1 << 30)]
        assert got == m.read(1, 1 << 30, 1 << 30)
        for a, b in zip(got, got[1:]):
            assert b[0] == a[0] + 1  # I1
        stats = lg.stats()
        for name, value in m.counters.items():
            assert stats[name] == value, (name, stats[name], value)
        assert lg.size_bytes == m.size, (lg.size_bytes, m.size, m.segs)
        assert lg.size_bytes <= lg.budget_bytes
        for i, ob in enumerate(self.outboxes):
            assert ob.acked == m.acked[i]
            assert self.prev_acked[i] <= ob.acked <= lg.last_seq  # G4
            self.prev_acked[i] = ob.acked
            assert ob.depth == lg.last_seq - ob.acked
            assert ob.gap() == m.gap(i)
        assert self.warnings == []


class FileLogMachine(LogMachine):
    """Real files in a temp dir; a crash drops the objects like SIGKILL would."""

    crash_modes = ("kill",)

    def make_storage(self):
        self.tmp = tempfile.mkdtemp(prefix="edgeline-model-")
        self.path = self.tmp + "/log"
        return FileStorage()

    def drop_storage(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def crash_storage(self, mode, seed):
        # Close the OS file descriptors without flush or sync: an unbuffered FileIO holds
        # nothing, so this is the state SIGKILL leaves (the log's own buffer is lost).
        handles = [getattr(self.log, "_tail", None)] + [getattr(ob, "_h", None) for ob in self.outboxes]
        for h in handles:
            if h is not None:
                h.close()
        self.log = None
        self.outboxes = []


class FaultLogMachine(LogMachine):
    """In-memory FaultStorage; a crash is a power cut of the given mode."""

    crash_modes = ("lost", "torn", "reorder")

    def make_storage(self):
        self.path = "/data/log"
        return FaultStorage()

    def crash_storage(self, mode, seed):
        self.storage = self.storage.crash(mode, seed=seed)
        self.log = None
        self.outboxes = []


_SETTINGS = settings(
    # EDGELINE_SOAK=N runs N examples per machine instead (a soak).
    max_examples=int(os.environ.get("EDGELINE_SOAK", "300")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestFileLog = FileLogMachine.TestCase
TestFileLog.settings = _SETTINGS

if FaultStorage is not None:
    TestFaultLog = FaultLogMachine.TestCase
    TestFaultLog.settings = _SETTINGS


# ------------------------------------------------------------------ regression tests
# Bugs the machines found, each reduced to a few lines: retention expiring the segment
# before an empty tail, seqs restarting at 1 after retention and a crash (G3), and a
# write buffer smaller than a segment header.

_MS = 1 << 16  # ts = physical_ms << 16


def _small_log(storage, path, **kw):
    # 128-byte segments: two 40-byte frames (14-byte values) per segment.
    cfg = dict(segment_bytes=128, budget_bytes=1024, sync=SYNC_NONE, retention_ms=10_000)
    cfg.update(kw)
    return RingLog(path, storage=storage, **cfg)


@pytest.mark.skipif(FaultStorage is None, reason="emulator/faultfs.py not there yet")
def test_retention_keeps_segment_before_empty_tail():
    # Power is lost after a rotation whose new tail was written but not synced: the tail
    # comes back as an empty file with no header, so it has no first_ts (log.py uses 0).
    # Retention must not expire the segment before it on that account: records 1-2 are
    # 11 ms old and retention_ms is 10 s.
    fs = FaultStorage()
    log = _small_log(fs, "/d")
    log.append(b"x" * 14, ts=1_000_000 * _MS)
    log.append(b"x" * 14, ts=1_000_001 * _MS)
    log.append(b"y" * 14, ts=1_000_002 * _MS)  # seals segment 1 (synced), begins segment 3
    log.read(1)  # writes segment 3 out, unsynced
    log = _small_log(fs.crash("lost"), "/d")
    assert (log.first_seq, log.last_seq) == (1, 2)
    assert log.apply_retention(1_000_011) == 0
    assert log.first_seq == 1 and log.expired == 0


def test_retention_keeps_segment_before_empty_tail_after_kill():
    # The same over real files and a plain SIGKILL right after a rotation: the new tail
    # file exists (it is created when the segment is begun) but holds nothing yet.
    tmp = tempfile.mkdtemp(prefix="edgeline-ret-")
    try:
        log = _small_log(FileStorage(), tmp + "/log")
        log.append(b"x" * 14, ts=1_000_000 * _MS)
        log.append(b"x" * 14, ts=1_000_001 * _MS)
        log.append(b"y" * 14, ts=1_000_002 * _MS)  # seals segment 1, begins segment 3
        del log  # crash: the buffer holding record 3 is lost
        log = _small_log(FileStorage(), tmp + "/log")
        assert (log.first_seq, log.last_seq) == (1, 2)
        assert log.apply_retention(1_000_011) == 0
        assert log.first_seq == 1 and log.expired == 0
        log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_seq_not_reused_after_retention_and_crash():
    # G3. A rotation begins segment 3 in the write buffer only (no file yet); retention
    # then removes segment 1, the last file on disk. A crash (SIGKILL: the buffer is
    # lost) leaves an empty directory, and the reopened log hands out seq 1 again,
    # although seqs 1-2 were durable and may have been delivered.
    tmp = tempfile.mkdtemp(prefix="edgeline-g3-")
    try:
        log = _small_log(FileStorage(), tmp + "/log")
        log.append(b"x" * 14, ts=1_000_000 * _MS)
        log.append(b"x" * 14, ts=1_000_001 * _MS)
        log.append(b"y" * 14, ts=1_000_002 * _MS)  # seals 1-2 (durable), begins segment 3
        assert log.durable_seq == 2
        assert log.apply_retention(1_100_000) == 1  # segment 1 expires
        del log  # crash: nothing flushed or closed
        log = _small_log(FileStorage(), tmp + "/log")
        assert log.last_seq >= 2, "seqs go back to %d after a crash" % log.last_seq
        assert log.append(b"z", ts=1_200_000 * _MS) >= 3
        log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_write_buffer_smaller_than_segment_header():
    # buffer_bytes below the 32-byte segment header: either a ConfigError up front or
    # a working log, never a BufferError (or a silently grown buffer) on first append.
    tmp = tempfile.mkdtemp(prefix="edgeline-buf-")
    try:
        try:
            log = RingLog(tmp + "/log", segment_bytes=256, budget_bytes=512, buffer_bytes=16)
        except ConfigError:
            return
        assert log.append(b"hello", ts=1) == 1
        assert [r.value for r in log.read(1)] == [b"hello"]
        log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("bad_ts", [None, "x", 1.5, -1, 1 << 64])
def test_append_bad_ts_is_config_error(bad_ts):
    # The error tree promises ConfigError for a bad setting or argument. The first append
    # takes the slow path (_prepare checks ts); later ones take the fast path, which must
    # say the same, not leak TypeError from `ts < 0`. Nothing is appended either way.
    tmp = tempfile.mkdtemp(prefix="edgeline-ts-")
    try:
        log = RingLog(tmp + "/log", segment_bytes=256, budget_bytes=512, sync=SYNC_NONE)
        with pytest.raises(ConfigError):
            log.append(b"a", ts=bad_ts)  # slow path
        assert log.append(b"a", ts=1) == 1
        with pytest.raises(ConfigError):
            log.append(b"b", ts=bad_ts)  # fast path
        assert log.last_seq == 1 and [r.value for r in log.read(1)] == [b"a"]
        log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
