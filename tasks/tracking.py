"""MLflow at the edges: where runs go, the experiment, parent and child runs, epoch logging.

Runs are created and addressed by explicit ids through ``MlflowClient`` (MLflow's active run
is per thread, and Prefect may run tasks in other threads). Every run we open is closed as
FINISHED or FAILED, never left RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

EXPERIMENT_NAME = "compare-heads"
REGISTERED_MODEL_NAME = "cats-vs-dogs"
SERVER_TIMEOUT_SECONDS = 10.0
OUTPUT_DIR_TAG = "compare_heads.output_dir"
"""Tag of a parent run: the local folder its plots and tables were written to."""


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


@contextlib.contextmanager
def closing_run(
    mlflow_client: MlflowClient, run_id: str, finish_on_success: bool = True
) -> Iterator[str]:
    """Close the run FAILED if the block raises (any exception, a cancel or Ctrl-C
    included), FINISHED when it ends, or leave it open for a later step
    (``finish_on_success=False``: training hands its run to evaluation)."""
    try:
        yield run_id
    except BaseException:
        finish_run(mlflow_client, run_id, failed=True)
        raise
    if finish_on_success:
        finish_run(mlflow_client, run_id)


def log_keras_model(
    mlflow_client: MlflowClient, run_id: str, model, sample, pip_requirements: list[str]
) -> str:
    """Log a Keras model with its signature (from ``sample`` inputs) to a run; return its
    model URI, also kept as the run's ``model_uri`` tag (what resumption reuses)."""
    from mlflow.models import infer_signature

    signature = infer_signature(sample.astype("float32"), model.predict(sample, verbose=0))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.keras.log_model(
            model, name="model", signature=signature, pip_requirements=pip_requirements
        )
    mlflow_client.set_tag(run_id, "model_uri", info.model_uri)
    return info.model_uri


def load_logged_model(model_uri: str):
    """Load a Keras model logged to MLflow (Keras safe mode on: no arbitrary code)."""
    client()
    return mlflow.keras.load_model(model_uri, load_model_kwargs={"safe_mode": True})


def run_url(run_id: str, experiment_id: str) -> str | None:
    """Link to a run in the MLflow UI when tracking goes to a server, else None."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def test_metrics(mlflow_client: MlflowClient, run_id: str) -> dict[str, float]:
    """The test metrics a run already holds (an adopted run was evaluated before)."""
    metrics = mlflow_client.get_run(run_id).data.metrics
    return {key: value for key, value in metrics.items() if key.startswith("test_")}
