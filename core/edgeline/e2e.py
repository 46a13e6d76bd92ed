"""End-to-end encryption of a record's value: the envelope of docs/spec/e2e.md, version 1.

Theory of operation
-------------------
A topic key (32 secret bytes, named by a key id) is expanded once with HKDF-SHA256 into
three keys bound to the topic and the key id: ``enc`` (AES-256), ``iv`` and ``mac``
(HMAC-SHA256). A value is sealed under the record's readable header -- its identity
(origin, incarnation, topic, seq), ts and key, plus the bytes of a table write before the
value -- encoded once as the associated data ``ad`` (rule E5):

    iv  = HMAC(iv_key, ad)[:16]                     the first counter block (E6)
    ct  = value XOR AES-256(enc_key, iv), AES(iv + 1), ...      (CTR, E7)
    tag = HMAC(mac_key, ad | ct)[:16]               encrypt-then-MAC (E8)

so the same header never meets two keystreams and nothing of the header can be changed
without the tag failing. The envelope is one CBOR item, tag 58081 around a byte string
``01 | key id | ct | tag``, so everything that reads values as CBOR (the gateway's
record API) still reads it. ``unseal`` checks the tag before it decrypts anything.
A table write ``[version, op, ctx, value]`` has only its value sealed, the bytes before it
(``prefix``) readable and authenticated: ``seal_table_write`` / ``unseal_table_write``.

AES comes from the firmware: ``cryptolib.aes(key, 1)`` (ECB, on every MicroPython port),
``aesio`` on CircuitPython; a runtime with neither (CPython, which uses
``edgeline_host.e2ecrypto`` instead; the WebAssembly port of the 32-bit test lane) runs
the forward cipher in Python (softaes.py, loaded only then) -- slow (milliseconds a block
on a board), correct, tested against FIPS-197. HMAC and the constant-time compare are
auth.py's.

Nothing a board imports at rest imports this module (it costs RAM only where a topic is
encrypted). Every refusal is ``E2EError``: malformed envelope, unknown key id, bad tag.
"""
import struct

from edgeline.auth import digest_equal, hmac_sha256, sha256
from edgeline.errors import EdgelineError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    from cryptolib import aes as _native_aes  # MicroPython: mode 1 is ECB on every port
except ImportError:
    try:
        import aesio  # CircuitPython

        def _native_aes(key, mode):
            return _AesioECB(key)

    except ImportError:
        _native_aes = None

VERSION = const(1)
CBOR_TAG = const(58081)  # 0xE2E1
TAG_BYTES = const(16)
SECRET_BYTES = const(32)
MAX_KEY_ID = 0xFFFFFFFF
_SALT = b"edgeline-e2e-v1"
_HEAD = b"\xd9\xe2\xe1"  # CBOR: tag 58081, two-byte argument
_NO_KEY = const(0xFFFF)


class E2EError(EdgelineError):
    """A value could not be sealed or unsealed: malformed envelope, unknown key id, bad
    tag (tampered, moved to another record, or sealed under another key)."""


def hkdf_sha256(ikm, salt, info, length) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with salt, expand with info to length bytes."""
    prk = hmac_sha256(salt, ikm)
    out = b""
    t = b""
    i = 1
    while len(out) < length:
        t = hmac_sha256(prk, t + info + bytes((i,)))
        out += t
        i += 1
    return out[:length]


class TopicKey:
    """One key id of one topic, expanded (spec E4). ``secret`` is the topic key."""

    def __init__(self, topic, key_id, secret, aes=None):
        if not (1 <= key_id <= MAX_KEY_ID):
            raise E2EError("e2e: key id %r out of range 1..%d" % (key_id, MAX_KEY_ID))
        if len(secret) != SECRET_BYTES:
            raise E2EError("e2e: a topic key is %d bytes, not %d" % (SECRET_BYTES, len(secret)))
        self.topic = topic
        self.key_id = key_id
        t = topic.encode()
        okm = hkdf_sha256(bytes(secret), _SALT, struct.pack(">H", len(t)) + t + struct.pack(">I", key_id), 96)
        self.iv_key = okm[32:64]
        self.mac_key = okm[64:96]
        self._iv_pads = _pads(self.iv_key)
        self._mac_pads = _pads(self.mac_key)
        self._ecb = (aes or _native_aes or _soft_aes)(okm[:32], 1)


def _soft_aes(key, mode):
    from edgeline.softaes import SoftAES  # only where the firmware has no AES

    return SoftAES(key, mode)


def _pads(key):
    """HMAC's two padded keys (RFC 2104), made once per key rather than per record."""
    k = key + bytes(64 - len(key))
    return bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)


