"""Repository-wide pytest settings.

tests/mp holds MicroPython-only files: they are run by tests/host/test_micropython.py
under the MicroPython unix port, never collected by pytest directly.
"""
collect_ignore = ["tests/mp", "build", "emulator"]
