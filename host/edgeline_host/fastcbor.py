"""CBOR for the sync protocol on CPython hosts, through the C-accelerated cbor2.

The core's codec is pure Python so that it runs on a microcontroller; on a gateway that
takes batches from many edges it is the bottleneck (a 1000-record BATCH costs
milliseconds to decode). ``CODEC`` is an ``edgeline.sync.Codec`` over cbor2 instead: a
connection made with ``codec=fastcbor.CODEC`` (the agent's uplink, the gateway's
connections) encodes and decodes its messages through it; other connections in the same
process keep the core's. The bytes are the same (edgeline's codec is byte-for-byte
cbor2's default encoding, and sync writes maps in canonical key order), the decoded
values are the same for everything a valid message holds (ints, bytes, text, arrays,
maps), and bad input still raises ``CodecError``: values cbor2 decodes into other types
(tagged dates, sets, ...) are refused by sync's field checks as before. The per-entry
check of BATCH/DATA runs column-wise through C built-ins (``entries_ok``); it accepts
only what sync's own check accepts and leaves every doubtful case to it.
tests/shared/test_fastcbor.py checks both codecs agree.
"""
import io
from operator import itemgetter

import cbor2

from edgeline import sync
from edgeline.codec import CodecError, NeedData


def dumps(obj):
    try:
        return cbor2.dumps(obj)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
        raise CodecError(str(e).splitlines()[0] if str(e) else "cannot encode %r" % type(obj).__name__) from None


def decode_prefix(data, offset=0):
    fp = io.BytesIO(memoryview(data)[offset:])
    try:
        obj = cbor2.CBORDecoder(fp).decode()
    except cbor2.CBORDecodeEOF:
        raise NeedData("truncated CBOR item") from None
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError) as e:
        raise CodecError(str(e).splitlines()[0] if str(e) else "malformed CBOR") from None
    return obj, offset + fp.tell()


_U64 = 1 << 64
_SEQUENCES = {list, tuple}
_INTS = {int}
_KEYS = {bytes, type(None)}
_VALUES = {bytes}
_TS, _KEY, _VALUE = itemgetter(0), itemgetter(1), itemgetter(2)


def entries_ok(base_ts, entries):
    """True if every entry is [int ts_delta, bytes or None, bytes, ...] with base_ts +
    ts_delta a uint64 -- the common case, checked a column at a time; False means "not
    sure" (other bytes-likes, bad entries), and sync's check decides."""
    if not entries:
        return True
    if not set(map(type, entries)) <= _SEQUENCES or min(map(len, entries)) < 3:
        return False
    deltas = list(map(_TS, entries))
    if not set(map(type, deltas)) <= _INTS or base_ts + min(deltas) < 0 or base_ts + max(deltas) >= _U64:
        return False
    return set(map(type, map(_KEY, entries))) <= _KEYS and set(map(type, map(_VALUE, entries))) <= _VALUES


# Messages arrive whole (HTTP bodies, MQTT payloads, most TCP reads): decode each in one go.
CODEC = sync.Codec(dumps, decode_prefix, whole_first=True, entries_ok=entries_ok)
