"""The sync protocol between an edge and a gateway, sans-IO (docs/spec/wire.md).

Theory of operation
-------------------
Like h11, this module does no I/O: it turns bytes from the peer into events and events
from the caller into bytes. Each side runs one connection object: ``EdgeConnection``
(an agent, a board) or ``GatewayConnection``. Both are the same machine with the
other half of the state tables below.

* ``receive_data(data)`` buffers bytes from the peer; ``b""`` means the peer closed.
  A transport that carries whole messages per unit checks ``buffered_bytes`` is 0 once
  a unit has been read (else the unit ended inside a message).
* ``next_event()`` returns the next event (a ``Hello``, ``Batch``, ...), ``NEED_DATA``
  when the buffered bytes hold no complete message, or ``ConnectionClosed`` once the
  peer closed and every message before has been returned. Call it until ``NEED_DATA``
  after every ``receive_data``.
* ``send(event)`` checks the event is allowed in the current state, fills in what the
  connection knows itself (version, node id, nonces, proofs, limits, the edge's
  ``max_message_bytes`` capability), and returns the message's bytes for the caller to
  transmit. Maps go out with their keys in RFC 8949 order, so the same message has the
  same bytes on CPython and MicroPython (their dicts iterate differently).
  ``send_into(event, buf)`` encodes into a bytearray the caller reuses and returns a
  memoryview of it: a board's uplink sends without a new bytes object per message.

Events are small objects, one class per message type (``Ack("temp", 7)``, fields by
position or name, None when not given), plus ``ConnectionClosed`` and the ``NEED_DATA``
sentinel. The states and what each allows are the tables below, per role.

Every message goes out through ``send``: the connection never answers on its own, so
the handshake is four calls on each side (fields left None are filled in):

    edge                                    gateway
    out(c.send(Hello()))                    ev = c.next_event()      -> Hello
    ev = c.next_event()     -> Challenge    out(c.send(Challenge()))
    out(c.send(Auth()))                     ev = c.next_event()      -> Auth (proof checked)
    ev = c.next_event()     -> Welcome      out(c.send(Welcome(marks=..)))
      (server proof checked; c.marks)

The gateway looks the node's key up with ``keys_lookup(node_id)`` when HELLO arrives
and checks the proof when AUTH arrives; ``Auth`` is returned only for a right proof,
and the application answers with ``Welcome(marks=...)``: the marks are the
application's, read from its storage. The edge checks the gateway's proof in WELCOME
and keeps the marks (``marks``) and the gateway's limits (``peer_max_message_bytes``,
``peer_max_batch_records``, which ``send`` then enforces).

Errors, as in h11. The peer's garbage -- not CBOR, a wrong field, a message the state
does not allow, one over ``max_message_bytes``, a wrong proof -- moves the connection
to the sticky ERROR state and ``next_event()`` raises ``RemoteProtocolError`` (one line;
again on every later call). The ERROR message owed to the peer is then returned, once,
by ``pending_error_bytes()``: send it and close. A received ERROR message is returned
as an ``Error`` event (its code says whether to retry: ``internal`` does), and the
connection stops with nothing owed: the next ``next_event()`` raises. A caller's mistake
-- an event the state does not allow, a bad field, a message over the peer's limit --
raises ``LocalProtocolError`` from ``send`` and changes nothing. The application may
itself stop a connection with ``send(Error(code, message))`` in any state.

Framing. A connection carries a CBOR sequence. A small resumable scanner walks the CBOR
heads as bytes arrive, without decoding, to find where the current message ends (or
that its declared lengths already pass ``max_message_bytes``); only a complete message
is decoded, once. Feeding a message one byte at a time therefore costs linear time,
and an oversized one is refused before it is buffered whole.

Codec. A connection encodes and decodes through its own ``Codec`` (``codec=``; the
core's, ``CORE_CODEC``, by default), so a host process may run fast and core-codec
connections side by side; nothing here is process-wide.

Versions. This side sends version 2, whose HELLO names each topic's log incarnation
(``Hello(incarnations={topic: 8 bytes})``: record identity is (origin, topic,
incarnation, seq), wire.md "Incarnations"), and accepts a version-1 HELLO (no
incarnations: all legacy); ``Hello(version=1)`` speaks to a version-1 gateway.

``batch_from_records``/``records_of`` convert between log Records and BATCH/DATA,
``apply_batch``/``apply_gap`` are the receiver rules W1-W3 as pure functions of a mark,
and ``data_window`` is the edge's rule for DATA as a function of what its log holds
(wire.md, "Cloud-to-edge topics"; edgeline.inbox writes the records). ``peek_type``
reads a payload's message type without decoding it. The sender's rules -- what to send
next, what an ACK or a WELCOME mark means -- are edgeline.sender.
"""
import struct
import sys

from . import codec
from .auth import client_proof, digest_equal, server_proof
from .errors import CodecError, ConfigError, LocalProtocolError, RemoteProtocolError
from .log import Record

