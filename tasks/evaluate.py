"""Prefect task: score a logged model on the held-out test split."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from gap_models.evaluation import score_on_test
from tasks import run_logger, tracking
from tasks.train import TrainedRun


@task(
    name="evaluate", task_run_name="evaluate-{trained.head}-seed{trained.seed}", cache_policy=NONE
)
def evaluate_head(trained: TrainedRun, cache_dir: str) -> dict[str, float]:
    """Load the model back from MLflow, score it on the test split (as is, and shifted by
    0-30 pixels for the translation claim), log the test metrics and close the run. An
    adopted run keeps the test metrics it already has."""
    client = tracking.client()
    if trained.reused:  # adopted from an interrupted flow run: scored back then
        return tracking.test_metrics(client, trained.run_id)
    with tracking.closing_run(client, trained.run_id):
        metrics = score_on_test(tracking.load_logged_model(trained.model_uri), cache_dir)
        tracking.log_metrics(client, trained.run_id, metrics)
    run_logger().info(
        "%s seed %d: test accuracy %.4f, loss %.4f, AUC %.4f",
        trained.head,
        trained.seed,
        metrics["test_accuracy"],
        metrics["test_loss"],
        metrics["test_auc"],
    )
    return metrics
