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
