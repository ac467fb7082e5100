"""MLflow at the edges: where runs go, the experiment, parent and child runs, epoch logging.

Runs are created and addressed by explicit ids through ``MlflowClient`` (MLflow's active run
is per thread, and Prefect may run tasks in other threads). Every run we open is closed as
FINISHED or FAILED, never left RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

EXPERIMENT_NAME = "compare-heads"
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


IMAGE_MODEL_CODE = Path(__file__).with_name("image_model.py")
"""The pyfunc every model is logged as (MLflow "models from code")."""
SHIPPED_CODE = (
    repo_root() / "gap_models" / "data" / "decoding.py",
    repo_root() / "gap_models" / "probabilities.py",
)
"""Standalone modules shipped inside each logged model: the training decode path and the
reading of outputs, importable there as ``decoding`` and ``probabilities``."""


def log_image_model(
    mlflow_client: MlflowClient,
    run_id: str,
    model,
    class_names: tuple[str, ...],
    pip_requirements: list[str],
) -> str:
    """Log a trained Keras model as the image-file pyfunc of ``tasks/image_model.py`` (with
    the class names and image size it needs); return its model URI, also kept as the run's
    ``model_uri`` tag (what resumption reuses)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    image_size = int(model.input_shape[1])
    config = {"class_names": list(class_names), "image_size": image_size}
    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema(
            [ColSpec("double", name) for name in class_names]
            + [ColSpec("string", "label"), ColSpec("double", "probability")]
        ),
    )
    with tempfile.TemporaryDirectory(prefix="compare-heads-model-") as scratch:
        keras_file = Path(scratch) / "model.keras"
        model.save(keras_file)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(IMAGE_MODEL_CODE),
                artifacts={"keras_model": str(keras_file)},
                code_paths=[str(path) for path in SHIPPED_CODE],
                model_config=config,
                metadata=config,
                signature=signature,
                pip_requirements=pip_requirements,
            )
    mlflow_client.set_tag(run_id, "model_uri", info.model_uri)
    return info.model_uri


def load_logged_model(model_uri: str):
    """The Keras model inside a model this project logged (Keras safe mode on: no arbitrary
    code); models logged before the image pyfunc (Keras flavor) load too."""
    client()
    info = mlflow.models.get_model_info(model_uri)
    if "keras" in info.flavors:
        return mlflow.keras.load_model(model_uri, load_model_kwargs={"safe_mode": True})
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model


def logged_class_names(model_uri: str) -> tuple[str, ...]:
    """The classes a logged model predicts, label order (Keras-flavor models of earlier
    versions were all Cats vs Dogs)."""
    client()
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    return tuple(metadata.get("class_names", ("cat", "dog")))


def _dataset_source(source: str):
    """MLflow's description of where the photos came from: tfds' catalogue page, or the
    local file or folder."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if source.startswith("tfds:"):
        catalogue = "https://www.tensorflow.org/datasets/catalog/"
        return HTTPDatasetSource(catalogue + source.removeprefix("tfds:"))
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local
        warnings.simplefilter("ignore")
        return resolve_dataset_source(str(Path(source).expanduser().resolve()))


def log_dataset(mlflow_client: MlflowClient, run_id: str, manifest: dict) -> None:
    """Record the photos a run used as an MLflow dataset input (the UI's Dataset column),
    from the cache's manifest: the source, its fingerprint as digest, and as profile the
    classes and the images per split and class."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = manifest["source"]
    profile = {
        "class_names": manifest["class_names"],
        "split_counts": manifest["split_counts"],
        "images_used": manifest["images_used"],
        "image_size": manifest["image_size"],
    }

    class _Photos(MetaDataset):
        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(profile)}

    name = Path(source.removeprefix("tfds:")).name or source
    dataset = _Photos(_dataset_source(source), name=name, digest=manifest["fingerprint"][:36])
    context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
    mlflow_client.log_inputs(
        run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[context])]
    )


def run_url(run_id: str, experiment_id: str) -> str | None:
    """Link to a run in the MLflow UI when tracking goes to a server, else None."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def test_metrics(mlflow_client: MlflowClient, run_id: str) -> dict[str, float]:
    """The scores a run already holds, test and final validation (an adopted run was
    evaluated before)."""
    metrics = mlflow_client.get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith(("test_", "final_val_"))}
