"""The agent as the MQTT endpoint: acknowledged QoS 1 messages/s from N publishers that
wait for their PUBACKs, publishing straight to the agent, against the same publishers on
a Mosquitto in its only crash-safe setting.

    python tools/bench/bench_mqtt_endpoint.py [--publishers N] [--records R] [--broker-records B]
                                              [--backlog N ...] [--inflight W ...] [--reps R] [--json]

Publishers: mqtt_pub_worker.py, a process of its own: N MQTT 3.1.1 connections, each
publishing its share of JSON messages (about 20 bytes) at QoS 1 with at most W
unacknowledged (W = 1: each publisher waits for every PUBACK before the next PUBLISH;
W = 20: paho's default window); rate = acknowledged messages / time from the first
PUBLISH to the last PUBACK. The worker is no MQTT client library but a lean load
generator: raw sockets (one ``asyncio.Protocol`` per connection), every PUBLISH packet
encoded before the clock starts, PUBACKs counted as they arrive and the window refilled
with one write -- a few us of CPU per message, where a paho client spends tens, on the
cores the contenders share. The same worker drives both contenders. Each row notes the
CPU the contender's process and the worker spent per acknowledged message (from
/proc: what bounds the rate on a machine of two cores).

* baseline: Mosquitto with ``persistence true``, ``autosave_on_changes true``,
  ``autosave_interval 1`` -- it saves its database after every change, the one setting
  that keeps what it acknowledged through a crash -- holding every message for a
  bridge's persistent QoS 1 session to ``bench/#`` that is away (an uplink outage): the
  "local Mosquitto + bridge" set-up the endpoint replaces, doing what the agent does
  (keeping every message durably until it can be forwarded). Measured holding nothing
  yet, and holding ``--backlog`` messages already (default 20,000: an outage's worth;
  filled with autosave off, then the broker restarted crash-safe): each save rewrites
  every message it holds, so its rate falls as an outage goes on. Mosquitto sends a
  PUBACK before the save that covers it (the save runs once per pass of its main loop),
  so "acknowledged" means less there than at the agent. Run as root, the
  database directory is handed to the ``mosquitto`` user (the broker drops root and
  could not save otherwise); a run that saved no database is an error, not a figure.
* edgeline: an ``edgeline agent`` process with ``ingest.mqtt.listen`` and the topic at
  ``sync: group`` (defaults); every PUBACK leaves after the commit that covered the
  record. After the run the agent's log is read back (HTTP read API): every acknowledged
  message must be there exactly once -- "lost" and "doubled" are reported (target 0).

Target: edgeline >= 50x Mosquitto's acknowledged rate (issue 9), 0 lost. Reported, never
asserted. Every process is started here and ended by its PID; files go to a fresh /tmp dir.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from bench_sync import Procs, free_port, mosquitto_binary  # noqa: E402

WORKER = os.path.join(harness.HERE, "mqtt_pub_worker.py")
AGENT_CONFIG = """\
edge:
  node_id: bench-1
  data_dir: ./data
  sync: {enabled: false}
  local_topics:
    - {topic: telemetry}
  ingest:
    http: {listen: "127.0.0.1:%(http_port)d"}
    mqtt: {listen: "127.0.0.1:%(mqtt_port)d", map: {"bench/#": telemetry}}
