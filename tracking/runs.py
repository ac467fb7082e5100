"""MLflow at the edges: where runs go, the experiment, logging, closing runs, the dataset
input, and a cell's result read back (through ``gap_models.records``).

Runs are created and addressed by explicit ids through ``MlflowClient`` (MLflow's active run
is per thread, and Prefect may run tasks in other threads). Every run we open is closed as
FINISHED or FAILED, never left RUNNING.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from gap_models import records
from gap_models.config import TFDS_PREFIX

EXPERIMENT_NAME = "compare-heads"
SERVER_TIMEOUT_SECONDS = 10.0


def repo_root() -> Path:
    """The checkout this code runs from (tracking/ sits directly under it)."""
    return Path(__file__).resolve().parents[1]


SERVER_URL_FILE = "mlflow_url"
"""Written by ``make up`` in the services folder: the URL of the MLflow server it started."""


def running_server() -> str | None:
    """The MLflow server ``make up`` started, when it answers: a client of this checkout
    then talks to it over HTTP (the only way it resolves the server's ``mlflow-artifacts:``
    locations) without anyone exporting MLFLOW_TRACKING_URI."""
    services = os.environ.get("COMPARE_HEADS_SERVICES_DIR") or repo_root() / ".services"
    path = Path(services) / SERVER_URL_FILE
    try:
        return _answering(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=4)
def _answering(path: str, mtime_ns: int) -> str | None:
    """The URL in ``path`` if its server answers /health (asked once per file version)."""
    try:
        url = Path(path).read_text().strip()
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return url if response.status == 200 else None
    except (OSError, ValueError, urllib.error.URLError):
        return None


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the server ``make up`` started if it answers,
    else the SQLite store under the repo's ``mlflow/``."""
    configured = os.environ.get("MLFLOW_TRACKING_URI") or running_server()
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


def _dataset_source(source: str):
    """MLflow's description of where the photos came from: tfds' catalogue page, or the
    local file or folder."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if source.startswith(TFDS_PREFIX):
        catalogue = "https://www.tensorflow.org/datasets/catalog/"
        return HTTPDatasetSource(catalogue + source.removeprefix(TFDS_PREFIX))
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local
        warnings.simplefilter("ignore")
        return resolve_dataset_source(str(Path(source).expanduser().resolve()))


def log_dataset(
    mlflow_client: MlflowClient, run_id: str, manifest: dict, digest: str | None = None
) -> None:
    """Record the photos a run used as an MLflow dataset input (the UI's Dataset column),
    from the cache's manifest: the source, as digest the data digest of the retraining plan
    (``digest``; else the source's fingerprint), and as profile the classes and the images
    per split and class."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = manifest["source"]
    profile = {key: manifest[key] for key in records.DATASET_PROFILE_KEYS}

    class _Photos(MetaDataset):
        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(profile)}

    name = Path(source.removeprefix(TFDS_PREFIX)).name or source
    digest = digest or manifest["fingerprint"][:36]
    dataset = _Photos(_dataset_source(source), name=name, digest=digest)
    context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
    inputs = [DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[context])]
    for attempt in range(DATASET_ATTEMPTS):
        try:
            mlflow_client.log_inputs(run_id, datasets=inputs)
            return
        except mlflow.exceptions.MlflowException as error:
            if attempt == DATASET_ATTEMPTS - 1 or not _duplicate_dataset(error):
                raise
            time.sleep(0.2 * (attempt + 1))


DATASET_ATTEMPTS = 3
"""Two runs that log the same photos at the same moment race in MLflow's SQL store: it looks
the dataset up, then inserts it, and the later insert violates the dataset's key (seen on
PostgreSQL, 2026-12-03: a flow run failed). Logged again, the dataset is found and only
linked to the run."""


def _duplicate_dataset(error: Exception) -> bool:
    """Whether MLflow's store refused a dataset that another run inserted a moment before
    (the dataset key's error, as PostgreSQL and SQLite, the stores we run on, word it)."""
    text = str(error)
    return '"dataset_pk"' in text or "UNIQUE constraint failed: datasets" in text


def run_url(run_id: str, experiment_id: str) -> str | None:
    """Link to a run in the MLflow UI when tracking goes to a server, else None."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def scores(mlflow_client: MlflowClient, run_id: str) -> dict[str, float]:
    """The scores a run already holds, test and final validation (an adopted run was
    evaluated before)."""
    metrics = mlflow_client.get_run(run_id).data.metrics
    prefixes = (records.TEST_PREFIX, records.FINAL_VAL_PREFIX, records.TRAIN_SUBSET_PREFIX)
    return {k: v for k, v in metrics.items() if k.startswith(prefixes)}


def tracked_run(mlflow_client: MlflowClient, run_id: str) -> records.TrackedRun:
    """What MLflow holds of a child run, as ``gap_models.records`` reads it."""
    run = mlflow_client.get_run(run_id)

    def history(key: str) -> list[float]:
        points = mlflow_client.get_metric_history(run_id, key)
        return [point.value for point in sorted(points, key=lambda point: point.step)]

    return records.TrackedRun(
        run_id=run_id,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        histories={key: history(key) for key in records.HISTORY_METRICS},
        tags=dict(run.data.tags),
    )


def fetch_result(mlflow_client: MlflowClient, run_id: str) -> records.RunResult:
    """A cell's result rebuilt from MLflow: the one route by which scores reach the
    comparison and the promotion."""
    return records.RunResult.from_tracked(tracked_run(mlflow_client, run_id))


def log_predictions(mlflow_client: MlflowClient, run_id: str, scored) -> None:
    """A cell's per-photo predictions by split, with the photos' content ids and labels, and
    its per-photo results on shifted test photos, as the run's ``predictions.npz`` artifact
    (what reports pair cells by, photo by photo)."""
    arrays = {f"{records.SHIFT_ARRAY_PREFIX}{p}": c for p, c in scored.shifts.items()}
    for split, values in scored.predictions.items():
        arrays[split] = values
        arrays[f"{records.IDS_PREFIX}{split}"] = scored.ids[split]
        arrays[f"{records.LABELS_PREFIX}{split}"] = scored.labels[split]
    with tempfile.TemporaryDirectory(prefix="compare-heads-predictions-") as scratch:
        path = Path(scratch) / records.PREDICTIONS_ARTIFACT
        np.savez_compressed(path, **arrays)
        mlflow_client.log_artifact(run_id, str(path))


def fetch_predictions(mlflow_client: MlflowClient, run_id: str) -> dict[str, np.ndarray]:
    """The arrays of a run's ``predictions.npz`` (empty when the run has none)."""
    with tempfile.TemporaryDirectory(prefix="compare-heads-predictions-") as scratch:
        try:
            path = mlflow_client.download_artifacts(run_id, records.PREDICTIONS_ARTIFACT, scratch)
        except mlflow.exceptions.MlflowException:
            return {}
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
