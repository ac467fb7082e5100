"""Prefect task: train one (head, seed) model as an MLflow child run."""

from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature
from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from gap_models.config import RunConfig
from gap_models.data import load_split, make_dataset
from gap_models.models import build_model, compile_model, trainable_params
from gap_models.training import augmenter, recalibrate_batch_norm, train_model
from tasks import run_logger, tracking

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


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


def child_params(config: RunConfig, head: str, seed: int, params: int) -> dict[str, object]:
    """The child run's parameters (SPEC §3 names)."""
    return {
        "head": head,
        "seed": seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "image_size": config.image_size,
        "trainable_params": params,
        "recipe": config.recipe,
        "precision": config.precision,
        "batch_norm": config.batch_norm,
    }


def _training_settings(config: RunConfig) -> dict[str, object]:
    """Every setting that changes what training produces (beyond data, head and seed)."""
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "image_size": config.image_size,
        "recipe": config.recipe,
        "precision": config.precision,
        "batch_norm": config.batch_norm,
        "batch_norm_statistics": "precise",  # recalibrated after training
    }


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow's inference of requirements imports the model in a subprocess.
    return [f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}"]


@task(name="train", task_run_name="train-{head}-seed{seed}", cache_policy=NONE)
def train_head(
    cache_dir: str,
    head: str,
    seed: int,
    config: RunConfig,
    experiment_id: str,
    parent_run_id: str,
    skipped_images: int,
) -> TrainedRun:
    """Train a fresh model for ``head`` from the seed's initial weights; log it to MLflow."""
    logger = run_logger()
    client = tracking.client()
    key = tracking.run_key(cache_dir, head, seed, _training_settings(config))
    previous = tracking.find_resumable(
        client,
        experiment_id,
        key,
        is_active=tracking.flow_run_is_active,
        current_flow_run_id=str(flow_run.get_id() or ""),
    )
    if previous is not None:
        tracking.adopt_run(client, previous, parent_run_id)
        logger.info(
            "%s seed %d: reusing finished run %s of an interrupted flow run (not retrained)",
            head,
            seed,
            previous.info.run_id,
        )
        return TrainedRun(
            head,
            seed,
            previous.info.run_id,
            previous.data.tags["model_uri"],
            int(previous.data.params["trainable_params"]),
            reused=True,
        )
    run = client.create_run(
        experiment_id,
        run_name=f"{head}-seed{seed}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            "head": head,
            "seed": str(seed),
            tracking.RUN_KEY_TAG: key,
            tracking.FLOW_RUN_TAG: str(flow_run.get_id() or ""),
            **tracking.owner_tags(),
        },
    )
    run_id = run.info.run_id
    try:
        # Drop the graphs and models of earlier heads in this process (peak memory).
        keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(seed)
        train_images, train_labels = load_split(cache_dir, "train")
        val_images, val_labels = load_split(cache_dir, "validation")
        model = compile_model(
            build_model(
                head,
                config.image_size,
                seed,
                precision=config.precision,
                batch_norm=config.batch_norm,
            ),
            config.learning_rate,
        )
        params = trainable_params(model)
        tracking.log_params(client, run_id, child_params(config, head, seed, params))
        tracking.log_metrics(client, run_id, {"skipped_images": skipped_images})
        logger.info(
            "Training %s (seed %d, %s trainable parameters) on %d images, validating on %d",
            head,
            seed,
            f"{params:,}",
            len(train_labels),
            len(val_labels),
        )

        logging_seconds = [0.0]  # time per-epoch tracking takes away from training

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            logging_started = time.perf_counter()
            logged = {key: metrics[key] for key in EPOCH_METRICS if key in metrics}
            logged["epoch_seconds"] = metrics["epoch_seconds"]
            tracking.log_metrics(client, run_id, logged, step=epoch)
            logger.info(
                "%s seed %d epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f "
                "val_accuracy %.4f (%.1f s, %.0f images/s)",
                head,
                seed,
                epoch,
                config.epochs,
                metrics["loss"],
                metrics["accuracy"],
                metrics["val_loss"],
                metrics["val_accuracy"],
                metrics["epoch_seconds"],
                metrics["images_per_second"],
            )
            logging_seconds[0] += time.perf_counter() - logging_started

        result = train_model(
            model,
            make_dataset(
                train_images,
                train_labels,
                config.batch_size,
                shuffle_seed=seed,
                augment=augmenter(seed) if config.recipe == "improved" else None,
            ),
            make_dataset(val_images, val_labels, config.batch_size),
            config.epochs,
            train_images=len(train_labels),
            on_epoch=on_epoch,
            recipe=config.recipe,
            calibration_data=make_dataset(train_images, train_labels, config.batch_size),
        )
        # Precise BN: the logged model and its test scores use BatchNorm statistics averaged
        # over training batches, not the moving averages that lag after few steps.
        calibration_started = time.perf_counter()
        calibration = recalibrate_batch_norm(
            model, make_dataset(train_images, train_labels, config.batch_size)
        )
        compute_seconds = result.train_seconds + time.perf_counter() - calibration_started
        tracking.log_metrics(
            client,
            run_id,
            {
                "train_seconds": result.train_seconds,
                "train_images_per_second": result.images_per_second,
                "best_val_accuracy": result.best_val_accuracy,
                "bn_recalibration_batches": calibration,
                "epoch_logging_seconds": logging_seconds[0],
            },
        )
        sample = val_images[:2]
        signature = infer_signature(sample.astype(np.float32), model.predict(sample, verbose=0))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.keras.log_model(
                model, name="model", signature=signature, pip_requirements=_pip_requirements()
            )
        client.set_tag(run_id, "model_uri", info.model_uri)
    except BaseException:
        tracking.finish_run(client, run_id, failed=True)
        raise
    logger.info(
        "%s seed %d trained in %.1f s (%.0f images/s); model %s",
        head,
        seed,
        result.train_seconds,
        result.images_per_second,
        info.model_uri,
    )
    return TrainedRun(head, seed, run_id, info.model_uri, params, compute_seconds=compute_seconds)
