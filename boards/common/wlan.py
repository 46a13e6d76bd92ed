"""Wi-Fi station and NTP for the MicroPython boards that have a radio (ESP32, ESP32-S3,
Pico W), shared by their main.py.

``WlanLink().up(cfg)`` never blocks for long: the first call starts joining the network
in ``cfg["wifi"]`` and later calls report whether it has joined (the caller retries with
backoff, and sampling goes on meanwhile); a failed join (wrong password, no access
point) is started again on the next call. ``set_clock()`` sets the RTC from NTP once
the link is up and says whether it did. On the MicroPython unix port (the emulated
board) there is no ``network`` module: the host's network is already up, ``up()``
answers True and the clock is the host's.
"""
try:
    import network
except ImportError:
    network = None


class WlanLink:
    def __init__(self, say=print):
        self.say = say
        self.wlan = None

    def up(self, cfg):
        if network is None:
            return True
        wifi = cfg.get("wifi")
        if not wifi:
            return False
        w = self.wlan
        if w is None:
            if "country" in wifi and hasattr(network, "country"):
                network.country(wifi["country"])
            w = network.WLAN(network.STA_IF)
            w.active(True)
            self.wlan = w
        if w.isconnected():
            return True
        if w.status() != network.STAT_CONNECTING:
            self.say("edgeline: joining Wi-Fi %s" % wifi["ssid"])
            w.connect(wifi["ssid"], wifi["password"])
        return False

    def set_clock(self, cfg):
        if network is None:
            return True
        try:
            import ntptime

            ntptime.settime()
            return True
        except (ImportError, OSError, OverflowError) as e:
            self.say("edgeline: NTP failed: %s" % e)
            return False
