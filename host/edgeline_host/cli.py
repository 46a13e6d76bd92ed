"""The `edgeline` command line.

Errors reach the user as one clear line (`edgeline: error: ...`) and exit status 2,
never as a traceback.
"""
import json
import os
import sys

import click

from edgeline.errors import EdgelineError
from edgeline_host.dirlock import DirInUse


@click.group()
@click.version_option(package_name="edgeline")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default=None, help="Level of the services' log lines on stderr ($EDGELINE_LOG_LEVEL; default info).")
@click.option("--log-format", type=click.Choice(["text", "json"], case_sensitive=False), default=None,
              help="text (time, level, logger, message) or json (one object per line: ts, level, logger, msg) "
                   "($EDGELINE_LOG_FORMAT; default text).")
@click.pass_context
def cli(ctx, log_level, log_format):
    """edgeline: an edge-first data pipeline (ring log, outbox, sync)."""
    ctx.obj = {"log_level": log_level, "log_format": log_format}


def _setup_logging():
    """The long-running commands (agent, gateway, firmware run) log with levels and
    times (logsetup.py), as the group's --log-level / --log-format say."""
    from edgeline_host import logsetup

    ctx = click.get_current_context()
    opts = ctx.find_root().obj or {}
    try:
        logsetup.setup(opts.get("log_level"), opts.get("log_format"))
    except ValueError as e:
        raise click.ClickException(str(e)) from None


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


@cli.group(invoke_without_command=True)
@click.option("--keys", "keys_file", default=None, envvar="EDGELINE_GATEWAY_KEYS", show_envvar=True,
              help="YAML file of node_id: key (64 hex digits or base64); required to run the gateway.")
@click.option("--db", default="edgeline-gateway.db", show_default=True, envvar="EDGELINE_GATEWAY_DB", show_envvar=True,
              help="SQLite store (created if missing).")
@click.option("--listen", default="127.0.0.1:8700", show_default=True, envvar="EDGELINE_GATEWAY_LISTEN",
              show_envvar=True, help="host:port for HTTP.")
@click.option("--tcp", "tcp_listen", default=None, envvar="EDGELINE_GATEWAY_TCP", show_envvar=True,
              help="host:port to also serve sync over plain TCP (boards).")
@click.option("--mqtt", "mqtt_broker", default=None, envvar="EDGELINE_GATEWAY_MQTT", show_envvar=True,
              help="host:port of an MQTT broker to also serve sync through.")
@click.option("--mqtt-prefix", default="edgeline", show_default=True, envvar="EDGELINE_GATEWAY_MQTT_PREFIX",
              show_envvar=True,
              help="MQTT topic prefix: edges publish to <prefix>/<node_id>/up, read <prefix>/<node_id>/down.")
@click.option("--topics", "topics_file", default=None, envvar="EDGELINE_GATEWAY_TOPICS", show_envvar=True,
              help="YAML file of the cloud-to-edge topics the gateway publishes (docs/gateway.md).")
@click.option("--publish-token-file", default=None, envvar="EDGELINE_GATEWAY_PUBLISH_TOKEN_FILE", show_envvar=True,
              help="File holding the token the publish API requires (default: loopback clients only).")
@click.option("--check", is_flag=True, help="Check the options and their files without starting (exit 0, or 2 "
              "with one line per problem).")
@click.pass_context
def gateway(ctx, keys_file, db, listen, tcp_listen, mqtt_broker, mqtt_prefix, topics_file, publish_token_file, check):
    """Run the cloud gateway: accepts edges over HTTP (and TCP, MQTT), stores records exactly once,
    publishes cloud-to-edge topics. Each option can come from its EDGELINE_GATEWAY_* variable
    (boards/x86-gateway/gateway.env); an option given overrides it. `edgeline gateway health`
    asks a running one how it is."""
    if ctx.invoked_subcommand is not None:
        return
    if check:
        from edgeline_host.configcheck import check_gateway

        _report_check("gateway", check_gateway(keys_file, db, listen, tcp_listen, mqtt_broker, mqtt_prefix,
                                               topics_file, publish_token_file))
        return
    if keys_file is None:
        raise click.UsageError("Missing option '--keys' (or EDGELINE_GATEWAY_KEYS).")
    _setup_logging()
    from edgeline_host import logsetup
    from edgeline_host.gateway.service import serve
    from edgeline_host.gateway.topics import load_topics
    from edgeline_host.nodekeys import load_keys, load_token

    host, port = _host_port("--listen", listen)
    tcp = _host_port("--tcp", tcp_listen) if tcp_listen else None
    mqtt = _host_port("--mqtt", mqtt_broker) + (_mqtt_prefix(mqtt_prefix),) if mqtt_broker else None
    keys = load_keys(keys_file)
    topics = load_topics(topics_file, keys) if topics_file else None
    token = load_token(publish_token_file) if publish_token_file else None
    def reload_keys():
        # SIGHUP: the keys file again; the topics file must still agree with it (not reloaded)
        new = load_keys(keys_file)
        if topics_file:
            load_topics(topics_file, new)
        return new

    serve(db, keys, host, port, print_fn=logsetup.service_print("edgeline.gateway"), tcp=tcp, mqtt=mqtt,
          topics=topics, publish_token=token, reload_keys=reload_keys)


@gateway.command("health")
@click.option("--gateway", "gateway_url", envvar="EDGELINE_GATEWAY", default="http://127.0.0.1:8700",
              show_default=True, help="The gateway's HTTP address ($EDGELINE_GATEWAY).")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
