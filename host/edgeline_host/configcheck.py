"""``edgeline agent --check`` and ``edgeline gateway --check``: a config and its files,
checked without starting anything.

Theory of operation
-------------------
Each check reads and parses what the service would read at start -- the agent's
edge.yaml (with its key file), the gateway's keys, topics and publish token files --
and looks at the places it would write (the data directory, the store) and the addresses
it would listen on, but opens no log or store, takes no lock, binds no socket and
connects to nothing: it is safe beside a running service (before a restart, in a
systemd ``ExecStartPre=``, in CI). A check answers ``(problems, notes)``: one line per
problem (the service would refuse to start, or fail soon after), and notes (warnings and
the summary). The CLI prints the problems and exits 2, or the notes and exits 0.

The agent's config parser stops at the first problem of the file (its lines name the
field); the checks after it (key file, data directory, listen addresses, disk room) each
add their own line, so one run lists every problem but the later ones of a broken file.
"""
import os
import shutil
import socket

from edgeline.errors import ConfigError

SQLITE_MAGIC = b"SQLite format 3\x00"


def _writable_dir(path, what):
    """A problem line if the service could not create or write directory ``path``; else None."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            return "%s %s is not a directory" % (what, path)
        if not os.access(path, os.W_OK | os.X_OK):
            return "%s %s is not writable by this user (uid %d)" % (what, path, os.getuid())
        return None
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return "%s %s cannot be created: %s is not a directory" % (what, path, parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return "%s %s cannot be created: %s is not writable by this user (uid %d)" % (what, path, parent,
                                                                                      os.getuid())
    return None


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _listen_problem(what, host, port):
    """A problem line if ``host`` is no address this machine could listen on (resolved
    with getaddrinfo; nothing is bound); else None."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except (socket.gaierror, UnicodeError) as e:
        return "%s %s:%d: the host does not resolve (%s)" % (what, host, port, e)
    return None


# ---------------------------------------------------------------------------- agent


def check_agent(config_path):
    """(problems, notes) of the agent's config at ``config_path``."""
    from .agent.config import HttpIngest, load_config
    from .agent.service import check_before_open

    try:
        cfg = load_config(config_path)
    except (ConfigError, ValueError, OSError) as e:
        return [str(e)], []
    problems = []
    notes = []
    try:
        check_before_open(cfg)
    except (ConfigError, ValueError, OSError) as e:
        problems.append(str(e))
    p = _writable_dir(cfg.data_dir, "%s: edge.data_dir:" % cfg.source)
    if p:
        problems.append(p)
    http = cfg.ingest.http.listen if cfg.ingest.http is not None else HttpIngest().listen
    listens = [("edge.ingest.http.listen", http)]
    mqtt = cfg.ingest.mqtt
    if mqtt is not None and mqtt.listen is not None:
        listens.append(("edge.ingest.mqtt.listen", mqtt.listen))
    for field, addr in listens:
        p = _listen_problem("%s: %s:" % (cfg.source, field), addr.host, addr.port)
        if p:
            problems.append(p)
    if len(listens) == 2 and listens[0][1] == listens[1][1] and listens[0][1].port != 0:
        problems.append("%s: edge.ingest.mqtt.listen: %s is also the HTTP listener's address" % (cfg.source,
                                                                                               listens[1][1]))
    try:
        free = shutil.disk_usage(_nearest_existing(cfg.data_dir)).free
    except OSError:
        free = None
    budget = cfg.resources.max_storage_bytes
    if free is not None and not os.path.exists(cfg.data_dir) and budget > free:
        notes.append("warning: %s: resources.max_storage (%d bytes) is more than the %d bytes free under %s: the "
                     "disk would fill first" % (cfg.source, budget, free, cfg.data_dir))
    sends = sorted(t.name for t in cfg.topics if t.sends) if cfg.sync.enabled else []
    notes.append("%s: OK: node %s, %d topic(s)%s, data in %s, HTTP on %s%s" % (
        cfg.source, cfg.node_id, len(cfg.topics), " (%d sync)" % len(sends) if sends else "", cfg.data_dir, http,
        ", uplink to %s" % cfg.cloud_endpoint if cfg.sync.enabled and cfg.cloud_endpoint else ""))
    return problems, notes


# ---------------------------------------------------------------------------- gateway


def _host_port(option, text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("%s must be host:port, got %r" % (option, text))
    return host.strip("[]"), int(port)


def check_gateway(keys_file, db, listen, tcp=None, mqtt=None, mqtt_prefix=None, topics_file=None,
                  publish_token_file=None):
    """(problems, notes) of the gateway's options (as ``edgeline gateway`` takes them)."""
    from .gateway.topics import load_topics
    from .nodekeys import load_keys, load_token

    problems = []
    keys = None
    if keys_file is None:
        problems.append("--keys (or EDGELINE_GATEWAY_KEYS) is required")
    else:
        try:
            keys = load_keys(keys_file)
        except (ConfigError, ValueError, OSError) as e:
            problems.append(str(e))
    if topics_file is not None and keys is not None:
        try:
            load_topics(topics_file, keys)
        except (ConfigError, ValueError, OSError) as e:
            problems.append(str(e))
    elif topics_file is not None and not os.path.isfile(topics_file):
        problems.append("%s: the topics file does not exist" % topics_file)
    if publish_token_file is not None:
        try:
            load_token(publish_token_file)
        except (ConfigError, ValueError, OSError) as e:
            problems.append(str(e))
    if mqtt_prefix is not None and mqtt is not None:
        from .transports.mqtt import check_prefix

        try:
            check_prefix(mqtt_prefix)
        except ValueError as e:
            problems.append("--mqtt-prefix: %s" % e)
    addrs = []
    for option, text, local in (("--listen", listen, True), ("--tcp", tcp, True), ("--mqtt", mqtt, False)):
        if text is None:
            continue
        try:
            host, port = _host_port(option, text)
        except ValueError as e:
            problems.append(str(e))
            continue
        if local:
            p = _listen_problem(option, host, port)
            if p:
                problems.append(p)
            elif (host, port) in addrs and port != 0:
                problems.append("%s %s: the same address as another listener" % (option, text))
            addrs.append((host, port))
    problems += _store_problems(db)
    notes = []
    if not problems:
        notes.append("gateway: OK: %d node(s), store %s%s, HTTP on %s" % (
            len(keys), db, "" if os.path.exists(db) else " (to be created)", listen))
    return problems, notes


def _store_problems(db):
    """The store's file, its folder (SQLite writes a journal beside it), its tables
    folder: each one line if the gateway could not use it."""
    if db == ":memory:":
        return []
    out = []
    path = os.path.abspath(db)
    if os.path.exists(path):
        if os.path.isdir(path):
            return ["--db %s is a directory (give the store's file)" % db]
        if not os.access(path, os.R_OK | os.W_OK):
            out.append("--db %s is not readable and writable by this user (uid %d)" % (db, os.getuid()))
        else:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
            if head and head != SQLITE_MAGIC:
                out.append("--db %s is not an SQLite database (it starts with %r)" % (db, head[:8]))
    p = _writable_dir(os.path.dirname(path), "--db: the store's folder")
    if p:
        out.append(p)
    tables = path + ".tables"
    if os.path.exists(tables):
        p = _writable_dir(tables, "--db: the table replicas' folder")
        if p:
            out.append(p)
    return out