try:
    from collections import OrderedDict
except ImportError:  # very old MicroPython ports
    from ucollections import OrderedDict

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


VERSION = const(2)  # what this side sends; it accepts version 1 too (old boards: legacy incarnation)
_DEFAULT_MAX_MESSAGE_BYTES = const(1048576)
_DEFAULT_MAX_BATCH_RECORDS = const(1000)
_NONCE_BYTES = const(16)
_MIN_MESSAGE_BYTES = const(256)  # below this not even the handshake fits
_U64 = 1 << 64
# Where a hybrid-clock timestamp (about 2**56) is a heap int (32-bit ports: small ints
# stop at 2**30 - 1), so is every sum or difference of two: the per-record ts arithmetic
# of BATCH and DATA then works on the timestamps' bytes. A list, so tests can switch it.
TS_BYTES = [sys.maxsize < 0xFFFFFFFF]

# The origin of every record of a cloud-to-edge topic: what the gateway publishes. A
# reserved node id: a gateway refuses a key for a node of this name (wire.md).
CLOUD_ORIGIN = "cloud"

# Error codes (wire.md, "Error codes"); ERROR_NAMES[code] is the name.
ERR_MALFORMED = const(1)
ERR_UNSUPPORTED_VERSION = const(2)
ERR_UNKNOWN_NODE = const(3)
ERR_BAD_PROOF = const(4)
ERR_UNEXPECTED = const(5)
ERR_UNKNOWN_TOPIC = const(6)
ERR_TOO_LARGE = const(7)
ERR_INTERNAL = const(8)
ERROR_NAMES = (None, "malformed", "unsupported_version", "unknown_node", "bad_proof", "unexpected",
               "unknown_topic", "too_large", "internal")


# ---------------------------------------------------------------------------- events


class NEED_DATA:
    """Sentinel from next_event(): no complete message is buffered yet."""


class Event:
    """A protocol message as an object: Ack("temp", 7) or Ack(topic="temp", seq=7);
    fields not given are None. TYPE is the wire type, FIELDS the names of the array
    elements after it, LAYOUT one letter per field (see _field_ok). Events compare
    equal by type and fields."""

    TYPE = 0
    FIELDS = ()
    LAYOUT = ""

    def __init__(self, *args, **kwargs):
        fields = self.FIELDS
        if len(args) > len(fields):
            raise TypeError("%s takes %d fields" % (type(self).__name__, len(fields)))
        for i in range(len(fields)):
            setattr(self, fields[i], args[i] if i < len(args) else kwargs.pop(fields[i], None))
        if kwargs:
            raise TypeError("%s has no field %s" % (type(self).__name__, ", ".join(kwargs)))

    def values(self):
        return [getattr(self, f) for f in self.FIELDS]

    def __eq__(self, other):
        return type(self) is type(other) and self.values() == other.values()

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (f, getattr(self, f)) for f in self.FIELDS))


class ConnectionClosed(Event):
    """The peer closed the connection (EOF) after its last complete message."""


def _message(name, type_, fields, layout, base=Event):
    # One event class per message type, made by type(): a class statement costs about
    # twice the heap on MicroPython (its body's code and a larger class dict).
    return type(name, (base,), {"TYPE": type_, "FIELDS": fields, "LAYOUT": layout})


# The messages of wire.md: class, wire type, fields after the type, their layout.
# (HELLO's layout is built, not written out: on a board every new string is a qstr.)
Hello = _message("Hello", 1, ("version", "node_id", "client_nonce", "capabilities", "incarnations"), "uNnC" + "I")
Challenge = _message("Challenge", 2, ("server_nonce",), "n")
Auth = _message("Auth", 3, ("proof",), "p")
Welcome = _message("Welcome", 4, ("server_proof", "marks", "limits"), "pML")
Batch = _message("Batch", 5, ("topic", "first_seq", "base_ts", "entries"), "Tuue")
Ack = _message("Ack", 6, ("topic", "seq"), "Tu")
Gap = _message("Gap", 7, ("topic", "first", "last", "reason"), "Tuut")
Pull = _message("Pull", 8, ("topic", "after_seq", "max_records"), "Tuu")
Data = _message("Data", 9, Batch.FIELDS, "Tuue", Batch)  # a Batch from the gateway
Error = _message("Error", 10, ("code", "message"), "ut")

_CLASSES = (None, Hello, Challenge, Auth, Welcome, Batch, Ack, Gap, Pull, Data, Error)


