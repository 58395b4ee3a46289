# Checks for contributors; CI (.ci/run) runs the same `make lint` before the tests.
#
#   make lint    ruff (lint + import order) and mypy (types): about a minute cold, seconds warm
#   make test    the test suite, doctests included (a few minutes on 2 cores)
#   make check   both: run it before opening a pull request
#   make fix     let ruff fix what it can (import order, pyupgrade), then review the diff
#
# Use the environment the package is installed in (pip install -e ".[dev]"), or PYTHON=...
PYTHON ?= python

RUFF_PATHS := lightning_critical tests examples benchmarks
MYPY_ARGS :=  # no paths: mypy checks the `files` of [tool.mypy] in pyproject.toml (the same four)


.PHONY: check lint ruff mypy test fix

check: lint test

lint: ruff mypy

ruff:
	$(PYTHON) -m ruff check $(RUFF_PATHS)

mypy:
	$(PYTHON) -m mypy $(MYPY_ARGS)

test:
	$(PYTHON) -m pytest

fix:
	$(PYTHON) -m ruff check --fix $(RUFF_PATHS)
