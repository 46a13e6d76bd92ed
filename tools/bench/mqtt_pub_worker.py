"""Publishers for bench_mqtt_endpoint.py, in a process of their own: N MQTT connections,
each publishing its share of QoS 1 messages with at most ``--inflight`` unacknowledged.

    python mqtt_pub_worker.py --port P --publishers N --records R --inflight W [--version 4|5]

A load generator, as lean as one can be in Python, since it shares the machine's cores
with what it measures: no MQTT client library. Every PUBLISH packet is encoded before the
clock starts (``edgeline_host.agent.mqtt_packets.encode_publish``: topic, packet id,
payload); each connection is an ``asyncio.Protocol`` whose ``data_received`` counts the
PUBACKs that arrived and writes, in one write, as many pre-encoded PUBLISHes as that
frees of its window -- so a connection never has more than W unacknowledged, as a paho
publisher with ``max_inflight_messages`` W would. Only PUBACKed messages count. Both
contenders of the bench (the agent and Mosquitto) are driven by this same worker.

Prints one JSON line: ``acked`` (PUBACKs with reason code success), ``refused`` (other
reason codes), ``seconds`` from the first PUBLISH to the last PUBACK, ``cpu_seconds`` the
worker's own CPU time in that span. The payloads are
``{"p": <publisher>, "n": <i>}``, n from 0, so a reader can check what was stored.
"""
import argparse
import asyncio
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]
from edgeline_host.agent import mqtt_packets as mp  # noqa: E402

TOPIC = "bench/s1/telemetry"


class Publisher(asyncio.Protocol):
    """One connection: CONNECT, then its PUBLISHes with at most ``inflight`` unacknowledged."""

    def __init__(self, index, records, inflight, version, connected):
        self.index = index
        self.inflight = inflight
        self.version = version
        self.packets = [mp.encode_publish(version, TOPIC, json.dumps({"p": index, "n": i},
                                                                     separators=(",", ":")).encode(),
                                          1, i % 65535 + 1) for i in range(records)]
        self.records = records
        self.connected = connected  # a future: the CONNACK came
        self.done = asyncio.get_running_loop().create_future()
        self.transport = None
        self.buf = b""
        self.started = False
        self.sent = self.acked = self.refused = 0
        self.finished_at = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(mp.encode_connect(self.version, "bench-pub-%d" % self.index, True, 60))

    def connection_lost(self, exc):
        if not self.connected.done():
            self.connected.set_exception(RuntimeError("publisher %d: closed before the CONNACK" % self.index))
        if not self.done.done():
            self.done.set_exception(RuntimeError("publisher %d: the connection closed" % self.index))

    def start(self):
        self.started = True
        self._send()

    def _send(self):
        n = min(self.records - self.sent, self.inflight - (self.sent - self.acked - self.refused))
        if n > 0:
            self.transport.write(b"".join(self.packets[self.sent:self.sent + n]))
            self.sent += n

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        if not self.connected.done():
            if len(buf) < 2 or len(buf) < 2 + buf[1]:
                self.buf = buf
                return
            n = 2 + buf[1]
            if buf[0] >> 4 != mp.CONNACK or buf[3] != 0:
                self.connected.set_exception(RuntimeError("CONNACK refused: %r" % buf[:n]))
                return
            self.connected.set_result(None)
            buf = buf[n:]
        k = len(buf) >> 2
        if k and not len(buf) & 3 and buf[0::4] == b"\x40" * k and buf[1::4] == b"\x02" * k:
            self.acked += k  # only PUBACKs of success (4 bytes each): the common case, counted at once
            buf = b""
        else:
            i = 0
            while len(buf) - i >= 2 and len(buf) - i >= 2 + buf[i + 1]:  # PUBACKs: one length byte
                if buf[i] >> 4 != mp.PUBACK:
                    self.done.set_exception(RuntimeError("publisher %d: unexpected packet %r"
                                                         % (self.index, buf[i:i + 8])))
                    self.transport.close()
                    return
                n = buf[i + 1]
                if n > 2 and buf[i + 4] >= 0x80:
                    self.refused += 1
                else:
                    self.acked += 1
                i += 2 + n
            buf = buf[i:]
        self.buf = buf
        if not self.started:
            return
        if self.acked + self.refused >= self.records:
            if not self.done.done():
                self.finished_at = time.perf_counter()
                self.transport.write(mp.encode_simple(mp.DISCONNECT))
                self.transport.close()
                self.done.set_result(None)
            return
        self._send()


async def main_async(a):
    loop = asyncio.get_running_loop()
    pubs = []
    for i in range(a.publishers):
        connected = loop.create_future()
        records = a.records // a.publishers + (i < a.records % a.publishers)
        _, p = await loop.create_connection(lambda: Publisher(i, records, a.inflight, a.version, connected),
                                            "127.0.0.1", a.port)
        pubs.append(p)
    await asyncio.gather(*(p.connected for p in pubs))  # every connection made, its packets encoded
    t0 = time.perf_counter()
    c0 = time.process_time()
    for p in pubs:
        p.start()
    await asyncio.gather(*(p.done for p in pubs))
    print(json.dumps({"acked": sum(p.acked for p in pubs), "refused": sum(p.refused for p in pubs),
                      "seconds": max(p.finished_at for p in pubs) - t0, "cpu_seconds": time.process_time() - c0}))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--publishers", type=int, default=10)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--version", type=int, default=4, choices=(4, 5))
    asyncio.run(main_async(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