class Codec:
    """The CBOR implementation a connection's messages go through: Codec(dumps,
    decode_prefix, whole_first=False, entries_ok=None). A host may give a connection a
    faster one that gives the same bytes and the same values and raises CodecError on bad
    input (edgeline_host.fastcbor.CODEC, over the C-accelerated cbor2); boards keep
    CORE_CODEC, the core's own.

    whole_first: try to decode a message whole before scanning its heads -- for a fast
    codec, when messages usually arrive whole (HTTP bodies, MQTT payloads). The scanner
    still takes over, linearly, for any message that has not arrived whole.
    entries_ok(base_ts, entries): a faster check of BATCH/DATA entries; True only for
    entries the built-in check accepts (when it says False, the built-in check decides)."""

    def __init__(self, dumps, decode_prefix, whole_first=False, entries_ok=None):
        self.dumps = dumps
        self.decode_prefix = decode_prefix
        self.whole_first = whole_first
        self.entries_ok = entries_ok


CORE_CODEC = Codec(codec.dumps, codec.decode_prefix)

# ---------------------------------------------------------------------- state tables
#
# Per role: state -> {event class it may send (receive): the state after}. ERROR is in
# none of them on purpose: an Error may be sent or received in every state but ERROR,
# and leads to ERROR, which allows nothing (sticky).

_EDGE_SEND = {
    "START": {Hello: "HELLO_SENT"},
    "CHALLENGED": {Auth: "AUTH_SENT"},
    "READY": {Batch: "READY", Gap: "READY", Pull: "READY"},
}
_EDGE_RECEIVE = {
    "HELLO_SENT": {Challenge: "CHALLENGED"},
    "AUTH_SENT": {Welcome: "READY"},
    "READY": {Ack: "READY", Data: "READY"},
}
_GATEWAY_SEND = {
    "HELLO_RECEIVED": {Challenge: "CHALLENGED"},
    "AUTHENTICATED": {Welcome: "READY"},
    "READY": {Ack: "READY", Data: "READY"},
}
_GATEWAY_RECEIVE = {
    "START": {Hello: "HELLO_RECEIVED"},
    "CHALLENGED": {Auth: "AUTHENTICATED"},
    "READY": {Batch: "READY", Gap: "READY", Pull: "READY"},
}
_NOTHING = {}

# ------------------------------------------------------------------ field validation


def _is_bytes(v):
    return isinstance(v, (bytes, bytearray, memoryview))


def is_node_id(v) -> bool:
    """1-64 characters of [A-Za-z0-9._-], and not "." or "..": a node id names files and
    directories (a node's data directory, its key file), so it must be a safe path
    component. The one rule for node ids, on the wire and in every config."""
    if type(v) is not str or not 0 < len(v) <= 64 or v == "." or v == "..":
        return False
    for c in v:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "._-"):
            return False
    return True


def _field_ok(kind, v, low=0):
    # u uint64 (>= low), t text, T topic, N node id, n nonce, p proof, C capabilities,
    # M marks (topic -> uint), L limits, I incarnations (topic -> 8 bytes), e entries
    # (checked further in _check)
    if kind == "u":
        return type(v) is int and low <= v < _U64
    if kind == "t":
        return type(v) is str
    if kind == "T":
        return type(v) is str and 0 < len(v) <= 128
    if kind == "N":
        return is_node_id(v)
    if kind == "n" or kind == "p":
        return _is_bytes(v) and len(v) == (_NONCE_BYTES if kind == "n" else 32)
    if kind == "M" or kind == "I":
        if type(v) is not dict:
            return False
        for k in v:
            if not _field_ok("T", k):
                return False
            x = v[k]
            if not (_field_ok("u", x) if kind == "M" else _is_bytes(x) and len(x) == 8):
                return False
        return True
    if type(v) is dict:  # C or L; other keys are ignored
        mmb = v.get("max_message_bytes")
        if kind == "C":
            return mmb is None or _field_ok("u", mmb, _MIN_MESSAGE_BYTES)
        return kind == "L" and _field_ok("u", mmb, _MIN_MESSAGE_BYTES) and _field_ok("u", v.get("max_batch_records"), 1)
    return kind == "e" and (type(v) is list or type(v) is tuple)


def _check(cls, fields, entries_ok=None):
    """None if fields (the elements after the type) make a valid cls message, else why.
    entries_ok: the connection codec's fast check of BATCH/DATA entries, or None."""
    layout = cls.LAYOUT
    if cls is Hello and fields and fields[0] == 1:
        layout = layout[:4]  # version 1: no incarnations (all legacy)
    if len(fields) < len(layout):
        return "%s has %d fields, needs %d" % (cls.__name__.upper(), len(fields), len(layout))
    for i in range(len(layout)):
        if not _field_ok(layout[i], fields[i]):
            return "%s field %s is ill-typed or out of range" % (cls.__name__.upper(), cls.FIELDS[i])
    if layout == "Tuue":  # BATCH, DATA: seqs from 1, every ts a uint64
        first, base, entries = fields[1], fields[2], fields[3]
        ok = first >= 1 and first + len(entries) <= _U64
        if ok and not (entries_ok and entries_ok(base, entries)):
            # 0 <= base + delta < 2**64 as bounds on the delta, made once: the sum is a
            # heap int per entry on a 32-bit board
            lo = -base
            hi = _U64 - base
            for e in entries:
                # the common case (decoded from the wire: a list of int, None or bytes,
                # bytes) costs no call; other bytes-likes take _is_bytes
                t = type(e)
                if (t is not list and t is not tuple) or len(e) < 3:
                    ok = False
                    break
                k = e[1]
                v = e[2]
                if (type(e[0]) is not int or not lo <= e[0] < hi or not (k is None or type(k) is bytes
                                                                                 or _is_bytes(k))
                        or not (type(v) is bytes or _is_bytes(v))):
                    ok = False
                    break
        if not ok:
            return "%s seq, ts or entry out of range or ill-typed" % cls.__name__.upper()
    elif cls is Gap and not 1 <= fields[1] <= fields[2]:
        return "GAP range %d..%d is empty or starts at 0" % (fields[1], fields[2])
    return None


