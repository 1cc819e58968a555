# The template's two commands: `make demo` and `make test`. Both need only Python 3.11+ and make.
# `make constraints` remakes the tested version set, `make canary` tests the newest releases
# without it, `make release` tags a release (docs/template.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= build/demo
# What pip installs with: the versions tested together. `CONSTRAINTS=` (the canary) ignores them.
CONSTRAINTS := constraints.txt
PIP_FLAGS :=
CANARY := .venv-canary
DRIFT := {{cookiecutter.__package_slug}}/tools/version_drift.py

.PHONY: install demo test lint constraints canary canary-install release clean

install: $(BIN)/.installed

$(BIN)/.installed: requirements-dev.txt $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS)) \
		$(PIP_FLAGS) -r requirements-dev.txt
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

## constraints: remake constraints.txt (and the render's) from the newest releases
constraints: $(BIN)/.installed
	$(BIN)/python tools/constraints.py

## canary: the render matrix on the newest releases, in .venv-canary (constraints ignored)
canary: canary-install
	$(CANARY)/bin/python $(DRIFT) constraints.txt
	CANARY=1 $(CANARY)/bin/python -m pytest tests/test_render_matrix.py -q \
		|| { $(CANARY)/bin/python $(DRIFT) --failed constraints.txt; exit 1; }

canary-install:
	rm -rf $(CANARY)
	$(MAKE) --no-print-directory install VENV=$(CANARY) CONSTRAINTS=

## release: tag HEAD v<version> when CHANGELOG.md and cookiecutter.json agree on the version
release:
	$(PYTHON) tools/release.py

clean:
	rm -rf $(VENV) $(CANARY) build .pytest_cache
