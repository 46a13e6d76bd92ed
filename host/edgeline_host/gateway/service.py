"""``edgeline gateway``: one process of store, gateway, HTTP API and transports.

``serve`` builds the ``Gateway`` (gateway.py), its HTTP API (api.py, which carries
``POST /v1/sync``), and attaches the TCP and MQTT transports (transports/) to the API's
aiohttp application, so they start after the gateway and stop before its store closes;
then it runs until SIGINT/SIGTERM. It holds ``<db>.lock`` (dirlock.py) while it runs:
a second gateway on the same store is refused with one line naming the holder.
"""
import asyncio

from aiohttp import web

from ..dirlock import DirLock
from ..sdnotify import Notifier
from ..transports.mqtt import attach_mqtt
from ..transports.tcp import attach_tcp
from .api import GatewayApi
from .gateway import Gateway


def serve(db_path, keys, host, port, print_fn=print, tcp=None, mqtt=None, topics=None, publish_token=None):
    """Run the gateway until interrupted; tcp=(host, port) also serves sync over TCP,
    mqtt=(host, port) or (host, port, prefix) through that MQTT broker; topics are the
    cloud-to-edge topics it publishes (topics.load_topics)."""
    # One gateway per store: a second one is refused (DirInUse) before the store opens.
    lock = DirLock(str(db_path) + ".lock", what=str(db_path)).acquire()
    try:
        gw = Gateway(db_path, keys, topics=topics, publish_token=publish_token)
    except BaseException:
        lock.release()
        raise
    gw.dirlock = lock
    gw.lock_lost = lock.lock_lost  # health: failing once the lock file is gone or replaced
    print_fn("edgeline gateway: %d node(s), store %s, listening on http://%s:%d/v1/sync" % (len(keys), db_path, host, port))
    down = sorted(n for n, t in gw.topics.items() if t.publishes)
    if down:
        print_fn("edgeline gateway: publishing %s on http://%s:%d/v1/topics/<topic>/publish (%s)" % (
            ", ".join(down), host, port, "token required" if publish_token else "loopback clients only"))
    app = GatewayApi(gw).app()
    if tcp is not None:
        attach_tcp(app, gw, tcp[0], tcp[1], print_fn)
    if mqtt is not None:
        attach_mqtt(app, gw, *mqtt, print_fn=print_fn)
    systemd = Notifier()  # Type=notify units (edgeline systemd-unit gateway); nothing without $NOTIFY_SOCKET
    app.cleanup_ctx.append(_watchdog(systemd))

    def started(_banner):
        # run_app prints its banner once every site listens (and the transports started
        # with the app): the moment to tell systemd the gateway is ready.
        systemd.notify("READY=1", "STATUS=serving on http://%s:%d, %d node(s)" % (host, port, len(keys)))

    try:
        web.run_app(app, host=host, port=port, print=started, handle_signals=True)
    finally:
        systemd.notify("STOPPING=1")
        lock.release()


def _watchdog(systemd):
    async def ctx(_app):
        task = asyncio.ensure_future(systemd.keepalive())
        yield
        systemd.notify("STOPPING=1")
        task.cancel()

    return ctx
