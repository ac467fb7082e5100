"""MLflow at the edges: where runs go, the experiment, parent and child runs, epoch logging.

Runs are created and addressed by explicit ids through ``MlflowClient`` (MLflow's active run
is per thread, and Prefect may run tasks in other threads). Every run we open is closed as
FINISHED or FAILED, never left RUNNING.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

EXPERIMENT_NAME = "compare-heads"
REGISTERED_MODEL_NAME = "cats-vs-dogs"
SERVER_TIMEOUT_SECONDS = 10.0


def repo_root() -> Path:
    """The checkout this code runs from (tasks/ sits directly under it)."""
    return Path(__file__).resolve().parents[1]


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the SQLite store under the repo's ``mlflow/``."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    home = repo_root() / "mlflow"
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout: float = SERVER_TIMEOUT_SECONDS) -> None:
    """For an HTTP tracking URI, fail fast with a message naming it when the server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise ConnectionError(
        f"MLflow tracking server at {uri} is not reachable ({problem}). Start it with "
        "`make up`, or set MLFLOW_TRACKING_URI to a running server (unset: a local SQLite store)"
    )


def client() -> MlflowClient:
    """A client for the configured tracking URI (also set as MLflow's default)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(mlflow_client: MlflowClient, name: str = EXPERIMENT_NAME) -> str:
    """The experiment's id, creating it on first use (local stores keep artifacts in mlflow/)."""
    try:
        experiment = mlflow_client.get_experiment_by_name(name)
    except mlflow.exceptions.MlflowException as error:
        if "401" in str(error) or "403" in str(error):
            raise PermissionError(
                f"MLflow tracking server at {mlflow_client.tracking_uri} refused the request "
                "(basic auth): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a "
                f"user allowed to write ({str(error).splitlines()[0][:200]})"
            ) from error
        raise
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if mlflow_client.tracking_uri.startswith("sqlite:///"):
        database = Path(mlflow_client.tracking_uri.removeprefix("sqlite:///"))
        artifact_location = (database.parent / "artifacts").as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another run
        return mlflow_client.get_experiment_by_name(name).experiment_id


def log_params(mlflow_client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    """Log a dict of parameters at once."""
    mlflow_client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def log_metrics(
    mlflow_client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0
) -> None:
    """Log a dict of metrics at once, at ``step`` (the epoch for per-epoch metrics)."""
    timestamp = int(time.time() * 1000)
    mlflow_client.log_batch(
        run_id, metrics=[Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
    )


def finish_run(mlflow_client: MlflowClient, run_id: str, failed: bool = False) -> None:
    """Close a run as FINISHED, or FAILED."""
    status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
    mlflow_client.set_terminated(run_id, status=status)


def run_url(run_id: str, experiment_id: str) -> str | None:
    """Link to a run in the MLflow UI when tracking goes to a server, else None."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


RUN_KEY_TAG = "compare_heads.run_key"
RESUMED_TAG = "compare_heads.resumed_from_parent"


def run_key(cache_dir: str, head: str, seed: int, training: dict[str, object]) -> str:
    """Identity of one (head, seed) training: the data (cache folder = source fingerprint and
    preprocessing settings), the head, the seed and every training setting."""
    payload = json.dumps(
        {"data": Path(cache_dir).name, "head": head, "seed": seed, **training}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def find_resumable(
    mlflow_client: MlflowClient,
    experiment_id: str,
    key: str,
    is_active: Callable[[str], bool] = lambda flow_run_id: False,
    current_flow_run_id: str = "",
):
    """A finished, evaluated child run with this key whose parent flow run did not finish
    (it crashed, was killed or failed later): its results can be reused, not retrained.

    A parent still RUNNING belongs to a flow run that may be alive (two runs of the same
    settings at once): its children are only taken when Prefect says that flow run is over,
    or its process on this host is gone."""
    runs = mlflow_client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if "test_accuracy" not in run.data.metrics or parent_id is None:
            continue
        parent = mlflow_client.get_run(parent_id)
        if parent.info.status == "FINISHED":
            continue
        owner = parent.data.tags.get(FLOW_RUN_TAG, "")
        alive = (
            parent.info.status == "RUNNING"
            and owner
            and owner != current_flow_run_id
            and not owner_is_dead(parent.data.tags)
            and is_active(owner)
        )
        if not alive:
            return run
    return None


def flow_run_is_active(flow_run_id: str) -> bool:
    """Whether Prefect knows this flow run and it has not reached a final state."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as prefect_client:
            state = prefect_client.read_flow_run(UUID(flow_run_id)).state
    except (ObjectNotFound, ValueError):
        return False
    return state is not None and not state.is_final()


def adopt_run(mlflow_client: MlflowClient, run, parent_run_id: str) -> None:
    """Move a reused child under the current parent, noting where it came from."""
    previous = run.data.tags.get("mlflow.parentRunId", "")
    mlflow_client.set_tag(run.info.run_id, RESUMED_TAG, previous)
    mlflow_client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_run_id)


FLOW_RUN_TAG = "prefect.flow_run_id"


OWNER_HOST_TAG, OWNER_PID_TAG = "compare_heads.host", "compare_heads.pid"


def owner_tags() -> dict[str, str]:
    """Which process writes a run: lets a later run on this host see that it died."""
    return {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())}


def owner_is_dead(tags: dict[str, str]) -> bool:
    """True when the run's writer ran on this host and its process no longer exists."""
    if tags.get(OWNER_HOST_TAG) != socket.gethostname():
        return False
    try:
        os.kill(int(tags.get(OWNER_PID_TAG, "")), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def fail_stale_runs(
    mlflow_client: MlflowClient,
    experiment_id: str,
    current_flow_run_id: str,
    is_active: Callable[[str], bool],
) -> list[str]:
    """Mark FAILED every RUNNING run whose Prefect flow run is over (or is this one being
    retried: nothing of ours runs yet), or whose writing process on this host is gone (a
    killed worker's flow run stays Running in Prefect until its heartbeat is missed). Such
    runs are left by a killed worker or a lost tracking server; returns their ids."""
    reaped = []
    for run in mlflow_client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        flow_run_id = tags.get(FLOW_RUN_TAG)
        if not flow_run_id:
            continue
        over = flow_run_id == current_flow_run_id or owner_is_dead(tags)
        if not over and is_active(flow_run_id):
            continue
        mlflow_client.set_tag(
            run.info.run_id,
            "compare_heads.failure",
            f"Prefect flow run {flow_run_id} ended without closing this run (found by a later run)",
        )
        finish_run(mlflow_client, run.info.run_id, failed=True)
        reaped.append(run.info.run_id)
    return reaped
