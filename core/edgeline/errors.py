"""The one small error tree of edgeline's core.

Every error the core raises on purpose derives from EdgelineError, so a caller can catch
the family. Errors say what went wrong in one line; they carry no extra attributes on
the exception object (MicroPython cannot set attributes on built-in exceptions).
"""


class EdgelineError(Exception):
    """Base of every error edgeline raises on purpose."""


class CodecError(EdgelineError):
    """Malformed, truncated or unsupported CBOR, or a value CBOR cannot carry."""


class CorruptRecord(EdgelineError):
    """A stored frame failed its CRC or its framing checks."""


class LogFull(EdgelineError):
    """The log (or the device storage budget) is full and the topic's policy is reject."""


class StorageError(EdgelineError):
    """The storage layer refused an operation (bad path, unexpected file state)."""


class ConfigError(EdgelineError):
    """A setting is out of range or of the wrong kind."""


class ClockError(EdgelineError):
    """A remote timestamp is further ahead than the clock's allowed drift."""


class ProtocolError(EdgelineError):
    """Base of sync-protocol errors."""


class LocalProtocolError(ProtocolError):
    """The caller misused the protocol API (sent an event the state does not allow)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or events that break the protocol."""
