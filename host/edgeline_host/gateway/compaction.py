"""Compaction of a table topic's cloud stream, as the gateway serves it to PULLs
(docs/spec/tables.md, "Compaction of a table's cloud stream"; docs/spec/wire.md,
"Compacted DATA").

Failure modes first
-------------------
* Compaction is *logical*: nothing in the store is rewritten or removed. What a PULL of
  an edge that said it takes compacted DATA (HELLO capability ``"compaction"``) leaves
  out is computed, when the PULL is answered, from a replica of the topic's cloud stream
  alone that the ``Compactor`` keeps, so a crash at any moment loses nothing and leaves
  nothing half done: it is fed the stream again at start.
* A record not fed yet (committed, its feed not yet run) is never left out: only seqs at
  or below the *horizon* -- the highest cloud seq up to which every record was fed --
  are candidates; everything above is sent.
* A record is left out only when a later record *of the stream* supersedes it: an edge
  write the gateway has applied but not yet relayed supersedes nothing here, so an edge
  that pulls in between holds, at every moment, the state of an edge that pulled every
  record up to the same seq.
* An edge that does not send the capability (a board, an agent from before) gets every
  record, as before: the DATA it receives is byte for byte what it always was.

Theory of operation
-------------------
A record of the cloud stream is *live* when its dot -- ``(cloud, seq)`` for a cloud write,
the relayed ``(writer, seq)`` for a relay -- is a current sibling of some key (of some
field, for set and map) in the stream's replica, or a counter writer's latest entry of a
key. Every other record is superseded by a later record of the stream (whose context
covers its dot), or is not a table write (malformed: an edge ignores it anyway). A
replica that applies only the live records ends with the same state as one that applied
them all: ``apply`` is a function of the set of writes, a superseded write changes
nothing once its superseder is applied, and the superseder's context carries the
superseded dot (a writer's context is its whole vv of the key, which holds every dot it
superseded), so the vv agrees too. The stream's replica does not collect tombstones: a
live tombstone is sent until a later write replaces it.

A compacted DATA sends the live records after ``after_seq`` and says how many seqs were
left out before each (the entry's fourth element, ``skip``). It always ends with a record:
when the seqs after the last live one up to the stream's end were all left out, the last
record of the stream is sent as well (one record at most), so the edge's position moves
to the stream's end and no trailing hole needs a field of its own.

Cost: a second replica of the table in memory (the stream's), each published record
applied to it too; the live set is recomputed when it changed (O(keys + siblings)), then
each PULL is a bisection in it and one read of the chunks that hold the records sent.
"""
import bisect

import cbor2

from edgeline import sync
from edgeline import table as T

from .. import tables

CAPABILITY = "compaction"  # the HELLO capability of an edge that takes compacted DATA


def live_dots(table):
    """The set of dots ``(writer, seq)`` a replica still needs: every current sibling of
    every key (field) and every counter writer's latest entry."""
    out = set()
    kind = table.kind
    for shard in table._keys:
        for st in shard.values():
            if kind == T.COUNTER:
                for i in range(0, len(st), 3):
                    out.add((st[i], st[i + 1]))
            elif kind == T.REGISTER:
                for s in T._sibs(st):
                    out.add((s[0], s[1]))
            else:
                for reg in st.values():
                    for s in T._sibs(reg):
                        out.add((s[0], s[1]))
    return out


def relay_dot(value):
    """(writer, seq) of the edge write a cloud-stream record relays, or None."""
    try:
        r = tables.read_relay(cbor2.loads(value))
    except Exception:  # noqa: BLE001 - not a relay (or not CBOR): a cloud write, or malformed
        return None
    return None if r is None else (r[0], r[1])


