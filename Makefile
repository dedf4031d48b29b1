# Two entry points for a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv, install torch==2.13.0 first (the CPU wheel; an unpinned torch pulls CUDA), then the package.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install run test bench jemalloc sandbox

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q torch==2.13.0 -e ".[test]"
	touch $@

install: $(BIN)/.installed

run: install jemalloc sandbox
	$(BIN)/python -m dume_exp +experiment=reasoning resume=false  # recompute even when a finished cell is committed

# Optional and best effort (Debian/Ubuntu as root): the app preloads jemalloc when present (dume_exp/allocator.py);
# with glibc's allocator a long run slows down as its heap fragments.
jemalloc:
	@[ -n "$$(ls /usr/lib/*/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 2>/dev/null)" ] || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q libjemalloc2 || { apt-get update -q && apt-get install -y -q libjemalloc2; }; } >/dev/null 2>&1; } || \
	echo "note: libjemalloc2 is not installed; long runs are slower with glibc's allocator (README, 'Measured')"

# bubblewrap isolates model-written code (HumanEval); without it the app refuses to execute such code unless
# eval.unsafe_code=true, and the sandbox tests that need it are skipped with the reason.
sandbox:
	@command -v bwrap >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }; } >/dev/null 2>&1; } || \
	echo "note: bubblewrap is not installed; generated code cannot be isolated (README, 'Code sandbox')"

test: install sandbox
	$(BIN)/python -m pytest -q

bench: install
	for b in moe router-step add-expert load statistics eval-precision; do $(BIN)/python -m dume_exp.bench $$b || exit 1; done
