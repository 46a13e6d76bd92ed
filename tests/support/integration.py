"""What integration tests do when a real binary they need is missing."""
import os
import shutil

import pytest

REQUIRED = os.environ.get("EDGELINE_REQUIRE_INTEGRATION") == "1"


def need_binary(name, why):
    """Path of executable `name`; skip (or fail under EDGELINE_REQUIRE_INTEGRATION=1)."""
    import sys

    local = os.path.join(os.path.dirname(sys.executable), name)
    path = local if os.path.exists(local) else shutil.which(name)
    if path:
        return path
    msg = "%s not found: %s" % (name, why)
    if REQUIRED:
        pytest.fail(msg + " (EDGELINE_REQUIRE_INTEGRATION=1 forbids skipping)")
    pytest.skip(msg)