def gateway_health(gateway_url, as_json):
    """Is the gateway well: ok, degraded or failing, and why (one line per reason); edges'
    protocol errors per reason and the refused nodes. Exit status: 0 ok, 1 degraded,
    2 failing, 3 the gateway cannot be reached."""
    from edgeline_host import health as H

    h = _call_for_health("gateway", gateway_url, "/v1/health")
    if as_json:
        click.echo(json.dumps(h, indent=2))
    else:
        click.echo("%s: %d session(s), %d commit(s), %d store failure(s), %d exchange(s) refused" % (
            h["status"], h.get("sessions", 0), h.get("commits", 0), h.get("store_failures", 0), h.get("rejected", 0)))
        for line in H.lines(h)[1:]:
            click.echo(line)
        if h.get("errors_by_reason"):
            click.echo("edges' protocol errors: %s" % ", ".join(
                "%s %d" % (k, v) for k, v in sorted(h["errors_by_reason"].items())))
        for r in h.get("refused_nodes") or ():
            click.echo("refused node %s: %s, %d time(s), last %s" % (r["node"], r["reason"], r["count"],
                                                                      _ago(r["last_ms"])))
    sys.exit(H.exit_code(h["status"]))


DEFAULT_GATEWAY = "http://127.0.0.1:8700"


# ---------------------------------------------------------------- table topics (gateway and edge)


def _show(v):
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def _visible(item):
    if "siblings" in item:
        return "siblings %s" % ", ".join(_show(x) for x in item["siblings"])
    return _show(item.get("value"))


def _table_command(what, url, topic, key, put, delete, as_json, headers=None):
    """Read or write a table topic at the gateway or the agent (their /v1/tables API)."""
    import urllib.parse

    q = urllib.parse.quote
    if (put is not None or delete) and key is None:
        raise click.UsageError("--put and --delete need a KEY")
    if put is not None and delete:
        raise click.UsageError("give --put or --delete, not both")
    path = "/v1/tables/%s" % q(topic, safe="")
    if key is None:
        answer = _call_json(what, url, "GET", path)
        if as_json:
            click.echo(json.dumps(answer, indent=2))
            return
        click.echo("%s: %s table, %s; %d key(s)%s" % (
            answer["topic"], answer["type"], _show(answer["conflict_resolution"]).strip('"'), len(answer["keys"]),
            "; conflicts: " + ", ".join("%s %d" % kv for kv in sorted(answer["conflicts"].items()))
            if answer["conflicts"] else ""))
        for item in answer["keys"]:
            click.echo("%s = %s" % (item["key"], _visible(item)))
        return
    kpath = "%s?key=%s" % (path, q(key, safe="")) if key == "conflicts" else "%s/%s" % (path, q(key, safe=""))
    if put is not None or delete:
        h = dict(headers or {}, **{"Content-Type": "application/json"})
        wpath = "%s/%s" % (path, q(key, safe=""))
        answer = _call_json(what, url, "DELETE" if delete else "PUT", wpath,
                            data=None if delete else put.encode("utf-8"), headers=h, timeout_s=30)
        if as_json:
            click.echo(json.dumps(answer, indent=2))
        else:
            click.echo("%s %s/%s: seq %d (origin %s), durable" % ("deleted" if delete else "wrote", topic, key,
                                                                 answer["seq"], answer["origin"]))
        return
    answer = _call_json(what, url, "GET", kpath)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo("%s = %s" % (key, _visible(answer) if answer["present"] else "(absent)"))
    if "conflict" in answer:
        click.echo("conflict: %s, resolved %s" % (answer["conflict"], answer["resolution"]))
    if answer.get("merge_error"):
        click.echo("merge failed: %s" % answer["merge_error"])
    for v in answer.get("versions", ()):
        click.echo("  version %s:%d ts %d %s" % (v["writer"], v["seq"], v["ts"],
                                                  "deleted" if v.get("deleted") else _show(v["value"])))
    for f in answer.get("fields", ()):
        for v in f["versions"]:
            click.echo("  field %s: version %s:%d %s" % (_show(f["field"]), v["writer"], v["seq"],
                                                         "deleted" if v.get("deleted") else _show(v["value"])))
    if answer.get("version"):
        click.echo("  version vector %s" % ", ".join("%s:%d" % kv for kv in sorted(answer["version"].items())))


def _conflicts_command(what, url, topic, as_json):
    import urllib.parse

    names = [topic] if topic else [t["topic"] for t in _call_json(what, url, "GET", "/v1/tables")["tables"]]
    out = [_call_json(what, url, "GET", "/v1/tables/%s/conflicts" % urllib.parse.quote(n, safe="")) for n in names]
    if as_json:
        click.echo(json.dumps({"tables": out}, indent=2))
        return
    if not names:
        click.echo("no table topics")
    for t in out:
        click.echo("%s: %d conflict(s)%s" % (t["topic"], len(t["conflicts"]), "" if not t["counts"] else " (%s)" % (
            ", ".join("%s %d" % kv for kv in sorted(t["counts"].items())))))
        for c in t["conflicts"]:
            where = _show(c["key"]) + ("" if c.get("field") is None else "." + _show(c["field"]))
            versions = ", ".join("%s:%d%s" % (v["writer"], v["seq"], " (deleted)" if v.get("deleted") else "")
                                 for v in c["versions"])
            click.echo("  %s %s: %s; %s -> %s" % (where, c["type"], versions, c["resolution"],
                                                  _visible(c) if ("value" in c or "siblings" in c) else "-"))
            if c.get("merge_error"):
                click.echo("    merge failed: %s" % c["merge_error"])


def _table_options(f):
    f = click.option("--delete", is_flag=True, help="Delete KEY (a write of this node).")(f)
    f = click.option("--put", default=None, metavar="JSON",
                     help="Write KEY: the value as JSON (counter {\"add\": n}; set {\"add\": [..], \"remove\": "
                          "[..]}; map {\"put\": {..}, \"delete\": [..]}).")(f)
    f = click.argument("key", required=False)(f)
    return click.argument("topic")(f)


@gateway.command("table")
@_table_options
@click.option("--gateway", "gateway_url", envvar="EDGELINE_GATEWAY", default=DEFAULT_GATEWAY, show_default=True,
              help="The gateway's HTTP address ($EDGELINE_GATEWAY).")
