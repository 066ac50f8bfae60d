# The two commands of the README: `make tour` (the main job) and `make test` (lint, types, tests).
# Each creates or refreshes the virtual environment .venv with the pinned build of torch.
# Where pip would fetch torch's CUDA build (Linux, from PyPI), take the CPU build from PyTorch's own index:
#   make tour TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
TORCH_INDEX ?=

.PHONY: tour test venv clean

$(BIN)/.kldiv-installed: pyproject.toml setup.py src/kldiv/_kernels.c Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_PIN)"
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
