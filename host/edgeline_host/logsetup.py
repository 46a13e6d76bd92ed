"""Logging for the long-running services (agent, gateway, emulated boards): levels and timestamps.

Theory of operation
-------------------
Every module logs to a logger named ``edgeline.<part>`` (``edgeline.agent``,
``edgeline.uplink``, ``edgeline.gateway``, ...). ``setup(level, fmt)`` is called once by
the CLI (``edgeline --log-level ... --log-format ...``) and puts one handler on the root
logger, writing to stderr:

* ``text`` (the default): ``2026-12-07T21:30:00.123Z WARNING edgeline.uplink: message``
* ``json``: one JSON object per line, ``{"ts", "level", "logger", "msg"}`` (and ``exc``
  with a traceback when there is one): what log shippers (journald's JSON, Loki,
  Vector) take without a parsing rule.

The level comes from the argument, else ``$EDGELINE_LOG_LEVEL``, else ``info``; the
format from the argument, else ``$EDGELINE_LOG_FORMAT``, else ``text``. Calling
``setup`` again replaces the handler it installed (tests, a CLI run twice in-process).
User-facing command output (tables, JSON answers) is not logging and stays on stdout.
"""
import json
import logging
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
ENV_LEVEL = "EDGELINE_LOG_LEVEL"
ENV_FORMAT = "EDGELINE_LOG_FORMAT"
DEFAULT_LEVEL = "info"
DEFAULT_FORMAT = "text"


def _iso_utc(created):
    t = time.gmtime(created)
    return "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", t), int(created * 1000) % 1000)


class TextFormatter(logging.Formatter):
    """``<ISO 8601 UTC time> <LEVEL> <logger>: <message>``, a traceback on the lines after."""

    def format(self, record):
        line = "%s %s %s: %s" % (_iso_utc(record.created), record.levelname, record.name, record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601 UTC, ms), ``level`` (lower case),
    ``logger``, ``msg``; ``exc`` when the record carries an exception."""

    def format(self, record):
        d = {"ts": _iso_utc(record.created), "level": record.levelname.lower(), "logger": record.name,
             "msg": record.getMessage()}
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, ensure_ascii=False)


def resolve(level=None, fmt=None, environ=None):
    """(level, format) from the arguments, the environment, the defaults; ValueError
    (one line naming the setting) for a value not in LEVELS / FORMATS."""
    environ = os.environ if environ is None else environ
    lv = (level or environ.get(ENV_LEVEL) or DEFAULT_LEVEL).strip().lower()
    ft = (fmt or environ.get(ENV_FORMAT) or DEFAULT_FORMAT).strip().lower()
    if lv == "warn":
        lv = "warning"
    if lv not in LEVELS:
        src = "--log-level" if level else ENV_LEVEL
        raise ValueError("%s: %r is not a log level (%s)" % (src, lv, ", ".join(LEVELS)))
    if ft not in FORMATS:
        src = "--log-format" if fmt else ENV_FORMAT
        raise ValueError("%s: %r is not a log format (%s)" % (src, ft, ", ".join(FORMATS)))
    return lv, ft


_installed = None  # the handler setup() put on the root logger


def setup(level=None, fmt=None, stream=None, environ=None):
    """Send log records at ``level`` and above to ``stream`` (stderr) in ``fmt``; return
    the handler. See the module doc for the defaults."""
    global _installed
    lv, ft = resolve(level, fmt, environ)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if ft == "json" else TextFormatter())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(getattr(logging, lv.upper()))
    # aiohttp's access log (the gateway's HTTP server) is a line per request: debug only.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if lv == "debug" else logging.WARNING)
    _installed = handler
    return handler


def reset():
    """Remove the handler ``setup`` installed and give the root logger its default level."""
    global _installed
    if _installed is not None:
        logging.getLogger().removeHandler(_installed)
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)
        _installed = None


def service_print(name):
    """A ``print_fn`` for a service's status lines (started, listening, stopped): logged
    at INFO under ``name`` once ``setup`` ran, so they carry a time and a level."""
    logger = logging.getLogger(name)

    def say(line):
        logger.info("%s", line)

    return say