@click.option("--token-file", default=None, envvar="EDGELINE_PUBLISH_TOKEN_FILE",
              help="File holding the gateway's publish token, for writes ($EDGELINE_PUBLISH_TOKEN_FILE).")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
def gateway_table(topic, key, put, delete, gateway_url, token_file, as_json):
    """The gateway's replica of table TOPIC: every key's visible value, or KEY's value,
    versions and version vector; --put / --delete write KEY as the cloud."""
    headers = {}
    if token_file:
        from edgeline_host.nodekeys import load_token

        headers["Authorization"] = "Bearer " + load_token(token_file)
    _table_command("gateway", gateway_url, topic, key, put, delete, as_json, headers)


@gateway.command("conflicts")
@click.argument("topic", required=False)
@click.option("--gateway", "gateway_url", envvar="EDGELINE_GATEWAY", default=DEFAULT_GATEWAY, show_default=True,
              help="The gateway's HTTP address ($EDGELINE_GATEWAY).")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
def gateway_conflicts(topic, gateway_url, as_json):
    """The conflicts the gateway's table replicas met (of TOPIC, or of every table topic):
    each once, with its type and resolution."""
    _conflicts_command("gateway", gateway_url, topic, as_json)


@cli.command()
@click.argument("topic")
@click.argument("records", required=False)
@click.option("--file", "records_file", type=click.File("rb"), default=None,
              help="Read the JSON records from this file ('-': stdin) instead of the argument.")
@click.option("--gateway", "gateway_url", envvar="EDGELINE_GATEWAY", default=DEFAULT_GATEWAY, show_default=True,
              help="The gateway's HTTP address ($EDGELINE_GATEWAY).")
@click.option("--token-file", default=None, envvar="EDGELINE_PUBLISH_TOKEN_FILE",
              help="File holding the gateway's publish token ($EDGELINE_PUBLISH_TOKEN_FILE).")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
def publish(topic, records, records_file, gateway_url, token_file, as_json):
    """Publish JSON RECORDS to a cloud-to-edge TOPIC at the gateway; every edge that pulls
    the topic gets them, once, in order. RECORDS as for the agent's ingest: a value, a
    list of values, or {"records": [...]}; an item {"key": k, "value": v} is keyed. To a
    table topic every item is keyed, a write of its key (`edgeline gateway table` deletes)."""
    import urllib.parse

    if (records is None) == (records_file is None):
        raise click.ClickException("give the records as an argument or with --file (not both)")
    body = records.encode("utf-8") if records is not None else records_file.read()
    headers = {"Content-Type": "application/json"}
    if token_file:
        from edgeline_host.nodekeys import load_token

        headers["Authorization"] = "Bearer " + load_token(token_file)
    answer = _call_json("gateway", gateway_url, "POST", "/v1/topics/%s/publish" % urllib.parse.quote(topic, safe=""),
                        data=body, headers=headers, timeout_s=30)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    else:
        n = answer["last_seq"] - answer["first_seq"] + 1
        click.echo("published %d record(s) to %s: seq %s (origin %s), durable" % (
            n, answer["topic"], answer["first_seq"] if n == 1 else "%d..%d" % (answer["first_seq"],
                                                                              answer["last_seq"]),
            answer["origin"]))


def _mqtt_prefix(prefix):
    from edgeline_host.transports.mqtt import check_prefix

    try:
        return check_prefix(prefix)
    except ValueError as e:
        raise click.ClickException("--mqtt-prefix: %s" % e) from None


def _host_port(option, text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.ClickException("%s must be host:port, got %r" % (option, text))
    return host, int(port)


def _report_check(what, result):
    """``--check``: the problems, one line each, and exit 2; or the notes, exit 0."""
    problems, notes = result
    if problems:
        for line in problems:
            click.echo("edgeline %s --check: %s" % (what, line), err=True)
        sys.exit(2)
    for line in notes:
        click.echo("edgeline %s --check: %s" % (what, line))


@cli.command()
@click.option("--config", "config_path", required=True, help="The node's edge.yaml (docs/config.md).")
@click.option("--check", is_flag=True, help="Check the config and its files without starting (exit 0, or 2 with "
              "one line per problem).")
def agent(config_path, check):
    """Run the edge agent: HTTP ingest into the logs, uplink to the gateway, control API."""
    if check:
        from edgeline_host.configcheck import check_agent

        _report_check("agent", check_agent(config_path))
        return
    from edgeline_host import logsetup
    from edgeline_host.agent.service import run_agent

    _setup_logging()
    run_agent(config_path, print_fn=logsetup.service_print("edgeline.agent"))


@cli.command("systemd-unit")
@click.argument("service", type=click.Choice(["agent", "gateway"]))
@click.option("--exe", default=None, help="The edgeline executable the unit runs (default: this one).")
@click.option("--config", "config_path", default="/etc/edgeline/edge.yaml", show_default=True,
              help="The agent's edge.yaml.")
@click.option("--env-file", default="/etc/edgeline/gateway.env", show_default=True,
              help="The gateway's settings (EDGELINE_GATEWAY_* lines).")
@click.option("--user", default="edgeline", show_default=True, help="The user (and group) the service runs as.")
def systemd_unit(service, exe, config_path, env_file, user):
    """Print the systemd unit of the agent or the gateway (Type=notify, watchdog, --check before each
    start, hardened; docs/operations.md)."""
    from edgeline_host.systemdunits import unit

    try:
        click.echo(unit(service, exe=exe, config=config_path, env_file=env_file, user=user), nl=False)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


@cli.command()
@click.argument("path")
@click.option("--force", is_flag=True, help="Replace an existing key file (the gateway must get the new key).")
def keygen(path, force):
    """Write a new node key to PATH (32 random bytes as hex, mode 0600) and print it.
    Missing parent directories are created (mode 0700).

    The printed hex goes into the gateway's keys file as `<node_id>: <hex>`.
    """
    import os
    import secrets

    key = secrets.token_hex(32)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o700)  # the agent's own hint names key_file, wherever it is
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


