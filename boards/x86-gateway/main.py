"""The edgeline gateway on an x86-64 Linux host: HTTP for agents, plain TCP for boards.

Reads its settings from the environment (gateway.env beside this file documents them;
systemd loads it with EnvironmentFile=) or, for a key missing there, from gateway.env
itself, and runs what `edgeline gateway --keys ... --db ... --listen ... --tcp ...`
runs. Boards' main.py connect to EDGELINE_GATEWAY_TCP; agents post to
EDGELINE_GATEWAY_LISTEN.
"""
import os
import sys

from edgeline.errors import EdgelineError

HERE = os.path.dirname(os.path.abspath(__file__))


def settings(environ=None, env_file=os.path.join(HERE, "gateway.env")):
    """The gateway's settings: environment first, then the env file's defaults."""
    environ = os.environ if environ is None else environ
    s = {}
    with open(env_file) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                s[k] = v
    for k in list(s) + ["EDGELINE_GATEWAY_MQTT"]:
        if environ.get(k):
            s[k] = environ[k]
    return s


def host_port(name, text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("%s must be host:port, got %r" % (name, text))
    return host, int(port)


def main():
    from edgeline_host.gateway.service import serve
    from edgeline_host.nodekeys import load_keys

    s = settings()
    mqtt = s.get("EDGELINE_GATEWAY_MQTT")
    serve(s["EDGELINE_GATEWAY_DB"], load_keys(s["EDGELINE_GATEWAY_KEYS"]),
          *host_port("EDGELINE_GATEWAY_LISTEN", s["EDGELINE_GATEWAY_LISTEN"]), print_fn=print,
          tcp=host_port("EDGELINE_GATEWAY_TCP", s["EDGELINE_GATEWAY_TCP"]),
          mqtt=host_port("EDGELINE_GATEWAY_MQTT", mqtt) + ("edgeline",) if mqtt else None)


if __name__ == "__main__":
    try:
        main()
    except (EdgelineError, OSError, ValueError) as e:
        sys.exit("edgeline: error: %s" % e)
