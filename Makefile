# hostwatch: `make run` and `make test` set everything up on a fresh Debian 12 (as root) and run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-unit lint bench peers venv assets clean

venv: $(VENV)/.installed assets

# the status page's chart library: a pinned npm package, integrity-checked (packaging/assets.lock)
assets:
	bash packaging/assets.sh

$(VENV)/.installed: pyproject.toml
	@# Debian ships venv's pip bootstrap separately (python3-venv): install it when venv fails
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "installing python3-venv"; rm -rf $(VENV); \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: venv
	$(BIN)/hostwatch run

peers:
	bash tests/peers/install.sh
	bash tests/peers/install_browser.sh

test: venv peers packages-deps
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check agent collectors outputs tests
	$(BIN)/ruff format --check agent collectors outputs tests
	@# the plugin import rules (README, Development); tests/unit/test_import_rules.py runs it too
	$(BIN)/python -m tests.import_rules

bench: venv peers
	$(BIN)/python -m tests.bench.run_all

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

include packaging/packages.mk