@cli.group()
def key():
    """Keys the operator holds (not the gateway): end-to-end topic keys (docs/spec/e2e.md)."""


@key.group("topic")
def key_topic():
    """A topic's end-to-end keys, one file per topic in --dir (mode 0600). Handing them to
    the nodes that may read the topic is not built yet (docs/spec/e2e.md, "Key management")."""


_KEY_DIR = click.option("--dir", "key_dir", default="edgeline-keys", show_default=True, envvar="EDGELINE_KEY_DIR",
                        show_envvar=True, help="The operator's directory of topic key files.")


def _topic_keys_call(fn, *args):
    from edgeline.errors import ConfigError

    try:
        return fn(*args)
    except (ConfigError, OSError) as e:
        raise click.ClickException(str(e)) from None


@key_topic.command("create")
@click.argument("topic")
@_KEY_DIR
def key_topic_create(topic, key_dir):
    """Make TOPIC's first key (id 1, active)."""
    from . import topickeys

    path = _topic_keys_call(topickeys.create, key_dir, topic)
    click.echo("topic %s: key id 1 active (%s)" % (topic, path))


@key_topic.command("rotate")
@click.argument("topic")
@_KEY_DIR
def key_topic_rotate(topic, key_dir):
    """Make a new active key for TOPIC (the next id); the one before is kept, retired, to
    read what was sealed under it."""
    from . import topickeys

    new_id = _topic_keys_call(topickeys.rotate, key_dir, topic)
    click.echo("topic %s: key id %d active" % (topic, new_id))


@key_topic.command("revoke")
@click.argument("topic")
@click.option("--id", "key_id", required=True, type=click.IntRange(1), help="The key id to revoke.")
@click.option("--purge", is_flag=True, help="Also forget the key's bytes: what was sealed under it can no longer be read.")
@_KEY_DIR
def key_topic_revoke(topic, key_id, purge, key_dir):
    """Revoke a key id of TOPIC: nothing is sealed under it again."""
    from . import topickeys

    left = _topic_keys_call(topickeys.revoke, key_dir, topic, key_id, purge)
    click.echo("topic %s: key id %d revoked%s; %s" % (topic, key_id, " and purged" if purge else "",
                                                    "key id %d active" % left if left else
                                                    "no active key: rotate before anything is sealed"))


@key_topic.command("list")
@click.argument("topic")
@_KEY_DIR
def key_topic_list(topic, key_dir):
    """TOPIC's key ids and their states (never the keys)."""
    from . import topickeys

    for key_id, state in _topic_keys_call(topickeys.describe, key_dir, topic):
        click.echo("%d %s" % (key_id, state))


# ---------------------------------------------------------------- edge: a running agent

DEFAULT_AGENT = "http://127.0.0.1:8080"


def _agent_option(f):
    f = click.option("--json", "as_json", is_flag=True, help="Print the agent's answer as JSON.")(f)
    return click.option("--agent", "agent_url", envvar="EDGELINE_AGENT", default=DEFAULT_AGENT, show_default=True,
                        help="The agent's HTTP address ($EDGELINE_AGENT).")(f)


def _call_agent(agent_url, method, path, timeout_s=10):
    """The agent's JSON answer; one-line ClickException when it cannot be had."""
    return _call_json("agent", agent_url, method, path, data=b"" if method == "POST" else None, timeout_s=timeout_s)


