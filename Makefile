# The two commands of the README: `make tour` (the main job) and `make test` (lint, types, tests).
# Each creates or refreshes the virtual environment .venv with the pinned CPU build of torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: tour test venv clean

$(BIN)/.kldiv-installed: pyproject.toml setup.py src/kldiv/_kernels.c Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" "$(TORCH_PIN)"
	touch $@

venv: $(BIN)/.kldiv-installed

tour: venv
	$(BIN)/kldiv tour --out runs/tour

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .hypothesis
