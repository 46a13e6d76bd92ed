"""YAML files and the value texts they hold: one loader, one size parser, one duration parser.

Theory of operation
-------------------
Every YAML file edgeline reads -- the agent's ``edge.yaml``, the gateway's keys file and
topics file -- goes through ``load_yaml_file`` (or ``load_yaml`` for text in hand):
UTF-8 (a BOM is allowed), PyYAML's safe loader, and **duplicate keys refused**. PyYAML
would silently keep the last of two equal keys; in a config that hides a mistake (the
first ``budget`` is the one the user reads, the second the one that counts). Every
problem is one ``ConfigError`` line naming the file (and the line, when YAML knows it).

Sizes and durations are the texts those files use for amounts:

* a size is bytes: an int, or text such as ``"256MB"``, ``"1.5MB"``, ``"512KiB"``.
  **Prefixes are binary** (``K``/``KB``/``KiB`` = 1024, ..., ``T`` = 2**40,
  case-insensitive); fractions round down to a whole byte.
* a duration is text with units ``ms``, ``s``, ``m`` (minutes), ``h``, ``d``, one or
  more of them (``"7d"``, ``"1h30m"``, ``"500ms"``), held in milliseconds.

``size_bytes``/``duration_text_ms`` raise ``BadValue`` (the message says what is wrong,
the caller adds where); ``parse_size``/``parse_duration_ms`` raise ``ConfigError``.
"""
import os
import re
from decimal import Decimal

import yaml

from edgeline.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

MAX_SIZE_BYTES = 1 << 62  # larger sizes and durations are refused: nothing real is this large
SIZE_HELP = "a size: bytes as an integer, or text like '64KiB', '256MB', '1.5GB' (binary units: 1MB = 1048576)"
DURATION_HELP = "a duration like '500ms', '45s', '30m', '12h', '7d' or '1h30m'"

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": KiB,
    "kib": KiB,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": GiB,
    "gb": GiB,
    "gib": GiB,
    "t": TiB,
    "tb": TiB,
    "tib": TiB,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")

_DURATION_UNITS = {"ms": 1, "s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
_DURATION_PART = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d)"
_DURATION_RE = re.compile(r"\s*(?:%s\s*)+" % _DURATION_PART)



class BadValue(ValueError):
    """What is wrong with a value; the caller adds the file and the field path."""


def one_line(text):
    return " ".join(str(text).splitlines())


def show_value(value):
    """A short, one-line picture of a value for an error message."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (str, int, float)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return "a %s" % type(value).__name__


# ---------------------------------------------------------------------------- amounts


def size_bytes(value):
    """Bytes from an int or a size text; BadValue if it is neither."""
    if isinstance(value, bool):
        raise BadValue("must be %s (got %s)" % (SIZE_HELP, show_value(value)))
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _SIZE_UNITS:
            raise BadValue("must be %s (got %s)" % (SIZE_HELP, show_value(value)))
        n = int(Decimal(m.group(1)) * _SIZE_UNITS[unit])
    else:
        raise BadValue("must be %s (got %s)" % (SIZE_HELP, show_value(value)))
    if n < 0:
        raise BadValue("must not be negative (got %s)" % show_value(value))
    if n > MAX_SIZE_BYTES:
        raise BadValue("is too large (got %s)" % show_value(value))
    return n


def duration_text_ms(text):
    """Milliseconds from a duration text; BadValue if it is not one."""
    m = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise BadValue("must be %s (got %s)" % (DURATION_HELP, show_value(text)))
    total = Decimal(0)
    for number, unit in re.findall(_DURATION_PART, text):
        total += Decimal(number) * _DURATION_UNITS[unit]
    if total > MAX_SIZE_BYTES:
        raise BadValue("is too long (got %s)" % show_value(text))
    return int(total)


def parse_size(value):
    """Bytes from an int or a size text (``"256MB"``; binary units). ConfigError if bad."""
    try:
        return size_bytes(value)
    except BadValue as e:
        raise ConfigError(str(e)) from None


def parse_duration_ms(value):
    """Milliseconds from a duration text (``"7d"``, ``"1h30m"``, ``"500ms"``). ConfigError if bad."""
    try:
        return duration_text_ms(value)
    except BadValue as e:
        raise ConfigError(str(e)) from None


# ---------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would keep the last one silently)."""


def _construct_mapping(loader, node, deep=False):
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            try:
                key = loader.construct_object(key_node, deep=True)
                first = seen.get(key)
            except TypeError:  # unhashable: the constructor reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "duplicate key %s (first on line %d)" % (show_value(key), first + 1),
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text, source="edge.yaml"):
    """The document in ``text``; invalid YAML is a one-line ConfigError with its line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = "; ".join(x for x in (e.context, e.problem) if x) or "not valid YAML"
        if mark is not None:
            msg = "%s:%d: invalid YAML: %s (column %d)" % (source, mark.line + 1, what, mark.column + 1)
        else:
            msg = "%s: invalid YAML: %s" % (source, what)
        raise ConfigError(one_line(msg)) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, max(e.position, 0)) + 1
        raise ConfigError(one_line("%s:%d: invalid YAML: character %r is not allowed"
                                   % (source, line, e.character))) from None
    except yaml.YAMLError as e:
        raise ConfigError(one_line("%s: invalid YAML: %s" % (source, e))) from None
    except RecursionError:
        raise ConfigError("%s: invalid YAML: nested too deeply" % source) from None


def load_yaml_file(path, what="the config file"):
    """The document in the YAML file at ``path`` (UTF-8, duplicate keys refused);
    ConfigError, one line naming the file, if it cannot be read or parsed. ``what``
    names the file in a read error ("the keys file")."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(one_line("%s: cannot read %s: %s" % (source, what, e.strerror or e))) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError("%s:%d: not UTF-8 text (byte 0x%02x)" % (source, line, data[e.start])) from None
    return load_yaml(text, source)
