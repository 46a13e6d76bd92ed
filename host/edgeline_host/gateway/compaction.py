"""Compaction of a table topic's cloud stream, as the gateway serves it to PULLs
(docs/spec/tables.md, "Compaction of a table's cloud stream"; docs/spec/wire.md,
"Compacted DATA").

Failure modes first
-------------------
* Compaction is *logical*: nothing in the store is rewritten or removed. What a PULL of
  an edge that said it takes compacted DATA (HELLO capability ``"compaction"``) leaves
  out is computed from the gateway's replica of the table when the PULL is answered, so a
  crash at any moment loses nothing and leaves nothing half done: the replica is rebuilt
  from the store at start, and the next PULL is answered from it again.
* A record the replica has not applied yet (committed, its apply not yet run) is never
  left out: only seqs at or below the *horizon* -- the highest cloud seq up to which every
  record has been applied to the replica -- are candidates, everything above is sent.
* A live edge write whose relay the relay index cannot place (not waiting to be relayed
  either) makes ``live`` unknown: that PULL is answered with every record, none left out.
* An edge that does not send the capability (a board, an agent from before) gets every
  record, as before: the DATA it receives is byte for byte what it always was.

Theory of operation
-------------------
A record of the cloud stream is *live* when its dot -- ``(cloud, seq)`` for a cloud write,
the relayed ``(writer, seq)`` for a relay -- is a current sibling of some key (of some
field, for set and map), or a counter writer's latest entry of a key. Every other record
is superseded by a write the replica applied (its context covers the record's dot), was
a tombstone collected at causal stability, or is not a table write (malformed: an edge
ignores it anyway). A replica that applies only the live records ends with the same
state as one that applied them all: ``apply`` is a function of the set of writes, a
superseded write changes nothing once its superseder is applied, and the superseder's
context carries the superseded dot (a writer's context is its whole vv of the key, which
holds every dot it superseded), so the vv agrees too. Collected tombstones: every replica
the topic is served to had applied them (that is what "stable" means), so only a replica
that never had the key misses them, and for it the key is absent either way.

A compacted DATA sends the live records after ``after_seq`` and says how many seqs were
left out before each (the entry's fourth element, ``skip``). It always ends with a record:
when the seqs after the last live one up to the stream's end were all left out, the last
record of the stream is sent as well (one record at most), so the edge's position moves
to the stream's end and no trailing hole needs a field of its own.

Cost: the live set is recomputed from the replica when it changed (O(keys + siblings)),
then each PULL is a bisection in it and one read of the chunks that hold the records
sent.
"""
import bisect

from edgeline import sync
from edgeline import table as T

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


class Compactor:
    """The live cloud seqs of one table topic, kept from its replica.

    ``applied(first, last)``: the replica has applied cloud seqs first..last (the gateway
    calls it after each publish, and once after the rebuild at start); ``plan`` answers a
    PULL. The live set is recomputed when the replica's counts of applied writes and
    collected tombstones, the horizon or the relays changed."""

    def __init__(self):
        self.horizon = 0  # every cloud seq at or below it is applied to the replica
        self._early = set()  # applied seqs above horizon + 1 (publishes that finished out of order)
        self._live = None  # sorted live cloud seqs (None: unknown, nothing may be left out)
        self._sig = None  # what the replica and the relays were when _live was computed (None: never)
        self._relay_at = {}  # (writer, seq) of a live (or newly relayed) edge write -> its relay's cloud seq
        self.left_out = 0  # seqs left out of compacted DATA since start (a count for status)

    def applied(self, first, last):
        if first > self.horizon + 1:
            self._early.update(range(first, last + 1))
        else:
            self.horizon = max(self.horizon, last)
            while self.horizon + 1 in self._early:
                self.horizon += 1
                self._early.discard(self.horizon)
        self._sig = None

    def note_relay(self, cloud_seq, writer, seq):
        """The relay of edge write ``(writer, seq)`` is cloud seq ``cloud_seq`` (the gateway
        calls it for every relay it stores or finds at start)."""
        self._relay_at[(writer, seq)] = cloud_seq
        self._sig = None

    def live(self, rep, pending=()):
        """Sorted cloud seqs of the live records, recomputed when the replica or the
        relays changed since the last call; None when a live edge write is neither a
        relay noted here nor waiting to be relayed (``pending``: the queued relays'
        tuples, writer and seq first) -- then nothing may be left out. The relays noted
        are kept only while live: a superseded write never becomes live again."""
        sig = (rep.applied, rep.collected, self.horizon, len(pending))
        if self._sig is None or sig != self._sig:
            self._sig = sig
            seqs = []
            queued = None
            at = self._relay_at
            keep = {}
            for dot in live_dots(rep.table):
                if dot[0] == sync.CLOUD_ORIGIN:
                    seqs.append(dot[1])
                    continue
                cs = at.get(dot)
                if cs is not None:
                    seqs.append(cs)
                    keep[dot] = cs
                    continue
                if queued is None:
                    queued = set((p[0], p[1]) for p in pending)
                if dot not in queued:  # relayed somewhere this cannot say: send everything
                    seqs = None
                    keep = at
                    break
                # else an edge write not relayed yet: not in the stream
            if seqs is not None:
                seqs.sort()
            self._relay_at = keep
            self._live = seqs
        return self._live

    def plan(self, rep, after, published, n, pending=()):
        """The seqs a compacted DATA after ``after`` sends (at most ``n``, ascending), with
        the count of seqs left out before each: ``[(seq, skip)]``; empty when nothing is
        after ``after``. Every seq, none left out, when ``live`` cannot tell."""
        if after >= published or n < 1:
            return []
        live = self.live(rep, pending)
        horizon = min(self.horizon, published)
        if live is None:
            live = []
            horizon = 0
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
            self.left_out += s - prev - 1
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
