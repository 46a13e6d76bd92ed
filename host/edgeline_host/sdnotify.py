"""systemd's service notification (sd_notify), without a dependency.

Under a unit with ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a datagram Unix
socket; a leading ``@`` names one in the abstract namespace). The service sends
``READY=1`` once it serves (systemd then counts it started: units ordered after it start
and ``systemctl start`` returns), ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC``
microseconds while its event loop is alive (``WatchdogSec=``; systemd restarts a service
that falls silent), ``STOPPING=1`` when it begins to shut down, and ``STATUS=...`` lines
``systemctl status`` shows. Without ``$NOTIFY_SOCKET`` every call does nothing, so the
services call them unconditionally.

``Notifier.watchdog_s()``: half of systemd's watchdog period (the interval
sd_watchdog_enabled(3) recommends), or None when there is no watchdog for this process
(``$WATCHDOG_PID``, when set, must be ours).
"""
import asyncio
import os
import socket


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self._watchdog_us = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_us = int(usec)

    def notify(self, *lines):
        """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; True if
        sent. Never raises: a service does not fail because systemd went away."""
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(addr)
                s.sendall("\n".join(lines).encode("utf-8"))
            return True
        except OSError:
            return False

    def watchdog_s(self):
        return None if self._watchdog_us is None else self._watchdog_us / 2e6

    async def keepalive(self):
        """Send ``WATCHDOG=1`` every ``watchdog_s()`` while the loop runs (a task to cancel
        at shutdown); returns at once without a watchdog."""
        period = self.watchdog_s()
        if period is None or self.address is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(period)
