# skillcoach: `make up` for a running stack, `make test` for the suite, `make check` for CI.
# Everything runs from the project venv, which bootstraps itself from pyproject.toml.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when a pyproject or a lock changes (the stamp is newer than it otherwise).
STAMP := $(VENV)/.installed
REPLICAS ?= 1
# OTLP=1: `make up` also starts a local OTLP receiver and the replicas send it their traces.
OTLP ?= 0

.PHONY: help venv .venv up down status scale services test lint typecheck check docs dashboards tools image lock bench bench-check bench-locust

help:
	@echo "make up [REPLICAS=N] [OTLP=1]  start PostgreSQL, PgBouncer, Redis, the API and Prometheus;"
	@echo "                      print URL, key, curl (OTLP=1: traces to .stack/logs/otlp.log)"
	@echo "make down             stop what 'make up' started (data is kept)"
	@echo "make status           show each component of the stack"
	@echo "make scale REPLICAS=N change the replica count of the running stack (pools resized)"
	@echo "make test             ensure services, run the test suite"
	@echo "make check            lint, typecheck, test (what .ci/run does)"
	@echo "make docs             regenerate the README's configuration table from Settings"
	@echo "make dashboards       regenerate the Grafana dashboards' JSON from their builders"
	@echo "make image            build the API and operator images with podman (sizes printed)"
	@echo "make lock             regenerate requirements/*.lock from the pyproject files"
	@echo "make bench            every target at 1..1000 connections + plots, scale, model (~7 min)"
	@echo "make bench-locust     locust scenarios of realistic use against the 'make up' stack"
	@echo "make bench-check      throughput/p99 ratios vs loadtests/baseline.json (a few minutes)"

# The service with its dev tools, the local stack (devstack/) and the operator, all editable.
# What the images ship is held at the images' locked versions (hashes and extras dropped: a
# constraint is a name and a version), so the tests run the code that ships; a new release
# reaches both only through `make lock`. Dev-only tools resolve freely within pyproject's ranges.
LOCKS := requirements/service.lock requirements/operator.lock
$(STAMP): pyproject.toml devstack/pyproject.toml operator/pyproject.toml $(LOCKS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sed -n 's/^\([A-Za-z0-9._-]*\)\(\[[^]]*\]\)\{0,1\}==\([^ ]*\).*/\1==\3/p' $(LOCKS) \
		| sort -u > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt \
		-e '.[dev]' -e ./devstack -e ./operator
	touch $(STAMP)

venv .venv: $(STAMP)

up: $(STAMP)
	SKILLCOACH_STACK_OTLP=$(OTLP) $(VENV)/bin/skillcoach stack up --replicas $(REPLICAS)

down: $(STAMP)
	$(VENV)/bin/skillcoach stack down

status: $(STAMP)
	$(VENV)/bin/skillcoach stack status

scale: $(STAMP)
	$(VENV)/bin/skillcoach stack scale --replicas $(REPLICAS)

# PostgreSQL up, Debian packages pgbouncer + redis-server present, system Redis on 6379 up.
services: $(STAMP)
	$(PY) -m skillcoach_devstack.ensure

# helm, kubectl, the prometheus-operator models and checkov, pinned, into .tools/.
tools: $(STAMP)
	$(PY) -m skillcoach_devstack.tools

test: services tools
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

# The API and operator images (podman as root, a debootstrap base made once; see
# devstack/skillcoach_devstack/images.py), tagged localhost/skillcoach-{api,operator}:VERSION.
image: $(STAMP)
	$(PY) -m skillcoach_devstack.images build

# The images' pinned, hashed dependencies, after any change of a pyproject's dependencies.
lock: $(STAMP)
	$(PY) -m skillcoach_devstack.images lock

# Regenerate what is generated in the docs (the README's configuration table).
docs: $(STAMP)
	$(PY) -m skillcoach_devstack.settings_doc README.md

# The Grafana dashboards (overview, pool, cache) from their builders in
# devstack/skillcoach_devstack/dashboards/, into deploy/helm/skillcoach/files/dashboards/.
dashboards: $(STAMP)
	$(PY) -m skillcoach_devstack.dashboards

# The full benchmark (manual, about seven minutes): the side-by-side suite (bare, naive,
# cache-off, warm-cached, the multi-replica stack; table, JSON and PNG plots), the history-length
# scale scenario, and seed/train/inference timings. Results land in loadtests/results/.
bench: services
	$(PY) -m loadtests suite
	$(PY) -m loadtests scale
	$(PY) -m loadtests model

# Realistic use (Zipf learners, reads, attempt batches, model-status polling) against the
# stack `make up` started; USERS, SPAWN_RATE and DURATION (seconds) are configurable.
USERS ?= 50
SPAWN_RATE ?= 10
DURATION ?= 60
bench-locust: $(STAMP)
	$(PY) -m loadtests locust --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION)

# Regression check: this run's ratios against loadtests/baseline.json (manual, ~2 minutes).
bench-check: $(STAMP)
	$(PY) -m loadtests check
