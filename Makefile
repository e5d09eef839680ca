# Two targets do everything on a fresh clone:
#   make demo   install, then run the guard offline on the built-in small checkpoints
#   make test   install (vLLM too), then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch; a looser spec would download a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install demo test lint vllm

$(BIN)/.installed: pyproject.toml integrations/langchain/pyproject.toml integrations/llama-index/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]" -e "integrations/langchain[test]" -e "integrations/llama-index[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/qwen3guard demo

vllm:
	bash scripts/ensure_vllm.sh

test: install vllm
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks integrations
