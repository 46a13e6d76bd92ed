"""Every package under core/ and host/ is listed in pyproject.toml, so a non-editable
install (a wheel, a Pi Zero) carries it."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_package_is_installed():
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    listed = set(re.search(r"^packages = \[(.*)\]", text, re.M).group(1).replace('"', "").replace(" ", "").split(","))
    found = set()
    for top, name in (("core", "edgeline"), ("host", "edgeline_host")):
        base = os.path.join(ROOT, top)
        for d, _dirs, files in os.walk(os.path.join(base, name)):
            if "__init__.py" in files:
                found.add(os.path.relpath(d, base).replace(os.sep, "."))
    assert found <= listed, "not in pyproject.toml packages: %s" % sorted(found - listed)
