# The template's two commands: `make demo` and `make test`. Both need only Python 3 and make.
# `make release` tags a release (docs/template.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= build/demo

.PHONY: demo test lint release clean

$(BIN)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

## demo: render the defaults, install them in their own venv, drain the sample jobs
demo: $(BIN)/.installed
	$(BIN)/python tools/demo.py --output-dir $(DEMO_DIR)

## test: the template's whole test suite (hooks, render matrix, cruft round trip, demo)
test: $(BIN)/.installed lint
	$(BIN)/python -m pytest tests --durations=15

lint: $(BIN)/.installed
	$(BIN)/ruff check hooks tools tests
	$(BIN)/ruff format --check hooks tools tests

## release: tag HEAD v<version> when CHANGELOG.md and cookiecutter.json agree on the version
release:
	$(PYTHON) tools/release.py

clean:
	rm -rf $(VENV) build .pytest_cache