class Compactor:
    """What a compacted DATA of one table topic leaves out.

    It keeps its own replica of the topic fed with the cloud stream alone -- what an edge
    that pulled every record holds -- so a record is left out only when a *later record of
    the stream* supersedes it (an edge write the gateway has applied but not yet relayed
    supersedes nothing here). ``feed(seq, ts, key, value)``: a record of the stream is
    durable (the gateway calls it for every publish, relays included, and for the stream
    at start; in any order: apply is order-free); ``plan`` answers a PULL. The live set is
    recomputed when the stream's replica changed since the last PULL."""

    def __init__(self, settings):
        self.replica = tables.Replica("compaction", settings)  # the cloud stream's replica, nothing else
        self.replica.table.on_conflict = None  # the gateway's own replica lists the conflicts
        self.horizon = 0  # every cloud seq at or below it is fed
        self._early = set()  # fed seqs above horizon + 1 (publishes that finished out of order)
        self._live = []  # sorted live cloud seqs
        self._sig = None  # (applied, horizon) of the replica when _live was computed (None: never)
        self._at = {}  # dot -> the cloud seq of its record, for the records fed since, and the live ones
        self.left_out = 0  # seqs left out of the compacted DATA sent since start (the gateway counts them)
        self._prune_at = 4096  # _at is pruned to the live dots when it grows past this

    def feed(self, seq, ts, key, value):
        dot = relay_dot(value) or (sync.CLOUD_ORIGIN, seq)
        self._at[dot] = seq
        self.replica.apply_record(sync.CLOUD_ORIGIN, seq, ts, key, value)
        if len(self._at) > self._prune_at:  # no PULL for a while: forget the superseded dots now
            self.live()
            self._prune_at = 2 * len(self._at) + 4096
        if seq > self.horizon + 1:
            self._early.add(seq)
        elif seq == self.horizon + 1:
            self.horizon = seq
            while self.horizon + 1 in self._early:
                self.horizon += 1
                self._early.discard(self.horizon)

    def live(self):
        """Sorted cloud seqs of the live records. The dots kept are pruned to the live
        ones: a superseded write never becomes live again."""
        sig = (self.replica.applied, self.horizon)
        if sig != self._sig:
            self._sig = sig
            at = self._at
            keep = {}
            for dot in live_dots(self.replica.table):
                cs = at.get(dot)
                if cs is not None:  # always: every dot of this replica came from a record fed
                    keep[dot] = cs
            self._at = keep
            self._live = sorted(keep.values())
        return self._live

    def plan(self, after, published, n):
        """The seqs a compacted DATA after ``after`` sends (at most ``n``, ascending), with
        the count of seqs left out before each: ``[(seq, skip)]``; empty when nothing is
        after ``after``."""
        if after >= published or n < 1:
            return []
        live = self.live()
        horizon = min(self.horizon, published)
        i = bisect.bisect_right(live, after)
        seqs = []
        while i < len(live) and len(seqs) < n and live[i] <= horizon:
            seqs.append(live[i])
            i += 1
        if len(seqs) < n:
            # the seqs above the horizon are all sent (not applied yet: never left out) ...
            nxt = max(after, seqs[-1] if seqs else after, horizon) + 1
            if not seqs or seqs[-1] < horizon:
                # ... and one left out up to the horizon ends in a record: the stream's
                # last one at or below it
                if horizon > (seqs[-1] if seqs else after):
                    seqs.append(horizon)
            while len(seqs) < n and nxt <= published:
                seqs.append(nxt)
                nxt += 1
        out = []
        prev = after
        for s in seqs:
            out.append((s, s - prev - 1))
            prev = s
        return out


def data_of(topic, records, skips):
    """A compacted DATA (sync.Data) of ``records`` (sync.Record, ascending seqs) where
    ``skips[i]`` seqs were left out before record i: entries ``[ts_delta, key, value]``,
    or ``[ts_delta, key, value, skip]`` when skip > 0; ``first_seq`` is the first record's
    seq less its skip (the seq after the PULL's ``after_seq``)."""
    base = records[0].ts
    entries = []
    for r, k in zip(records, skips):
        e = [r.ts - base, r.key, r.value]
        if k:
            e.append(k)
        entries.append(e)
    return sync.Data(topic, records[0].seq - skips[0], base, entries)
