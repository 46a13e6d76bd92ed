"""edgeline on an ESP32 (MicroPython ESP32_GENERIC): littlefs2 flash, Wi-Fi, NTP, the
chip's temperature sensor.

Before this file runs the firmware has mounted the littlefs2 partition at / (edgeline
keeps its logs in /data there); edgeline's compiled modules are in /lib, frozen into
the firmware or in /rom; the settings are /edgeline.json (`edgeline firmware config`).
On the MicroPython unix port -- the emulated board -- there is no `network`, `esp32` or
`machine.WDT`: the host's network is used and the reading is simulated.
"""
import time

import edgeline_app
from wlan import WlanLink

# The ESP32's time() counts from 2000-01-01; edgeline's timestamps are Unix ms.
_EPOCH_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0


def wall_ms():
    return time.time_ns() // 1000000 + _EPOCH_MS


try:
    import esp32

    def sample(n):
        # raw_temperature() is the die sensor in degrees Fahrenheit (uncalibrated).
        return {"temp_c": round((esp32.raw_temperature() - 32) / 1.8, 1)}

except ImportError:

    def sample(n):
        return {"temp_c": 20 + (n % 50) / 10}


def watchdog(cfg):
    try:
        from machine import WDT
    except ImportError:
        return None
    return WDT(timeout=cfg["watchdog_ms"]).feed


link = WlanLink()
edgeline_app.main(sample, wall_ms, network_up=link.up, set_clock=link.set_clock, watchdog=watchdog)
