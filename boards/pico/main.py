"""edgeline on a Raspberry Pi Pico (MicroPython RPI_PICO): littlefs2 flash, the RP2040's
temperature sensor, no radio.

Before this file runs the firmware has mounted the littlefs2 file system at / (edgeline
keeps its logs in /data there); edgeline's compiled modules are in /lib, frozen into
the firmware or in /rom; the settings are /edgeline.json (`edgeline firmware config`).

The stock RPI_PICO firmware has no network stack, so the board is a logger: records
stay on flash (bounded by the topic budgets, losses counted) and `edgeline board status`
reads them back over USB. When the firmware has sockets -- a WIZnet W5500-EVB-Pico
build, or the MicroPython unix port, the emulated board -- the same file syncs to the
gateway in /edgeline.json through boards/common/uplink.py.

The RTC restarts at 2021-01-01 on every power-up; the hybrid clock seeded from the log
keeps timestamps ordered across reboots (set the RTC over USB with `mpremote rtc --set`).
"""
import time

import edgeline_app


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


edgeline_app.main(sample, wall_ms, watchdog=watchdog)
