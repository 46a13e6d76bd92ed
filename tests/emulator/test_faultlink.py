"""edgeline_host/faultlink.py (the fleet demo's fault-injecting link): forwards TCP both ways, counts bytes, cuts and restores."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from edgeline_host.faultlink import FaultLink

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def echo_server():
    async def handle(r, w):
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                w.write(data.upper())
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def roundtrip(port, payload, timeout=5):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(payload)
        await w.drain()
        got = await asyncio.wait_for(r.readexactly(len(payload)), timeout)
        return got
    finally:
        w.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_forwards_both_ways_and_counts_bytes():
    async def main():
        srv = await echo_server()
        proxy = await FaultLink(0, "127.0.0.1", srv.sockets[0].getsockname()[1]).start()
        assert await roundtrip(proxy.port, b"hello") == b"HELLO"
        big = os.urandom(300000).hex().encode()[:500000]
        assert await roundtrip(proxy.port, big) == big.upper()
        await asyncio.sleep(0.05)
        st = proxy.stats()
        assert st["bytes_up"] == st["bytes_down"] == 5 + len(big)
        assert st["connections"] == 2 and st["refused"] == 0
        await proxy.stop()
        srv.close()

    run(main())


def test_half_close_passes_through():
    async def main():
        async def handle(r, w):
            data = await r.read()  # until EOF
            w.write(b"got %d" % len(data))
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        proxy = await FaultLink(0, "127.0.0.1", srv.sockets[0].getsockname()[1]).start()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"x" * 1000)
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == b"got 1000"
        w.close()
        await proxy.stop()
        srv.close()

    run(main())


def test_cut_resets_open_connections_refuses_new_then_restores():
    async def main():
        srv = await echo_server()
        proxy = await FaultLink(0, "127.0.0.1", srv.sockets[0].getsockname()[1]).start()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"a")
        assert await r.readexactly(1) == b"A"
        proxy.cut()
        # the open connection is dead: a read ends (reset or EOF), nothing more arrives
        try:
            got = await asyncio.wait_for(r.read(10), 5)
            assert got == b""
        except ConnectionResetError:
            pass
        w.close()
        # new connections are accepted and reset: no byte gets through
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(proxy.port, b"b")
        assert proxy.refused >= 1 and proxy.cuts == 1 and proxy.is_cut
        proxy.restore()
        assert await roundtrip(proxy.port, b"c") == b"C"
        # outage(seconds) cuts, then restores by itself
        t = asyncio.ensure_future(proxy.outage(0.3))
        await asyncio.sleep(0.05)
        assert proxy.is_cut
        await t
        assert not proxy.is_cut and proxy.cuts == 2
        assert await roundtrip(proxy.port, b"d") == b"D"
        await proxy.stop()
        srv.close()

    run(main())


def test_target_down_is_refused_and_delay_adds_latency():
    async def main():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        proxy = await FaultLink(0, "127.0.0.1", dead).start()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(proxy.port, b"x")
        await proxy.stop()

        srv = await echo_server()
        proxy = await FaultLink(0, "127.0.0.1", srv.sockets[0].getsockname()[1], delay_ms=100).start()
        t0 = time.monotonic()
        assert await roundtrip(proxy.port, b"slow") == b"SLOW"
        assert time.monotonic() - t0 >= 0.19  # 100 ms each way
        await proxy.stop()
        srv.close()

    run(main())


def test_drop_connection_prob_resets_connections():
    async def main():
        srv = await echo_server()
        proxy = await FaultLink(0, "127.0.0.1", srv.sockets[0].getsockname()[1], drop_connection_prob=1.0).start()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(proxy.port, b"x")
        assert proxy.dropped == 1 and proxy.bytes_up == 0
        await proxy.stop()
        srv.close()

    run(main())


def test_as_a_process_signals_cut_and_restore():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        target = srv.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "edgeline_host.faultlink", "--listen", "127.0.0.1:0",
                                 "--target", "127.0.0.1:%d" % target], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            port = int(json.loads(proc.stdout.readline())["listening"].rpartition(":")[2])

            def exchange(data):
                c = socket.create_connection(("127.0.0.1", port), 5)
                c.settimeout(5)
                try:
                    c.sendall(data)
                    peer, _ = srv.accept()
                    with peer:
                        peer.settimeout(5)
                        got = peer.recv(100)
                        peer.sendall(got[::-1])
                    return c.recv(100)
                finally:
                    c.close()

            assert exchange(b"abc") == b"cba"
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.3)
            c = socket.create_connection(("127.0.0.1", port), 5)
            c.settimeout(5)
            try:
                c.sendall(b"lost")
                assert c.recv(10) == b""
            except ConnectionResetError:
                pass
            c.close()
            proc.send_signal(signal.SIGUSR2)
            time.sleep(0.3)
            assert exchange(b"xyz") == b"zyx"
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
            st = json.loads(out.strip().splitlines()[-1])
            assert st["bytes_up"] == 6 and st["bytes_down"] == 6 and st["refused"] == 1 and st["cuts"] == 1
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
