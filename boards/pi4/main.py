"""edgeline on a Raspberry Pi 4 (aarch64): the edge agent, CPython.

A Linux board runs the same core as a microcontroller, inside the asyncio edge agent
(ingest over HTTP, the ring logs on the SD card, the uplink with backoff and a circuit
breaker): this file starts it with the settings in edge.yaml -- the first argument,
else $EDGELINE_CONFIG, else /etc/edgeline/edge.yaml when it exists, else the edge.yaml
beside this file. Under systemd, see docs/boards.md. The same as
`edgeline agent --config /etc/edgeline/edge.yaml`.
"""
import os
import sys

from edgeline_host.agent.agent import run_agent
from edgeline.errors import EdgelineError


def config_path(argv=None, environ=None):
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if len(argv) > 1:
        return argv[1]
    if environ.get("EDGELINE_CONFIG"):
        return environ["EDGELINE_CONFIG"]
    if os.path.exists("/etc/edgeline/edge.yaml"):
        return "/etc/edgeline/edge.yaml"
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "edge.yaml")


if __name__ == "__main__":
    try:
        run_agent(config_path(), print_fn=lambda s: print(s, file=sys.stderr))
    except (EdgelineError, OSError) as e:
        sys.exit("edgeline: error: %s" % e)