def _hmac(pads, msg):
    inner = sha256(pads[0])
    inner.update(msg)
    outer = sha256(pads[1])
    outer.update(inner.digest())
    return outer.digest()


def associated_data(key_id, topic, origin, incarnation, seq, ts, key, prefix=b"") -> bytes:
    """The header bytes the envelope authenticates (spec E5)."""
    t = topic.encode()
    o = origin.encode()
    if incarnation is None:
        incarnation = bytes(8)
    if len(t) > 0xFFFF or len(o) > 255 or len(incarnation) != 8:
        raise E2EError("e2e: header out of range (topic, origin or incarnation)")
    if seq < 0 or ts < 0 or seq >> 64 or ts >> 64:  # struct would wrap or raise its own error
        raise E2EError("e2e: seq or ts is not a uint below 2**64")
    if key is None:
        k = struct.pack(">H", _NO_KEY)
    elif len(key) >= _NO_KEY:
        raise E2EError("e2e: key longer than 65534 bytes")
    else:
        k = struct.pack(">H", len(key)) + bytes(key)
    return (struct.pack(">BIH", VERSION, key_id, len(t)) + t + bytes((len(o),)) + o + bytes(incarnation)
            + struct.pack(">QQ", seq, ts) + k + struct.pack(">I", len(prefix)) + bytes(prefix))


def _ctr_xor(ecb, iv, data):
    """data XOR the CTR keystream from counter block iv (128-bit big-endian increment)."""
    out = bytearray(data)
    ctr = bytearray(iv)
    block = bytearray(16)
    n = len(out)
    pos = 0
    while pos < n:
        ecb.encrypt(ctr, block)
        end = min(n, pos + 16)
        for i in range(pos, end):
            out[i] ^= block[i - pos]
        pos = end
        i = 15
        while i >= 0:  # ctr += 1 mod 2**128, without a big int
            ctr[i] = (ctr[i] + 1) & 0xFF
            if ctr[i]:
                break
            i -= 1
    return bytes(out)


def _uint_head(n) -> bytes:
    if n < 24:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x18, n))
    if n < 0x10000:
        return struct.pack(">BH", 0x19, n)
    return struct.pack(">BI", 0x1A, n)


def _bytes_head(n) -> bytes:
    h = _uint_head(n)
    return bytes((h[0] | 0x40,)) + h[1:]


def _read_uint(buf, pos, major):
    """(value, next position) of a shortest-form CBOR head of major type at buf[pos]."""
    if pos >= len(buf) or buf[pos] >> 5 != major:
        raise E2EError("e2e: malformed envelope")
    ai = buf[pos] & 0x1F
    if ai < 24:
        return ai, pos + 1
    if ai > 26:
        raise E2EError("e2e: malformed envelope")
    width = 1 << (ai - 24)
    if pos + 1 + width > len(buf):
        raise E2EError("e2e: malformed envelope (truncated)")
    v = 0
    for b in buf[pos + 1:pos + 1 + width]:
        v = (v << 8) | b
    if v < (24 if width == 1 else 1 << (4 * width)):  # not the shortest form
        raise E2EError("e2e: malformed envelope (non-shortest head)")
    return v, pos + 1 + width


def parse(envelope):
    """(key_id, ciphertext, tag) of an envelope's bytes; ``E2EError`` if malformed."""
    buf = memoryview(envelope)
    if bytes(buf[:3]) != _HEAD:
        raise E2EError("e2e: not an envelope (CBOR tag %d expected)" % CBOR_TAG)
    n, pos = _read_uint(buf, 3, 2)
    if pos + n != len(buf):
        raise E2EError("e2e: malformed envelope (length)")
    if n < 1 or buf[pos] != VERSION:
        raise E2EError("e2e: unsupported envelope version %s" % (buf[pos] if n else "(none)"))
    key_id, p = _read_uint(buf, pos + 1, 0)
    if key_id < 1 or key_id > MAX_KEY_ID or len(buf) - p < TAG_BYTES:
        raise E2EError("e2e: malformed envelope (key id or length)")
    return key_id, bytes(buf[p:len(buf) - TAG_BYTES]), bytes(buf[len(buf) - TAG_BYTES:])


