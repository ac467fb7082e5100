"""Prefect task: the comparison, drawn from what MLflow recorded for every child run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from gap_models.analysis import class_activation_maps
from gap_models.claims import claims, report_markdown, statistics_markdown
from gap_models.data import load_split
from gap_models.report import (
    CURVE_METRICS,
    RunResult,
    best_head,
    plot_cam_grid,
    plot_curves,
    plot_generalization_gap,
    plot_test_accuracy,
    plot_translation,
    summarize,
    summary_csv,
    summary_markdown,
)
from tasks import run_logger, tracking
from tasks.evaluate import SHIFT_METRIC_PREFIX, load_logged_model
from tasks.train import TrainedRun

ARTIFACT_KEY = "compare-heads-summary"


def fetch_result(client, trained: TrainedRun) -> RunResult:
    """Rebuild a run's curves and scores from MLflow (the single record of what happened)."""
    run = client.get_run(trained.run_id)
    history = {
        key: _history(client, trained.run_id, key) for key in (*CURVE_METRICS, "epoch_seconds")
    }
    metrics = run.data.metrics
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
        history=history,
        test_metrics={k: metrics[k] for k in ("test_accuracy", "test_loss", "test_auc")},
        train_seconds=metrics["train_seconds"],
        train_images_per_second=metrics["train_images_per_second"],
        shift_accuracy=dict(sorted(shifts.items())),
        epoch_seconds=history.pop("epoch_seconds"),
    )


def _history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def best_gap_model_uri(trained_runs: list[TrainedRun], results: list[RunResult]) -> str | None:
    """The logged model of the ``gap`` run with the best test accuracy (None without gap)."""
    scored = [
        (result.test_metrics["test_accuracy"], trained.model_uri)
        for trained, result in zip(trained_runs, results, strict=True)
        if trained.head == "gap"
    ]
    return max(scored)[1] if scored else None


def cam_figure(model_uri: str, cache_dir: str, per_class: int = 4):
    """Class activation maps of a ``gap`` model on the first test photos of each class."""
    images, labels = load_split(cache_dir, "test")
    chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in (0, 1)])
    model = load_logged_model(model_uri)
    probabilities = model.predict(images[chosen], verbose=0).reshape(-1)
    cams = class_activation_maps(model, images[chosen])
    return plot_cam_grid(images[chosen], cams, labels[chosen], probabilities)


def head_links(results: list[RunResult], experiment_id: str) -> dict[str, str]:
    """Per head, a link to its (first seed's) MLflow run, where the UI is a server."""
    links = {}
    for result in results:
        url = tracking.run_url(result.run_id, experiment_id)
        if url and result.head not in links:
            links[result.head] = url
    return links


@task(name="compare", cache_policy=NONE)
def compare_runs(
    trained_runs: list[TrainedRun],
    experiment_id: str,
    parent_run_id: str,
    output_dir: str,
    cache_dir: str,
) -> dict:
    """Summary table, statistics, claims report and plots: on the parent run, in
    ``output_dir`` and as a Prefect artifact."""
    logger = run_logger()
    client = tracking.client()
    results = [fetch_result(client, trained) for trained in trained_runs]
    drawing_started = time.perf_counter()
    rows = summarize(results)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "accuracy_curves.png": plot_curves(results, "accuracy"),
        "loss_curves.png": plot_curves(results, "loss"),
        "test_accuracy_vs_params.png": plot_test_accuracy(rows),
        "generalization_gap.png": plot_generalization_gap(results),
        "translation_robustness.png": plot_translation(results),
    }
    gap_model = best_gap_model_uri(trained_runs, results)
    if gap_model is not None:
        figures["cam_grid.png"] = cam_figure(gap_model, cache_dir)
    plot_seconds = time.perf_counter() - drawing_started
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=110)
        client.log_figure(parent_run_id, figure, f"plots/{name}")
    table_csv, table_md = summary_csv(rows), summary_markdown(rows)
    (out / "summary.csv").write_text(table_csv)
    (out / "summary.md").write_text(table_md)
    client.log_text(parent_run_id, table_csv, "summary.csv")
    client.log_text(parent_run_id, table_md, "summary.md")
    report = report_markdown(results, table_md)
    (out / "report.md").write_text(report)
    client.log_text(parent_run_id, report, "report.md")
    winner = best_head(rows)
    parent_link = tracking.run_url(parent_run_id, experiment_id)
    markdown = "\n".join(
        [
            "# compare-heads",
            "",
            summary_markdown(rows, head_links(results, experiment_id)),
            f"Best head by mean test accuracy: **{winner}**.",
            "",
            statistics_markdown(results),
            _claims_markdown(results),
            f"MLflow parent run: {parent_link or parent_run_id} "
            f"(tracking URI `{tracking.tracking_uri()}`); plots in `{out}`.",
        ]
    )
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown, description="Head comparison")
    logger.info("Comparison:\n%s", table_md)
    logger.info("Plots and tables written to %s", out)
    return {
        "rows": rows,
        "best_head": winner,
        "output_dir": str(out),
        "markdown": markdown,
        "plot_seconds": plot_seconds,
    }


def _claims_markdown(results: list[RunResult]) -> str:
    table = claims(results)
    if not table:
        return ""
    lines = [
        "The article's claims (gap against fc):",
        "",
        "| claim | verdict | measured |",
        "|---|---|---|",
    ]
    lines += [f"| {row['claim']} | {row['verdict']} | {row['evidence']} |" for row in table]
    return "\n".join(lines) + "\n"
