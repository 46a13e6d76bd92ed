"""The end-to-end envelope of docs/spec/e2e.md (version 1) on CPython, with `cryptography`.

The same bytes as the core's ``edgeline.e2e`` (which boards run with their firmware's
AES): written again from the spec here, with the library's HKDF, HMAC and AES-CTR, so the
two implementations check each other (tests/shared/test_e2ecrypto.py) and the spec's test
vectors (tests/golden/e2e-v1/) are made by the one that does not share code with the
boards' (the envelope's few framing bytes are parsed by the core's ``parse``, the
one parser). Errors are the core's ``E2EError``, so a caller catches one type whichever side
sealed.

    keys = TopicKeys("pos/sales", {1: secret_v1, 2: secret_v2})   # the rotated one too
    env = keys.seal(2, origin, incarnation, seq, ts, key, value)
    value = keys.unseal(origin, incarnation, seq, ts, key, env)

``seal`` and ``unseal`` take the record's header fields as the spec's rule E5 lists them;
``prefix`` is the table write's bytes before its value (E10), empty for a stream record.
"""
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# parse: the one envelope parser, the core's (its refusals are the spec's E3, on every runtime)
from edgeline.e2e import CBOR_TAG, MAX_KEY_ID, SECRET_BYTES, TAG_BYTES, VERSION, E2EError, parse

SALT = b"edgeline-e2e-v1"
_HEAD = b"\xd9" + struct.pack(">H", CBOR_TAG)


class DerivedKeys:
    """enc, iv and mac keys of one (topic, key id) (spec E4)."""

    def __init__(self, topic, key_id, secret):
        if not (isinstance(key_id, int) and 1 <= key_id <= MAX_KEY_ID):
            raise E2EError("e2e: key id %r out of range 1..%d" % (key_id, MAX_KEY_ID))
        if len(secret) != SECRET_BYTES:
            raise E2EError("e2e: a topic key is %d bytes, not %d" % (SECRET_BYTES, len(secret)))
        t = topic.encode("utf-8")
        info = struct.pack(">H", len(t)) + t + struct.pack(">I", key_id)
        okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=SALT, info=info).derive(bytes(secret))
        self.topic, self.key_id = topic, key_id
        self.enc_key, self.iv_key, self.mac_key = okm[:32], okm[32:64], okm[64:]


def associated_data(key_id, topic, origin, incarnation, seq, ts, key, prefix=b""):
    """Spec E5, byte for byte."""
    t, o = topic.encode("utf-8"), origin.encode("utf-8")
    inc = bytes(8) if incarnation is None else bytes(incarnation)
    if len(t) > 0xFFFF or len(o) > 255 or len(inc) != 8:
        raise E2EError("e2e: header out of range (topic, origin or incarnation)")
    if not (0 <= seq < 1 << 64 and 0 <= ts < 1 << 64):
        raise E2EError("e2e: seq or ts is not a uint below 2**64")
    if key is None:
        k = b"\xff\xff"
    elif len(key) >= 0xFFFF:
        raise E2EError("e2e: key longer than 65534 bytes")
    else:
        k = struct.pack(">H", len(key)) + bytes(key)
    prefix = bytes(prefix)
    return b"".join((struct.pack(">BIH", VERSION, key_id, len(t)), t, bytes([len(o)]), o, inc,
                     struct.pack(">QQ", seq, ts), k, struct.pack(">I", len(prefix)), prefix))


def _mac(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def _ctr(dk, iv, data):
    c = Cipher(algorithms.AES(dk.enc_key), modes.CTR(iv)).encryptor()
    return c.update(bytes(data)) + c.finalize()


def _cbor_uint_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, fmt, limit in ((24, ">B", 0x100), (25, ">H", 0x10000), (26, ">I", 0x100000000)):
        if n < limit:
            return bytes([major << 5 | ai]) + struct.pack(fmt, n)
    raise E2EError("e2e: length out of range")


def seal(dk, origin, incarnation, seq, ts, key, value, prefix=b""):
    ad = associated_data(dk.key_id, dk.topic, origin, incarnation, seq, ts, key, prefix)
    ct = _ctr(dk, _mac(dk.iv_key, ad)[:16], value)
    body = bytes([VERSION]) + _cbor_uint_head(0, dk.key_id) + ct + _mac(dk.mac_key, ad + ct)[:TAG_BYTES]
    return _HEAD + _cbor_uint_head(2, len(body)) + body


def unseal(dk_by_id, origin, incarnation, seq, ts, key, envelope, prefix=b""):
    """dk_by_id: key id -> DerivedKeys of one topic."""
    key_id, ct, tag = parse(bytes(envelope))
    dk = dk_by_id.get(key_id)
    if dk is None:
        raise E2EError("e2e: unknown key id %d" % key_id)
    ad = associated_data(key_id, dk.topic, origin, incarnation, seq, ts, key, prefix)
    if not hmac.compare_digest(_mac(dk.mac_key, ad + ct)[:TAG_BYTES], tag):
        raise E2EError("e2e: bad tag (tampered, moved, or another key)")
    return _ctr(dk, _mac(dk.iv_key, ad)[:16], ct)


class TopicKeys:
    """The keys of one topic a node holds, by key id (the current one and rotated ones)."""

    def __init__(self, topic, secrets):
        self.topic = topic
        self.by_id = {kid: DerivedKeys(topic, kid, s) for kid, s in secrets.items()}

    def seal(self, key_id, origin, incarnation, seq, ts, key, value, prefix=b""):
        dk = self.by_id.get(key_id)
        if dk is None:
            raise E2EError("e2e: unknown key id %d" % key_id)
        return seal(dk, origin, incarnation, seq, ts, key, value, prefix)

    def unseal(self, origin, incarnation, seq, ts, key, envelope, prefix=b""):
        return unseal(self.by_id, origin, incarnation, seq, ts, key, envelope, prefix)
