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
MP32   := tools/mp32/node_modules/.package-lock.json

.PHONY: demo demo-log test lint bench venv clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) tools/lint_stubs.py --install
	touch $(STAMP)

# The 32-bit MicroPython lane (tests/firmware/test_mp32.py): MicroPython's WebAssembly
# port from npm, pinned in tools/mp32/package-lock.json. Without node/npm the lane's
# tests skip with the reason (fail under EDGELINE_REQUIRE_INTEGRATION=1).
$(MP32): tools/mp32/package.json tools/mp32/package-lock.json
	@if command -v npm >/dev/null; then cd tools/mp32 && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the 32-bit MicroPython lane will be skipped"; fi

venv: $(STAMP) $(MP32)

demo: $(STAMP)
	$(VENV)/bin/edgeline fleet-demo

demo-log: $(STAMP)
	$(VENV)/bin/edgeline demo

test: $(STAMP) $(MP32)
	$(VENV)/bin/pytest -q tests

lint: $(STAMP)
	$(PY) tools/lint_stubs.py

bench: $(STAMP)
	$(PY) tools/bench/run_all.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
