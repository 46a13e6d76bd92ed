"""Publishers for bench_mqtt_endpoint.py, in a process of their own: N MQTT connections
(asyncio, packets from edgeline_host.agent.mqtt_packets, encoded before the clock starts),
each publishing its share of QoS 1 messages with at most ``--inflight`` unacknowledged.

    python mqtt_pub_worker.py --port P --publishers N --records R --inflight W [--version 4|5]

Prints one JSON line: ``acked`` (PUBACKs with reason code success), ``refused`` (other
reason codes), ``seconds`` from the first PUBLISH to the last PUBACK, ``last_n`` per
publisher (the payloads are ``{"p": <publisher>, "n": <i>}``, n from 0).
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


async def read_packet(reader):
    first = await reader.readexactly(1)
    n, shift = 0, 0
    while True:
        b = (await reader.readexactly(1))[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first[0], await reader.readexactly(n)


async def publisher(port, index, records, inflight, version, ready, start, out):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(mp.encode_connect(version, "bench-pub-%d" % index, True, 60))
    t, body = await read_packet(reader)
    if t >> 4 != mp.CONNACK or body[1] != 0:
        raise RuntimeError("CONNACK refused: %r" % body)
    packets = [mp.encode_publish(version, TOPIC, json.dumps({"p": index, "n": i}, separators=(",", ":")).encode(),
                                 1, i % 65535 + 1) for i in range(records)]
    ready.append(index)
    await start.wait()
    sent = acked = refused = 0
    buf = b""
    while acked + refused < records:
        batch = min(records - sent, inflight - (sent - acked - refused))
        if batch > 0:
            writer.write(b"".join(packets[sent:sent + batch]))
            sent += batch
        data = await reader.read(65536)
        if not data:
            raise RuntimeError("publisher %d: the connection closed" % index)
        buf += data
        i = 0
        while len(buf) - i >= 2 and len(buf) - i >= 2 + buf[i + 1]:  # PUBACKs: one length byte
            if buf[i] >> 4 != mp.PUBACK:
                raise RuntimeError("publisher %d: unexpected packet %r" % (index, buf[i:i + 8]))
            n = buf[i + 1]
            if n > 2 and buf[i + 4] >= 0x80:
                refused += 1
            else:
                acked += 1
            i += 2 + n
        buf = buf[i:]
    out[index] = (acked, refused, time.perf_counter())
    writer.write(mp.encode_simple(mp.DISCONNECT))
    await writer.drain()
    writer.close()


async def main_async(a):
    start = asyncio.Event()
    ready = []
    out = {}
    tasks = [asyncio.ensure_future(publisher(a.port, i, a.records // a.publishers + (i < a.records % a.publishers),
                                             a.inflight, a.version, ready, start, out)) for i in range(a.publishers)]
    while len(ready) < a.publishers:  # every connection made and its packets encoded
        await asyncio.sleep(0.01)
        for t in tasks:
            if t.done():
                t.result()
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    print(json.dumps({"acked": sum(v[0] for v in out.values()), "refused": sum(v[1] for v in out.values()),
                      "seconds": max(v[2] for v in out.values()) - t0}))


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