def _one_line(text, limit=200):
    text = str(text).replace("\r", " ").replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------ connection


class _Connection:
    _SEND = _NOTHING
    _RECEIVE = _NOTHING

    def __init__(self, nonce_source, max_message_bytes, codec):
        if type(max_message_bytes) is not int or max_message_bytes < _MIN_MESSAGE_BYTES:
            raise ConfigError("max_message_bytes must be an int >= %d, got %r"
                              % (_MIN_MESSAGE_BYTES, max_message_bytes))
        if codec is None:
            codec = CORE_CODEC
        # The codec's parts, looked up once: they are called for every message.
        self._dumps = codec.dumps
        self._decode_prefix = codec.decode_prefix
        self._whole_first = codec.whole_first
        self._entries_ok = codec.entries_ok
        self.state = "START"
        self.max_message_bytes = max_message_bytes
        self.peer_max_message_bytes = None  # None: the peer announced no limit
        self.node_id = None
        self.client_nonce = None
        self.server_nonce = None
        self._nonce_source = nonce_source
        self._key = None
        self._buf = bytearray()
        self._start = 0  # where the current message begins in _buf
        self._scan_pos = 0  # where the scanner resumes: an unread CBOR head
        self._stack = []  # items still to come per open container; -1: indefinite
        self._eof = False
        self._why = None  # one line: why the connection stopped (state ERROR)
        self._owed = b""  # the ERROR message we owe the peer

    # -- receiving

    def receive_data(self, data):
        """Buffer bytes from the peer; b"" means the peer closed. Ignored after ERROR."""
        if self.state == "ERROR":
            return
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data after EOF")
            return
        if not data:
            self._eof = True
            return
        if self._start:
            # Drop consumed messages. No memoryview of _buf outlives a call, so resizing
            # is safe (slice assignment: MicroPython's bytearray has no del of a slice).
            n = self._start
            self._buf[:n] = b""
            self._scan_pos -= n
            self._start = 0
        self._buf.extend(data)

    def next_event(self):
        """The next event, NEED_DATA, or ConnectionClosed; RemoteProtocolError on bad input."""
        if self.state == "ERROR":
            raise RemoteProtocolError(self._why)
        if self._whole_first and self._scan_pos == self._start and self._start < len(self._buf):
            msg = self._whole()
            if msg is not None:
                return msg
        end = self._scan()
        if end is None:
            if not self._eof:
                return NEED_DATA
            if self._start < len(self._buf):
                raise self._fail(ERR_MALFORMED, "connection closed inside a message")
            return ConnectionClosed()
        try:
            msg, stop = self._decode_prefix(self._buf, self._start)
        except CodecError as e:
            raise self._fail(ERR_MALFORMED, str(e))
        if stop != end:
            raise self._fail(ERR_MALFORMED, "message length disagrees with its CBOR heads")
        # Consumed only once received: if the application's keys_lookup raises, the
        # next call scans and processes the same message again.
        self._scan_pos = self._start
        event = self._receive(msg)
        if self.state != "ERROR":
            self._start = self._scan_pos = end
        return event

    def _whole(self):
        # A fast codec's path (Codec.whole_first): the message decoded in one
        # go; None when it has not arrived whole (the scanner continues from here).
        try:
            msg, end = self._decode_prefix(self._buf, self._start)
        except CodecError:
            return None  # incomplete, or bad: the scanner's path says which, in its words
        if end - self._start > self.max_message_bytes:
            raise self._fail(ERR_TOO_LARGE, "message of %d bytes is over max_message_bytes %d"
                             % (end - self._start, self.max_message_bytes))
        self._scan_pos = self._start
        event = self._receive(msg)
        if self.state != "ERROR":
            self._start = self._scan_pos = end
        return event

    @property
    def buffered_bytes(self):
        """Bytes received and not yet returned as an event. After ``next_event()`` gave
        NEED_DATA, non-zero means a message has begun and not ended: a transport whose
        every unit holds whole messages (an HTTP body, an MQTT payload) treats that as
        malformed at the unit's end."""
        return len(self._buf) - self._start

    def pending_error_bytes(self) -> bytes:
        """The ERROR message owed to the peer after a RemoteProtocolError, once; else b""."""
        owed = self._owed
        self._owed = b""
        return owed

    def _fail(self, code, detail):
        # The peer broke the protocol: stop, owe it an ERROR; the caller raises.
        line = "%s: %s" % (ERROR_NAMES[code], _one_line(detail))
        self._stop(line, self._dumps([Error.TYPE, code, line]))
        return RemoteProtocolError(line)

    def _stop(self, why, owed):
        # Enter the sticky ERROR state. Everything the peer sends from now on is
        # ignored, so the input buffer goes.
        self.state = "ERROR"
        self._why = why
        self._owed = owed
        self._buf = bytearray()
        self._start = self._scan_pos = 0
        self._stack = []

    def _scan(self):
        # Walk CBOR heads from _scan_pos; return the end of the message that starts at
        # _start once all its bytes are buffered, else None. Only lengths are read here;
        # the decoder checks everything else. Each open container keeps on _stack how
        # many items it still expects (-1: indefinite, ended by a break byte).
        buf = self._buf
        n = len(buf)
        p = self._scan_pos
        stack = self._stack
        end = None
        need = n + 1  # the least the message can end at (exclusive) while incomplete
        while p < n:
            ib = buf[p]
            major = ib >> 5
            ai = ib & 0x1F
            arg = -1  # indefinite length
            q = p + 1
            if ai < 24:
                arg = ai
            elif ai < 28:
                q += 1 << (ai - 24)
                if q > n:
                    break
                # Only lengths and counts are needed; a slice for the others would be
                # made per record (a value's length head).
                arg = 0 if major < 2 or major == 7 else buf[p + 1] if ai == 24 else int.from_bytes(buf[p + 1:q], "big")
            elif ai != 31 or major < 2 or major == 6:
                raise self._fail(ERR_MALFORMED, "not well-formed CBOR at byte 0x%02x" % ib)
            opened = False  # did this head open a container whose items follow?
            if major == 7:
                if ai == 31:  # break: ends the innermost indefinite item
                    if not stack or stack[-1] >= 0:
                        raise self._fail(ERR_MALFORMED, "not well-formed CBOR at byte 0xff")
                    stack.pop()
            elif major == 2 or major == 3:
                if arg >= 0:
                    q += arg
                    if q > n:  # the length is known already: checked against the cap below
                        need = q
                        break
                else:  # indefinite-length string: definite chunks until a break
                    stack.append(-1)
                    opened = True
            elif major >= 4:  # array, map, tag
                if major == 6:
                    stack.append(1)
                elif arg:
                    stack.append(arg if arg < 0 or major == 4 else 2 * arg)
                opened = major == 6 or arg != 0
                if len(stack) > codec.MAX_DEPTH + 1:
                    raise self._fail(ERR_MALFORMED, "CBOR nested too deep")
            p = q
            if opened:
                continue
            # One item is complete: count it against its container, closing every
            # container it completes.
            while stack:
                top = stack[-1]
                if top < 0:
                    break
                if top > 1:
                    stack[-1] = top - 1
                    break
                stack.pop()
            if not stack:
                end = need = p
                break
        self._scan_pos = p
        if need - self._start > self.max_message_bytes:
            raise self._fail(ERR_TOO_LARGE, "message of %d+ bytes is over max_message_bytes %d"
                             % (need - self._start, self.max_message_bytes))
        return end

    def _receive(self, msg):
        if type(msg) is not list or not msg or type(msg[0]) is not int:
            raise self._fail(ERR_MALFORMED, "message is not an array starting with its type")
        t = msg[0]
        cls = _CLASSES[t] if 0 < t < len(_CLASSES) else None
        if cls is None:
            raise self._fail(ERR_MALFORMED, "unknown message type %d" % t)
        after = "ERROR" if cls is Error else self._RECEIVE.get(self.state, _NOTHING).get(cls)
        if after is None:
            raise self._fail(ERR_UNEXPECTED, "%s not allowed in state %s" % (cls.__name__.upper(), self.state))
        fields = msg[1:]
        if cls is Hello and fields and type(fields[0]) is int and fields[0] != VERSION and fields[0] != 1:
            raise self._fail(ERR_UNSUPPORTED_VERSION,
                             "HELLO version %d; this side speaks versions 1 and %d" % (fields[0], VERSION))
        why = _check(cls, fields, self._entries_ok)
        if why:
            raise self._fail(ERR_MALFORMED, why)
        if cls is Hello and fields[0] == 1:
            fields = fields[:4] + [{}]  # a version-1 edge: every topic's incarnation is the legacy one
        event = cls(*fields[:len(cls.FIELDS)])
        if cls is Error:
            name = ERROR_NAMES[event.code] if event.code < len(ERROR_NAMES) else None
            self._stop(_one_line("peer sent ERROR %d (%s): %s" % (event.code, name, event.message)), b"")
        else:
            self._received(event)  # may fail the connection (proofs, limits)
            self.state = after
        return event

    # -- sending

    def send(self, event) -> bytes:
        """The bytes of event for the peer; LocalProtocolError (state unchanged) if the
        state does not allow it or a field is wrong."""
        return self.send_into(event, None)

    def send_into(self, event, buf):
        """As ``send``, but with the core's codec the message is encoded into ``buf``
        (a bytearray of the caller's, its contents replaced and its memory reused) and
        a memoryview of it is returned: no new bytes per message (a board's uplink keeps
        one buffer and hands the view to ``sendall`` at once). With another codec, or
        buf None, the message's bytes. Do not hold a view when calling again with the
        same buffer (CPython refuses to resize a buffer a view holds)."""
        cls = type(event)
        if self.state == "ERROR":
            raise LocalProtocolError("cannot send %s: connection stopped (%s)" % (cls.__name__, self._why))
        if cls is Error:
            after = "ERROR"
        else:
            after = self._SEND.get(self.state, _NOTHING).get(cls)
            if after is None:
                raise LocalProtocolError("cannot send %s in state %s" % (cls.__name__, self.state))
        values = self._prepare(event)
        why = _check(cls, values, self._entries_ok)
        if why:
            raise LocalProtocolError(why)
        try:
            # Maps go out in the order of RFC 8949 section 4.2.1 (bytewise order of the
            # encoded keys), so a message has the same bytes on every runtime, whatever
            # the order its dicts iterate in.
            msg = [cls.TYPE]
            for v in values:
                if type(v) is dict:
                    v = OrderedDict((k, v[k]) for k in sorted(v, key=codec.dumps))
                msg.append(v)
            if buf is not None and self._dumps is codec.dumps:
                codec.dump_into(buf, msg)
                data = memoryview(buf)
            else:
                data = self._dumps(msg)
        except CodecError as e:
            raise LocalProtocolError("%s cannot be encoded: %s" % (cls.__name__.upper(), e))
        limit = self.peer_max_message_bytes
        if limit is not None and len(data) > limit:
            raise LocalProtocolError("%s of %d bytes is over the peer's max_message_bytes %d"
                                     % (cls.__name__.upper(), len(data), limit))
        self._commit(cls, values)
        self.state = after
        if cls is Error:
            self._stop(_one_line("stopped: sent ERROR %d: %s" % (values[0], values[1])), b"")
        return data

    def _prepare(self, event):
        # The values to send, with what this side fills in; must not change any state.
        values = event.values()
        if type(event) is Error and values[1] is None:
            code = values[0]
            values[1] = ERROR_NAMES[code] if _field_ok("u", code) and code < len(ERROR_NAMES) else ""
        elif type(event) is Error:
            values[1] = _one_line(values[1])
        return values

    def _commit(self, cls, values):
        pass

    def _received(self, event):
        pass

    def _nonce(self):
        n = self._nonce_source(_NONCE_BYTES)
        if not _is_bytes(n) or len(n) != _NONCE_BYTES:
            raise ConfigError("nonce_source(%d) must return %d bytes" % (_NONCE_BYTES, _NONCE_BYTES))
        return bytes(n)


