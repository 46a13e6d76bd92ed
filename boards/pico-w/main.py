"""edgeline on a Raspberry Pi Pico W (MicroPython RPI_PICO_W): littlefs2 flash, Wi-Fi
(CYW43439), NTP, the RP2040's temperature sensor.

Before this file runs the firmware has mounted the littlefs2 file system at / (edgeline
keeps its logs in /data there); edgeline's compiled modules are in /lib, frozen into
the firmware or in /rom; the settings are /edgeline.json (`edgeline firmware config`,
with wifi.country set: the radio needs its regulatory domain).
On the MicroPython unix port -- the emulated board -- there is no `network`, ADC or
watchdog: the host's network is used and the reading is simulated.
"""
import time

import edgeline_app
from wlan import WlanLink


def wall_ms():
    return time.time_ns() // 1000000  # rp2's epoch is 1970


try:
    from machine import ADC

    _adc = ADC(4)  # the RP2040's internal temperature sensor

    def sample(n):
        volts = _adc.read_u16() * 3.3 / 65535
        return {"temp_c": round(27 - (volts - 0.706) / 0.001721, 1)}

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
