"""MQTT control packets for the agent's MQTT endpoint (mqtt_endpoint.py): a sans-IO codec,
server side, MQTT 3.1.1 (protocol level 4) and MQTT 5 (level 5).

Why our own: no maintained Python package decodes both versions without I/O of its own --
``mqtt5`` (a Rust extension) and ``moat-lib-mqtt`` speak MQTT 5 only, amqtt's codec MQTT
3.1.1 only and reads from an asyncio stream, paho's parser is inside its client. A
server that takes publishes needs few packets (CONNECT, PUBLISH, PUBACK, SUBSCRIBE,
UNSUBSCRIBE, PINGREQ, DISCONNECT in; CONNACK, PUBACK, SUBACK, UNSUBACK, PINGRESP,
DISCONNECT out), so they are here, in the manner of h11: ``receive_data(bytes)``,
``next_packet()`` (a packet, or None: more bytes needed), and ``encode_*`` functions
returning bytes. Nothing here reads a socket or a clock.

Bad remote input never raises anything but ``MalformedPacket`` (with the MQTT 5 reason
code the server answers it with); after one, the decoder stays broken (sticky), the
connection must be closed. The first packet must be CONNECT; its protocol level fixes
the version the rest is decoded with (MQTT 5 packets carry properties).
"""
import struct

# packet types (fixed header, high nibble)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

MQTT311 = 4
MQTT5 = 5

# MQTT 5 reason codes the endpoint uses (3.1.1 CONNACK return codes are mapped below)
RC_SUCCESS = 0x00
RC_NO_MATCHING_SUBSCRIBERS = 0x10
RC_UNSPECIFIED = 0x80
RC_MALFORMED = 0x81
RC_PROTOCOL_ERROR = 0x82
RC_IMPLEMENTATION_SPECIFIC = 0x83
RC_UNSUPPORTED_VERSION = 0x84
RC_CLIENT_ID_NOT_VALID = 0x85
RC_BAD_USER_OR_PASSWORD = 0x86
RC_NOT_AUTHORIZED = 0x87
RC_SERVER_SHUTTING_DOWN = 0x8B
RC_KEEP_ALIVE_TIMEOUT = 0x8D
RC_SESSION_TAKEN_OVER = 0x8E
RC_TOPIC_NAME_INVALID = 0x90
RC_RECEIVE_MAXIMUM_EXCEEDED = 0x93
RC_TOPIC_ALIAS_INVALID = 0x94
RC_PACKET_TOO_LARGE = 0x95
RC_QUOTA_EXCEEDED = 0x97
RC_PAYLOAD_FORMAT_INVALID = 0x99
RC_QOS_NOT_SUPPORTED = 0x9B

# MQTT 3.1.1 CONNACK return codes
_V3_CONNACK = {RC_SUCCESS: 0, RC_UNSUPPORTED_VERSION: 1, RC_CLIENT_ID_NOT_VALID: 2, RC_BAD_USER_OR_PASSWORD: 4,
               RC_NOT_AUTHORIZED: 5}

# MQTT 5 properties: id -> (name, type)
_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
PROPERTIES = {
    0x01: ("payload_format_indicator", _BYTE), 0x02: ("message_expiry_interval", _U32),
    0x03: ("content_type", _UTF8), 0x08: ("response_topic", _UTF8), 0x09: ("correlation_data", _BINARY),
    0x0B: ("subscription_identifier", _VARINT), 0x11: ("session_expiry_interval", _U32),
    0x12: ("assigned_client_identifier", _UTF8), 0x13: ("server_keep_alive", _U16),
    0x15: ("authentication_method", _UTF8), 0x16: ("authentication_data", _BINARY),
    0x17: ("request_problem_information", _BYTE), 0x18: ("will_delay_interval", _U32),
    0x19: ("request_response_information", _BYTE), 0x1A: ("response_information", _UTF8),
    0x1C: ("server_reference", _UTF8), 0x1F: ("reason_string", _UTF8), 0x21: ("receive_maximum", _U16),
    0x22: ("topic_alias_maximum", _U16), 0x23: ("topic_alias", _U16), 0x24: ("maximum_qos", _BYTE),
    0x25: ("retain_available", _BYTE), 0x26: ("user_property", _PAIR), 0x27: ("maximum_packet_size", _U32),
    0x28: ("wildcard_subscription_available", _BYTE), 0x29: ("subscription_identifier_available", _BYTE),
    0x2A: ("shared_subscription_available", _BYTE),
}
_PROPERTY_IDS = {name: (pid, kind) for pid, (name, kind) in PROPERTIES.items()}


