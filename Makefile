# Two targets do everything on a fresh clone:
#   make demo        install, then run the guard offline on the built-in small checkpoints
#   make test        install (vLLM and the interop venv too), then run the whole test suite
# and, for development:
#   make test-fast   install, then run every test that needs no vLLM (no vLLM install)
#   make lint        ruff (code, tests, scripts, cookbook notebooks) and mypy (the three packages)
#   make docs        the reference site (mkdocs.yml), built with --strict into site/
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch; a looser spec would download a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PIP_INSTALL := $(BIN)/pip install -q --progress-bar off --disable-pip-version-check

.PHONY: install demo test test-fast lint docs vllm interop

$(BIN)/.installed: pyproject.toml integrations/langchain/pyproject.toml integrations/llama-index/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) "$(TORCH)"
	$(PIP_INSTALL) -e ".[dev]" -e "integrations/langchain[test]" -e "integrations/llama-index[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/qwen3guard demo

vllm:
	bash scripts/ensure_vllm.sh

# any-guardrail with transformers < 5 in its own venv, for the interop test (issue 12).
interop: install
	bash scripts/ensure_interop.sh >/dev/null

test: install vllm interop
	QWEN3GUARD_REQUIRE_INTEROP=1 $(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not vllm"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check cookbook
	$(BIN)/mypy

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# sdists and wheels of the three packages: twine check, no test tooling, and a smoke test of the
# wheels installed (not the checkout) in a new virtualenv.
wheels: install
	$(BIN)/python scripts/check_wheels.py --quiet --smoke