def _call_json(what, url, method, path, data=None, headers=None, timeout_s=10):
    """The JSON answer of the agent or gateway (``what``) at url; one-line
    ClickException when it cannot be had (naming the server's own error if it sent one)."""
    import urllib.error
    import urllib.request

    base = url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    req = urllib.request.Request(base + path, method=method, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error")
        except (ValueError, AttributeError):
            msg = None
        raise click.ClickException("the %s at %s answered %d: %s" % (what, base, e.code, msg or e.reason)) from None
    except urllib.error.URLError as e:
        why = e.reason
        why = (why.strerror or str(why)) if isinstance(why, OSError) else str(why)
        raise click.ClickException("cannot reach the %s at %s: %s" % (what, base, why.lower())) from None
    except (OSError, ValueError) as e:
        raise click.ClickException("cannot reach the %s at %s: %s" % (what, base, e)) from None


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
    """Uplink state, breaker, last error, per topic what is acknowledged and owed, and
    per cloud-to-edge topic what came down."""
    st = _call_agent(agent_url, "GET", "/v1/sync/status")
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    if st.get("state") == "disabled":
        click.echo("uplink disabled: %s" % st.get("reason"))
        return
    line = "uplink %s -> %s (breaker %s" % (st["state"], st["gateway"], st["breaker"])
    if st.get("encoding"):  # the session's batch encoding (sync.compression, as the gateway accepted it)
        line += ", batches %s" % st["encoding"]
    if st.get("failures"):
        line += ", %d failure(s) in a row" % st["failures"]
    if st.get("next_attempt_in_ms") is not None:
        line += ", next attempt in %.1fs" % (st["next_attempt_in_ms"] / 1000.0)
    click.echo(line + ")")
    if st.get("last_error"):
        click.echo("last error: %s (%s)" % (st["last_error"], _ago(st.get("last_error_ms"))))
    if st["topics"]:
        click.echo("%-24s %10s %10s %10s %12s" % ("topic", "last_seq", "acked", "pending", "last ack"))
    for name, t in st["topics"].items():
        click.echo("%-24s %10d %10d %10d %12s%s" % (name, t["last_seq"], t["acked"], t["pending"],
                                                    _ago(t["last_ack_ms"]),
                                                    "  stalled: %s" % t["error"] if t.get("error") else ""))
    down = st.get("downlink") or {}
    if down:
        click.echo("%-24s %10s %10s %12s %12s" % ("from the cloud", "last_seq", "pulled", "last pull",
                                                   "last record"))
    for name, t in down.items():
        click.echo("%-24s %10d %10d %12s %12s%s" % (name, t["last_seq"], t["records"], _ago(t["last_pull_ms"]),
                                                    _ago(t["last_record_ms"]),
                                                    "  %s" % t["error"] if t.get("error") else ""))


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


@edge.command("table")
@_table_options
@_agent_option
def edge_table(topic, key, put, delete, agent_url, as_json):
    """The agent's replica of table TOPIC: every key's visible value, or KEY's value,
    versions and version vector; --put / --delete write KEY as this node."""
    _table_command("agent", agent_url, topic, key, put, delete, as_json)


@edge.command("conflicts")
@click.argument("topic", required=False)
@_agent_option
def edge_conflicts(topic, agent_url, as_json):
    """The conflicts the agent's table replicas met (of TOPIC, or of every table topic):
    each once, with its type and resolution."""
    _conflicts_command("agent", agent_url, topic, as_json)


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


@edge.command("records")
@click.argument("topic")
@click.option("--after", default=0, show_default=True, type=click.IntRange(0), help="Records after this seq.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@click.option("--wait", "wait_s", default=0.0, show_default=True, type=click.FloatRange(0, 60),
              help="With nothing after --after, wait up to this many seconds for new records.")
@click.option("--origin", default=None,
              help="'cloud' (the default on cloud_to_edge and bidirectional topics) or this node's id.")
@_agent_option
def edge_records(topic, after, limit, wait_s, origin, agent_url, as_json):
    """Durable records of TOPIC held by the agent: what came from the cloud, or the node's own.
    One JSON line per record (seq, ts, key, value)."""
    import urllib.parse

    q = {"after": after, "limit": limit, "wait_ms": int(wait_s * 1000)}
    if origin:
        q["origin"] = origin
    path = "/v1/topics/%s/records?%s" % (urllib.parse.quote(topic, safe=""), urllib.parse.urlencode(q))
    r = _call_agent(agent_url, "GET", path, timeout_s=10 + wait_s)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    for rec in r["records"]:
        click.echo(json.dumps(rec))


@edge.command("health")
@_agent_option
def edge_health(agent_url, as_json):
    """Is the agent well: ok, degraded or failing, and why (one line per reason); uptime,
    storage, uplink. Exit status: 0 ok, 1 degraded, 2 failing, 3 the agent cannot be reached."""
    from edgeline_host import health as H

    h = _call_for_health("agent", agent_url, "/v1/health")
    if as_json:
        click.echo(json.dumps(h, indent=2))
    else:
        click.echo("%s: node %s, up %ds, storage %s of %s, uplink %s, pending %d" % (
            h["status"], h["node_id"], h["uptime_s"], _size(h["storage"]["used_bytes"]),
            _size(h["storage"]["budget_bytes"]), h["uplink"], h["pending"]))
        for line in H.lines(h)[1:]:
            click.echo(line)
        m = h.get("mqtt")
        if m:
            click.echo("mqtt ingest %s: %s, received %d, stored %d, refused %d, unacknowledged %d%s" % (
                m["broker"], "connected" if m["connected"] else "NOT connected", m["received"], m["stored"],
                m["refused"], m["unacknowledged"], ", held: %s" % m["held"] if m["held"] else ""))
            if m.get("last_refusal"):
                click.echo("last refused: %s" % m["last_refusal"])
        e = h.get("mqtt_endpoint")
        if e:
            click.echo("mqtt endpoint %s: %d connected, received %d, stored %d, acked %d, refused %d, "
                       "resends dropped %d, unacknowledged %d" % (
                           e["listen"], e["connections"], e["received"], e["stored"], e["acked"], e["refused"],
                           e["redeliveries_dropped"], e["unacknowledged"]))
            if e.get("last_refusal"):
                click.echo("last refused: %s" % e["last_refusal"])
        if h.get("last_error"):
            click.echo("last error: %s" % h["last_error"])
    sys.exit(H.exit_code(h["status"]))


def _call_for_health(what, url, path):
    """A health answer; exit 3 (health.EXIT_UNREACHABLE) with one line when there is none."""
    from edgeline_host import health as H

    try:
        h = _call_json(what, url, "GET", path)
        if not isinstance(h, dict) or h.get("status") not in H.EXIT_CODES:
            raise click.ClickException("the %s at %s gave no health status" % (what, url))
        return h
    except click.ClickException as e:
        click.echo("edgeline: error: %s" % e.format_message(), err=True)
        sys.exit(H.EXIT_UNREACHABLE)


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


# ---------------------------------------------------------------- firmware: boards' code


@cli.group()
def firmware():
    """Build edgeline for a board profile (boards/<name>): .mpy, manifest, ROMFS, settings."""


def _profile(name):
    from edgeline_host.firmware.profiles import ProfileError, load_profile

    try:
        return load_profile(name)
    except ProfileError as e:
        raise click.ClickException(str(e)) from None


def _firmware_call(fn, *args, **kw):
    """Run a firmware tool; its failures (bad profile, missing tool, compiler error) as one line."""
    from edgeline_host.firmware.mpy import ToolMissing
    from edgeline_host.firmware.profiles import ProfileError

    try:
        return fn(*args, **kw)
    except (ProfileError, ToolMissing, RuntimeError, ValueError) as e:
        raise click.ClickException(str(e)) from None


_profile_option = click.option("--profile", "profile_name", required=True, help="A folder of boards/ (edgeline firmware profiles).")


@firmware.command("profiles")
@click.option("--json", "as_json", is_flag=True)
def firmware_profiles(as_json):
    """The board profiles, with their heap or RAM, file system and code format."""
    from edgeline_host.firmware.profiles import ProfileError, load_all

    try:
        profs = load_all()
    except ProfileError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps([{k: v for k, v in p.items() if k != "dir"} for p in profs], indent=2))
        return
    click.echo("%-22s %-14s %-18s %-16s %s" % ("profile", "runtime", "code", "memory", "storage"))
    for p in profs:
        if p["runtime"] == "cpython":
            code, mem = p["platform"]["machine"], "%s RAM" % _size(p["memory"]["ram_bytes"])
            st = "%s, %s for logs" % (p["storage"]["filesystem"], _size(p["storage"]["log_budget_bytes"]))
        else:
            fw = p["firmware"]
            code = fw["deploy"] + (" " + fw["mpy_arch"] if fw["mpy_arch"] else "")
            mem = "%s heap" % _size(p["memory"]["heap_bytes"])
            st = "%s %s, %s for logs" % (p["storage"]["filesystem"], _size(p["storage"]["fs_bytes"]),
                                         _size(p["storage"]["log_budget_bytes"]))
        click.echo("%-22s %-14s %-18s %-16s %s" % (p["name"], p["runtime"], code, mem, st))