class EdgeConnection(_Connection):
    """The edge side: EdgeConnection(node_id, key, nonce_source, max_message_bytes, codec).

    nonce_source(n) returns n random bytes (os.urandom); codec is a ``Codec`` (None: the
    core's, CORE_CODEC). After WELCOME: ``marks`` (topic
    -> the gateway's mark), ``peer_max_message_bytes``, ``peer_max_batch_records``.
    """

    _SEND = _EDGE_SEND
    _RECEIVE = _EDGE_RECEIVE

    def __init__(self, node_id, key, nonce_source, max_message_bytes=_DEFAULT_MAX_MESSAGE_BYTES, codec=None):
        _Connection.__init__(self, nonce_source, max_message_bytes, codec)
        if not is_node_id(node_id):
            raise ConfigError("node_id must be 1-64 characters of [A-Za-z0-9._-], not . or .., got %r"
                              % (node_id,))
        if not _is_bytes(key) or len(key) != 32:
            raise ConfigError("key must be 32 bytes")
        self.node_id = node_id
        self._key = bytes(key)
        self.marks = None
        self.peer_max_batch_records = None

    def _prepare(self, event):
        values = _Connection._prepare(self, event)
        cls = type(event)
        if cls is Hello:
            if values[0] is None:
                values[0] = VERSION
            if values[1] is None:
                values[1] = self.node_id
            elif values[1] != self.node_id:
                raise LocalProtocolError("HELLO node_id %r is not this connection's %r" % (values[1], self.node_id))
            if values[2] is None:
                values[2] = self._nonce()
            caps = {} if values[3] is None else values[3]
            if type(caps) is dict and "max_message_bytes" not in caps:
                caps = dict(caps)
                caps["max_message_bytes"] = self.max_message_bytes
            values[3] = caps
            if values[0] == 1:  # a version-1 HELLO has no incarnations (all legacy): none sent
                values = values[:4]
            elif values[4] is None:
                values[4] = {}
        elif cls is Auth and values[0] is None:
            values[0] = client_proof(self._key, self.node_id, self.client_nonce, self.server_nonce)
        elif cls is Batch:
            cap = self.peer_max_batch_records
            if cap is not None and _field_ok("e", values[3]) and len(values[3]) > cap:
                raise LocalProtocolError("BATCH of %d records is over the gateway's max_batch_records %d"
                                         % (len(values[3]), cap))
        return values

    def _commit(self, cls, values):
        if cls is Hello:
            self.client_nonce = values[2]

    def _received(self, event):
        cls = type(event)
        if cls is Challenge:
            self.server_nonce = event.server_nonce
        elif cls is Welcome:
            want = server_proof(self._key, self.node_id, self.client_nonce, self.server_nonce)
            if not digest_equal(want, event.server_proof):
                raise self._fail(ERR_BAD_PROOF, "WELCOME server_proof is wrong: the gateway lacks this node's key")
            self.marks = event.marks
            self.peer_max_message_bytes = event.limits["max_message_bytes"]
            self.peer_max_batch_records = event.limits["max_batch_records"]


