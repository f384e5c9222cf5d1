# `make demo` and `make test` set up .venv themselves; both are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without an NVIDIA GPU, install the CPU build of torch before anything asks for plain `torch`
# (which would pull a multi-GB CUDA build). Override, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/raylm demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo
