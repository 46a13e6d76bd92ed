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

    result = demo_mod.run(out=(lambda s: None) if as_json else click.echo, data_dir=data_dir, seconds=seconds)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    if not result["ok"]:
        sys.exit(1)


@cli.command()
@click.option("--keys", "keys_file", required=True, help="YAML file of node_id: key (64 hex digits or base64).")
@click.option("--db", default="edgeline-gateway.db", show_default=True, help="SQLite store (created if missing).")
@click.option("--listen", default="127.0.0.1:8700", show_default=True, help="host:port for HTTP.")
@click.option("--tcp", "tcp_listen", default=None, help="host:port to also serve sync over plain TCP (boards).")
def gateway(keys_file, db, listen, tcp_listen):
    """Run the cloud gateway: accepts edges over HTTP (and TCP), stores records exactly once."""
    from edgeline_host.gateway.server import load_keys, serve

    host, port = _host_port("--listen", listen)
    tcp = _host_port("--tcp", tcp_listen) if tcp_listen else None
    serve(db, load_keys(keys_file), host, port, print_fn=click.echo, tcp=tcp)


def _host_port(option, text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.ClickException("%s must be host:port, got %r" % (option, text))
    return host, int(port)


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
