"""The sync protocol's transports: thin adapters that only move bytes (docs/spec/wire.md).

One module per I/O flavour, the edge's end and the gateway's end side by side:

* ``http``  -- ``POST /v1/sync``: the edge's ``HttpEdgeTransport``, the gateway's
  ``HttpGatewayTransport`` (its session table), ``HttpEdgeClient`` for tests and tools;
* ``mqtt``  -- through a broker: the edge's ``MqttEdgeTransport``, the gateway's
  ``MqttGatewayTransport``, the one paho bridge both (and the agent's MQTT ingest) use,
  the topic scheme and filter matching;
* ``tcp``   -- a plain TCP stream: the gateway's ``TcpGatewayTransport`` (boards are the
  edge's end, boards/common/uplink.py).

A transport imports only core (``edgeline``) and the shared modules of ``edgeline_host``,
never the agent or the gateway. A gateway end takes the gateway duck-typed: it calls
``gateway.new_connection()`` for a conversation, ``await gateway.process(conn, data,
unit)`` for every chunk of bytes (returning the answer bytes and whether the
conversation is over) and reads ``gateway.session_idle_s`` and ``gateway.rejected``.
An edge end has ``url``, ``start()``, ``close()``, ``new_session()``, ``exchange(body)``
and ``lost_session(error_code)`` (agent/uplink.py drives it) and raises
``TransportError`` with one line when an exchange gets no answer.
"""


class TransportError(Exception):
    """An exchange got no answer: the network, the broker, an HTTP status. One line."""
