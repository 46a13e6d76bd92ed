"""The `edgeline` command line.

Errors reach the user as one clear line (`edgeline: error: ...`) and exit status 2,
never as a traceback.
"""
import json
import sys

import click

from edgeline.errors import EdgelineError


@click.group()
@click.version_option(package_name="edgeline")
def cli():
    """edgeline: an edge-first data pipeline (ring log, outbox, sync)."""


@cli.command()
@click.option("--seconds", default=1.5, show_default=True, help="How long the writer runs before the SIGKILL.")
@click.option("--dir", "data_dir", default=None, help="Log directory (default: a temporary one, removed after).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(seconds, data_dir, as_json):
    """Append sensor records, kill the writer mid-stream, reopen, show what survived."""
    from edgeline_host import demo as demo_mod

    try:
        result = demo_mod.run(out=(lambda s: None) if as_json else click.echo, data_dir=data_dir, seconds=seconds)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
    if not result["ok"]:
        sys.exit(1)


@cli.command()
@click.option("--keys", "keys_file", required=True, help="YAML file of node_id: key (64 hex digits or base64).")
@click.option("--db", default="edgeline-gateway.db", show_default=True, help="SQLite store (created if missing).")
@click.option("--listen", default="127.0.0.1:8700", show_default=True, help="host:port for HTTP.")
@click.option("--tcp", "tcp_listen", default=None, help="host:port to also serve sync over plain TCP (boards).")
@click.option("--mqtt", "mqtt_broker", default=None, help="host:port of an MQTT broker to also serve sync through.")
@click.option("--mqtt-prefix", default="edgeline", show_default=True,
              help="MQTT topic prefix: edges publish to <prefix>/<node_id>/up, read <prefix>/<node_id>/down.")
def gateway(keys_file, db, listen, tcp_listen, mqtt_broker, mqtt_prefix):
    """Run the cloud gateway: accepts edges over HTTP (and TCP, MQTT), stores records exactly once."""
    from edgeline_host.gateway.server import load_keys, serve

    host, port = _host_port("--listen", listen)
    tcp = _host_port("--tcp", tcp_listen) if tcp_listen else None
    mqtt = _host_port("--mqtt", mqtt_broker) + (_mqtt_prefix(mqtt_prefix),) if mqtt_broker else None
    serve(db, load_keys(keys_file), host, port, print_fn=click.echo, tcp=tcp, mqtt=mqtt)


def _mqtt_prefix(prefix):
    from edgeline_host.gateway.mqtt import check_prefix

    try:
        return check_prefix(prefix)
    except ValueError as e:
        raise click.ClickException("--mqtt-prefix: %s" % e) from None


def _host_port(option, text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.ClickException("%s must be host:port, got %r" % (option, text))
    return host, int(port)


@cli.command()
@click.option("--config", "config_path", required=True, help="The node's edge.yaml (docs/config.md).")
def agent(config_path):
    """Run the edge agent: HTTP ingest into the logs, uplink to the gateway, control API."""
    from edgeline_host.agent.agent import run_agent

    run_agent(config_path, print_fn=lambda s: click.echo(s, err=True))


@cli.command()
@click.argument("path")
@click.option("--force", is_flag=True, help="Replace an existing key file (the gateway must get the new key).")
def keygen(path, force):
    """Write a new node key to PATH (32 random bytes as hex, mode 0600) and print it.

    The printed hex goes into the gateway's keys file as `<node_id>: <hex>`.
    """
    import os
    import secrets

    key = secrets.token_hex(32)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise click.ClickException("%s exists; keep it, or give --force to replace it" % path) from None
    except OSError as e:
        raise click.ClickException("cannot create %s: %s" % (path, e.strerror or e)) from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    click.echo(key)


# ---------------------------------------------------------------- edge: a running agent

DEFAULT_AGENT = "http://127.0.0.1:8080"


def _agent_option(f):
    f = click.option("--json", "as_json", is_flag=True, help="Print the agent's answer as JSON.")(f)
    return click.option("--agent", "agent_url", envvar="EDGELINE_AGENT", default=DEFAULT_AGENT, show_default=True,
                        help="The agent's HTTP address ($EDGELINE_AGENT).")(f)


def _call_agent(agent_url, method, path):
    """The agent's JSON answer; one-line ClickException when it cannot be had."""
    import urllib.error
    import urllib.request

    base = agent_url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error")
        except (ValueError, AttributeError):
            msg = None
        raise click.ClickException("the agent at %s answered %d: %s" % (base, e.code, msg or e.reason)) from None
    except urllib.error.URLError as e:
        why = e.reason
        why = (why.strerror or str(why)) if isinstance(why, OSError) else str(why)
        raise click.ClickException("cannot reach the agent at %s: %s" % (base, why.lower())) from None
    except (OSError, ValueError) as e:
        raise click.ClickException("cannot reach the agent at %s: %s" % (base, e)) from None


def _ago(ms):
    import time

    if ms is None:
        return "never"
    s = max(0, time.time() - ms / 1000.0)
    return "%ds ago" % s if s < 120 else "%dm ago" % (s // 60) if s < 7200 else "%dh ago" % (s // 3600)


@cli.group()
def edge():
    """Talk to a running edge agent (`edgeline agent`)."""


@edge.group("sync")
def edge_sync():
    """The agent's uplink to the gateway."""


@edge_sync.command("status")
@_agent_option
def edge_sync_status(agent_url, as_json):
    """Uplink state, breaker, last error, and per topic what is acknowledged and owed."""
    st = _call_agent(agent_url, "GET", "/v1/sync/status")
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    if st.get("state") == "disabled":
        click.echo("uplink disabled: %s" % st.get("reason"))
        return
    line = "uplink %s -> %s (breaker %s" % (st["state"], st["gateway"], st["breaker"])
    if st.get("failures"):
        line += ", %d failure(s) in a row" % st["failures"]
    if st.get("next_attempt_in_ms") is not None:
        line += ", next attempt in %.1fs" % (st["next_attempt_in_ms"] / 1000.0)
    click.echo(line + ")")
    if st.get("last_error"):
        click.echo("last error: %s (%s)" % (st["last_error"], _ago(st.get("last_error_ms"))))
    click.echo("%-24s %10s %10s %10s %12s" % ("topic", "last_seq", "acked", "pending", "last ack"))
    for name, t in st["topics"].items():
        click.echo("%-24s %10d %10d %10d %12s%s" % (name, t["last_seq"], t["acked"], t["pending"],
                                                    _ago(t["last_ack_ms"]),
                                                    "  stalled: %s" % t["error"] if t.get("error") else ""))


def _sync_action(action):
    @_agent_option
    def command(agent_url, as_json):
        r = _call_agent(agent_url, "POST", "/v1/sync/" + action)
        click.echo(json.dumps(r, indent=2) if as_json else "sync %s: uplink %s" % (action, r["state"]))

    return command


edge_sync.command("now", help="Send what is owed at once (ends a backoff or an open breaker's wait).")(
    _sync_action("now"))
edge_sync.command("pause", help="Stop sending; records keep accumulating in the logs.")(_sync_action("pause"))
edge_sync.command("resume", help="Resume sending after a pause.")(_sync_action("resume"))


@edge.command("queue")
@_agent_option
def edge_queue(agent_url, as_json):
    """Per topic: last seq, acknowledged, pending, gap, size against budget, loss counters."""
    q = _call_agent(agent_url, "GET", "/v1/queue")
    if as_json:
        click.echo(json.dumps(q, indent=2))
        return
    click.echo("%-24s %-14s %10s %10s %10s %21s %s" % ("topic", "direction", "last_seq", "acked", "pending",
                                                        "size / budget", "lost (evicted/dropped/expired/corrupt)"))
    for name, t in q["topics"].items():
        click.echo("%-24s %-14s %10d %10s %10d %21s %d/%d/%d/%d%s" % (
            name, t["direction"], t["last_seq"], "-" if t["acked"] is None else t["acked"], t["pending"],
            "%s / %s" % (_size(t["size_bytes"]), _size(t["budget_bytes"])),
            t["evicted"], t["dropped"], t["expired"], t["corrupt"],
            "  gap %d..%d" % tuple(t["gap"]) if t["gap"] else ""))
    click.echo("pending %d; storage %s of %s" % (q["pending"], _size(q["storage"]["used_bytes"]),
                                                _size(q["storage"]["budget_bytes"])))


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


@edge.command("health")
@_agent_option
def edge_health(agent_url, as_json):
    """Is the agent well: uptime, storage used against budget, uplink state, last error."""
    h = _call_agent(agent_url, "GET", "/v1/health")
    if as_json:
        click.echo(json.dumps(h, indent=2))
    else:
        click.echo("%s: node %s, up %ds, storage %s of %s, uplink %s, pending %d" % (
            "ok" if h["ok"] else "NOT OK", h["node_id"], h["uptime_s"], _size(h["storage"]["used_bytes"]),
            _size(h["storage"]["budget_bytes"]), h["uplink"], h["pending"]))
        if h.get("failed_topics"):
            click.echo("failed topics: %s" % ", ".join(h["failed_topics"]))
        if h.get("last_error"):
            click.echo("last error: %s" % h["last_error"])
    if not h["ok"]:
        sys.exit(1)


@cli.command("fleet-demo")
@click.option("--seconds", default=40, show_default=True, type=click.FloatRange(5, 600),
              help="How long the sensors produce (setup and drain add a few seconds).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (progress goes to stderr).")
def fleet_demo(seconds, as_json):
    """A gateway, two agents and a MicroPython board through fault proxies: an outage, a
    SIGKILL, and proof from the gateway that nothing acknowledged was lost or doubled."""
    from edgeline_host import fleetdemo

    out = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    try:
        result = fleetdemo.run(seconds=seconds, out=out)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
    if not result["ok"]:
        sys.exit(1)


@cli.group()
def log():
    """Inspect a log directory."""


def _open(path):
    import os

    from edgeline.log import RingLog

    if not os.path.isdir(path):
        raise click.ClickException("%s is not a log directory" % path)
    # A huge budget: inspecting must never evict anything.
    return RingLog(path, budget_bytes=1 << 62, segment_bytes=65536)


@log.command("stat")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True)
def log_stat(path, as_json):
    """Positions, sizes and loss counters of the log at PATH (recovers it if needed)."""
    import os

    from edgeline.outbox import Outbox

    lg = _open(path)
    st = lg.stats()
    st["consumers"] = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".cur"):
            ob = Outbox(lg, name[:-4])
            st["consumers"][ob.name] = {"acked": ob.acked, "owes": ob.depth, "gap": ob.gap()}
    lg.close()
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    for k in ("first_seq", "last_seq", "durable_seq", "segments", "size_bytes", "evicted", "expired", "dropped", "corrupt"):
        click.echo("%-12s %s" % (k, st[k]))
    for name, c in st["consumers"].items():
        click.echo("consumer %-10s acked %d, owes %d%s" % (name, c["acked"], c["owes"], ", gap %d..%d" % tuple(c["gap"]) if c["gap"] else ""))


@log.command("read")
@click.argument("path")
@click.option("--from", "from_seq", default=1, show_default=True, help="First seq to read.")
@click.option("--limit", default=20, show_default=True)
def log_read(path, from_seq, limit):
    """Print records of the log at PATH, values decoded from CBOR where possible."""
    from edgeline import codec

    lg = _open(path)
    for r in lg.read(from_seq, limit, 1 << 30):
        try:
            v = codec.loads(r.value)
        except EdgelineError:
            v = r.value
        click.echo(json.dumps({"seq": r.seq, "ts": r.ts, "key": r.key.decode("utf-8", "replace") if r.key is not None else None, "value": v}, default=repr))
    lg.close()


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="edgeline", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("edgeline: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        click.echo("edgeline: error: %s" % e.format_message(), err=True)
        sys.exit(e.exit_code)
    except EdgelineError as e:
        click.echo("edgeline: error: %s" % e, err=True)
        sys.exit(2)
    except OSError as e:
        click.echo("edgeline: error: %s" % e, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
