"""edgeline on a Raspberry Pi Pico W running CircuitPython 9: FAT (CIRCUITPY) flash,
Wi-Fi through `wifi`/`socketpool`, the RP2040's temperature sensor.

CircuitPython's .mpy format is not MicroPython's, so edgeline is copied as .py sources
into /lib (`edgeline firmware build --profile circuitpython-pico-w`); boot.py next to
this file makes the drive writable for the logs. The settings are /edgeline.json.

Differences from MicroPython met here, each handled in this file or the library:
no `socket` module (an adapter over socketpool below, passed to the uplink), sockets
with `recv_into` but no `recv` (the adapter), no `network.WLAN` (`wifi.radio`), no
`time.ticks_ms` (edgeline_app uses `supervisor.ticks_ms`), `hashlib.new("sha256")`
instead of `hashlib.sha256` (core/edgeline/auth.py), and `rtc.RTC` for the clock.
"""
import time

import edgeline_app

try:
    import wifi
    import socketpool
except ImportError:  # a CircuitPython board without Wi-Fi: log only
    wifi = None
    socketpool = None


class _Socket:
    # What boards/common/uplink.py needs of a socket, over a socketpool.Socket.
    def __init__(self, sock):
        self._s = sock
        self._buf = bytearray(256)

    def settimeout(self, seconds):
        self._s.settimeout(seconds)

    def connect(self, addr):
        self._s.connect(addr)

    def sendall(self, data):
        self._s.sendall(data)

    def recv(self, n):
        k = self._s.recv_into(self._buf, min(n, len(self._buf)))
        return bytes(self._buf[:k])

    def close(self):
        self._s.close()


class _SocketModule:
    # The three names uplink.py uses of the socket module.
    def __init__(self, pool):
        self._pool = pool
        self.SOCK_STREAM = pool.SOCK_STREAM

    def getaddrinfo(self, host, port, family=0, kind=0):
        return self._pool.getaddrinfo(host, port)

    def socket(self):
        return _Socket(self._pool.socket(self._pool.AF_INET, self._pool.SOCK_STREAM))


def wall_ms():
    return time.time() * 1000  # time.time() is whole seconds from the RTC on CircuitPython


def sample(n):
    import microcontroller

    return {"temp_c": round(microcontroller.cpu.temperature, 1)}


def network_up(cfg):
    if wifi is None:
        return False
    if wifi.radio.connected:
        return True
    w = cfg.get("wifi")
    if not w:
        return False
    try:
        wifi.radio.connect(w["ssid"], w["password"], timeout=w.get("connect_timeout_ms", 10000) / 1000)
    except (ConnectionError, OSError) as e:
        print("edgeline: Wi-Fi %s: %s" % (w["ssid"], e))
        return False
    return wifi.radio.connected


def watchdog(cfg):
    from microcontroller import watchdog as wdt
    from watchdog import WatchDogMode

    wdt.timeout = cfg["watchdog_ms"] / 1000
    wdt.mode = WatchDogMode.RESET
    return wdt.feed


def _writable():
    import storage

    return not storage.getmount("/").readonly


if _writable():
    edgeline_app.main(sample, wall_ms, network_up=network_up, watchdog=watchdog,
                      socket_module=_SocketModule(socketpool.SocketPool(wifi.radio)) if wifi else None)
else:
    print("edgeline: CIRCUITPY is read-only (USB owns it; see boot.py): not logging")
