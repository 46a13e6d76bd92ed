"""edgeline on a Raspberry Pi 4 (aarch64): the edge agent, CPython.

A Linux board runs the same core as a microcontroller, inside the asyncio edge agent
(ingest over HTTP, the ring logs on the SD card, the uplink with backoff and a circuit
breaker): this file starts it with the settings in edge.yaml -- the first argument,
else $EDGELINE_CONFIG, else /etc/edgeline/edge.yaml when it exists, else the edge.yaml
beside this file. Under systemd, see docs/boards.md. The same as
`edgeline agent --config /etc/edgeline/edge.yaml`.
"""
import os

from edgeline_host.agent.service import board_config_path, board_main

HERE = os.path.dirname(os.path.abspath(__file__))


def config_path(argv=None, environ=None):
    return board_config_path(HERE, argv, environ)


if __name__ == "__main__":
    board_main(HERE)
