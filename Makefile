# The few commands people run. Everything works from a fresh clone: each target builds the
# virtual environment first when it needs one.
#
#   make run [PARAMS='{"epochs": 1}']   services, deployments, one watched flow run, links
#            [DEPLOYMENT=compare-heads-deep]  the studies' strongest model instead
#   make test                            every test tier (unit, integration, e2e)
#   make up | down | status              the MLflow server, Prefect server, worker (up also
#                                        applies the deployments)
#   make deploy                          the same as make up (kept for habit)
#   make serve [MODEL=cats-vs-dogs]      the champion behind MLflow's scoring server on
#                                        127.0.0.1:5002 (SERVE_PORT), after make up
#   make lint                            ruff
#
# Ports: MLFLOW_PORT (5000) and PREFECT_PORT (4200), read from the environment by
# scripts/services.sh, e.g. `MLFLOW_PORT=5001 make up`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install; reinstalls only when pyproject.toml changes.
INSTALLED := $(VENV)/.installed

# Flow parameters for `make run`, as a JSON object; exported so that the JSON's quotes and
# spaces reach scripts/run.py untouched.
PARAMS ?=
export PARAMS
# The deployment `make run` starts (prefect.yaml): compare-heads, or compare-heads-deep (the
# strongest model the studies found, about an hour a model on 2 cores).
DEPLOYMENT ?=

.DEFAULT_GOAL := help
.PHONY: help venv up down status deploy run serve test lint

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

venv: $(INSTALLED)

# Python's bytecode cache. PYTHONDONTWRITEBYTECODE is set on the machines we build and test
# on: with it, no .pyc is ever written and every process (each flow run, worker, Dask worker,
# serving check) compiles TensorFlow's sources again, 15 s instead of 6 s an import. So the
# commands here may write bytecode (unexport), and `make venv` writes it once for what the
# project imports (~20 s; `uv pip install --compile-bytecode` compiled all 20,000 modules of
# the environment, ~55 s). Python reads the .pyc files even where it may not write them.
unexport PYTHONDONTWRITEBYTECODE
WARM_IMPORTS := flows.cli, flows.compare_heads, flows.watch, mlflow.server, \
	prefect.server.api.server, prefect.workers.process, distributed

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]'
	@echo "Writing the bytecode of what the project imports..."
	@out=$$($(BIN)/python -c 'import $(WARM_IMPORTS)' 2>&1) || { echo "$$out"; exit 1; }
	@touch $@

# Services and the deployments of prefect.yaml (both idempotent): after `make up`,
# `.venv/bin/prefect deployment run compare-heads/compare-heads` finds its deployment.
up: venv
	scripts/services.sh up
	scripts/services.sh deploy

down:
	scripts/services.sh down

# Exit status 3 from the script means "not everything is up": informative, not an error here.
status:
	@scripts/services.sh status || true

deploy: up

run: venv
	scripts/services.sh up && \
		COMPARE_HEADS_SOURCE="$${COMPARE_HEADS_SOURCE:-$$($(BIN)/python -c 'import json, os; print(json.loads(os.environ.get("PARAMS") or "{}").get("source", ""))')}" \
		scripts/services.sh deploy && \
		eval "$$(scripts/services.sh env)" && \
		COMPARE_HEADS_DEPLOYMENT="$(DEPLOYMENT)" $(BIN)/python scripts/run.py

# MODEL, ALIAS (champion) and SERVE_PORT (5002) are read from the environment or make's
# command line by the script.
serve: venv
	MODEL="$(MODEL)" ALIAS="$(ALIAS)" SERVE_PORT="$(SERVE_PORT)" scripts/serve.sh

# The UI test drives a headless Chromium from Debian; CI runs as root and installs it.
test: venv
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "Installing chromium (for the MLflow UI test)..."; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "NOTE: /usr/bin/chromium is missing and this is not root: the UI test will skip."; \
		fi; \
	fi
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
