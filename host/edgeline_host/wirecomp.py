"""Compressed BATCHes on hosts: the encodings of docs/spec/wire.md, "Compressed batches".

Theory of operation
-------------------
A compressed batch is a BATCH in other bytes: CBATCH ``[11, topic, encoding, body]``,
whose body is the entries as a columnar batch (edgeline.columnar, docs/spec/columnar.md),
zstd-compressed or not. The sync state machine (edgeline.sync) never sees one: this
module sits in the connection's ``Codec``, the one place messages become bytes and bytes
become messages, so the protocol's states, checks and receiver rules (W1-W3) stay those
of a plain BATCH, on every side, and boards -- which keep the core's codec and never
offer an encoding -- are untouched.

* Negotiation. The edge offers its encodings in the HELLO capability ``encodings``
  (``offer``), best first; the gateway answers, in its WELCOME ``limits``, those of the
  offer it accepts (``welcome_limits``); the edge picks the first of its own list the
  answer names (``choose``). An old gateway ignores the capability and answers no
  ``encodings``: the edge sends plain BATCHes. An old edge offers nothing and gets the
  WELCOME it always got.
* The edge: ``EdgeCodec`` -- a connection made with ``codec=EdgeCodec().codec`` sends
  every BATCH as a CBATCH once ``encoding`` is set (after WELCOME); everything else goes
  out as before (``fastcbor``). Under ``zstd-columnar-1`` a batch whose zstd frame is
  not smaller than its columnar bytes goes as ``columnar-1``, and a CBATCH that is not
  smaller than the plain BATCH goes plain (a batch of a record or two: the encodings'
  fixed costs -- the encoding's name, the columnar header, a zstd frame header --
  outweigh what they save).
* The gateway: ``GatewayCodec`` -- decodes a CBATCH into the BATCH it carries before the
  connection sees it; bounded (the body at most ``max_message_bytes`` once
  decompressed, at most ``max_batch_records`` records, the values' rebuilt bytes at most
  ``max_message_bytes``) and only ``CodecError`` for anything wrong, which the
  connection answers ERROR ``malformed`` -- so an exchange holding a bad CBATCH stores
  nothing. A CBATCH before the handshake is over is a BATCH out of place (``unexpected``),
  not decoded at all. A gateway accepts every encoding it knows from any edge, plain
  BATCHes beside them.

Not in this slice: trained zstd dictionaries (the frame must name none), compressed DATA
(gateway to edge), and boards sending CBATCH (they send plain BATCH).
"""
from edgeline import columnar, sync
from edgeline.codec import CodecError
from edgeline.columnar import ColumnarError

from . import fastcbor

try:
    import zstandard
except ImportError:  # a host dependency; without it only columnar-1 is offered or accepted
    zstandard = None

CBATCH = 11  # the message type (wire.md, "Messages")
COLUMNAR = "columnar-1"
ZSTD_COLUMNAR = "zstd-columnar-1"
ZSTD_LEVEL = 3
# edge.sync.compression -> the encodings an edge offers, best first
OFFERS = {"none": (), "columnar": (COLUMNAR,), "zstd": (ZSTD_COLUMNAR, COLUMNAR)}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def known_encodings():
    """The encodings this process can decode (a gateway accepts each)."""
    return (ZSTD_COLUMNAR, COLUMNAR) if zstandard is not None else (COLUMNAR,)


def offer(compression):
    """The HELLO capability ``encodings`` for an edge.sync.compression setting: a list,
    best first; None for ``none`` (the HELLO then carries no capability at all)."""
    encs = [e for e in OFFERS[compression] if e in known_encodings()]
    return encs or None


def accepted(capabilities):
    """The gateway's answer to a HELLO's capabilities: the encodings of the edge's offer
    it accepts, in the edge's order. An offer that is not a list of text is no offer
    (capabilities are an open map: a side ignores what it cannot read)."""
    encs = capabilities.get("encodings") if type(capabilities) is dict else None
    if type(encs) is not list:
        return []
    known = known_encodings()
    out = []
    for e in encs:
        if type(e) is str and e in known and e not in out:
            out.append(e)
    return out


def welcome_limits(conn, capabilities):
    """The WELCOME ``limits`` a gateway connection sends: its limits, plus ``encodings``
    when the HELLO offered any it accepts (else the WELCOME is byte for byte an old one)."""
    limits = {"max_message_bytes": conn.max_message_bytes, "max_batch_records": conn.max_batch_records}
    # only a connection whose codec decodes CBATCHes (Gateway.new_connection's) accepts any
    encs = accepted(capabilities) if getattr(conn, "wirecodec", None) is not None else []
    if encs:
        limits["encodings"] = encs
    return limits


