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

tools: ## helm, kubectl, hadolint, checkov into .tools/ (for the deploy tests)
	PYTHON=$(PYTHON) scripts/install-deploy-tools.sh

manifests: tools ## regenerate deploy/manifests from the charts
	deploy/render-manifests.sh

test: $(STAMP) tools ## run the whole test suite
	$(BIN)/pytest $(ARGS)

unit: $(STAMP) ## run the unit tests only (no processes, no Envoy, no deploy tools; ~1 min)
	$(BIN)/pytest tests/unit $(ARGS)

check: lint test ## what CI runs: lint (ruff, ruff format, mypy --strict), then the whole suite

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

proto: $(STAMP) ## regenerate tap_emulator/_proto from proto/envoy
	$(BIN)/python scripts/generate_proto.py

demo: $(STAMP) tools ## two real Envoys as sidecars with the filter chart's default (ext_proc), backends, the emulator; lists and shows the capture (ARGS="--buffered --keep DIR --relay")
	$(BIN)/python scripts/demo.py $(ARGS)

$(VENV)/.bench: $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,lint,bench]'
	touch $@

# The ext_proc part drives Envoy with nghttp2's h2load (Debian's nghttp2-client).
bench: $(VENV)/.bench ## emulator against this machine's ceilings, Envoy's cost of each tap, forwarding on/off, the page open/closed (~9 min; ARGS go to bench.py, e.g. "--only extproc"; ARGS=--reference refreshes benchmarks/results/reference)
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
	$(BIN)/python benchmarks/bench.py $(ARGS)
	$(BIN)/python benchmarks/forward/throughput.py
	$(BIN)/python benchmarks/web/page_open.py

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := derive naming

fuzz: $(STAMP) ## run each atheris target for FUZZ_SECONDS (default 60); finds go to .fuzz/
	$(BIN)/pip install --quiet -e '.[fuzz]'
	set -e; for target in $(FUZZ_TARGETS); do \
	  mkdir -p .fuzz/$$target; \
	  $(BIN)/python tests/fuzz/$${target}_target.py -max_total_time=$(FUZZ_SECONDS) \
	    -print_final_stats=1 -artifact_prefix=.fuzz/ .fuzz/$$target tests/fuzz/corpus/$$target; \
	done

docs: $(STAMP) ## regenerate docs/settings.md and docs/metrics.md from the code
	$(BIN)/python scripts/generate_docs.py

.PHONY: help venv run tools manifests test unit check lint proto docs demo fuzz bench
