#!/usr/bin/env bash
# The whole job: services up, deployments applied, one `compare-heads` flow run through the
# worker, watched to the end, then where to look at the results.
#
# Usage: scripts/run.sh            (make run)
#        PARAMS='{"source": "../shared/data/kagglecatsanddogs_180px.zip", "epochs": 1}' scripts/run.sh
# PARAMS is a JSON object of flow parameters; anything not given takes the deployment's
# default (prefect.yaml). The exit status is the flow run's: 0 only if it ends Completed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEPLOYMENT="compare-heads/compare-heads"
EXPERIMENT="compare-heads"

scripts/services.sh up
scripts/services.sh deploy
eval "$(scripts/services.sh env)"

run_args=(deployment run "$DEPLOYMENT" --watch)
if [[ -n "${PARAMS:-}" ]]; then
    run_args+=(--params "$PARAMS")
fi

output="$(mktemp)"
trap 'rm -f "$output"' EXIT
set +e
.venv/bin/prefect "${run_args[@]}" 2>&1 | tee "$output"
status="${PIPESTATUS[0]}"
set -e

flow_run_id="$(grep -oE 'UUID: [0-9a-f-]{36}' "$output" | head -n 1 | cut -d' ' -f2 || true)"
experiment_id="$(
    curl -fsS --max-time 5 -G "$MLFLOW_TRACKING_URI/api/2.0/mlflow/experiments/get-by-name" \
        --data-urlencode "experiment_name=$EXPERIMENT" 2>/dev/null \
        | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["experiment"]["experiment_id"])' \
            2>/dev/null || true
)"

echo
if [[ "$status" == 0 ]]; then
    echo "Flow run completed."
else
    echo "Flow run did not complete (exit status $status). The end of its log:"
    if [[ -n "$flow_run_id" ]]; then
        .venv/bin/prefect flow-run logs "$flow_run_id" 2>/dev/null | tail -n 25 || true
    fi
    echo
fi
if [[ -n "$flow_run_id" ]]; then
    echo "Prefect flow run:  $PREFECT_UI_URL/runs/flow-run/$flow_run_id"
else
    echo "Prefect UI:        $PREFECT_UI_URL/runs"
fi
if [[ -n "$experiment_id" ]]; then
    echo "MLflow runs:       $MLFLOW_TRACKING_URI/#/experiments/$experiment_id/runs"
else
    echo "MLflow UI:         $MLFLOW_TRACKING_URI"
fi
if [[ "$status" == 0 ]]; then
    # The parent MLflow run of this flow run names the folder its plots were written to.
    plots=""
    if [[ -n "$flow_run_id" && -n "$experiment_id" ]]; then
        plots="$(.venv/bin/python scripts/output_dir.py "$flow_run_id" "$experiment_id" \
            2>/dev/null || true)"
    fi
    echo "Plots and report:  ${plots:-$ROOT/outputs/} (also artifacts of the MLflow parent run)"
fi
echo "Stop the services: make down"
exit "$status"
