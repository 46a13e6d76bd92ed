"""How the uplink's exchanges travel: one request, one answer.

The uplink (uplink.py) runs the sync protocol -- sessions, rounds, acknowledgements,
backoff -- and hands each exchange's bytes to a transport, which only moves them, the
way the gateway's faces do on the other side. A transport has:

* ``url`` -- where it goes, for status and logs;
* ``await start()`` / ``await close()`` -- around ``Uplink.run()``;
* ``new_session()`` -- a HELLO comes next: forget the old conversation;
* ``await exchange(body) -> bytes`` -- send one CBOR sequence, return the gateway's
  answer (a CBOR sequence); raise ``UplinkFailure`` with one line when there is none;
* ``lost_session(error_code) -> bool`` -- after an ERROR answer: does it mean only
  that the gateway forgot the conversation (idle, restarted)? Then the uplink starts a
  new one at once instead of counting a failure.

HTTP (``HttpTransport``): a POST per exchange to the gateway's ``/v1/sync``; the session
rides in the ``X-Edgeline-Session`` header, and a gateway that forgot it answers with
a new one.
"""
import asyncio

import aiohttp

from edgeline import sync

from ..gateway.server import CBOR_TYPE, SESSION_HEADER


class UplinkFailure(Exception):
    """One exchange failed (transport, HTTP status, protocol, or an ERROR from the gateway)."""


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class HttpTransport:
    """POST each exchange to ``url`` with aiohttp; ``http`` an ``aiohttp.ClientSession``
    (one is made, and closed by ``close()``, if not given)."""

    def __init__(self, url, http=None, request_timeout_ms=30000):
        self.url = url
        self.request_timeout_ms = request_timeout_ms
        self._http = http
        self._own_http = http is None
        self._sid = None
        self._sent_sid = None  # the session id the last request carried

    async def start(self):
        if self._http is None:
            self._http = aiohttp.ClientSession()

    async def close(self):
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    def new_session(self):
        self._sid = None

    async def exchange(self, body):
        headers = {"Content-Type": CBOR_TYPE}
        self._sent_sid = self._sid
        if self._sid:
            headers[SESSION_HEADER] = self._sid
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_ms / 1000.0)
        try:
            async with self._http.post(self.url, data=body, headers=headers, timeout=timeout) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise UplinkFailure("gateway answered HTTP %d %s" % (resp.status, resp.reason or ""))
                self._sid = resp.headers.get(SESSION_HEADER)
        except asyncio.TimeoutError:
            raise UplinkFailure("no answer from %s within %d ms" % (self.url, self.request_timeout_ms)) from None
        except aiohttp.ClientError as e:
            raise UplinkFailure("%s: %s" % (self.url, one_line(str(e) or type(e).__name__))) from None
        return data

    def lost_session(self, code):
        # The gateway answered under a new session id: ours is gone.
        return bool(self._sent_sid) and self._sid != self._sent_sid and code in (sync.ERR_UNEXPECTED,
                                                                                  sync.ERR_MALFORMED)
