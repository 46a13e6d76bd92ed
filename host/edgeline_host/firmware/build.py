"""What goes onto a board, per profile: compiled modules, main.py, settings, manifest, ROMFS.

Theory of operation
-------------------
A board runs three kinds of code, and this module decides where each comes from:

* the **library** -- edgeline's core (core/edgeline, less the CPython-only fast paths)
  and the board-side modules of boards/common (the uplink, the sampling loop, Wi-Fi
  for boards with a radio). It is compiled to ``.mpy`` for MicroPython, or left as
  ``.py`` sources for CircuitPython, whose ``.mpy`` format is not MicroPython's;
* the board's **main.py** (and ``boot.py`` on CircuitPython), copied as source: the
  firmware runs main.py from the file system after boot;
* its **settings**, ``edgeline.json`` (profiles.board_config).

The library reaches the board one of three ways (docs/boards.md): as files in /lib
(``build``; copy with mpremote), frozen into a firmware image (``write_manifest``: a
manifest.py for MicroPython's build), or as a ROMFS image (``build_romfs_image``; for
firmware with a ROMFS partition, deployed with ``mpremote romfs deploy``). Frozen and
ROMFS code runs in place from flash; /lib .mpy files are loaded into RAM at import.
"""
import json
import os
import shutil
import tempfile

import edgeline

from . import mpy
from .profiles import BOARDS_DIR, ProfileError

# The core's sources wherever edgeline is installed (the repository, or site-packages);
# the board-side modules beside the profiles (boards/common, shipped as package data).
CORE_DIR = os.path.dirname(os.path.abspath(edgeline.__file__))
COMMON_DIR = os.path.join(BOARDS_DIR, "common")
# CPython-only: log.py imports it only when not on MicroPython/CircuitPython.
CORE_SKIP = ("fastpath.py",)


def library_sources(profile):
    """[(source path, path in the library)] for the profile: the core package and the
    board-side common modules it needs."""
    out = []
    for name in sorted(os.listdir(CORE_DIR)):
        if name.endswith(".py") and name not in CORE_SKIP:
            out.append((os.path.join(CORE_DIR, name), "edgeline/" + name))
    common = ["edgeline_app.py", "uplink.py"]
    if profile["network"]["kind"] == "wlan":
        common.append("wlan.py")
    for name in common:
        out.append((os.path.join(COMMON_DIR, name), name))
    return out


def _board_files(profile):
    names = ["main.py"]
    if profile["runtime"] == "circuitpython":
        names.insert(0, "boot.py")
    return [(os.path.join(profile["dir"], n), n) for n in names]


def _need_mcu(profile):
    if profile["runtime"] not in ("micropython", "circuitpython"):
        raise ProfileError("%s is a %s profile: nothing to compile; see %s/main.py"
                           % (profile["name"], profile["runtime"], os.path.join("boards", os.path.basename(profile["dir"]))))


def compile_library(profile, lib_dir, source=False):
    """The library into lib_dir: .mpy files (MicroPython) or .py sources (source=True,
    and always for CircuitPython). Returns {path in library: bytes}."""
    _need_mcu(profile)
    if profile["runtime"] == "circuitpython":
        source = True
    sizes = {}
    for src, rel in library_sources(profile):
        dst = os.path.join(lib_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if source:
            shutil.copyfile(src, dst)
        else:
            dst = dst[:-3] + ".mpy"
            rel = rel[:-3] + ".mpy"
            mpy.compile_file(src, dst, profile["firmware"]["mpy_arch"])
        sizes[rel] = os.path.getsize(dst)
    return sizes


def build(profile, out_dir, config=None, source=False):
    """A tree to copy onto the board's file system as it is: lib/ (the library),
    main.py (boot.py), and edgeline.json when ``config`` (a dict) is given. Returns the
    size report (also written to out_dir/sizes.json, which is not for the board)."""
    _need_mcu(profile)
    os.makedirs(out_dir, exist_ok=True)
    sizes = compile_library(profile, os.path.join(out_dir, "lib"), source)
    for src, rel in _board_files(profile):
        shutil.copyfile(src, os.path.join(out_dir, rel))
    if config is not None:
        with open(os.path.join(out_dir, "edgeline.json"), "w") as f:
            json.dump(config, f, indent=1, sort_keys=True)
            f.write("\n")
    report = size_report(profile, sizes)
    with open(os.path.join(out_dir, "sizes.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")
    return report


def size_report(profile, sizes):
    core = sum(n for rel, n in sizes.items() if rel.startswith("edgeline/"))
    return {
        "profile": profile["name"],
        "format": ".py" if any(rel.endswith(".py") for rel in sizes) else ".mpy",
        "core_bytes": core,
        "library_bytes": sum(sizes.values()),
        "files": dict(sorted(sizes.items())),
    }


def build_romfs_image(profile, image_path):
    """The library as a ROMFS image; a board mounts it at /rom, and /rom is on sys.path."""
    _need_mcu(profile)
    if profile["runtime"] != "micropython":
        raise ProfileError("%s: ROMFS is a MicroPython feature; CircuitPython gets .py sources" % profile["name"])
    with tempfile.TemporaryDirectory() as tmp:
        sizes = compile_library(profile, tmp)
        mpy.build_romfs(tmp, image_path)
    report = size_report(profile, sizes)
    report["image_bytes"] = os.path.getsize(image_path)
    return report


_MANIFEST = '''# Freeze edgeline into a MicroPython firmware image for the {name} profile
# ({title}).
# Written by `edgeline firmware manifest --profile {name}`; the sources it names are in
# modules/ beside it. Build from a MicroPython checkout (v{min_version} or newer):
#
#   make -C ports/{port} BOARD={board} FROZEN_MANIFEST={manifest_path}
#
# then flash the firmware and copy only main.py and edgeline.json to the board:
#   mpremote cp main.py edgeline.json :
# Frozen modules run in place from flash: nothing of edgeline's code is loaded into RAM.

# Everything the board's stock firmware freezes (boot scripts, network helpers, ...).
include("{base_manifest}")

package("edgeline", files={core_files!r}, base_path="modules", opt=1)
{modules}'''


def write_manifest(profile, out_dir):
    """out_dir/manifest.py plus the sources it freezes (out_dir/modules), self-contained
    so the folder can move to the machine that builds the firmware."""
    _need_mcu(profile)
    if profile["runtime"] != "micropython":
        raise ProfileError("%s: freezing is for MicroPython firmware; CircuitPython boards get .py sources"
                           % profile["name"])
    mod_dir = os.path.join(out_dir, "modules")
    core_files = []
    modules = []
    for src, rel in library_sources(profile):
        dst = os.path.join(mod_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
        if rel.startswith("edgeline/"):
            core_files.append(rel[len("edgeline/"):])
        else:
            modules.append('module("%s", base_path="modules", opt=1)\n' % rel)
    path = os.path.join(out_dir, "manifest.py")
    fw = profile["firmware"]
    with open(path, "w") as f:
        f.write(_MANIFEST.format(name=profile["name"], title=profile["title"], min_version=fw["min_version"],
                                 port=fw["port"], board=fw["board"], manifest_path=os.path.abspath(path),
                                 base_manifest=fw["base_manifest"], core_files=core_files,
                                 modules="".join(modules)))
    return path
