"""``edgeline gateway``: one process of store, gateway, HTTP API and transports.

``serve`` builds the ``Gateway`` (gateway.py), its HTTP API (api.py, which carries
``POST /v1/sync``), and attaches the TCP and MQTT transports (transports/) to the API's
aiohttp application, so they start after the gateway and stop before its store closes;
then it runs until SIGINT/SIGTERM. SIGHUP reloads the keys file (``reload_keys``): a
node added is accepted at its next HELLO, one removed is refused at its next; a file
that does not load changes nothing (one line says why). It holds ``<db>.lock`` (dirlock.py) while it runs:
a second gateway on the same store is refused with one line naming the holder.
"""
import asyncio
import logging
import signal

from aiohttp import web

from ..dirlock import DirLock
from ..sdnotify import Notifier
from ..transports.mqtt import attach_mqtt
from ..transports.tcp import attach_tcp
from .api import GatewayApi
from .gateway import Gateway


log = logging.getLogger("edgeline.gateway")


def serve(db_path, keys, host, port, print_fn=print, tcp=None, mqtt=None, topics=None, publish_token=None,
          reload_keys=None):
    """Run the gateway until interrupted; tcp=(host, port) also serves sync over TCP,
    mqtt=(host, port) or (host, port, prefix) through that MQTT broker; topics are the
    cloud-to-edge topics it publishes (topics.load_topics); ``reload_keys()`` gives the
    keys anew at SIGHUP (an exception: they stay as they are)."""
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
    if reload_keys is not None:
        app.on_startup.append(_on_sighup(gw, reload_keys, systemd, print_fn))

    def started(_banner):
        # run_app prints its banner once every site listens (and the transports started
        # with the app): the moment to tell systemd the gateway is ready.
        systemd.notify("READY=1", "STATUS=serving on http://%s:%d, %d node(s)" % (host, port, len(keys)))

    try:
        web.run_app(app, host=host, port=port, print=started, handle_signals=True)
    finally:
        systemd.notify("STOPPING=1")
        lock.release()


def _on_sighup(gw, reload_keys, systemd, print_fn):
    def reload():
        systemd.notify("RELOADING=1")
        try:
            keys = reload_keys()
        except Exception as e:  # noqa: BLE001 - any failure keeps the keys it has
            line = "edgeline gateway: SIGHUP: the keys were not reloaded (the %d node(s) stay): %s" % (
                len(gw.keys), (str(e).splitlines() or ["?"])[0])
            log.error("%s", line)
        else:
            added = sorted(set(keys) - set(gw.keys))
            removed = sorted(set(gw.keys) - set(keys))
            gw.keys = keys
            print_fn("edgeline gateway: SIGHUP: keys reloaded: %d node(s)%s%s" % (
                len(keys), "; added %s" % ", ".join(added) if added else "",
                "; removed %s" % ", ".join(removed) if removed else ""))
        systemd.notify("READY=1")

    async def startup(_app):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    return startup


def _watchdog(systemd):
    async def ctx(_app):
        task = asyncio.ensure_future(systemd.keepalive())
        yield
        systemd.notify("STOPPING=1")
        task.cancel()

    return ctx