def choose(compression, limits):
    """The edge's encoding after WELCOME: the first of its offer the gateway's ``limits``
    name under ``encodings``; None (plain BATCH) when it names none of them."""
    answer = limits.get("encodings") if type(limits) is dict else None
    if type(answer) is not list:
        return None
    for e in offer(compression) or ():
        if e in answer:
            return e
    return None


# ------------------------------------------------------------------------ encoding


def compress_batch(msg, encoding, max_message_bytes=None):
    """[5, topic, first_seq, base_ts, entries] (a BATCH as sync hands it to the codec)
    -> [11, topic, encoding, body]; the body columnar, zstd'd when that is smaller.
    CodecError when it carries more than a CBATCH may under the peer's
    ``max_message_bytes`` (keys and values, or the columnar body, over it)."""
    topic, first, base, entries = msg[1], msg[2], msg[3], msg[4]
    records = [(first + i, base + e[0], e[1], e[2]) for i, e in enumerate(entries)]
    if max_message_bytes is not None:
        payload = sum(len(e[2]) + (len(e[1]) if e[1] is not None else 0) for e in entries)
        if payload > max_message_bytes:
            raise CodecError("BATCH keys and values of %d bytes are over the peer's max_message_bytes %d"
                             % (payload, max_message_bytes))
    try:
        body = columnar.encode(records)
    except ColumnarError as e:
        raise CodecError("BATCH cannot be columnar-encoded: %s" % e) from None
    if max_message_bytes is not None and len(body) > max_message_bytes:
        raise CodecError("columnar body of %d bytes is over the peer's max_message_bytes %d"
                         % (len(body), max_message_bytes))
    if encoding == ZSTD_COLUMNAR:
        z = _compressor().compress(body)
        if len(z) < len(body):
            return [CBATCH, topic, ZSTD_COLUMNAR, z]
        encoding = COLUMNAR
    return [CBATCH, topic, encoding, body]


_COMPRESSOR = []


def _compressor():
    if not _COMPRESSOR:
        # content size in the header: the receiver bounds its output by it before it
        # decompresses; no checksum (the records' own integrity is the log's CRCs and
        # TCP's, and columnar decoding checks every count), no dictionary id
        _COMPRESSOR.append(zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=True,
                                                    write_dict_id=False))
    return _COMPRESSOR[0]


class EdgeCodec:
    """The codec of one edge connection: ``sync.EdgeConnection(..., codec=ec.codec)``.
    Plain messages (fastcbor) until ``encoding`` is set (``choose`` after WELCOME), then
    every BATCH goes out as a CBATCH in that encoding -- or plain, when that is no larger
    (a batch of a record or two). Set ``conn`` to the connection, so a CBATCH never
    carries more than the gateway decodes (its ``max_message_bytes``). ``batches`` counts
    the BATCHes sent since ``encoding`` was set, by encoding (``plain`` for those that
    went plain); ``plain_bytes``/``sent_bytes``: what they would have cost plain, and did."""

    def __init__(self):
        self.conn = None  # the connection: its peer_max_message_bytes bounds a CBATCH's contents
        self.encoding = None
        self.batches = {}
        self.plain_bytes = 0
        self.sent_bytes = 0
        self.codec = sync.Codec(self.dumps, fastcbor.decode_prefix, whole_first=True, entries_ok=fastcbor.entries_ok)

    def dumps(self, msg):
        if self.encoding is None or type(msg) is not list or not msg or msg[0] != sync.Batch.TYPE:
            return fastcbor.dumps(msg)
        plain = fastcbor.dumps(msg)
        limit = self.conn.peer_max_message_bytes if self.conn is not None else None
        out = compress_batch(msg, self.encoding, limit)
        data = fastcbor.dumps(out)
        self.plain_bytes += len(plain)
        if len(data) >= len(plain):
            # the encodings' fixed costs (the encoding's name, the columnar header, a zstd
            # frame header) outweigh what they save; a plain BATCH is always allowed (C1)
            data, name = plain, "plain"
        else:
            name = out[2]
        self.batches[name] = self.batches.get(name, 0) + 1
        self.sent_bytes += len(data)
        return data


# ------------------------------------------------------------------------ decoding


