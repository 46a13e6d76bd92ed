"""Node authentication for the sync protocol (docs/spec/wire.md, "Authentication").

Theory of operation
-------------------
A node and the gateway share a 32-byte key; neither ever sends it (W4). Each side sends
a fresh 16-byte nonce, and each proves it holds the key with an HMAC-SHA256 over a
fixed label, the node id and both nonces -- in a different label and nonce order per
direction, so the gateway's proof can never be a replay of the node's:

    proof        = HMAC-SHA256(key, b"edgeline-auth-v1" | node_id | client_nonce | server_nonce)
    server_proof = HMAC-SHA256(key, b"edgeline-gw-v1"   | node_id | server_nonce | client_nonce)

MicroPython has ``hashlib.sha256`` (update/digest) but no ``hmac`` module, so HMAC
(RFC 2104) is written out here once, for every runtime (CircuitPython's hashlib has no
``sha256``, only ``hashlib.new("sha256", data)``: tools/lint_stubs.py); tests/properties/
test_auth.py checks it against CPython's ``hmac``, also through that CircuitPython path. ``digest_equal`` compares without an early exit, so the
time a wrong proof takes to reject does not tell how many leading bytes were right.
"""
try:
    from hashlib import sha256
except ImportError:
    try:
        from uhashlib import sha256  # very old MicroPython ports
    except ImportError:  # CircuitPython
        import hashlib

        def sha256(data=b""):
            return hashlib.new("sha256", data)

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_BLOCK = const(64)  # SHA-256 block size in bytes


def hmac_sha256(key, msg) -> bytes:
    """HMAC-SHA256 of msg under key (both bytes-like); 32 bytes."""
    key = bytes(key)
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def client_proof(key, node_id, client_nonce, server_nonce) -> bytes:
    """The node's proof (sent in AUTH)."""
    return hmac_sha256(key, b"edgeline-auth-v1" + node_id.encode() + bytes(client_nonce) + bytes(server_nonce))


def server_proof(key, node_id, client_nonce, server_nonce) -> bytes:
    """The gateway's proof (sent in WELCOME). Same argument order as client_proof; the
    nonces enter the MAC server's first, as the spec says."""
    return hmac_sha256(key, b"edgeline-gw-v1" + node_id.encode() + bytes(server_nonce) + bytes(client_nonce))


def digest_equal(a, b) -> bool:
    """a == b for two digests, in time independent of where they differ."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
