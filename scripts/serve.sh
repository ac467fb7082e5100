#!/usr/bin/env bash
# Serve a registered model's champion with MLflow's own scoring server, on 127.0.0.1 only.
#
#   scripts/serve.sh                     models:/cats-vs-dogs@champion on 127.0.0.1:5002
#   MODEL=digits SERVE_PORT=6000 scripts/serve.sh
#
# The model takes encoded image files (see README, "Serving"); the server answers
# POST /invocations, GET /ping and /health. It reads the registry of the tracking server
# `make up` runs (MLFLOW_TRACKING_URI, default http://127.0.0.1:$MLFLOW_PORT), with
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD when that server asks for them.
# MLflow's scoring server has no authentication: it binds to loopback, and is meant to sit
# behind an authenticating reverse proxy when it must be reached from elsewhere.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="${MODEL:-cats-vs-dogs}"
ALIAS="${ALIAS:-champion}"
SERVE_PORT="${SERVE_PORT:-5002}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:${MLFLOW_PORT:-5000}}"
# `mlflow models serve` starts uvicorn by name: the environment's bin must be on PATH.
export PATH="$ROOT/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

if ! [[ "$SERVE_PORT" =~ ^[0-9]+$ ]] || ((SERVE_PORT < 1 || SERVE_PORT > 65535)); then
    printf 'serve.sh: SERVE_PORT=%s is not a port number\n' "$SERVE_PORT" >&2
    exit 2
fi
printf 'Serving models:/%s@%s from %s on http://127.0.0.1:%s/invocations\n' \
    "$MODEL" "$ALIAS" "$MLFLOW_TRACKING_URI" "$SERVE_PORT"
exec mlflow models serve -m "models:/$MODEL@$ALIAS" --env-manager local \
    --host 127.0.0.1 --port "$SERVE_PORT"