class MalformedPacket(Exception):
    """The peer sent bytes that are not a valid packet here. ``reason_code``: the MQTT 5
    reason code to close with (3.1.1 has none: the connection is just closed)."""

    def __init__(self, message, reason_code=RC_MALFORMED):
        Exception.__init__(self, message)
        self.reason_code = reason_code


class Connect:
    __slots__ = ("version", "client_id", "clean_start", "keepalive_s", "username", "password", "will",
                 "properties")

    def __init__(self, version, client_id, clean_start, keepalive_s, username=None, password=None, will=None,
                 properties=None):
        self.version = version
        self.client_id = client_id
        self.clean_start = clean_start
        self.keepalive_s = keepalive_s
        self.username = username
        self.password = password
        self.will = will  # a Publish (its packet_id None), or None
        self.properties = properties or {}


class Publish:
    __slots__ = ("topic", "payload", "qos", "dup", "retain", "packet_id", "properties")

    def __init__(self, topic, payload, qos=0, dup=False, retain=False, packet_id=None, properties=None):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.dup = dup
        self.retain = retain
        self.packet_id = packet_id
        self.properties = properties or {}


class Subscribe:
    __slots__ = ("packet_id", "filters", "properties")

    def __init__(self, packet_id, filters, properties=None):
        self.packet_id = packet_id
        self.filters = filters  # [(filter, options byte)]
        self.properties = properties or {}


class Unsubscribe:
    __slots__ = ("packet_id", "filters", "properties")

    def __init__(self, packet_id, filters, properties=None):
        self.packet_id = packet_id
        self.filters = filters
        self.properties = properties or {}


class Simple:
    """A packet that is its type and little else: PINGREQ, DISCONNECT, PUBACK/PUBREC/...
    from a client (``packet_id``), AUTH. ``reason_code`` and ``properties`` for MQTT 5."""

    __slots__ = ("type", "packet_id", "reason_code", "properties")

    def __init__(self, type_, packet_id=None, reason_code=0, properties=None):
        self.type = type_
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties or {}


# ---------------------------------------------------------------------------- decoding