@firmware.command("build")
@_profile_option
@click.option("--out", "out_dir", required=True, help="Folder to write (lib/, main.py, edgeline.json).")
@click.option("--config", "config_path", default=None, help="An edgeline.json to check and include.")
@click.option("--source", is_flag=True, help="Copy .py sources instead of compiling (CircuitPython always).")
def firmware_build(profile_name, out_dir, config_path, source):
    """Compile edgeline for PROFILE into a tree to copy onto the board (mpremote cp -r)."""
    from edgeline_host.firmware import build

    p = _profile(profile_name)
    cfg = _read_board_config(config_path, p) if config_path else None
    rep = _firmware_call(build.build, p, out_dir, cfg, source)
    click.echo("%s: %d files, core %s, library %s (%s) in %s" % (
        p["name"], len(rep["files"]), _size(rep["core_bytes"]), _size(rep["library_bytes"]), rep["format"], out_dir))
    click.echo("copy to the board: cd %s && mpremote cp -r lib main.py%s%s :" % (
        out_dir, " boot.py" if p["runtime"] == "circuitpython" else "", " edgeline.json" if cfg else ""))


def _read_board_config(path, profile):
    from edgeline_host.firmware.profiles import ProfileError, check_board_config

    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        raise click.ClickException("cannot read %s: %s" % (path, e.strerror or e)) from None
    except ValueError as e:
        raise click.ClickException("%s: invalid JSON: %s" % (path, e)) from None
    try:
        return check_board_config(cfg, path, profile)
    except ProfileError as e:
        raise click.ClickException(str(e)) from None


@firmware.command("manifest")
@_profile_option
@click.option("--out", "out_dir", required=True, help="Folder for manifest.py and the sources it freezes.")
def firmware_manifest(profile_name, out_dir):
    """Write the manifest.py that freezes edgeline into a MicroPython firmware build."""
    from edgeline_host.firmware import build

    p = _profile(profile_name)
    path = _firmware_call(build.write_manifest, p, out_dir)
    fw = p["firmware"]
    click.echo(path)
    click.echo("build: make -C ports/%s BOARD=%s FROZEN_MANIFEST=%s" % (fw["port"], fw["board"], os.path.abspath(path)))


@firmware.command("romfs")
@_profile_option
@click.option("--out", "image", required=True, help="The ROMFS image to write.")
def firmware_romfs(profile_name, image):
    """Pack edgeline for PROFILE into a ROMFS image (firmware with a ROMFS partition)."""
    from edgeline_host.firmware import build

    p = _profile(profile_name)
    rep = _firmware_call(build.build_romfs_image, p, image)
    click.echo("%s: %s image (%d files, core %s); deploy: mpremote romfs deploy %s" % (
        image, _size(rep["image_bytes"]), len(rep["files"]), _size(rep["core_bytes"]), image))