"""
MOSQUITTO_CONFIG = """\
listener %(port)d 127.0.0.1
allow_anonymous true
persistence true
persistence_location %(dir)s/
autosave_on_changes true
autosave_interval 1
set_tcp_nodelay true
max_queued_messages 0
"""


def wait_port(p, port, what, d):
    import socket

    deadline = time.monotonic() + 30
    while True:
        if p.poll() is not None:
            raise RuntimeError("%s exited at start; log in %s" % (what, d))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("%s not accepting on %d; log in %s" % (what, port, d))
            time.sleep(0.02)


def cpu_seconds(pid):
    """User + system CPU time of process ``pid`` so far (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_worker(port, publishers, records, inflight, server_pid=None):
    """The worker's JSON line; with ``server_pid``, ``server_cpu_s``: that process's CPU
    time during the run."""
    before = cpu_seconds(server_pid) if server_pid else None
    out = subprocess.run([sys.executable, WORKER, "--port", str(port), "--publishers", str(publishers),
                          "--records", str(records), "--inflight", str(inflight)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError("publisher worker failed: %s" % out.stderr[-2000:])
    r = harness.last_json_line(out.stdout)
    after = cpu_seconds(server_pid) if server_pid else None
    if before is not None and after is not None:
        r["server_cpu_s"] = after - before
    return r


def cpu_note(r):
    """``server X us, worker Y us of CPU per message`` of a run_worker result."""
    n = max(1, r["acked"])
    parts = []
    if "server_cpu_s" in r:
        parts.append("server %.1f us" % (r["server_cpu_s"] / n * 1e6))
    if "cpu_seconds" in r:
        parts.append("worker %.1f us" % (r["cpu_seconds"] / n * 1e6))
    return " + ".join(parts) + " of CPU per message" if parts else ""


def mosquitto_rate(procs, d, publishers, records, inflight, backlog=0):
    """Mosquitto's acknowledged rate while it holds every message for a bridge's
    persistent session that is away (an uplink outage: what the agent's log does), and
    ``backlog`` messages already held before the measurement starts."""
    import paho.mqtt.client as mqtt

    os.makedirs(d, exist_ok=True)
    if os.geteuid() == 0:  # mosquitto drops root for its own user: it must be able to write its database here
        import pwd

        try:
            pw = pwd.getpwnam("mosquitto")
            os.chown(d, pw.pw_uid, pw.pw_gid)
            parent = os.path.dirname(d)
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        except KeyError:
            pass
    port = free_port()
    conf = os.path.join(d, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(MOSQUITTO_CONFIG % {"port": port, "dir": d})
    p = procs.spawn([mosquitto_binary(), "-c", conf], d, "mosquitto.log")
    wait_port(p, port, "mosquitto", d)
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bridge", clean_session=False)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/#", qos=1)
    sub.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("subscriber: no SUBACK")
        sub.disconnect()  # the bridge is away: the broker keeps every message for its session
        sub.loop_stop()
        if backlog:
            # Filled with autosave off (saving per change would take minutes), saved at its
            # stop, loaded by the crash-safe broker that is measured.
            procs.stop(p)
            with open(conf, "w") as f:
                f.write("\n".join(line for line in (MOSQUITTO_CONFIG % {"port": port, "dir": d}).splitlines()
                                  if not line.startswith("autosave")) + "\n")
            p = procs.spawn([mosquitto_binary(), "-c", conf], d, "mosquitto.log")
            wait_port(p, port, "mosquitto", d)
            run_worker(port, 10, backlog, 100)
            procs.stop(p)
            with open(conf, "w") as f:
                f.write(MOSQUITTO_CONFIG % {"port": port, "dir": d})
            p = procs.spawn([mosquitto_binary(), "-c", conf], d, "mosquitto.log")
            wait_port(p, port, "mosquitto", d)
        r = run_worker(port, publishers, records, inflight, p.pid)
        if not os.path.exists(os.path.join(d, "mosquitto.db")):
            raise RuntimeError("mosquitto saved no database (so it was not crash-safe); log in %s" % d)
        return r["acked"] / r["seconds"], r
    finally:
        procs.stop(p)


def agent_rate(procs, d, publishers, records, inflight):
    os.makedirs(d, exist_ok=True)
    http_port, port = free_port(), free_port()
    cfg = os.path.join(d, "edge.yaml")
    with open(cfg, "w") as f:
        f.write(AGENT_CONFIG % {"http_port": http_port, "mqtt_port": port})
    p = procs.spawn([sys.executable, "-m", "edgeline_host.cli", "agent", "--config", cfg], d, "agent.log")
    wait_port(p, port, "the agent", d)
    try:
        r = run_worker(port, publishers, records, inflight, p.pid)
        r["lost"], r["doubled"] = check_log(http_port, publishers, records)
        return r["acked"] / r["seconds"], r
    finally:
        procs.stop(p)


def check_log(http_port, publishers, records):
    """(lost, doubled): acknowledged messages missing from the log / stored twice."""
    seen = {}
    after = 0
    while True:
        url = "http://127.0.0.1:%d/v1/topics/telemetry/records?after=%d&limit=10000" % (http_port, after)
        with urllib.request.urlopen(url, timeout=30) as resp:
            page = json.loads(resp.read())
        for rec in page["records"]:
            v = rec["value"]
            k = (v["p"], v["n"])
            seen[k] = seen.get(k, 0) + 1
        if not page["records"]:
            break
        after = page["next_after"]
    expected = {(i, n) for i in range(publishers) for n in range(records // publishers + (i < records % publishers))}
    lost = len(expected - set(seen))
    doubled = sum(c - 1 for c in seen.values())
    return lost, doubled


def mosquitto_case(backlog, inflight):
    return "Mosquitto autosave_on_changes, holding %d, %d in flight each" % (backlog, inflight)


def agent_case(inflight):
    return "agent endpoint (sync: group), %d in flight each" % inflight


def main(argv=None):
    ap = harness.standard_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--publishers", type=int, default=10, help="publishing connections (default 10)")
    ap.add_argument("--records", type=int, default=5000, help="messages per measurement (default 5000)")
    ap.add_argument("--broker-records", type=int, default=None,
                    help="messages to Mosquitto per measurement (default: --records; its saves grow with what it "
                         "holds, so fewer flatter it)")
    ap.add_argument("--backlog", type=int, nargs="+", default=[0, 20000],
                    help="messages Mosquitto already holds for the absent session when measured (default: 0 and "
                         "20000, an outage's worth)")
    ap.add_argument("--inflight", type=int, nargs="+", default=[1, 20],
                    help="unacknowledged messages per publisher (default: 1 and 20)")
    a = ap.parse_args(argv)
    if a.broker_records is None:
        a.broker_records = a.records
    res = harness.Result("bench_mqtt_endpoint",
                         "MQTT endpoint: %d publishers, QoS 1, acknowledged msg/s, agent vs crash-safe Mosquitto"
                         % a.publishers,
                         {"reps": a.reps, "publishers": a.publishers, "records": a.records,
                          "broker_records": a.broker_records, "inflight": a.inflight, "qos": 1})
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
    out = {w: {"agent": [], "lost": 0, "doubled": 0} for w in a.inflight}
    cpu = {}  # row name -> [(server s, worker s, messages)] per repetition
    for w in a.inflight:
        for b in a.backlog:
            out[w][b] = []
    with harness.scratch_dir() as base:
        for rep in range(a.reps):
            for w in a.inflight:
                procs = Procs()
                try:
                    for b in a.backlog:
                        harness.progress("rep %d, inflight %d: Mosquitto (autosave_on_changes) holding %d, %d messages"
                                         % (rep + 1, w, b, a.broker_records))
                        rate, r = mosquitto_rate(procs, harness.fresh_subdir(base, "mq-%d-%d-%d" % (w, b, rep)),
                                                 a.publishers, a.broker_records, w, b)
                        out[w][b].append(rate)
                        cpu.setdefault(mosquitto_case(b, w), []).append(r)
                    harness.progress("rep %d, inflight %d: agent endpoint, %d messages" % (rep + 1, w, a.records))
                    rate, r = agent_rate(procs, harness.fresh_subdir(base, "agent-%d-%d" % (w, rep)),
                                         a.publishers, a.records, w)
                    out[w]["agent"].append(rate)
                    cpu.setdefault(agent_case(w), []).append(r)
                    out[w]["lost"] += r["lost"]
                    out[w]["doubled"] += r["doubled"]
                finally:
                    procs.stop_all()
    for w in a.inflight:
        o = out[w]
        for b in a.backlog:
            res.add(mosquitto_case(b, w), harness.median(o[b]), "msg/s", o[b])
        for b in a.backlog:
            res.add(agent_case(w) if b == a.backlog[0] else "  vs Mosquitto holding %d" % b, harness.median(o["agent"]),
                    "msg/s", o["agent"], baseline=mosquitto_case(b, w), target=("ratio", ">=", 50),
                    note="lost %d, doubled %d (target 0)" % (o["lost"], o["doubled"]) if b == a.backlog[0] else None)
    for case, runs in cpu.items():
        notes = [cpu_note(r) for r in runs]
        if any(notes):
            res.note("%s: %s" % (case.replace("autosave_on_changes, ", ""), "; ".join(notes)))
    res.emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
