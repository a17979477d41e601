# Two entry points (see README): `make demo` and `make test`. Both create .venv and install what
# they need; re-running them is cheap (pip skips what is already installed).
PYTHON ?= python3.11
VENV   ?= .venv
# The CPU build of torch lies on local disk here; naming it first keeps pip from pulling CUDA.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,ray]" "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python pipelines/demo.py

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out