class GatewayConnection(_Connection):
    """The gateway side: GatewayConnection(keys_lookup, nonce_source, max_message_bytes,
    max_batch_records, codec).

    keys_lookup(node_id) returns the node's 32-byte key, or None for a node the gateway
    does not know. After Hello: ``version`` (1 or 2) and ``incarnations`` (topic -> the
    8-byte incarnation of the edge's log; a topic not in it, and every topic of a
    version-1 HELLO, is the legacy incarnation). After Auth: ``node_id`` is the
    authenticated node. The limits go to
    the edge in WELCOME (unless the Welcome event carries its own) and are enforced on
    every message received. An edge's HELLO capability ``max_message_bytes`` becomes
    ``peer_max_message_bytes``, enforced by send().
    """

    _SEND = _GATEWAY_SEND
    _RECEIVE = _GATEWAY_RECEIVE

    def __init__(self, keys_lookup, nonce_source, max_message_bytes=_DEFAULT_MAX_MESSAGE_BYTES,
                 max_batch_records=_DEFAULT_MAX_BATCH_RECORDS, codec=None):
        _Connection.__init__(self, nonce_source, max_message_bytes, codec)
        if type(max_batch_records) is not int or max_batch_records < 1:
            raise ConfigError("max_batch_records must be an int >= 1, got %r" % (max_batch_records,))
        self.max_batch_records = max_batch_records
        self._keys_lookup = keys_lookup
        self.version = None
        self.incarnations = {}  # from HELLO: topic -> incarnation id; a topic not in it is legacy

    def _prepare(self, event):
        values = _Connection._prepare(self, event)
        cls = type(event)
        if cls is Challenge and values[0] is None:
            values[0] = self._nonce()
        elif cls is Welcome:
            if values[0] is None:
                values[0] = server_proof(self._key, self.node_id, self.client_nonce, self.server_nonce)
            if values[1] is None:
                values[1] = {}
            if values[2] is None:
                values[2] = {"max_message_bytes": self.max_message_bytes, "max_batch_records": self.max_batch_records}
        return values

    def _commit(self, cls, values):
        if cls is Challenge:
            self.server_nonce = values[0]
        elif cls is Welcome:
            self.max_message_bytes = values[2]["max_message_bytes"]
            self.max_batch_records = values[2]["max_batch_records"]

    def _received(self, event):
        cls = type(event)
        if cls is Hello:
            key = self._keys_lookup(event.node_id)
            if key is None:
                raise self._fail(ERR_UNKNOWN_NODE, "no key for node %r" % event.node_id)
            self._key = key
            self.node_id = event.node_id
            self.client_nonce = event.client_nonce
            self.peer_max_message_bytes = event.capabilities.get("max_message_bytes")
            self.version = event.version
            self.incarnations = event.incarnations
        elif cls is Auth:
            want = client_proof(self._key, self.node_id, self.client_nonce, self.server_nonce)
            if not digest_equal(want, event.proof):
                raise self._fail(ERR_BAD_PROOF, "AUTH proof for node %r is wrong" % self.node_id)
        elif cls is Batch and len(event.entries) > self.max_batch_records:
            raise self._fail(ERR_TOO_LARGE, "BATCH of %d records is over max_batch_records %d"
                             % (len(event.entries), self.max_batch_records))