@firmware.command("config")
@_profile_option
@click.option("--node-id", required=True, help="The board's node id (the origin of its records).")
@click.option("--key-file", default=None, help="The node key (edgeline keygen); or --key.")
@click.option("--key", "key_text", default=None, help="The node key as 64 hex digits (prefer --key-file).")
@click.option("--gateway", default=None, help="host:port of the gateway's TCP transport (edgeline gateway --tcp).")
@click.option("--wifi-ssid", default=None)
@click.option("--wifi-password", default=None)
@click.option("--wifi-country", default=None, help="Two-letter regulatory domain, e.g. GB (Pico W).")
@click.option("--samples", type=click.IntRange(0), default=None, help="Stop after N readings once all are sent (0: never).")
@click.option("--sample-ms", type=click.IntRange(10), default=None, help="Milliseconds between readings.")
@click.option("--out", "out_path", default="edgeline.json", show_default=True)
def firmware_config(profile_name, node_id, key_file, key_text, gateway, wifi_ssid, wifi_password, wifi_country,
                    samples, sample_ms, out_path):
    """Write the board's settings (edgeline.json) from the profile's defaults."""
    from edgeline_host.nodekeys import decode_key
    from edgeline_host.firmware.profiles import ProfileError, board_config

    p = _profile(profile_name)
    if (key_file is None) == (key_text is None):
        raise click.ClickException("give --key-file or --key (one of them)")
    try:
        if key_file is not None:
            with open(key_file, "rb") as f:
                key = decode_key(f.read(4097))
        else:
            key = decode_key(key_text)
    except OSError as e:
        raise click.ClickException("cannot read %s: %s" % (key_file, e.strerror or e)) from None
    except ValueError as e:
        raise click.ClickException("the key %s" % e) from None
    gw = _host_port("--gateway", gateway) if gateway else None
    wifi = None
    if wifi_ssid is not None:
        wifi = {"ssid": wifi_ssid, "password": wifi_password or ""}
        if wifi_country:
            wifi["country"] = wifi_country
    elif wifi_password or wifi_country:
        raise click.ClickException("--wifi-password and --wifi-country need --wifi-ssid")
    overrides = {"sample_ms": sample_ms} if sample_ms else None
    try:
        cfg = board_config(p, node_id, key.reveal().hex(), gw, wifi, samples, overrides)
    except ProfileError as e:
        raise click.ClickException(str(e)) from None
    with open(out_path, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # it holds the node key
        json.dump(cfg, f, indent=1, sort_keys=True)
        f.write("\n")
    click.echo("%s: settings for %s on %s%s" % (out_path, node_id, p["name"],
                                                ", gateway %s:%d" % gw if gw else ", no gateway (log only)"))


@firmware.command("sizes")
@click.option("--profile", "profile_names", multiple=True, help="Only these profiles (default: every MCU profile).")
@click.option("--json", "as_json", is_flag=True)
def firmware_sizes(profile_names, as_json):
    """Measure the compiled core, and the RAM edgeline holds at rest and at most while
    syncing on each MCU profile, on both word sizes: the MicroPython unix port (64-bit)
    with the profile's heap, and the WebAssembly port by node (32-bit, as the boards;
    or $EDGELINE_MICROPYTHON32, a 32-bit unix-port build); check them against the
    budgets. The verdict says which figure was checked. Exit status 1 if one is over, 3
    if none is over but one could not be verified (only its 64-bit upper bound is over:
    no 32-bit lane here)."""
    from edgeline_host.firmware import sizes

    rows = _firmware_call(sizes.measure, list(profile_names) or None)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        def rest(r, lane):
            return _size(r[lane]["rest_bytes"]) if r[lane] is not None else "-"

        fmt = "%-22s %-7s %9s %9s %10s %10s %10s %10s %10s  %s"
        click.echo(fmt % ("profile", "deploy", "core", "library", "rest 64b", "rest 32b", "sync peak", "budget",
                          "heap", "verdict"))
        for r in rows:
            click.echo(fmt % (
                r["profile"], r["deploy"], _size(r["core_bytes"]), _size(r["library_bytes"]), rest(r, "ram64"),
                rest(r, "ram32"), _size(r["sync_round_bytes"]) if r["sync_round_bytes"] is not None else "-",
                _size(r["budget_bytes"]), _size(r["heap_bytes"]), r["verdict"]))
        if rows and rows[0]["lane32"]:
            click.echo("no 32-bit figures: %s" % rows[0]["lane32"])
    if any(r["ok"] is False for r in rows):
        sys.exit(1)
    if any(r["ok"] is None for r in rows):
        sys.exit(3)


@firmware.command("run")
@_profile_option
@click.option("--flash", "image", required=True, help="The board's flash image (created blank if missing).")
@click.option("--config", "config_path", default=None, help="edgeline.json to install (needed on a blank image).")
@click.option("--code", type=click.Choice(["mpy", "rom", "py"]), default=None,
              help="How the library is loaded: .mpy in /lib, ROMFS (as frozen), .py sources. Default: the profile's.")
@click.option("--no-install", is_flag=True, help="Boot the image as it is (a reboot).")
def firmware_run(profile_name, image, config_path, code, no_install):
    """Run PROFILE's main.py on the MicroPython unix port, with the board's heap and a
    littlefs2 flash image: the emulated board, headless (Ctrl-C stops it)."""
    import shutil
    import tempfile

    from edgeline_host.firmware import build, unixport

    p = _profile(profile_name)
    if p["runtime"] != "micropython":
        raise click.ClickException("%s: only MicroPython profiles run on the MicroPython unix port" % p["name"])
    cfg = _read_board_config(config_path, p) if config_path else None
    mode = code or {"frozen": "rom", "romfs": "rom"}.get(p["firmware"]["deploy"], p["firmware"]["deploy"])
    tmp = tempfile.mkdtemp(prefix="edgeline-run-")
    try:
        romfs = None
        if not os.path.exists(image):
            if cfg is None or no_install:
                raise click.ClickException("%s does not exist: give --config (edgeline firmware config) to make it"
                                           % image)
            _firmware_call(unixport.make_flash, image, p)
        if mode == "rom":
            romfs = os.path.join(tmp, "lib.romfs")
            _firmware_call(build.build_romfs_image, p, romfs)
        if not no_install:
            tree = os.path.join(tmp, "tree")
            _firmware_call(build.build, p, tree, cfg, mode == "py")
            os.remove(os.path.join(tree, "sizes.json"))
            if mode == "rom":
                shutil.rmtree(os.path.join(tree, "lib"))
            free = _firmware_call(unixport.install, image, tree, p)
            click.echo("installed on %s (%s free)" % (image, _size(free)), err=True)
        proc = _firmware_call(unixport.start_main, image, p, romfs, stdout=None, stderr=None)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            rc = proc.wait()
        sys.exit(rc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- board: a board on a serial port


@cli.group()
def board():
    """A MicroPython board on a serial port: deploy edgeline to it, read its queue back."""


_port_option = click.option("--port", required=True,
                            help="The board's serial port (/dev/ttyACM0, /dev/ttyUSB0, an emulated board's pty).")
_board_timeout_option = click.option("--timeout", "timeout_s", type=click.FloatRange(0.1), default=5,
                                     show_default=True, help="Seconds the board may take to answer at its REPL.")


def _board_call(fn, *args, **kw):
    from edgeline_host.deploy import BoardError

    try:
        return fn(*args, **kw)
    except BoardError as e:
        raise click.ClickException(str(e)) from None


@board.command("deploy")
@_port_option
@_profile_option
@click.option("--config", "config_path", default=None,
              help="The board's edgeline.json (edgeline firmware config); without it the board keeps its own.")
@click.option("--code", type=click.Choice(["mpy", "py", "frozen", "romfs"]), default=None,
              help="How the library reaches the board: .mpy or .py files in /lib, or already in its firmware"
                   " (frozen) or ROMFS partition. Default: the profile's.")
@_board_timeout_option
def board_deploy(port, profile_name, config_path, code, timeout_s):
    """Copy edgeline compiled for PROFILE, the board's main.py and its settings to the
    board on PORT (mpremote; unchanged files are skipped), then soft-reset it so that
    main.py runs. A board whose firmware has edgeline frozen in gets main.py and the
    settings only."""
    from edgeline_host import deploy

    rep = _board_call(deploy.deploy, port, profile_name, config_path, say=click.echo, timeout_s=timeout_s,
                      code=code)
    click.echo("deployed %s to %s: %d files copied, %d unchanged (%s in all%s); soft reset, main.py running"
               % (profile_name, port, rep["copied"], rep["unchanged"], _size(rep["bytes"]),
                  "; the library is in the firmware" if rep["code"] in ("frozen", "romfs") else ""))
    if not rep["settings"]:
        click.echo("warning: the board has no edgeline.json, so main.py stops at once: give --config"
                   " (edgeline firmware config)", err=True)


@board.command("status")
@_port_option
@click.option("--json", "as_json", is_flag=True, help="Print the board's answer as JSON.")
@click.option("--no-restart", is_flag=True, help="Leave main.py stopped afterwards (the board waits at its REPL).")
@_board_timeout_option
def board_status(port, as_json, no_restart, timeout_s):
    """What the board on PORT holds: per topic the last seq on flash, the seq the gateway
    acknowledged, the queue (records still owed) and any gap; heap and flash. main.py is
    stopped to ask, then started again."""
    from edgeline_host import deploy

    st = _board_call(deploy.status, port, restart=not no_restart, timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    b = st["board"]
    click.echo("%s on %s: %d topic%s, %d pending" % (st["node_id"], port, len(st["topics"]),
                                                      "" if len(st["topics"]) == 1 else "s", st["pending"]))
    click.echo("health: %s" % st.get("status", "ok"))
    for r in st.get("reasons") or ():
        click.echo("%s: %s [%s]" % (r["severity"], r["line"], r["code"]))
    click.echo("%-20s %10s %10s %10s %-14s %21s %8s %8s" % ("topic", "last seq", "acked", "pending", "gap",
                                                          "size / budget", "evicted", "dropped"))
    for name in sorted(st["topics"]):
        t = st["topics"][name]
        gap = "%d..%d" % tuple(t["gap"]) if t["gap"] else "-"
        click.echo("%-20s %10d %10d %10d %-14s %21s %8d %8d" % (
            name, t["last_seq"], t["acked"], t["pending"], gap,
            "%s / %s" % (_size(t["size_bytes"]), _size(t["budget_bytes"])), t["evicted"], t["dropped"]))
    click.echo("heap %s free; flash %s free of %s" % (
        _size(b["heap_free"]), _size(b["flash_free_bytes"]), _size(b["flash_bytes"])))


@cli.group()
def log():
    """Inspect a log directory."""


def _lock_for(path):
    """The DirLock ``edgeline log`` takes on the log at ``path``: its agent's data
    directory (the parent, when it holds a LOCK), else the log's own directory. Opening
    a log recovers it (it may cut a torn tail), a write that must never race a running
    agent: the command is refused while one holds the directory."""
    import os

    from edgeline_host.dirlock import LOCK_NAME, DirLock

    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(os.path.join(parent, LOCK_NAME)):
        return DirLock(os.path.join(parent, LOCK_NAME), what=os.path.dirname(path.rstrip("/")) or parent)
    return DirLock(os.path.join(path, LOCK_NAME), what=path)


def _open(path):
    """(RingLog, DirLock) of the log at ``path``; close both."""
    import os

    from edgeline.log import RingLog

    if not os.path.isdir(path):
        raise click.ClickException("%s is not a log directory" % path)
    lock = _lock_for(path).acquire()
    try:
        # A huge budget: inspecting must never evict anything.
        return RingLog(path, budget_bytes=1 << 62, segment_bytes=65536), lock
    except BaseException:
        lock.release()
        raise


@log.command("stat")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True)
def log_stat(path, as_json):
    """Positions, sizes and loss counters of the log at PATH (recovers it if needed)."""
    import os

    from edgeline.outbox import Outbox

    lg, lock = _open(path)
    st = lg.stats()
    st["incarnation"] = lg.incarnation.hex()  # the log's id: its seqs are (node, topic, incarnation)'s
    st["consumers"] = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".cur"):
            ob = Outbox(lg, name[:-4])
            st["consumers"][ob.name] = {"acked": ob.acked, "owes": ob.depth, "gap": ob.gap()}
    lg.close()
    lock.release()
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    for k in ("incarnation", "first_seq", "last_seq", "durable_seq", "segments", "size_bytes", "evicted", "expired",
              "dropped", "corrupt"):
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

    lg, lock = _open(path)
    for r in lg.read(from_seq, limit, 1 << 30):
        try:
            v = codec.loads(r.value)
        except EdgelineError:
            v = r.value
        click.echo(json.dumps({"seq": r.seq, "ts": r.ts, "key": r.key.decode("utf-8", "replace") if r.key is not None else None, "value": v}, default=repr))
    lg.close()
    lock.release()


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="edgeline", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("edgeline: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        click.echo("edgeline: error: %s" % e.format_message(), err=True)
        sys.exit(e.exit_code)
    except DirInUse as e:
        click.echo("edgeline: %s" % e, err=True)
        sys.exit(3)
    except EdgelineError as e:
        click.echo("edgeline: error: %s" % e, err=True)
        sys.exit(2)
    except OSError as e:
        click.echo("edgeline: error: %s" % e, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
