"""A fault-injecting TCP link (CPython, asyncio): the network between an edge and the gateway.

    python -m edgeline_host.faultlink --listen [HOST:]PORT --target HOST:PORT [--delay-ms N] [--drop-prob P]

It forwards every connection to the target, both ways, and counts the bytes
(``bytes_up``: client to target, ``bytes_down``: target to client). The faults:

* ``cut()`` -- an outage: every open connection is reset (both ends) and new ones are
  accepted and reset at once, until ``restore()``; ``outage(seconds)`` does both.
* ``delay_ms`` -- each chunk waits this long before it is forwarded (latency).
* ``drop_connection_prob`` -- each forwarded chunk resets its connection with this
  probability (a flaky link), before the chunk is passed on.

A TCP stream hides duplication and reordering of its bytes, so this proxy has none. Whole
requests are duplicated, lost after the server answered and replayed late all the same
(retries, middleboxes): the test suite's emulator/httpproxy.py does that to HTTP requests.

Used in-process (``await FaultLink(...).start()`` in the caller's event loop, as
``edgeline fleet-demo`` does) or as a process: SIGUSR1 cuts, SIGUSR2 restores,
SIGINT/SIGTERM stop it; it prints one JSON line when listening and one with its
counters when it stops.

CPython-only. It ships in edgeline_host because the fleet demo, a product command, puts one
between each edge and the gateway; the tests use the same module.
"""
import asyncio
import json
import random
import signal
import sys

_CHUNK = 65536


class _Conn:
    __slots__ = ("client", "upstream", "closed")

    def __init__(self, client):
        self.client = client
        self.upstream = None
        self.closed = False

    def abort(self):
        if self.closed:
            return
        self.closed = True
        for w in (self.client, self.upstream):
            if w is not None:
                w.transport.abort()  # an RST, as a dead link looks to both ends


class Outages:
    """An outage on a link: ``cut()`` (the link's own: reset what is in flight and, until
    ``restore()``, new connections), ``restore()``, and ``outage(seconds)`` between them.
    FaultLink and emulator/httpproxy.py's HTTP proxy share it."""

    is_cut = False

    def cut(self):
        raise NotImplementedError

    def restore(self):
        """End the outage: forward new connections again."""
        self.is_cut = False

    async def outage(self, seconds):
        self.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.restore()


class FaultLink(Outages):
    """FaultLink(listen_port, target_host, target_port): see the module's docstring.
    ``listen_port`` 0 picks a free port; ``port`` is the one bound after ``start()``."""

    def __init__(self, listen_port, target_host, target_port, listen_host="127.0.0.1", delay_ms=0,
                 drop_connection_prob=0.0, rng=None):
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.delay_ms = delay_ms
        self.drop_connection_prob = drop_connection_prob
        self.rng = rng if rng is not None else random.Random()
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0  # accepted and forwarded
        self.refused = 0  # accepted while cut, reset at once
        self.dropped = 0  # reset by drop_connection_prob
        self.cuts = 0
        self.is_cut = False
        self._conns = set()
        self._server = None

    @property
    def port(self):
        return self.listen_port

    # ------------------------------------------------------------------ control

    async def start(self):
        self._server = await asyncio.start_server(self._handle, self.listen_host, self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._abort_all()

    def cut(self):
        """Start an outage: reset every connection, reset new ones until restore()."""
        if not self.is_cut:
            self.cuts += 1
        self.is_cut = True
        self._abort_all()

    def stats(self):
        return {"bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "connections": self.connections,
                "refused": self.refused, "dropped": self.dropped, "cuts": self.cuts, "cut": self.is_cut}

    def _abort_all(self):
        for c in list(self._conns):
            c.abort()
        self._conns.clear()

    # ------------------------------------------------------------------ forwarding

    async def _handle(self, reader, writer):
        conn = _Conn(writer)
        if self.is_cut:
            self.refused += 1
            conn.abort()
            return
        self._conns.add(conn)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self._conns.discard(conn)
            conn.abort()  # the target refused: so does the proxy
            return
        conn.upstream = up_writer
        if conn.closed or self.is_cut:  # cut while connecting
            up_writer.transport.abort()
            conn.abort()
            self._conns.discard(conn)
            return
        self.connections += 1
        down = asyncio.ensure_future(self._pump(conn, up_reader, writer, False))
        try:
            await self._pump(conn, reader, up_writer, True)
            await down
        finally:
            self._conns.discard(conn)
            if not conn.closed:
                conn.closed = True
                for w in (writer, up_writer):
                    try:
                        w.close()
                    except (OSError, RuntimeError):
                        pass

    async def _pump(self, conn, reader, writer, up):
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    if writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()  # a half-close passes through
                    return
                if self.delay_ms:
                    await asyncio.sleep(self.delay_ms / 1000.0)
                if conn.closed:
                    return
                if self.drop_connection_prob and self.rng.random() < self.drop_connection_prob:
                    self.dropped += 1
                    self._conns.discard(conn)
                    conn.abort()
                    return
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError):
            # one side reset or went away: so does the other
            self._conns.discard(conn)
            conn.abort()


# ---------------------------------------------------------------------- as a process


def host_port(text, default_host, prog="faultlink"):
    """(host, port) of a ``[HOST:]PORT`` argument; a bad one exits with one line."""
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise SystemExit("%s: expected [HOST:]PORT, got %r" % (prog, text))
    return host or default_host, int(port)


async def _main(args):
    lh, lp = host_port(args.listen, "127.0.0.1")
    th, tp = host_port(args.target, "127.0.0.1")
    proxy = FaultLink(lp, th, tp, listen_host=lh, delay_ms=args.delay_ms, drop_connection_prob=args.drop_prob)
    await run_as_process(proxy, lambda: {"listening": "%s:%d" % (lh, proxy.port), "target": "%s:%d" % (th, tp)})


async def run_as_process(proxy, banner):
    """A link (or any proxy with start/stop/cut/restore/stats) as a process of its own:
    started, ``banner()`` printed as a JSON line, SIGUSR1 cuts and SIGUSR2 restores the
    network, SIGINT/SIGTERM stop it and print its stats as a JSON line."""
    await proxy.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut)
    loop.add_signal_handler(signal.SIGUSR2, proxy.restore)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    print(json.dumps(banner()), flush=True)
    await done.wait()
    await proxy.stop()
    print(json.dumps(proxy.stats()), flush=True)


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edgeline_host.faultlink", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="[HOST:]PORT to accept on (PORT 0: any free port)")
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=0, help="latency added to each chunk")
    ap.add_argument("--drop-prob", type=float, default=0.0, help="probability that a chunk resets its connection")
    asyncio.run(_main(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
