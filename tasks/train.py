"""Prefect task: train one (head, seed) model as an MLflow child run."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf
from prefect import task
from prefect.cache_policies import NONE

from gap_models.config import RunConfig
from gap_models.data import cached_class_names, read_manifest
from gap_models.models import trainable_params, with_stock_layers
from gap_models.training import build_training_model, describe_epoch, fit_head
from tasks import recovery, run_logger, tracking

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")


@dataclass(frozen=True)
class TrainedRun:
    """A trained model, by reference: its MLflow child run and logged model.

    ``reused`` marks a run taken over from an interrupted flow run: already evaluated.
    """

    head: str
    seed: int
    run_id: str
    model_uri: str
    trainable_params: int
    reused: bool = False
    compute_seconds: float = 0.0  # fit + BatchNorm recalibration, this flow run only


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (a Dask worker: every model it trained;
    Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow's inference of requirements imports the model in a subprocess.
    import pandas
    import PIL

    return [
        f"tensorflow-cpu=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"pillow=={PIL.__version__}",
        f"pandas=={pandas.__version__}",
    ]


def _reuse_finished(
    client, experiment_id: str, key: str, parent_run_id: str, head: str, seed: int
) -> TrainedRun | None:
    """The finished run of an interrupted flow run with this key, adopted (None: train)."""
    previous = recovery.adopt_finished_run(client, experiment_id, key, parent_run_id)
    if previous is None:
        return None
    run_logger().info("%s seed %d: reusing finished run %s", head, seed, previous.info.run_id)
    params = int(previous.data.params["trainable_params"])
    return TrainedRun(
        head, seed, previous.info.run_id, previous.data.tags["model_uri"], params, True
    )


@task(name="train", task_run_name="train-{head}-seed{seed}", cache_policy=NONE)
def train_head(
    cache_dir: str,
    head: str,
    seed: int,
    config: RunConfig,
    experiment_id: str,
    parent_run_id: str,
    skipped_images: int = 0,
) -> TrainedRun:
    """Train a fresh model for ``head`` from the seed's initial weights; log it to MLflow.
    A finished run of an interrupted flow run with the same key is adopted instead."""
    logger = run_logger()
    client = tracking.client()
    key = recovery.run_key(cache_dir, head, seed, config.training_settings())
    reused = _reuse_finished(client, experiment_id, key, parent_run_id, head, seed)
    if reused is not None:
        return reused
    for lost in recovery.fail_open_children(
        client,
        experiment_id,
        parent_run_id,
        "its process died while training (a lost Dask worker); trained again elsewhere",
        key,
    ):
        logger.warning("%s seed %d: run %s of a lost worker marked FAILED", head, seed, lost)
    run_id = recovery.create_child_run(client, experiment_id, parent_run_id, head, seed, key)
    classes = cached_class_names(cache_dir)
    with tracking.closing_run(client, run_id, finish_on_success=False):
        model = build_training_model(head, seed, config, num_classes=len(classes))
        params = trainable_params(model)
        tracking.log_params(client, run_id, config.child_params(head, seed, params))
        tracking.log_metrics(client, run_id, {"skipped_images": skipped_images})
        tracking.log_dataset(client, run_id, read_manifest(Path(cache_dir)))
        logger.info("Training %s seed %d (%s trainable parameters)", head, seed, f"{params:,}")

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            logged = {name: metrics[name] for name in EPOCH_METRICS if name in metrics}
            tracking.log_metrics(client, run_id, logged, step=epoch)
            logger.info(describe_epoch(f"{head} seed {seed}", epoch, config.epochs, metrics))

        result = fit_head(model, seed, config, cache_dir, on_epoch)
        tracking.log_metrics(
            client, run_id, {**result.final_metrics(), "process_peak_memory_mb": peak_memory_mb()}
        )
        tracking.log_params(client, run_id, {"callbacks": ",".join(result.callbacks)})
        stock = with_stock_layers(model)  # loadable by any Keras / MLflow process
        model_uri = tracking.log_image_model(client, run_id, stock, classes, _pip_requirements())
    logger.info(
        "%s seed %d: %.0f images/s; model %s", head, seed, result.images_per_second, model_uri
    )
    return TrainedRun(head, seed, run_id, model_uri, params, compute_seconds=result.compute_seconds)
