"""MQTT ingest at the edge agent: messages/s from a publisher on a local Mosquitto into the
agent's log, durable and acknowledged, against a subscriber that keeps nothing.

    python tools/bench/bench_mqtt_ingest.py [--records N] [--reps R] [--json]

A private Mosquitto (free port, ``persistence false``, ``max_queued_messages 0``,
``set_tcp_nodelay true``). A paho-mqtt publisher in this process publishes --records JSON
messages (about 40 bytes each, QoS 1, 100 in flight) to ``bench/s1/telemetry``.

* baseline: a paho-mqtt QoS 1 subscriber in this process that counts arrivals and keeps
  nothing (paho acknowledges each message as it arrives): messages/s from the first
  publish to the last arrival -- what the broker and the Python client deliver, the
  ceiling for anything built on them.
* edgeline, ``sync: group`` (the default: 1000 records or 1 s): an ``edgeline agent``
  process with ``ingest.mqtt`` mapping ``bench/#`` to one topic; messages/s from the first
  publish until the agent's ``/v1/health`` says every message is stored and none is left
  unacknowledged -- each one durable on disk and its PUBACK sent.
* edgeline, ``sync: every``: the same with an fsync per record.

Targets: none (reported as ratios). Every process is started here and ended by its PID;
files go to a fresh /tmp dir. Mosquitto or paho-mqtt missing: the benchmark says so and
measures nothing.
"""
import argparse
import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from bench_sync import Procs, free_port, mosquitto_binary, start_mosquitto  # noqa: E402

TOPIC = "bench/s1/telemetry"
AGENT_CONFIG = """\
edge:
  node_id: bench-1
  data_dir: ./data
  sync: {enabled: false}
  local_topics:
    - {topic: telemetry, sync: %(sync)s}
  ingest:
    http: {listen: "127.0.0.1:%(http_port)d"}
    mqtt: {broker: "127.0.0.1:%(mqtt_port)d", map: {"bench/#": telemetry}}
"""


def paho_client(cid):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.max_inflight_messages_set(100)
    return c


def payload(i):
    return json.dumps({"t": 20.0 + (i % 100) / 10.0, "n": i}, separators=(",", ":")).encode()


def publish_all(port, records, cid):
    """Publish ``records`` messages; returns (publisher client, start time)."""
    pub = paho_client(cid)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    t0 = harness.now()
    info = None
    for i in range(records):
        info = pub.publish(TOPIC, payload(i), qos=1)
        if i % 100 == 99:
            info.wait_for_publish(30)  # keep paho's own queue short
    return pub, t0, info


def baseline(port, records):
    got = [0]
    done = threading.Event()
    subscribed = threading.Event()
    sub = paho_client("bench-count")

    def on_message(_c, _u, _m):
        got[0] += 1
        if got[0] >= records:
            done.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/#", qos=1)
    sub.loop_start()
    pub = None
    try:
        if not subscribed.wait(10):
            raise RuntimeError("subscriber: no SUBACK")
        pub, t0, info = publish_all(port, records, "bench-pub-base")
        if not done.wait(300):
            raise RuntimeError("subscriber: %d of %d arrived" % (got[0], records))
        return records / (harness.now() - t0)
    finally:
        if pub is not None:
            pub.loop_stop()
            pub.disconnect()
        sub.loop_stop()
        sub.disconnect()


def agent_rate(procs, d, port, records, sync):
    os.makedirs(d, exist_ok=True)
    http_port = free_port()
    cfg = os.path.join(d, "edge.yaml")
    with open(cfg, "w") as f:
        f.write(AGENT_CONFIG % {"sync": sync, "http_port": http_port, "mqtt_port": port})
    p = procs.spawn([sys.executable, "-m", "edgeline_host.cli", "agent", "--config", cfg], d, "agent.log")

    def mqtt_stats():
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/health" % http_port, timeout=10) as r:
            return json.loads(r.read())["mqtt"]

    deadline = time.monotonic() + 30
    while True:
        if p.poll() is not None:
            raise RuntimeError("the agent exited; log in %s" % d)
        try:
            if mqtt_stats()["subscribed"]:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not subscribe; log in %s" % d)
        time.sleep(0.05)
    pub, t0, _ = publish_all(port, records, "bench-pub-%s" % sync)
    try:
        deadline = time.monotonic() + 600
        while True:
            s = mqtt_stats()
            if s["stored"] >= records and s["unacknowledged"] == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the agent stored %d of %d" % (s["stored"], records))
            time.sleep(0.005)
        return records / (harness.now() - t0)
    finally:
        pub.loop_stop()
        pub.disconnect()
        procs.stop(p)


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--records", type=int, default=20000, help="messages per measurement (default 20000)")
    a = ap.parse_args(argv)
    res = harness.Result("bench_mqtt_ingest",
                         "MQTT ingest at the agent: publisher -> Mosquitto -> durable in the log, acknowledged",
                         {"reps": a.reps, "records": a.records, "qos": 1})
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        res.note("paho-mqtt not installed: nothing measured")
        res.emit(a.json)
        return 0
    if mosquitto_binary() is None:
        res.note("mosquitto not found (apt-get install mosquitto): nothing measured")
        res.emit(a.json)
        return 0
    out = {"base": [], "group": [], "every": []}
    with harness.scratch_dir() as base:
        for rep in range(a.reps):
            procs = Procs()
            try:
                _, port = start_mosquitto(procs, harness.fresh_subdir(base, "mq-%d" % rep))
                harness.progress("rep %d: paho subscriber, %d messages" % (rep + 1, a.records))
                out["base"].append(baseline(port, a.records))
                for sync in ("group", "every"):
                    harness.progress("rep %d: agent, sync %s, %d messages" % (rep + 1, sync, a.records))
                    out[sync].append(agent_rate(procs, harness.fresh_subdir(base, "%s-%d" % (sync, rep)), port,
                                                a.records, sync))
            finally:
                procs.stop_all()
    base_case = "paho QoS 1 subscriber, keeps nothing"
    res.add(base_case, harness.median(out["base"]), "msg/s", out["base"])
    res.add("agent, sync: group (1000 records / 1 s)", harness.median(out["group"]), "msg/s", out["group"],
            baseline=base_case, note="durable and acknowledged")
    res.add("agent, sync: every (fsync per record)", harness.median(out["every"]), "msg/s", out["every"],
            baseline=base_case, note="durable and acknowledged")
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
