"""Store-and-forward: a consumer's durable cursor over a ring log.

Theory of operation
-------------------
An outbox belongs to one consumer of one log (the uplink to the gateway, a mesh peer).
Its cursor is the highest seq the consumer has *acknowledged* — after the receiver made
the records durable on its side — or the end of a gap the receiver was told about.

``peek`` returns the records right after the cursor, contiguous and in order, without
moving it; ``ack(seq)`` moves it, durably. When records after the cursor are missing
(evicted by the full policy or retention before they were sent, or rotted on flash),
``peek`` returns nothing and ``gap()`` names the missing range, so the sender can tell the
receiver exactly what was lost and then ``ack`` the end of the gap. The receiver thus
sees every seq exactly once: as a record or as part of a reported gap.

``peek`` commits the log first if it holds records not yet durable: a record is never
sent before it is durable here, so a crash can never make this node reuse a seq the
receiver has already stored.

The cursor lives in a 32-byte two-slot file (docs/spec/log.md, "Outbox cursor file"):
each update writes the slot that does not hold the current value and syncs, so a torn
update leaves the previous value readable and the cursor can never rewind.

The outbox registers in its log's ``consumers``: the log then keeps every segment holding
records after the cursor unless its full policy evicts them. It uses only the log's
public API (docs/core.md).
"""
import struct
from binascii import crc32

from .errors import ConfigError, StorageError

# Why seqs after the cursor are missing, as the GAP reasons of the wire (wire.md, GAP):
# gap_reason returns one of these; the sender adds its own (sender.GATEWAY_LOST).
EVICTED = "evicted"  # removed by the log's full policy before they were sent
EXPIRED = "expired"  # removed by retention before they were sent
CORRUPT = "corrupt"  # rotted on flash

_SLOT = 16


def _valid_name(name):
    if not (1 <= len(name) <= 32):
        return False
    for c in name:
        if not (("a" <= c <= "z") or ("0" <= c <= "9") or c in "-_"):
            return False
    return True


def pack_cursor_slot(acked, generation):
    """The 16 bytes of one cursor slot."""
    b = bytearray(_SLOT)
    struct.pack_into("<QI", b, 0, acked, generation)
    struct.pack_into("<I", b, 12, crc32(memoryview(b)[:12]))
    return b


def parse_cursor(data):
    """(acked, generation, slot) from a cursor file's bytes; (0, 0, 1) if no slot is valid."""
    best = (0, 0, 1)
    for slot in (0, 1):
        off = slot * _SLOT
        if len(data) < off + _SLOT:
            continue
        acked, gen, crc = struct.unpack_from("<QII", data, off)
        if gen == 0 or crc != crc32(memoryview(data)[off:off + 12]):
            continue
        if gen > best[1]:
            best = (acked, gen, slot)
    return best


class Outbox:
    """A consumer's durable position in a log: peek, ack, gaps, depth."""

    def __init__(self, log, name="uplink"):
        if not _valid_name(name):
            raise ConfigError("outbox name %r must be 1-32 characters of a-z, 0-9, - and _" % (name,))
        self.log = log
        self.name = name
        self._path = log.path + "/" + name + ".cur"
        st = log.storage
        data = b""
        if st.exists(self._path):
            h = st.open_read(self._path)
            try:
                buf = bytearray(2 * _SLOT)
                n = 0
                mv = memoryview(buf)
                while n < len(buf):
                    k = h.readinto(mv[n:])
                    if not k:
                        break
                    n += k
                data = buf[:n]
            finally:
                h.close()
        self._acked, self._gen, self._slot = parse_cursor(data)
        if self._acked > log.last_seq:
            # The log lost records the consumer had acknowledged (it was opened with
            # sync none, or its files were replaced). Never rewind; the log continues
            # above the cursor only for seqs already acknowledged, so say so.
            log.warn(
                "outbox %s of %s: cursor %d is past the log's end %d; records up to the cursor were acknowledged before"
                % (name, log.path, self._acked, log.last_seq)
            )
        self._slotbuf = bytearray(_SLOT)
        self._h = None
        log.consumers.append(self)

    @property
    def acked(self):
        """Highest seq acknowledged (or reported lost); 0 if none."""
        return self._acked

    @property
    def depth(self):
        """How many seqs after the cursor are still owed: records and gaps alike."""
        d = self.log.last_seq - self._acked
        return d if d > 0 else 0

    def gap(self):
        """(first, last) of the seqs missing right after the cursor, or None.

        Missing means evicted or expired before being acknowledged, or lost to corruption.
        """
        log = self.log
        start = self._acked + 1
        if start > log.last_seq:
            return None
        first = log.first_seq
        if start < first:
            return (start, first - 1)
        recs = log.read(start, 1, 1)
        if recs and recs[0].seq > start:
            return (start, recs[0].seq - 1)
        if not recs:
            return (start, log.last_seq)
        return None

    def gap_reason(self, first):
        """Why the seqs of a gap starting at ``first`` are missing, as a GAP reason.

        The log counts removals but not per seq, so this names the likelier: a hole
        inside the range the log still holds rotted (``corrupt``); one before it was
        ``expired`` when retention is all that ever removed records, else ``evicted``.
        """
        log = self.log
        if first >= log.first_seq:
            return CORRUPT
        return EXPIRED if log.expired and not log.evicted else EVICTED

    def peek(self, max_records=100, max_bytes=65536):
        """The records right after the cursor, in order and contiguous, up to the limits.

        Empty when nothing is owed or when a gap comes first (see ``gap()``).
        """
        log = self.log
        start = self._acked + 1
        if start > log.last_seq or start < log.first_seq:
            return []
        if log.durable_seq < log.last_seq:
            log.flush()
        recs = log.read(start, max_records, max_bytes)
        if not recs or recs[0].seq != start:
            return []
        if recs[-1].seq - start == len(recs) - 1:
            return recs  # seqs only increase, so first and last tell it is contiguous
        n = 1
        while recs[n].seq == start + n:
            n += 1
        return recs[:n]

    def ack(self, seq):
        """Durably move the cursor to ``seq`` (an acknowledged record or the end of a
        reported gap). Acks at or below the cursor are ignored; the cursor never rewinds.
        """
        if seq <= self._acked:
            return
        if seq > self.log.last_seq:
            raise ConfigError("outbox %s: cannot acknowledge seq %d, the log ends at %d" % (self.name, seq, self.log.last_seq))
        if seq > self.log.durable_seq:
            self.log.flush()
        gen = self._gen + 1
        slot = 1 - self._slot
        b = self._slotbuf
        struct.pack_into("<QI", b, 0, seq, gen)
        struct.pack_into("<I", b, 12, crc32(memoryview(b)[:12]))
        st = self.log.storage
        try:
            if self._h is None:
                self._h = st.open_update(self._path)
            self._h.seek(slot * _SLOT)
            self._h.write(b, _SLOT)
            self._h.sync()
        except OSError as e:
            h = self._h
            self._h = None
            if h is not None:
                try:
                    h.close()
                except OSError:
                    pass
            raise StorageError("outbox %s: cursor write failed (%s); cursor stays at %d" % (self.name, e, self._acked))
        self._acked = seq
        self._gen = gen
        self._slot = slot

    def close(self):
        if self._h is not None:
            self._h.close()
            self._h = None
        if self in self.log.consumers:
            self.log.consumers.remove(self)
