"""Prefect task: score a logged model on the held-out test split."""

from __future__ import annotations

import time

import keras
import mlflow
from prefect import task
from prefect.cache_policies import NONE

from gap_models.analysis import translation_accuracy
from gap_models.data import load_split
from gap_models.evaluation import evaluate_model
from tasks import run_logger, tracking
from tasks.train import TrainedRun

SHIFT_METRIC_PREFIX = "test_accuracy_shift_"


def load_logged_model(model_uri: str):
    """Load a Keras model logged to MLflow (Keras safe mode on: no arbitrary code)."""
    tracking.client()
    return mlflow.keras.load_model(model_uri, load_model_kwargs={"safe_mode": True})


@task(
    name="evaluate", task_run_name="evaluate-{trained.head}-seed{trained.seed}", cache_policy=NONE
)
def evaluate_head(trained: TrainedRun, cache_dir: str) -> dict[str, float]:
    """Load the model back from MLflow, score it on the test split (as is, and shifted by
    0-30 pixels for the translation claim), log the test metrics."""
    logger = run_logger()
    client = tracking.client()
    try:
        keras.backend.clear_session(free_memory=True)  # earlier models' graphs
        model = load_logged_model(trained.model_uri)
        images, labels = load_split(cache_dir, "test")
        started = time.perf_counter()
        metrics = evaluate_model(model, images, labels)
        for pixels, accuracy in translation_accuracy(model, images, labels).items():
            metrics[f"{SHIFT_METRIC_PREFIX}{pixels}"] = accuracy
        metrics["evaluate_seconds"] = time.perf_counter() - started
        tracking.log_metrics(client, trained.run_id, metrics)
    except BaseException:
        tracking.finish_run(client, trained.run_id, failed=True)
        raise
    tracking.finish_run(client, trained.run_id)
    logger.info(
        "%s seed %d on %d test images: accuracy %.4f, loss %.4f, AUC %.4f",
        trained.head,
        trained.seed,
        len(labels),
        metrics["test_accuracy"],
        metrics["test_loss"],
        metrics["test_auc"],
    )
    return metrics
