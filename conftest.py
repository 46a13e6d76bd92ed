"""Repository-wide pytest settings.

tests/mp/test_*.py are MicroPython-only files: tests/mp/micropython_test.py (a pytest file,
named so that no ``test_*.py`` glob of the MicroPython runners picks it up) runs them, with
tests/core, under the MicroPython unix port; pytest never collects them directly.
"""
collect_ignore = ["build", "emulator"]
collect_ignore_glob = ["tests/mp/test_*.py", "tests/mp/soak.py", "tests/mp/vfs_scenario.py"]

import os

# The 32-bit lane's npm package: the checkout's tools/mp32 (make venv installs it there),
# for the product's code (edgeline_host.firmware.wasmport) as for tools/mp32test.py.
os.environ.setdefault("EDGELINE_MP32_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools", "mp32"))

try:
    from hypothesis import settings
except ImportError:  # hypothesis is a dev dependency; plain runs do without it
    settings = None

if settings is not None:
    # In CI, property tests draw the same examples every run: a landing is never decided
    # by luck. Random exploration stays the default for developers, and EDGELINE_SOAK
    # runs long random soaks (tests/properties/test_log_model.py).
    settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    if os.environ.get("CI") and not os.environ.get("EDGELINE_SOAK"):
        settings.load_profile("ci")