class _Reader:
    """Fields of one packet's body; a short body is MalformedPacket, never IndexError."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def left(self):
        return self.end - self.pos

    def take(self, n):
        if n > self.end - self.pos:
            raise MalformedPacket("the packet ends inside a field")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(b)

    def byte(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def varint(self):
        value, shift = 0, 0
        for _ in range(4):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise MalformedPacket("a variable byte integer longer than 4 bytes")

    def binary(self):
        return self.take(self.u16())

    def utf8(self):
        raw = self.binary()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("a string that is not UTF-8") from None
        if "\x00" in s:
            raise MalformedPacket("a string with U+0000")
        return s

    def properties(self):
        n = self.varint()
        if n > self.left():
            raise MalformedPacket("the properties run past the packet")
        end = self.pos + n
        props = {}
        while self.pos < end:
            pid = self.varint()
            spec = PROPERTIES.get(pid)
            if spec is None:
                raise MalformedPacket("unknown property 0x%02x" % pid)
            name, kind = spec
            if kind == _BYTE:
                v = self.byte()
            elif kind == _U16:
                v = self.u16()
            elif kind == _U32:
                v = self.u32()
            elif kind == _VARINT:
                v = self.varint()
            elif kind == _UTF8:
                v = self.utf8()
            elif kind == _BINARY:
                v = self.binary()
            else:
                v = (self.utf8(), self.utf8())
            if kind == _PAIR or pid == 0x0B:
                props.setdefault(name, []).append(v)
            elif name in props:
                raise MalformedPacket("property %s given twice" % name, RC_PROTOCOL_ERROR)
            else:
                props[name] = v
        if self.pos != end:
            raise MalformedPacket("a property runs past the properties")
        return props


class Decoder:
    """Bytes in, packets out. ``receive_data(data)``, then ``next_packet()`` until it
    returns None. ``max_packet_bytes`` bounds a whole packet (fixed header included):
    a longer one is MalformedPacket(RC_PACKET_TOO_LARGE) as soon as its length is read."""

    def __init__(self, max_packet_bytes=1 << 20):
        self.max_packet_bytes = max_packet_bytes
        self.version = None  # set by the CONNECT
        self._buf = bytearray()
        self._pos = 0  # where the next packet starts in _buf (consumed bytes are cut at the next receive_data)
        self._error = None

    def receive_data(self, data):
        # Consumed packets are cut here, once per read, not once per packet: a read of
        # a thousand small PUBLISHes would otherwise move the rest of the buffer a
        # thousand times.
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def next_packet(self):
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except MalformedPacket as e:
            self._error = e
            raise

    def _next(self):
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if size - pos < 2:
            return None
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= size:
                return None
            b = buf[i]
            length |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
            if i - pos > 4:
                raise MalformedPacket("a remaining length longer than 4 bytes")
        whole = i - pos + length
        if whole > self.max_packet_bytes:
            raise MalformedPacket("a packet of %d bytes (at most %d)" % (whole, self.max_packet_bytes),
                                  RC_PACKET_TOO_LARGE)
        end = i + length
        if size < end:
            return None
        first = buf[pos]
        self._pos = end
        if first >> 4 == PUBLISH and self.version is not None:
            return self._publish_at(first & 0x0F, i, end)
        return self._packet(first >> 4, first & 0x0F, bytes(buf[i:end]))

    def _publish_at(self, flags, start, end):
        """A PUBLISH whose body is ``_buf[start:end]``, read in place: the hot path of
        an ingest endpoint (no body copy, no _Reader), the same checks as ``_publish``."""
        buf = self._buf
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        dup = bool(flags & 0x08)
        if dup and qos == 0:
            raise MalformedPacket("PUBLISH with DUP at QoS 0", RC_PROTOCOL_ERROR)
        p = start + 2
        if p > end:
            raise MalformedPacket("the packet ends inside a field")
        q = p + ((buf[start] << 8) | buf[start + 1])
        if q > end:
            raise MalformedPacket("the packet ends inside a field")
        try:
            topic = buf[p:q].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("a string that is not UTF-8") from None
        if "\x00" in topic:
            raise MalformedPacket("a string with U+0000")
        pid = None
        if qos:
            if q + 2 > end:
                raise MalformedPacket("the packet ends inside a field")
            pid = (buf[q] << 8) | buf[q + 1]
            if not pid:
                raise MalformedPacket("PUBLISH with packet id 0", RC_PROTOCOL_ERROR)
            q += 2
        props = None
        if self.version == MQTT5:
            if q < end and buf[q] == 0:  # no properties: the common case
                q += 1
            else:
                r = _Reader(bytes(buf[q:end]))
                props = r.properties()
                q += r.pos
        return Publish(topic, bytes(buf[q:end]), qos, dup, bool(flags & 0x01), pid, props)

    def _packet(self, ptype, flags, body):
        r = _Reader(body)
        if self.version is None:
            if ptype != CONNECT:
                raise MalformedPacket("the first packet is not CONNECT", RC_PROTOCOL_ERROR)
            return self._connect(flags, r)
        v5 = self.version == MQTT5
        if ptype == PUBLISH:
            return self._publish(flags, r, v5)
        if ptype in (SUBSCRIBE, UNSUBSCRIBE, PUBREL):
            if flags != 0x2:
                raise MalformedPacket("bad flags on packet type %d" % ptype)
        elif flags:
            raise MalformedPacket("bad flags on packet type %d" % ptype)
        if ptype in (SUBSCRIBE, UNSUBSCRIBE):
            pid = r.u16()
            props = r.properties() if v5 else {}
            filters = []
            while r.left():
                f = r.utf8()
                filters.append((f, r.byte()) if ptype == SUBSCRIBE else f)
            if not filters:
                raise MalformedPacket("a %s with no topic filter" % ("SUBSCRIBE" if ptype == SUBSCRIBE else
                                                                     "UNSUBSCRIBE"), RC_PROTOCOL_ERROR)
            return (Subscribe if ptype == SUBSCRIBE else Unsubscribe)(pid, filters, props)
        if ptype in (PINGREQ, DISCONNECT, AUTH):
            if ptype == PINGREQ or not v5:
                if r.left():
                    raise MalformedPacket("a PINGREQ or DISCONNECT with a body")
                return Simple(ptype)
            rc = r.byte() if r.left() else 0
            props = r.properties() if r.left() else {}
            return Simple(ptype, reason_code=rc, properties=props)
        if ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            pid = r.u16()
            rc = r.byte() if v5 and r.left() else 0
            props = r.properties() if v5 and r.left() else {}
            return Simple(ptype, pid, rc, props)
        if ptype == CONNECT:
            raise MalformedPacket("a second CONNECT", RC_PROTOCOL_ERROR)
        raise MalformedPacket("packet type %d is not sent by a client" % ptype, RC_PROTOCOL_ERROR)

    def _connect(self, flags, r):
        if flags:
            raise MalformedPacket("bad flags on CONNECT")
        name = r.binary()
        level = r.byte()
        if name != b"MQTT" or level not in (MQTT311, MQTT5):
            # Version detection: answered with "unacceptable protocol version" by the caller.
            raise UnsupportedVersion(level)
        self.version = level
        v5 = level == MQTT5
        cflags = r.byte()
        if cflags & 0x01:
            raise MalformedPacket("the reserved CONNECT flag is set")
        keepalive = r.u16()
        props = r.properties() if v5 else {}
        client_id = r.utf8()
        will = None
        if cflags & 0x04:
            will_props = r.properties() if v5 else {}
            wqos = (cflags >> 3) & 0x03
            if wqos == 3:
                raise MalformedPacket("will QoS 3")
            will = Publish(r.utf8(), r.binary(), wqos, retain=bool(cflags & 0x20), properties=will_props)
        elif cflags & 0x38:
            raise MalformedPacket("will QoS or retain without a will")
        username = r.utf8() if cflags & 0x80 else None
        password = r.binary() if cflags & 0x40 else None
        if password is not None and username is None and not v5:
            raise MalformedPacket("a password without a user name")
        if r.left():
            raise MalformedPacket("bytes after the CONNECT payload")
        return Connect(level, client_id, bool(cflags & 0x02), keepalive, username, password, will, props)

    def _publish(self, flags, r, v5):
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        dup = bool(flags & 0x08)
        if dup and qos == 0:
            raise MalformedPacket("PUBLISH with DUP at QoS 0", RC_PROTOCOL_ERROR)
        topic = r.utf8()
        pid = r.u16() if qos else None
        if pid == 0:
            raise MalformedPacket("PUBLISH with packet id 0", RC_PROTOCOL_ERROR)
        props = r.properties() if v5 else {}
        return Publish(topic, r.take(r.left()), qos, dup, bool(flags & 0x01), pid, props)


class UnsupportedVersion(MalformedPacket):
    """A CONNECT of a protocol this server does not speak (MQTT 3.1, or a level not 4 or
    5): answered with CONNACK "unacceptable protocol version", then closed."""

    def __init__(self, level):
        MalformedPacket.__init__(self, "protocol level %d (this endpoint speaks MQTT 3.1.1 and 5)" % level,
                                 RC_UNSUPPORTED_VERSION)
        self.level = level


# ---------------------------------------------------------------------------- encoding


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _utf8(s):
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def encode_properties(props):
    """MQTT 5 properties (name -> value; ``user_property`` a list of pairs) as bytes."""
    out = bytearray()
    for name, value in props.items():
        pid, kind = _PROPERTY_IDS[name]
        for v in (value if kind == _PAIR else (value,)):
            out += _varint(pid)
            if kind == _BYTE:
                out.append(v)
            elif kind == _U16:
                out += struct.pack(">H", v)
            elif kind == _U32:
                out += struct.pack(">I", v)
            elif kind == _VARINT:
                out += _varint(v)
            elif kind == _UTF8:
                out += _utf8(v)
            elif kind == _BINARY:
                out += struct.pack(">H", len(v)) + v
            else:
                out += _utf8(v[0]) + _utf8(v[1])
    return _varint(len(out)) + bytes(out)


def _packet(first, body):
    return bytes((first,)) + _varint(len(body)) + body


def encode_connack(version, reason_code, session_present=False, properties=None):
    if version == MQTT5:
        body = bytes((1 if session_present else 0, reason_code)) + encode_properties(properties or {})
    else:
        body = bytes((1 if session_present else 0, _V3_CONNACK.get(reason_code, 5)))
    return _packet(CONNACK << 4, body)


_PUBACK_SUCCESS = struct.Struct(">BBH")  # PUBACK, remaining length 2, packet id: success in both versions


def encode_puback(version, packet_id, reason_code=RC_SUCCESS, reason=None):
    if version == MQTT5 and (reason_code or reason):
        props = {"reason_string": reason} if reason else {}
        return _packet(PUBACK << 4, struct.pack(">HB", packet_id, reason_code) + encode_properties(props))
    return _PUBACK_SUCCESS.pack(PUBACK << 4, 2, packet_id)


def encode_suback(version, packet_id, codes, reason=None):
    body = struct.pack(">H", packet_id)
    if version == MQTT5:
        body += encode_properties({"reason_string": reason} if reason else {})
    return _packet(SUBACK << 4, body + bytes(codes))


def encode_unsuback(version, packet_id, codes):
    body = struct.pack(">H", packet_id)
    if version == MQTT5:
        body += encode_properties({}) + bytes(codes)
    return _packet(UNSUBACK << 4, body)


def encode_pingresp():
    return bytes((PINGRESP << 4, 0))


def encode_disconnect(reason_code, reason=None):
    """MQTT 5 only: a server's DISCONNECT (3.1.1 servers just close the connection)."""
    return _packet(DISCONNECT << 4, bytes((reason_code,)) + encode_properties({"reason_string": reason}
                                                                              if reason else {}))


