"""Prefect task: the comparison, drawn from what MLflow recorded for every child run."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from gap_models.comparison import Report, overview_markdown, write_report
from gap_models.evaluation import SELECTION_METRIC, SHIFT_METRIC_PREFIX
from gap_models.report import CURVE_METRICS, RunResult
from tasks import run_logger, tracking
from tasks.train import TrainedRun

ARTIFACT_KEY = "compare-heads-summary"


def fetch_result(client, trained: TrainedRun) -> RunResult:
    """Rebuild a run's curves and scores from MLflow (the single record of what happened)."""
    metrics = client.get_run(trained.run_id).data.metrics

    def history(key: str) -> list[float]:
        points = client.get_metric_history(trained.run_id, key)
        return [point.value for point in sorted(points, key=lambda point: point.step)]

    shifts = {
        int(key.removeprefix(SHIFT_METRIC_PREFIX)): value
        for key, value in metrics.items()
        if key.startswith(SHIFT_METRIC_PREFIX)
    }
    return RunResult(
        head=trained.head,
        seed=trained.seed,
        run_id=trained.run_id,
        trainable_params=trained.trainable_params,
        history={key: history(key) for key in CURVE_METRICS},
        test_metrics={k: metrics[k] for k in ("test_accuracy", "test_loss", "test_auc")},
        train_seconds=metrics["train_seconds"],
        train_images_per_second=metrics["train_images_per_second"],
        shift_accuracy=dict(sorted(shifts.items())),
        epoch_seconds=history("epoch_seconds"),
        model_uri=trained.model_uri,
        final_val_accuracy=metrics[SELECTION_METRIC],
    )


@task(name="compare", cache_policy=NONE)
def compare_runs(
    trained_runs: list[TrainedRun],
    experiment_id: str,
    parent_run_id: str,
    output_dir: str,
    cache_dir: str,
) -> tuple[Report, str]:
    """Write the comparison (tables, statistics, claims, plots) to ``output_dir``, upload it
    to the parent run, and publish an overview as a Prefect artifact; returns the report and
    the overview's Markdown."""
    client = tracking.client()
    results = [fetch_result(client, trained) for trained in trained_runs]
    report = write_report(results, output_dir, cache_dir, tracking.load_logged_model)
    client.log_artifacts(parent_run_id, str(report.out_dir))
    links = {}
    for result in results:
        links.setdefault(result.head, tracking.run_url(result.run_id, experiment_id))
    parent = tracking.run_url(parent_run_id, experiment_id) or parent_run_id
    markdown = overview_markdown(results, report, {k: v for k, v in links.items() if v}) + (
        f"MLflow parent run: {parent} (tracking URI `{tracking.tracking_uri()}`); "
        f"plots in `{report.out_dir}`."
    )
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown, description="Head comparison")
    run_logger().info("Comparison:\n%s\nWritten to %s", report.summary_table, report.out_dir)
    return report, markdown
