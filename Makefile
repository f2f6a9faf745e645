# The documented commands. `make help` lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip takes this torch before the project: here a CPU build from local wheels, on a user's
# machine PyPI's default (CUDA) build. A torch already in the venv is kept. Override e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0

.DEFAULT_GOAL := help
.PHONY: help install test demo lint format bench clean

help: ## list the commands
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[dev,test]"
	touch $@

install: $(VENV)/.installed ## create .venv and install the project with its dev tools

test: install ## run the fast test suite (CPU)
	WANDB_MODE=disabled $(BIN)/python -m pytest

demo: install ## train and evaluate the cascade on generated synthetic cases (CPU, a few minutes)
	$(BIN)/python -m cascade.train +experiment=smoke

lint: install ## check style with ruff
	$(BIN)/ruff check cascade tests
	$(BIN)/ruff format --check cascade tests

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix cascade tests
	$(BIN)/ruff format cascade tests

bench: install ## measure speed and memory, write experiments/bench/
	$(BIN)/python -m cascade.bench

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
