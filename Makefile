# tap-emulator: every task has one target. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z][a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# Two install levels in one virtualenv: the product alone (what `make run` needs, and what
# the image ships: no xds-protos), and the product with its test and lint tools.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.product: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $@

venv: $(STAMP) ## create .venv with the package, its test and lint tools

run: $(VENV)/.product ## run the emulator with embedded defaults (port 9000, files in /tmp); ARGS="..." adds flags
	$(BIN)/tap-emulator serve $(ARGS)

test: $(STAMP) ## run the whole test suite
	$(BIN)/pytest $(ARGS)

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

proto: $(STAMP) ## regenerate tap_emulator/_proto from proto/envoy
	$(BIN)/python scripts/generate_proto.py

.PHONY: help venv run test lint proto
