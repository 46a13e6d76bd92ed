"""JSON errors for every HTTP API of edgeline (the agent's and the gateway's).

Theory of operation
-------------------
Producers and scripts read an error's reason from the body: every refused request gets
``{"error": "<one line>"}`` with its status, whatever refused it. The handlers answer
their own refusals that way (``jsonrecords.RequestError``); this module's middleware,
``json_errors``, covers the rest, so no answer is ever aiohttp's text/plain or HTML:

* a ``RequestError`` a handler let through: its status, line and headers;
* aiohttp's own ``HTTPException``s of status 400 and up -- 404 for a path with no route,
  405 for a method a route lacks (its ``Allow`` header kept), 413 for a body over
  ``client_max_size`` -- and any a handler raises: the status, a line saying what
  (the handler's text when it gave one);
* any other exception: 500 ``internal error: <type>: <first line>``, logged with its
  traceback. The server keeps serving.
"""
import asyncio
import logging

from aiohttp import web

from .jsonrecords import RequestError

log = logging.getLogger("edgeline.http")

_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def json_error(status, message, headers=None):
    """The one form of an error answer."""
    return web.json_response({"error": message}, status=status, headers=headers)


def _first_line(text):
    return (str(text).strip().splitlines() or [""])[0]


def _message(e, request):
    if isinstance(e, web.HTTPMethodNotAllowed):
        return "method %s is not allowed on %s (allowed: %s)" % (e.method, request.path,
                                                                ", ".join(sorted(e.allowed_methods)))
    if isinstance(e, web.HTTPNotFound) and (e.text or "").strip() in ("", "404: Not Found"):
        return "no such path: %s %s" % (request.method, request.path)
    text = _first_line(e.text or "")
    default = "%d: %s" % (e.status, e.reason)
    return text if text and text != default else "%s (%s %s)" % (e.reason, request.method, request.path)


@web.middleware
async def json_errors(request, handler):
    """aiohttp middleware: every error answer as ``{"error": ...}`` (module docstring)."""
    try:
        return await handler(request)
    except RequestError as e:
        return json_error(e.status, str(e), e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise  # redirects and the like stay what they are
        headers = {k: e.headers[k] for k in _KEPT_HEADERS if k in e.headers}
        return json_error(e.status, _message(e, request), headers or None)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - a bug answers 500 and is logged; the server goes on
        log.exception("%s %s: unexpected error", request.method, request.path)
        return json_error(500, "internal error: %s: %s" % (type(e).__name__, _first_line(e)))
