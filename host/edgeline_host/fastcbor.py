"""CBOR for the sync protocol on CPython hosts, through the C-accelerated cbor2.

The core's codec is pure Python so that it runs on a microcontroller; on a gateway that
takes batches from many edges it is the bottleneck (a 1000-record BATCH costs
milliseconds to decode). ``install()`` routes ``edgeline.sync``'s message encoding and
decoding through cbor2 instead. The bytes are the same (edgeline's codec is byte-for-byte
cbor2's default encoding, and sync writes maps in canonical key order), the decoded
values are the same for everything a valid message holds (ints, bytes, text, arrays,
maps), and bad input still raises ``CodecError``: values cbor2 decodes into other types
(tagged dates, sets, ...) are refused by sync's field checks as before.
tests/host/test_fastcbor.py checks both codecs agree.
"""
import io

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


def install():
    """Use cbor2 for every sync connection in this process."""
    sync.use_codec(dumps, decode_prefix, whole_first=True)
