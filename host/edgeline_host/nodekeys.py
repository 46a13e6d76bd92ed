"""Node keys: the 32-byte secret each node shares with the gateway (docs/spec/wire.md, W4).

Theory of operation
-------------------
A node proves who it is with an HMAC over the gateway's challenge, keyed by its node key.
The edge holds its own key (``edge.key`` inline or ``edge.key_file``, read with
``read_key_file``); the gateway holds every node's, in the keys file (``load_keys``: a
YAML mapping ``node_id: key``). Both write a key as 64 hex digits or as base64 (standard
or URL-safe, padding optional); a key file may also hold the 32 raw bytes.
``decode_key`` is the one reader of that text.

A key is a secret: ``NodeKey``'s repr hides it and no error message contains it.

The gateway's publish API takes a bearer token from a file (``load_token``): a second,
unrelated secret kept here because it is read and checked the same way.
"""
import base64
import binascii
import hmac
import re

from edgeline.errors import ConfigError
from edgeline.sync import CLOUD_ORIGIN, is_node_id

from .yamlfile import load_yaml_file, one_line

KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4096  # a key file larger than this is not a key file
MIN_TOKEN_CHARS = 16


class NodeKey:
    """The node's 32-byte secret for the gateway.

    ``reveal()`` gives the bytes; repr and str never do, so a logged config cannot leak it.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret):
        secret = bytes(secret)
        if len(secret) != KEY_BYTES:
            raise ValueError("a node key is 32 bytes, not %d" % len(secret))
        self._secret = secret

    def reveal(self):
        return self._secret

    def __eq__(self, other):
        return isinstance(other, NodeKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self):
        return hash((NodeKey, self._secret))

    def __repr__(self):
        return "NodeKey(<hidden>)"

    __str__ = __repr__


def decode_key(data):
    """A NodeKey from 32 raw bytes, or from text (str or bytes) holding 64 hex digits or
    base64 (standard or URL-safe, padding optional) of 32 bytes. ValueError if not — the
    message never contains the key."""
    if isinstance(data, (bytes, bytearray)) and len(data) == KEY_BYTES:
        return NodeKey(data)
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("is neither 32 raw bytes nor hex or base64 text (%d bytes)" % len(data)) from None
    if not isinstance(data, str):
        raise ValueError("must be text: 64 hex digits or base64 of 32 bytes")
    text = data.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{64}", text):
        return NodeKey(bytes.fromhex(text))
    if re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", text):
        altchars = b"-_" if ("-" in text or "_" in text) else None
        padded = text.rstrip("=")
        padded += "=" * (-len(padded) % 4)
        try:
            raw = base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            raw = None
        if raw is not None:
            if len(raw) == KEY_BYTES:
                return NodeKey(raw)
            raise ValueError("must be 32 bytes written as 64 hex digits or as base64 (this decodes to %d bytes)"
                             % len(raw))
    raise ValueError("must be 32 bytes written as 64 hex digits or as base64 (the value is not shown)")


def read_key_file(path, source="edge.yaml"):
    """Read and decode a key file (32 raw bytes, or hex / base64 text). ConfigError if bad."""
    where = "%s: edge.key_file" % (source,)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(one_line("%s: cannot read %r: %s" % (where, path, e.strerror or e))) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(one_line("%s: %r is too large to be a key file" % (where, path)))
    try:
        return decode_key(data)
    except ValueError as e:
        raise ConfigError(one_line("%s: %r %s" % (where, path, e))) from None


def check_keys(keys, source="keys file"):
    """ConfigError if the keys name the reserved origin of published records."""
    if CLOUD_ORIGIN in keys:
        raise ConfigError("%s: %r is reserved: it is the origin of the records the gateway publishes "
                          "(rename that node)" % (source, CLOUD_ORIGIN))


def load_keys(path):
    """The gateway's keys file: a YAML mapping ``node_id: key`` (64 hex digits or base64
    of 32 bytes each) -> {node_id: 32 bytes}. ConfigError, one line naming the file and
    node, if anything is wrong (a node named twice included)."""
    data = load_yaml_file(path, "the keys file")
    if not isinstance(data, dict) or not data:
        raise ConfigError("%s: must be a mapping of node_id: key" % path)
    check_keys(data, path)
    keys = {}
    for node, text in data.items():
        if not isinstance(node, str) or not is_node_id(node):
            raise ConfigError("%s: %r is not a valid node id (1-64 of A-Z a-z 0-9 . _ -)" % (path, node))
        try:
            keys[node] = decode_key(text).reveal()
        except ValueError as e:
            raise ConfigError("%s: %s: key %s" % (path, node, e)) from None
    return keys


def load_token(path):
    """The publish token from a file (its first line, stripped); ConfigError if unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("%s: cannot read the publish token: %s" % (path, getattr(e, "strerror", None) or e)) from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError("%s: the publish token must be at least 16 printable characters without spaces "
                          "(edgeline keygen makes one)" % path)
    return token
