# edgeline: two commands do everything (see README).
#   make demo   the main job on embedded defaults: a gateway, two agents and a
#               MicroPython board through an outage and a SIGKILL (make demo-log: the
#               ring log alone)
#   make test   the whole test suite (CPython + MicroPython); it includes
#               make lint: core/ against the rp2, esp32 and CircuitPython stubs
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The 32-bit lane's npm package for this checkout (the tests and tools/mp32test.py use it;
# an installed edgeline uses a per-user cache instead: docs/boards.md, "The 32-bit lane").
export EDGELINE_MP32_DIR ?= $(CURDIR)/tools/mp32

.PHONY: demo demo-log test lint bench venv clean mp32

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) tools/lint_stubs.py --install
	touch $(STAMP)

# The 32-bit MicroPython lane (tests/firmware/test_mp32.py, `edgeline firmware sizes`):
# MicroPython's WebAssembly port from npm, pinned by host/edgeline_host/firmware/mp32/
# package-lock.json, installed into tools/mp32 with npm ci by the product's own installer
# (nothing to do when it is up to date). Without node/npm the lane's tests skip with
# the reason (fail under EDGELINE_REQUIRE_INTEGRATION=1).
mp32: $(STAMP)
	@$(PY) -m edgeline_host.firmware.wasmport $(EDGELINE_MP32_DIR) >/dev/null || \
	echo "the 32-bit MicroPython lane will be skipped"

venv: $(STAMP) mp32

demo: $(STAMP)
	$(VENV)/bin/edgeline fleet-demo

demo-log: $(STAMP)
	$(VENV)/bin/edgeline demo

test: $(STAMP) mp32
	$(VENV)/bin/pytest -q tests

lint: $(STAMP)
	$(PY) tools/lint_stubs.py

bench: $(STAMP)
	$(PY) tools/bench/run_all.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
