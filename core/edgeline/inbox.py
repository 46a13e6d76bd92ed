"""Records received from a peer, written into a local log under their own seqs.

Theory of operation
-------------------
The outbox's counterpart. An outbox is a consumer's position in a log this node writes;
an inbox is a log this node keeps of records another node wrote -- today the records of a
cloud-to-edge topic, which the gateway sends in DATA messages (docs/spec/wire.md,
"Cloud-to-edge topics"). The log holds the records of one origin and one topic and
nothing else, so its seqs *are* theirs: the record with seq s is appended only when it
would get seq s, and ``log.last_seq`` -- what the log holds -- is the whole position. The
next PULL asks after it, which is also the acknowledgement of everything up to it.

Which entries of a DATA to keep is the protocol's rule, ``edgeline.sync.data_window``
(duplicates skipped, a hole refused); this module does the storage half: append the new
entries and commit them before returning, so a PULL sent afterwards acknowledges only
durable records, and a power cut at any write point loses nothing the gateway was told
is held and doubles nothing.
"""
import struct

from .errors import RemoteProtocolError
from .sync import TS_BYTES, data_window


class _Stamp:
    # A DATA entry's ts, base_ts + delta, for log.append, which takes it as it takes a
    # clock: stamp_into writes the 8 bytes into the frame from 16-bit pieces. On a 32-bit
    # board the sum as an int is a heap object per record. (The log's last_ts is not
    # moved by such appends, as by a clock's.)
    def __init__(self, base):
        self.delta = 0
        self._last = struct.unpack("<HHHH", struct.pack("<Q", base))  # base in 16-bit pieces

    def stamp_into(self, buf, off):
        b = self._last
        c = b[0] + self.delta
        l0 = c & 0xFFFF
        c = (c >> 16) + b[1]
        l1 = c & 0xFFFF
        c = (c >> 16) + b[2]
        struct.pack_into("<HHHH", buf, off, l0, l1, c & 0xFFFF, (c >> 16) + b[3])

    @property
    def last(self):
        b = bytearray(8)
        self.stamp_into(b, 0)
        return int.from_bytes(b, "little")


def append_data(log, data, now_ms=None):
    """Append the records of ``data`` (a DATA) that ``log`` does not hold yet, under their
    seqs, and commit them; return how many were appended.

    A DATA that starts past ``log.last_seq + 1`` would leave a hole: RemoteProtocolError,
    nothing appended. When the log refuses a record (full: ``drop_newest`` returns 0,
    ``reject`` raises LogFull after the records before it are committed) the rest waits
    at the gateway: the next PULL asks after the new ``last_seq``. Everything appended is
    durable when this returns.
    """
    entries = data.entries
    base = data.base_ts
    for e in entries:
        if len(e) > 3:
            return _append_compacted(log, data, now_ms)
    st = _Stamp(base) if TS_BYTES[0] and entries else None
    n = 0
    try:
        for i in range(data_window(log.last_seq, data), len(entries)):
            e = entries[i]
            if st is not None:
                st.delta = e[0]
            if not log.append(e[2], base + e[0] if st is None else st, e[1], now_ms):
                break
            n += 1
    finally:
        if n:
            log.flush(now_ms)
    return n


PLACEHOLDER = b""  # the value of a seq a compacted DATA left out (key None): never a record's


def _append_compacted(log, data, now_ms):
    # A compacted DATA (wire.md, "Compacted DATA"): entry i is [ts_delta, key, value,
    # skip], skip seqs left out before it (superseded table writes). The log's seqs stay
    # consecutive (log.md, I1): each left-out seq above what the log holds is appended as
    # a placeholder frame (key None, value empty) with the next record's ts, which a
    # table replica ignores. Returns the records and placeholders appended.
    held = log.last_seq
    first = data.first_seq
    if data.entries and first > held + 1:
        raise RemoteProtocolError("DATA for %s starts at seq %d, past %d: records would be missing"
                                  % (data.topic, first, held + 1))
    base = data.base_ts
    seq = first - 1
    n = 0
    try:
        for e in data.entries:
            skip = e[3] if len(e) > 3 else 0
            if type(skip) is not int or skip < 0:
                raise RemoteProtocolError("DATA for %s: an entry's skip is %r, not a uint" % (data.topic, skip))
            ts = base + e[0]
            seq += skip + 1
            if seq <= held:
                continue
            for _ in range(max(seq - skip, held + 1), seq):
                if not log.append(PLACEHOLDER, ts, None, now_ms):
                    return n
                n += 1
            if not log.append(e[2], ts, e[1], now_ms):
                return n
            n += 1
    finally:
        if n:
            log.flush(now_ms)
    return n
