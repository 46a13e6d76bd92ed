"""Which packages the wheel carries; everything else about the project is in pyproject.toml.

Two source roots make the importable packages: core/edgeline and host/edgeline_host. Every
package under them is found here, so a new subpackage (edgeline_host.transports, ...) is in
the wheel without a list to keep up to date (tests/system/test_wheel.py checks the wheel).

A third folder is data the product reads at run time: boards/ (each profile.json, each
board's main.py and settings, boards/common's board-side modules), which `edgeline firmware`
and `edgeline fleet-demo` compile and copy onto boards. It ships as the data package
``edgeline_host.boards``, so an installed edgeline finds it beside its own code
(edgeline_host.firmware.profiles.BOARDS_DIR). pyproject.toml's discovery cannot map a
folder outside host/ into edgeline_host, hence this file.

The 32-bit lane (edgeline_host/firmware/wasmport.py) ships its node runner and the npm
lock that pins MicroPython's WebAssembly port as package data of edgeline_host.firmware
(firmware/mp32/); the npm package itself is installed on first use into a per-user cache.
"""
import warnings

from setuptools import find_packages, setup

# boards/esp32, boards/common, ... hold .py files, so setuptools takes them for packages
# left out of `packages` and warns; they are data (sources compiled for and copied onto
# boards), shipped by package_data below.
warnings.filterwarnings("ignore", message=r"Package 'edgeline_host\.boards\.")
# firmware/mp32 holds the 32-bit lane's node runner and npm lock: data too, no package.
warnings.filterwarnings("ignore", message=r"Package 'edgeline_host\.firmware\.mp32'")

PACKAGE_DIR = {"edgeline": "core/edgeline", "edgeline_host": "host/edgeline_host", "edgeline_host.boards": "boards"}
BOARD_FILES = ["README.md", "*/*.json", "*/*.py", "*/*.yaml", "*/*.env"]
LANE32_FILES = ["mp32/run.mjs", "mp32/package.json", "mp32/package-lock.json"]

setup(
    package_dir=PACKAGE_DIR,
    packages=find_packages("core", include=["edgeline", "edgeline.*"])
    + find_packages("host", include=["edgeline_host", "edgeline_host.*"])
    + ["edgeline_host.boards"],
    package_data={"edgeline_host.boards": BOARD_FILES, "edgeline_host.firmware": LANE32_FILES},
)
