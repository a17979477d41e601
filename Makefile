# Entry points (see README): `make demo`, `make test` and `make e2e` (the search page in a headless browser). Both create .venv and install what
# they need; re-running them is cheap (pip skips what is already installed).
PYTHON ?= python3.11
VENV   ?= .venv
# The CPU build of torch lies on local disk here; naming it first keeps pip from pulling CUDA.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
BIN := $(VENV)/bin

.PHONY: setup demo test e2e bench clean gpu-carry

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The package alone (what `make demo` needs); the test and Ray extras only for `make test` / `make e2e`.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e . "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test,ray]" "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python pipelines/demo.py

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

# Debian's chromium driven by Playwright (never `playwright install`: no browser download).
CHROMIUM ?= /usr/bin/chromium
e2e: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -e ".[test,serve,e2e]" "$(TORCH_SPEC)"
	test -x $(CHROMIUM) || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m pytest -q -m e2e tests/test_page_e2e.py
	@echo "screenshot of the search page: $(CURDIR)/out/e2e-search-page.png"

# The 64 MiB `.gpu/` folder that benchmarks/gpu.py needs on a bare GPU machine (BENCHMARKS.md, GPU).
gpu-carry: setup
	$(BIN)/python benchmarks/gpu_prep.py --out .gpu

clean:
	rm -rf $(VENV) out
