# Quick start: `make demo` (set up + run the embedded default job), `make test` (set up + run the tests).
# The set-up is idempotent: a local .venv, torch from this machine's wheels, then the package in editable mode.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.transferkit-installed

.PHONY: setup demo test test-all bench-accuracy clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first, pinned to the releases available as local wheels here (see DEVELOPERS.md);
	# pyproject.toml itself accepts any torch>=2.4 so users elsewhere get a current release.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install -q -e ".[all,test]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/transferkit demo

test: setup
	sh scripts/install-chromium.sh
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	sh scripts/install-chromium.sh
	$(PY) -m pytest -q

bench-accuracy: setup
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf runs .pytest_cache
