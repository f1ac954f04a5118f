# The README's two commands: `make demo` and `make test` (both create .venv and install).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The distribution is zeroth-optim, installed from this checkout: the bare name `zeroth`
# on PyPI is an unrelated package and is never resolved from the registry.
EXTRAS ?= dev

# Lint covers the package and everything that imports it; the C++/CUDA sources by clang-format.
LINT_PATHS := zeroth tests bench examples docs/conf.py
CSRC       := $(wildcard zeroth/csrc/*.h zeroth/csrc/*.cpp zeroth/csrc/cuda/*.cu zeroth/csrc/cuda/*.cuh)

.PHONY: demo test test-fast test-slow wheel-check lint docs docs-doctest bench install clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/zeroth demo --out zeroth_demo.png

# CI (.ci/run) runs `make test`: lint (ruff, mypy, clang-format), the fast suite, then the
# slow one (`-m slow`: compile-only and long end-to-end runs) as its own step, the docs'
# examples, and the wheel smoke test.
test: lint test-fast test-slow docs-doctest wheel-check

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Build sdist + wheel, twine check, install the wheel non-editable into a fresh venv, smoke test.
wheel-check: $(STAMP)
	PYTHON=$(abspath $(BIN))/python bash .ci/wheel_smoke.sh

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/clang-format --dry-run --Werror $(CSRC)

# The documentation site (Sphinx), warnings as errors; its code examples run by docs-doctest.
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

docs-doctest: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b doctest docs docs/_build/doctest

bench: $(STAMP)
	$(BIN)/python -m pytest bench --benchmark-only -q
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .benchmarks .mypy_cache .ruff_cache docs/_build