def decompress(body, max_bytes):
    """A zstd frame -> its bytes, at most max_bytes; CodecError for anything else: not
    one whole frame, no content size, over max_bytes, a dictionary named, damaged."""
    if zstandard is None:
        raise CodecError("%s is not supported here (no zstandard)" % ZSTD_COLUMNAR)
    if len(body) < 4 or bytes(body[:4]) != _ZSTD_MAGIC:
        raise CodecError("CBATCH body is not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(body)
        size = params.content_size
        if params.dict_id:
            raise CodecError("CBATCH zstd frame names dictionary %d: none is in use" % params.dict_id)
        if size == zstandard.CONTENTSIZE_UNKNOWN or size == zstandard.CONTENTSIZE_ERROR:
            raise CodecError("CBATCH zstd frame does not declare its content size")
        if size > max_bytes:
            raise CodecError("CBATCH zstd frame of %d bytes decompressed is over %d" % (size, max_bytes))
        # the output is bounded by the declared size (libzstd refuses a frame that
        # would write more); a second frame or trailing bytes are refused
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out = dobj.decompress(bytes(body))
        if not dobj.eof or dobj.unused_data or len(out) != size:
            raise CodecError("CBATCH body is not exactly one whole zstd frame")
        return out
    except zstandard.ZstdError as e:
        raise CodecError("CBATCH zstd frame is damaged: %s" % (str(e).splitlines() or ["?"])[0]) from None


def expand(msg, max_message_bytes, max_batch_records):
    """[11, topic, encoding, body, ...] -> [5, topic, first_seq, base_ts, entries]: the
    BATCH it carries. CodecError, and nothing else, for anything wrong with it."""
    if len(msg) < 4:
        raise CodecError("CBATCH has %d fields, needs 3" % (len(msg) - 1))
    topic, encoding, body = msg[1], msg[2], msg[3]
    if type(encoding) is not str or not isinstance(body, (bytes, bytearray)):
        raise CodecError("CBATCH field encoding or body is ill-typed")
    if encoding == ZSTD_COLUMNAR:
        body = decompress(body, max_message_bytes)
    elif encoding != COLUMNAR:
        raise CodecError("CBATCH encoding %r is not one this gateway accepts (%s)"
                         % (encoding[:40], ", ".join(known_encodings())))
    if len(body) > max_message_bytes:
        raise CodecError("CBATCH body of %d bytes is over max_message_bytes %d" % (len(body), max_message_bytes))
    try:
        records = columnar.decode(body, max_records=max_batch_records, max_bytes=max_message_bytes)
    except ColumnarError as e:
        raise CodecError("CBATCH body: %s" % e) from None
    if not records:
        raise CodecError("CBATCH carries no records")
    first, base = records[0][0], records[0][1]
    entries = []
    for i, r in enumerate(records):
        if r[0] != first + i:
            raise CodecError("CBATCH seqs are not consecutive: %d where %d was due" % (r[0], first + i))
        entries.append([r[1] - base, r[2], r[3]])
    return [sync.Batch.TYPE, topic, first, base, entries]


class GatewayCodec:
    """The codec of one gateway connection: ``c = GatewayCodec(); conn =
    sync.GatewayConnection(..., codec=c.codec); c.conn = conn``. A CBATCH is decoded
    into its BATCH under the connection's limits, only once the connection is READY.
    ``batches`` counts the CBATCHes decoded by encoding, ``wire_bytes`` their bytes."""

    def __init__(self):
        self.conn = None
        self.batches = {}
        self.wire_bytes = 0
        self.codec = sync.Codec(fastcbor.dumps, self.decode_prefix, whole_first=True, entries_ok=fastcbor.entries_ok)

    def decode_prefix(self, data, offset=0):
        msg, end = fastcbor.decode_prefix(data, offset)
        if type(msg) is list and msg and msg[0] == CBATCH and type(msg[0]) is int:
            conn = self.conn
            if conn is None or conn.state != "READY":
                # A batch before WELCOME: the state machine refuses it as a BATCH
                # (ERROR unexpected), and nothing of it is decompressed.
                return [sync.Batch.TYPE] + msg[1:], end
            encoding = msg[2] if len(msg) > 2 else None
            msg = expand(msg, conn.max_message_bytes, conn.max_batch_records)
            self.batches[encoding] = self.batches.get(encoding, 0) + 1
            self.wire_bytes += end - offset
        return msg, end