# For tests and tools: what a client sends (the endpoint never sends these).


def encode_connect(version, client_id, clean_start=True, keepalive_s=60, username=None, password=None,
                   will=None, properties=None):
    flags = 0x02 if clean_start else 0
    payload = bytearray(_utf8(client_id))
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if version == MQTT5:
            payload += encode_properties(will.properties)
        payload += _utf8(will.topic) + struct.pack(">H", len(will.payload)) + will.payload
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
    if password is not None:
        flags |= 0x40
        payload += struct.pack(">H", len(password)) + password
    body = _utf8("MQTT") + bytes((version, flags)) + struct.pack(">H", keepalive_s)
    if version == MQTT5:
        body += encode_properties(properties or {})
    return _packet(CONNECT << 4, body + bytes(payload))


def encode_publish(version, topic, payload, qos=0, packet_id=None, dup=False, retain=False, properties=None):
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = _utf8(topic) + (struct.pack(">H", packet_id) if qos else b"")
    if version == MQTT5:
        body += encode_properties(properties or {})
    return _packet(first, body + payload)


def encode_subscribe(version, packet_id, filters):
    body = struct.pack(">H", packet_id) + (encode_properties({}) if version == MQTT5 else b"")
    for f, opts in filters:
        body += _utf8(f) + bytes((opts,))
    return _packet((SUBSCRIBE << 4) | 0x2, body)


def encode_simple(ptype, packet_id=None):
    """PINGREQ, DISCONNECT (no body), or PUBREL (with a packet id) from a client."""
    if packet_id is None:
        return bytes((ptype << 4, 0))
    return _packet((ptype << 4) | (0x2 if ptype == PUBREL else 0), struct.pack(">H", packet_id))
