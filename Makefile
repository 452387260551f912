# skillcoach: `make up` for a running stack, `make test` for the suite, `make check` for CI.
# Everything runs from the project venv, which bootstraps itself from pyproject.toml.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when pyproject.toml changes (the stamp is newer than it otherwise).
STAMP := $(VENV)/.installed
REPLICAS ?= 1

.PHONY: help venv .venv up down status scale services test lint typecheck check bench bench-check

help:
	@echo "make up [REPLICAS=N]  start PostgreSQL, PgBouncer, Redis and the API; print URL, key, curl"
	@echo "make down             stop what 'make up' started (data is kept)"
	@echo "make status           show each component of the stack"
	@echo "make scale REPLICAS=N change the replica count of the running stack (pools resized)"
	@echo "make test             ensure services, run the test suite"
	@echo "make check            lint, typecheck, test (what .ci/run does)"
	@echo "make bench            seed/train/inference benchmark -> loadtests/results, docs/benchmarks.md"
	@echo "make bench-check      throughput/p99 ratios vs loadtests/baseline.json (a few minutes)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv .venv: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/skillcoach stack up --replicas $(REPLICAS)

down: $(STAMP)
	$(VENV)/bin/skillcoach stack down

status: $(STAMP)
	$(VENV)/bin/skillcoach stack status

scale: $(STAMP)
	$(VENV)/bin/skillcoach stack scale --replicas $(REPLICAS)

# PostgreSQL up, Debian packages pgbouncer + redis-server present, system Redis on 6379 up.
services: $(STAMP)
	$(PY) -m skillcoach.stack.ensure

test: services
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

# Seed, train and inference timings on a scratch database (about a minute).
bench: $(STAMP)
	$(PY) -m loadtests model

# Regression check: this run's ratios against loadtests/baseline.json (manual, ~2 minutes).
bench-check: $(STAMP)
	$(PY) -m loadtests check