def seal(tkey, origin, incarnation, seq, ts, key, value, prefix=b"") -> bytes:
    """The envelope of value (bytes: the CBOR of the record's value) for this record."""
    ad = associated_data(tkey.key_id, tkey.topic, origin, incarnation, seq, ts, key, prefix)
    ct = _ctr_xor(tkey._ecb, _hmac(tkey._iv_pads, ad)[:16], value)
    tag = _hmac(tkey._mac_pads, ad + ct)[:TAG_BYTES]
    body = bytes((VERSION,)) + _uint_head(tkey.key_id) + ct + tag
    return _HEAD + _bytes_head(len(body)) + body


def unseal(keys, origin, incarnation, seq, ts, key, envelope, prefix=b"") -> bytes:
    """The value sealed in envelope, checked against the record's header. keys is a
    TopicKey or a dict key_id -> TopicKey (one topic's keys, the rotated ones too)."""
    key_id, ct, tag = parse(envelope)
    tkey = keys.get(key_id) if isinstance(keys, dict) else (keys if keys.key_id == key_id else None)
    if tkey is None:
        raise E2EError("e2e: unknown key id %d" % key_id)
    ad = associated_data(key_id, tkey.topic, origin, incarnation, seq, ts, key, prefix)
    if not digest_equal(_hmac(tkey._mac_pads, ad + ct)[:TAG_BYTES], tag):
        raise E2EError("e2e: bad tag (tampered, moved, or another key)")
    return _ctr_xor(tkey._ecb, _hmac(tkey._iv_pads, ad)[:16], ct)


def _split_table_write(write):
    """(prefix, value item) of a register or counter write's bytes (spec E10); None for a
    delete, which seals nothing."""
    from edgeline import codec  # loaded anyway wherever tables are; not at e2e's import

    buf = memoryview(write)
    try:
        # the writer's [version, op, ctx, value], or [version, 3, ops] of a set or map
        if len(buf) < 1 or buf[0] not in (0x83, 0x84):
            raise E2EError("e2e: not a table write [version, op, ctx, value]")
        version, pos = codec.decode_prefix(buf, 1)
        op, pos = codec.decode_prefix(buf, pos)
        if op == 3:
            raise E2EError("e2e: a set or map write cannot be sealed in version 1 (register and counter only)")
        if buf[0] != 0x84:
            raise E2EError("e2e: not a table write [version, op, ctx, value]")
        _, pos = codec.decode_prefix(buf, pos)
        value, end = codec.decode_prefix(buf, pos)
    except codec.CodecError:
        raise E2EError("e2e: not a table write (malformed CBOR)")
    if end != len(buf) or version != 1 or op not in (0, 1, 2):
        raise E2EError("e2e: not a table write of version 1 with op 0, 1 or 2")
    if op == 1 and value is None:
        return None
    return bytes(buf[:pos]), bytes(buf[pos:])


def seal_table_write(tkey, origin, incarnation, seq, ts, key, write) -> bytes:
    """A register or counter write (the record's value bytes, tables.md "Encoding") with
    its value sealed and the rest readable and authenticated (E10); a delete unchanged."""
    split = _split_table_write(write)
    if split is None:
        return bytes(write)
    return split[0] + seal(tkey, origin, incarnation, seq, ts, key, split[1], split[0])


def unseal_table_write(keys, origin, incarnation, seq, ts, key, write) -> bytes:
    """The write seal_table_write sealed, its value opened (a delete as it is)."""
    split = _split_table_write(write)
    if split is None:
        return bytes(write)
    return split[0] + unseal(keys, origin, incarnation, seq, ts, key, split[1], split[0])


def key_id_of(envelope) -> int:
    """The key id an envelope names (to tell 'no key for this yet' from damage)."""
    return parse(envelope)[0]


class _AesioECB:
    def __init__(self, key):
        self._aes = aesio.AES(key, aesio.MODE_ECB)

    def encrypt(self, block, out):
        self._aes.encrypt_into(block, out)
