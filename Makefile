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

.PHONY: install train evaluate lint test test-fast test-slow format bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,wandb,deepspeed,sweep]"
	touch $@

install: $(VENV)/.installed

train: install  ## python train.py on the embedded default; extra overrides: make train ARGS="representer=soft"
	$(BIN)/python train.py $(ARGS)

evaluate: install  ## python evaluate.py; e.g. make evaluate ARGS="checkpoint=outputs/train/runs/<run>/policy"
	$(BIN)/python evaluate.py $(ARGS)

lint: install  ## ruff: lint and format check (`make format` fixes what it can)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint  ## lint, every test (the slow ones too), then the numerics tests again on the portable (non-SIMD) kernels
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -m numerics $(PYTEST_ARGS)

test-fast: install  ## the tests not marked slow (what a plain `pytest` runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install  ## only the tests marked slow
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install  ## benchmarks, by hand (not in CI); results go to docs/benchmarks.md
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
