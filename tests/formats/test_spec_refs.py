"""Every test the format specs name as the check of an invariant exists."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_invariant_tests_named_in_specs_exist():
    refs = []
    for spec in glob.glob(os.path.join(ROOT, "docs", "spec", "*.md")):
        text = open(spec, encoding="utf-8").read()
        for path, name in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text):
            refs.append((spec, path, name))
    assert len(refs) >= 10
    for spec, path, name in refs:
        full = os.path.join(ROOT, path)
        assert os.path.exists(full), "%s names %s, which does not exist" % (spec, path)
        if name:
            src = open(full, encoding="utf-8").read()
            assert re.search(r"^def %s\(" % name, src, re.M), "%s names %s::%s, which does not exist" % (spec, path, name)
