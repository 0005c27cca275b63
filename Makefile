# Two commands on a fresh machine: `make sweep` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/sweep_tiny

$(BIN)/.installed: requirements.txt requirements-test.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-test.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

venv: $(BIN)/.installed

sweep: venv  ## the main job: the built-in tiny scaling sweep on CPU
	JAX_PLATFORMS=cpu $(BIN)/python -m vlm_jax.main --config=configs/sweep_tiny.py --workdir=$(WORKDIR)

demo: venv  ## tiny LLaVA-shaped model on one image and prompt
	JAX_PLATFORMS=cpu $(BIN)/python -m vlm_jax.demo

test: venv  ## the default test suite (README states its time and disk)
	$(BIN)/ruff check vlm_jax tests configs launch
	$(BIN)/python -m pytest -q -n 2 tests

test-slow: venv
	$(BIN)/python -m pytest -q -m slow tests

test-colab: venv  ## the notebooks that train a model (colabs/quickstart, colabs/pruning)
	$(BIN)/python -m pytest -q -m colab tests/test_colab.py

.PHONY: venv sweep demo test test-slow test-colab
