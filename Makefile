# sglkit: two commands do all the set-up on a fresh machine.
#   make serve  -> a running server on the built-in default model
#   make test   -> creates .venv, installs everything (torch pinned to 2.13.0), runs the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 30000
PYTEST_ARGS ?=
TEST_PATHS ?= tests notebooks

.PHONY: install serve test lint docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m sglkit.launch_server --port $(PORT)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg $(TEST_PATHS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check sglkit tests

docs: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
