# Two entry points, each sets itself up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
EXTRAS := train,onnx,openvino,hub,dev

.PHONY: venv demo test docs clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' '$(TORCH)'
	touch $@

demo: venv
	$(VENV)/bin/edge-electra demo --out build

test: venv
	$(PY) -m pytest -q

# Regenerate README.md's targets table and CLI reference from targets/ and the click commands.
docs: venv
	$(PY) -m edge_electra.tools.docs README.md

clean:
	rm -rf build .pytest_cache

# An emulated arm64 device on 127.0.0.1 (device/README.md). Needs root; the root file system is
# built once into a cache outside the checkout ($EDGE_ELECTRA_DEVICE_CACHE).
DEVICE := device/arm64.sh

.PHONY: device-arm64 device-test

device-arm64:
	$(DEVICE) build
	$(DEVICE) start

# Runs the tests marked `device` against it; stops it afterwards (tests failing or not) unless it
# was already running, and exits with pytest's status.
device-test: venv
	$(DEVICE) build
	@if $(DEVICE) status >/dev/null 2>&1; then started=; else $(DEVICE) start || exit $$?; started=1; fi; \
	eval "$$($(DEVICE) env)"; \
	$(PY) -m pytest -q -m device; rc=$$?; \
	if [ -n "$$started" ]; then $(DEVICE) stop; fi; \
	exit $$rc
