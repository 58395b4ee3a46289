# Checks for contributors; CI (.ci/run) runs the same `make lint` before the tests.
#
#   make lint    ruff (lint + import order) and mypy (types): about a minute cold, seconds warm
#   make test    the test suite, doctests included (a few minutes on 2 cores)
#   make docs    the HTML docs (API reference from the docstrings + docs/*.md) into docs/_build/html;
#                every Sphinx warning is an error; needs the docs extra (pip install -e ".[docs]")
#   make check   lint and test: run it before opening a pull request
#   make fix     let ruff fix what it can (import order, pyupgrade), then review the diff
#
# Use the environment the package is installed in (pip install -e ".[dev]"), or PYTHON=...
PYTHON ?= python
DOCS_OUT ?= docs/_build/html

RUFF_PATHS := lightning_critical tests examples benchmarks docs/conf.py
MYPY_ARGS :=  # no paths: mypy checks the `files` of [tool.mypy] in pyproject.toml (the same four)


.PHONY: check lint ruff mypy test fix docs

check: lint test

lint: ruff mypy

ruff:
	$(PYTHON) -m ruff check $(RUFF_PATHS)

mypy:
	$(PYTHON) -m mypy $(MYPY_ARGS)

test:
	$(PYTHON) -m pytest

# -E: read every source again (a cached page would hide its warnings); -W: warnings are errors.
docs:
	$(PYTHON) -m sphinx -E -W --keep-going -q -b html docs $(DOCS_OUT)

fix:
	$(PYTHON) -m ruff check --fix $(RUFF_PATHS)
