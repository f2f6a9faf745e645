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
	$(BIN)/pip install -e ".[dev,test,synthesis]"
	touch $@

install: $(VENV)/.installed ## create .venv and install the project with its dev, test and synthesis extras

test: install ## run the fast test suite (CPU)
	WANDB_MODE=disabled $(BIN)/python -m pytest

# The demo's run folder, and a real case it is tested on when one is there (BraTS 2020 naming).
DEMO_RUN ?= outputs/demo
REAL_CASE ?= ../shared/data/real/TCGA-FG-6692

demo: install ## train the cascade on generated MRI-like cases at full resolution (CPU, ~13 min), test it on REAL_CASE
	$(BIN)/python -m cascade.train +experiment=demo hydra.run.dir=$(DEMO_RUN)
	@if [ -d "$(REAL_CASE)" ]; then \
		$(BIN)/python -m cascade.predict --checkpoint $(DEMO_RUN)/cascade.ckpt --input $(REAL_CASE) \
			--output $(DEMO_RUN)/real --overlays --overwrite && \
		$(BIN)/python -m cascade.evaluate --predictions $(DEMO_RUN)/real --labels $(REAL_CASE); \
	fi

lint: install ## check style with ruff
	$(BIN)/ruff check cascade tests
	$(BIN)/ruff format --check cascade tests

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix cascade tests
	$(BIN)/ruff format cascade tests

bench: install ## measure speed and memory, write experiments/bench/
	$(BIN)/python -m experiments.bench

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
