"""Prefect task: the comparison, drawn from what MLflow recorded for every child run (the
one route by which scores reach the report and the promotion)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from gap_models.data import cached_class_names
from gap_models.evidence import from_cells
from gap_models.records import RunResult
from gap_models.report import Report, overview_markdown, write_report
from tasks import run_logger
from tracking import runs
from tracking.cells import TrainedRun
from tracking.logged_model import load_logged_model

ARTIFACT_KEY = "compare-heads-summary"


@task(name="compare", cache_policy=NONE)
def compare_runs(
    trained_runs: list[TrainedRun],
    experiment_id: str,
    parent_run_id: str,
    output_dir: str,
    cache_dir: str,
) -> tuple[Report, str, list[RunResult]]:
    """Read every cell's result back from MLflow, write the comparison (tables, statistics,
    claims, plots) to ``output_dir``, upload it to the parent run, and publish an overview
    as a Prefect artifact; returns the report, the overview's Markdown and the results."""
    client = runs.client()
    results = [runs.fetch_result(client, trained.run_id) for trained in trained_runs]
    cells = [(r, runs.fetch_predictions(client, r.run_id)) for r in results]
    evidence = from_cells("this run", cells, cached_class_names(cache_dir))
    report = write_report(results, evidence, output_dir, cache_dir, load_logged_model)
    client.log_artifacts(parent_run_id, str(report.out_dir))
    links = {}
    for result in results:
        links.setdefault(result.head, runs.run_url(result.run_id, experiment_id))
    parent = runs.run_url(parent_run_id, experiment_id) or parent_run_id
    markdown = overview_markdown(report, {k: v for k, v in links.items() if v}) + (
        f"MLflow parent run: {parent} (tracking URI `{runs.tracking_uri()}`); "
        f"plots in `{report.out_dir}`."
    )
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown, description="Head comparison")
    run_logger().info("Comparison:\n%s\nWritten to %s", report.summary_table, report.out_dir)
    return report, markdown, results
