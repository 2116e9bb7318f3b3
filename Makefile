# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
# torch is pinned through constraints.txt to the CPU build on this machine's disk (no multi-GB CUDA wheel).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --no-cache-dir -c constraints.txt
ARGS ?=
PYTEST_ARGS ?=
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install train evaluate test test-slow lint format bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,wandb]"
	touch $@

install: $(VENV)/.installed

train: install  ## python train.py on the embedded default; extra overrides: make train ARGS="representer=soft"
	$(BIN)/python train.py $(ARGS)

evaluate: install  ## python evaluate.py; e.g. make evaluate ARGS="checkpoint=outputs/train/runs/<run>/policy"
	$(BIN)/python evaluate.py $(ARGS)

test: install  ## lint, format check, fast tests; the numerics tests once more on the portable (non-SIMD) kernels
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -m numerics $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install  ## benchmarks, by hand (not in CI); results go to docs/benchmarks.md
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