# ---------------------------------------------------------------- records and marks


def batch_from_records(topic, records, event_class=Batch):
    """A Batch (or Data) carrying records: non-empty, consecutive seqs (as Outbox.peek
    returns them). An empty DATA is built directly: Data(topic, after_seq + 1, 0, [])."""
    if not records:
        raise LocalProtocolError("a batch needs at least one record")
    first = records[0].seq
    base = records[0].ts
    entries = []
    sc = None
    if TS_BYTES[0] and type(base) is int and 0 <= base < _U64:
        sc = bytearray(16)  # base and each ts, big-endian
        struct.pack_into(">Q", sc, 0, base)
    for r in records:
        if r.seq != first + len(entries):
            raise LocalProtocolError("records are not consecutive: seq %d where %d was due"
                                     % (r.seq, first + len(entries)))
        ts = r.ts
        d = None
        if sc is not None and type(ts) is int and 0 <= ts < _U64:
            # ts - base from their bytes when it is a small int (equal top 24 bits,
            # |delta| < 2**29: records less than about 2.3 hours apart); no int beyond
            # 2**30 made (on 32-bit, ts - base is one per record)
            struct.pack_into(">Q", sc, 8, ts)
            if sc[0] == sc[8] and sc[1] == sc[9] and sc[2] == sc[10]:
                x = ((sc[11] - sc[3]) << 16) + ((sc[12] << 8) | sc[13]) - ((sc[4] << 8) | sc[5])
                if -0x1FFF <= x <= 0x1FFF:
                    d = (x << 16) + ((sc[14] << 8) | sc[15]) - ((sc[6] << 8) | sc[7])
        entries.append([ts - base if d is None else d, r.key, r.value])
    return event_class(topic, first, base, entries)


