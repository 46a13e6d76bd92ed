"""Repository-wide pytest settings.

tests/mp holds MicroPython-only files: they are run by tests/host/test_micropython.py
under the MicroPython unix port, never collected by pytest directly.
"""
collect_ignore = ["tests/mp", "build", "emulator"]

import os

try:
    from hypothesis import settings
except ImportError:  # hypothesis is a dev dependency; plain runs do without it
    settings = None

if settings is not None:
    # In CI, property tests draw the same examples every run: a landing is never decided
    # by luck. Random exploration stays the default for developers, and EDGELINE_SOAK
    # runs long random soaks (tests/host/test_log_model.py).
    settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    if os.environ.get("CI") and not os.environ.get("EDGELINE_SOAK"):
        settings.load_profile("ci")
