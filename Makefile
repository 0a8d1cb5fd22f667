# sglkit: two commands do all the set-up on a fresh machine.
#   make serve  -> a running server on the built-in default model
#   make test   -> creates .venv, installs everything (torch pinned to 2.13.0), runs make lint, then the whole suite
# Developer shortcuts: make lint (ruff check + ruff format --check) and make test-fast (in-process unit tests only,
# about a minute on 2 idle cores).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 30000
PYTEST_ARGS ?=
TEST_PATHS ?= tests notebooks
LINT_PATHS := sglkit tests scripts docs
# make test-fast: no notebooks, no docs build / Binder replay / real servers (marker `integration`, set by path in
# tests/conftest.py), no browser test, nothing slow.
FAST_MARKERS := not slow and not browser and not integration
OFFLINE_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install serve test test-fast lint docs clean

$(STAMP): pyproject.toml constraints.txt requirements-frontend.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -r requirements-frontend.txt
	$(PY) -m sglkit.layers.cpu_kernels  # compiles sglkit's CPU kernels (GEMM, decode attention) for an AVX-512 CPU, once
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m sglkit.launch_server --port $(PORT)

# Lint first (CI runs exactly `make test`), then the whole suite: tests, notebooks (nbval), docs build, browser
# test, Binder replay.
test: $(STAMP) lint
	$(OFFLINE_ENV) $(PY) -m pytest -q --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg $(TEST_PATHS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(OFFLINE_ENV) $(PY) -m pytest -q -m "$(FAST_MARKERS)" tests $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

docs: $(STAMP)
	$(OFFLINE_ENV) $(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
