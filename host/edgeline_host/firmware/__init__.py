"""Firmware and deployment tooling: board profiles, compiling edgeline for a board,
freezing manifests, ROMFS images, and a profile's board emulated on the MicroPython
unix port (`edgeline firmware ...`; docs/boards.md)."""
