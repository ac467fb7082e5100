"""The whole job's last step (``make run``, after ``make up``): one ``compare-heads``
deployment run through the worker, its log followed to the end, then where to look.

    PARAMS='{"source": "../shared/data/kagglecatsanddogs_180px.zip", "epochs": 1}' make run
    make run DEPLOYMENT=compare-heads-deep PARAMS='{"source": "photos.zip"}'

PARAMS is a JSON object of flow parameters; anything not given takes the deployment's
default. The exit status is 0 only when the flow run ends Completed. Reads PREFECT_API_URL
and MLFLOW_TRACKING_URI (``scripts/services.sh env`` gives both).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gap_models import records  # noqa: E402
from tracking.runs import EXPERIMENT_NAME  # noqa: E402

DEPLOYMENT = f"compare-heads/{os.environ.get('COMPARE_HEADS_DEPLOYMENT') or 'compare-heads'}"
"""``make run DEPLOYMENT=compare-heads-deep`` runs another deployment of prefect.yaml."""
NOTHING_TRAINED = ("skip", "evaluate")  # gap_models.planning's SKIP, EVALUATE (no TensorFlow here)


def follow(flow_run_id) -> str:
    """Print the flow run's log lines as they arrive; return its final state's name."""
    printed = 0
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            logs = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                sort=LogSort.TIMESTAMP_ASC,
                offset=printed, limit=200,
            )  # fmt: skip
            for log in logs:
                print(f"{log.timestamp:%H:%M:%S} {log.message}", flush=True)
            printed += len(logs)
            if state is not None and state.is_final() and not logs:
                return state.name
            time.sleep(0 if len(logs) == 200 else 2)


def parent_run(client: MlflowClient, flow_run_id: str):
    """The flow run's MLflow parent run (None when there is none)."""
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{records.FLOW_RUN_TAG}` = '{flow_run_id}' and "
        f"tags.`{records.KIND_TAG}` = '{records.KIND_COMPARISON}'",
    )
    return runs[0] if runs else None


def main() -> int:
    parameters = json.loads(os.environ.get("PARAMS") or "{}")
    flow_run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=0)
    ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    print(
        f"Flow run {flow_run.name} ({flow_run.id}) of {DEPLOYMENT}: {ui}/runs/flow-run/{flow_run.id}"
    )
    final = follow(flow_run.id)
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    print(f"\nFlow run ended {final}.")
    print(f"Prefect flow run:  {ui}/runs/flow-run/{flow_run.id}")
    if experiment is not None:
        print(f"MLflow runs:       {tracking}/#/experiments/{experiment.experiment_id}/runs")
    parent = parent_run(client, str(flow_run.id)) if final == "Completed" else None
    tags = parent.data.tags if parent else {}
    decision = tags.get(records.RETRAIN_DECISION_TAG, "")
    if decision in NOTHING_TRAINED:
        reasons = tags.get(records.RETRAIN_REASONS_TAG, "")
        print(f"Nothing trained: the plan decided {decision} ({reasons}); see what_changed.md "
              "on the MLflow parent run. PARAMS='{\"force\": true}' trains anyway.")  # fmt: skip
    elif parent is not None:
        folder = tags.get(records.OUTPUT_DIR_TAG) or "outputs/"
        print(f"Plots and report:  {folder} (also artifacts of the MLflow parent run)")
    print("Stop the services: make down")
    return 0 if final == "Completed" else 1


if __name__ == "__main__":
    sys.exit(main())
