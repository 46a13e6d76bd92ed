"""The sync protocol over a plain TCP stream (asyncio): the gateway's end.

Theory of operation
-------------------
A TCP connection carries one sync conversation as a CBOR sequence (docs/spec/wire.md,
"Transport-independent framing"), so this adapter only moves bytes: per accepted
connection one ``gateway.new_connection()``; every chunk read goes through
``Gateway.process`` (which parses, answers and commits batches and gaps before their
ACKs) and the answer is written back. EOF is fed as ``b""``. The connection is closed
when ``process`` says the conversation is finished (an ERROR either way, or the peer
closed), at EOF, or after ``idle_timeout_s`` without a byte from the edge. Each
connection is independent: one edge's garbage ends only its own connection.

``start_tcp(gateway, host, port)`` starts the server; ``attach_tcp(app, gateway, host,
port)`` ties it to an aiohttp application's lifecycle (started on startup, closed on
shutdown, before the gateway's store closes on cleanup).
"""
import asyncio
import logging

log = logging.getLogger("edgeline.gateway.tcp")

_READ_BYTES = 65536


class TcpGatewayTransport:
    """The gateway's TCP end, running: ``sockets``, ``port``, ``close()``, ``await wait_closed()``.

    Closing stops accepting and ends every open connection (asyncio's Server leaves
    accepted connections running before Python 3.13)."""

    def __init__(self, gateway, idle_timeout_s):
        self.gateway = gateway
        self.idle_timeout_s = idle_timeout_s
        self.server = None
        self._tasks = set()

    @property
    def sockets(self):
        return self.server.sockets

    @property
    def port(self):
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        gw = self.gateway
        conn = gw.new_connection()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(_READ_BYTES), self.idle_timeout_s)
                except asyncio.TimeoutError:
                    break  # an idle edge: it reconnects and resumes from the marks
                out, finished = await gw.process(conn, chunk)
                if out:
                    writer.write(out)
                    await writer.drain()
                if finished or not chunk:
                    break
        except (ConnectionError, OSError):
            pass  # the edge went away; whatever it was owed is in the store or resent
        except asyncio.CancelledError:
            pass  # the server is closing
        except Exception:  # noqa: BLE001 - one edge never takes the transport down
            log.exception("edgeline gateway: TCP connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass

    def close(self):
        self.server.close()
        for t in list(self._tasks):
            t.cancel()

    async def wait_closed(self):
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.server.wait_closed()


async def start_tcp(gateway, host, port, idle_timeout_s=None):
    """Serve the sync protocol over TCP on host:port (port 0: any free port).

    idle_timeout_s defaults to the gateway's session_idle_s."""
    if idle_timeout_s is None:
        idle_timeout_s = gateway.session_idle_s
    srv = TcpGatewayTransport(gateway, idle_timeout_s)
    srv.server = await asyncio.start_server(srv._handle, host, port)
    return srv


def attach_tcp(app, gateway, host, port, print_fn=None):
    """Run the TCP transport with an aiohttp app: started on startup, closed on shutdown."""
    state = {}

    async def startup(_app):
        state["srv"] = await start_tcp(gateway, host, port)
        if print_fn is not None:
            print_fn("edgeline gateway: sync over TCP on %s:%d" % (host, state["srv"].port))

    async def shutdown(_app):
        srv = state.pop("srv", None)
        if srv is not None:
            srv.close()
            await srv.wait_closed()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app
