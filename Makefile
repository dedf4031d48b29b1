# Two entry points for a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv, install torch==2.13.0 first (the CPU wheel; an unpinned torch pulls CUDA), then the package.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install run test bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q torch==2.13.0 -e ".[test]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python -m dume_exp +experiment=reasoning

test: install
	$(BIN)/python -m pytest -q

bench: install
	for b in moe router-step add-expert; do $(BIN)/python -m dume_exp.bench $$b || exit 1; done