def records_of(batch, skip=0):
    """The Records a Batch or Data carries (seq first_seq + i, ts base_ts + ts_delta),
    leaving out the first skip entries."""
    first = batch.first_seq
    base = batch.base_ts
    entries = batch.entries
    out = []
    for i in range(skip, len(entries)):
        e = entries[i]
        out.append(Record(first + i, base + e[0], e[1], e[2]))
    return out


def batch_window(mark, batch):
    """Receiver rules W1-W3 for a BATCH against the mark of (node, topic), without
    building records: (skip, ack_seq). The new records are the entries after the first
    skip; store them durably, then the mark is ack_seq and the answer ACK(topic, ack_seq).
    Entries at or below the mark are duplicates; a batch starting past mark + 1 stores
    nothing and acks the mark, which tells the edge where to resume."""
    first = batch.first_seq
    n = len(batch.entries)
    if first > mark + 1 or first + n - 1 <= mark:
        return n, mark
    return mark + 1 - first, first + n - 1


def apply_batch(mark, batch):
    """batch_window as Records: (records, ack_seq), records possibly empty."""
    skip, ack = batch_window(mark, batch)
    return (records_of(batch, skip) if ack > mark else []), ack


def apply_gap(mark, gap):
    """Receiver rules for a GAP against the mark: returns (lost, ack_seq).

    lost is the (first, last) range newly recorded as lost (keep gap.reason with it),
    or None for a duplicate or a gap starting past mark + 1; then the mark is ack_seq
    and the answer ACK(topic, ack_seq).
    """
    if gap.first > mark + 1 or gap.last <= mark:
        return None, mark
    return (mark + 1, gap.last), gap.last


def data_window(held, data):
    """The edge's rule for a DATA (wire.md, "Cloud-to-edge topics") against ``held``, the
    highest seq its log of the topic's cloud records holds: how many leading entries to
    skip. Entries at or below ``held`` are duplicates; the rest are new and go into the
    log under their own seqs (edgeline.inbox). A DATA with entries that starts past
    ``held + 1`` would leave a hole: RemoteProtocolError."""
    first = data.first_seq
    if data.entries and first > held + 1:
        raise RemoteProtocolError("DATA for %s starts at seq %d, past %d: records would be missing"
                                  % (data.topic, first, held + 1))
    return held + 1 - first if held >= first else 0


def peek_type(payload):
    """The type of the first message in ``payload`` (an int), or None when the payload
    does not begin like a message (the connection then says what is wrong).

    Reads two CBOR heads and decodes nothing: cheap enough for every MQTT payload a
    transport has to route before a connection sees it."""
    n = len(payload)
    if n < 2 or payload[0] >> 5 != 4:  # an array
        return None
    ai = payload[0] & 0x1F
    if ai < 24 or ai == 31:
        i = 1
    elif ai <= 27:
        i = 1 + (1 << (ai - 24))
    else:
        return None
    if i >= n or payload[i] >> 5 != 0:  # an unsigned int
        return None
    ai = payload[i] & 0x1F
    if ai < 24:
        return ai
    if ai > 27:
        return None
    width = 1 << (ai - 24)
    if i + 1 + width > n:
        return None
    return int.from_bytes(bytes(payload[i + 1:i + 1 + width]), "big")
