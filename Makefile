# Two commands for a fresh machine: `make run` (set up, then run the default recipe)
# and `make test` (set up, then run the tests). Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RECIPE ?= recipes/quickstart.yaml
# exactly these: the CUDA builds that run on CPU too (see README)
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup run test test-fast lint typecheck bench docs docs-serve clean

# one line per step; pip quiet (its errors still show), no version nag
PIP = $(BIN)/pip install --quiet --disable-pip-version-check --no-warn-script-location

$(BIN)/sslmed: pyproject.toml
	@echo "[1/4] virtual environment in $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip
	@echo "[2/4] torch and torchvision ($(TORCH))"
	@$(PIP) $(TORCH)
	@echo "[3/4] sslmed and its development tools (editable)"
	@$(PIP) -e '.[dev,docs,parquet]' $(TORCH)
	@echo "[4/4] the example plugin sslmed-clahe (editable)"
	@$(PIP) -e plugins/sslmed-clahe
	@touch $(BIN)/sslmed
	@echo "ready: $(BIN)/sslmed (try: make run)"

setup: $(BIN)/sslmed

# fetch the recipe's datasets first (left alone when present; offline: a warning, and
# `sslmed run` names what is missing)
run: setup
	$(BIN)/sslmed data fetch --recipe $(RECIPE) --skip-unreachable
	$(BIN)/sslmed run $(RECIPE)

test: setup
	$(BIN)/python -m pytest

lint: setup typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the [tool.mypy] settings in pyproject.toml: strict on sslmed/core, the default checks elsewhere
typecheck: setup
	$(BIN)/mypy

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python bench/throughput.py

docs: setup
	$(BIN)/mkdocs build --strict

docs-serve: setup
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

clean:
	rm -rf runs site .pytest_cache
