"""The report writer: a comparison written to one folder (summary tables, statistics and
claims in report.md, the plots, the best model's confusion matrix, the class activation
maps of the best ``gap`` model), and its Markdown texts.

``write_report`` is the one place that decides what a comparison contains; the compare task
fetches the cells' results from the tracker, calls it, and uploads the folder as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from gap_models import records
from gap_models.data import cached_class_names, load_split
from gap_models.evaluation import confusion_matrix, predict_probabilities
from gap_models.evidence import Evidence
from gap_models.findings import analysis_markdown
from gap_models.plots import (
    plot_cam_grid,
    plot_confusion_matrix,
    plot_curves,
    plot_generalization_gap,
    plot_test_accuracy,
    plot_translation,
)
from gap_models.probabilities import class_probabilities, predicted_classes
from gap_models.records import RunResult
from gap_models.results import (
    SELECTION_TEXT,
    best_head,
    best_seed,
    summarize,
    summary_csv,
    summary_markdown,
)
from gap_models.robustness import class_activation_maps
from gap_models.run_plots import plot_misclassified, plot_roc, plot_training_time, roc_points
from gap_models.verdicts import Plan, analyse

ModelLoader = Callable[[str], object]
"""Loads a logged model from its URI (the tracking layer supplies it)."""


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote and decided."""

    out_dir: Path
    rows: list[dict]
    best_head: str
    summary_table: str
    analysis_text: str
    plot_seconds: float
    cam_model_uri: str | None


def cam_figure(model, cache_dir: str, per_class: int | None = None) -> Figure:
    """Class activation maps of a ``gap`` model on the first test photos of each class
    (``per_class`` each; by default 8 photos in all, at least 1 per class)."""
    images, labels = load_split(cache_dir, records.REPORT_SPLIT)
    classes = cached_class_names(cache_dir)
    per_class = per_class or max(1, 8 // len(classes))
    chosen = np.concatenate(
        [np.flatnonzero(labels == c)[:per_class] for c in range(len(classes))]
    ).astype(np.int64)
    probabilities = class_probabilities(model.predict(images[chosen], verbose=0))
    cams = class_activation_maps(model, images[chosen], predicted_classes(probabilities))
    return plot_cam_grid(images[chosen], cams, labels[chosen], probabilities, classes)


def confusion_figure(model, cache_dir: str, title: str) -> Figure:
    """The confusion matrix of a model on the cached test split."""
    images, labels = load_split(cache_dir, records.REPORT_SPLIT)
    matrix = confusion_matrix(labels, predict_probabilities(model, images))
    return plot_confusion_matrix(matrix, cached_class_names(cache_dir), title)


def evidence_figures(results: list[RunResult], rows: list[dict], evidence: Evidence,
                     cache_dir: str) -> dict[str, Figure]:  # fmt: skip
    """ROC curves (two classes) and the best model's surest mistakes, from the cells'
    per-photo test predictions; training time per head."""
    figures = {"training_time.png": plot_training_time(results)}
    test = records.REPORT_SPLIT
    chosen = {}
    for head, arm in evidence.arms.items():
        run = best_seed(results, head)
        if run is not None and test in arm.scores:
            chosen[head] = (arm.scores[test][arm.seeds.index(run.seed)], arm.labels[test], run)
    if chosen and all(scores.ndim == 1 for scores, _, _ in chosen.values()):
        curves = {head: roc_points(labels, scores) for head, (scores, labels, _) in chosen.items()}
        figures["roc_curves.png"] = plot_roc(curves)
    winner = best_head(rows)
    if winner in chosen:
        scores, labels, run = chosen[winner]
        probabilities = class_probabilities(scores)
        predicted = predicted_classes(probabilities)
        confidence = probabilities[np.arange(len(predicted)), predicted]
        images, _ = load_split(cache_dir, test)
        figures["misclassified.png"] = plot_misclassified(
            images, labels, predicted, confidence, evidence.class_names,
            f"{winner} seed {run.seed}",
        )  # fmt: skip
    return figures


def draw_figures(
    results: list[RunResult], rows: list[dict], evidence: Evidence, cache_dir: str,
    load_model: ModelLoader | None,
) -> tuple[dict[str, Figure], str | None]:  # fmt: skip
    """Every plot of the comparison by file name, and the model the CAM grid shows."""
    figures = {
        "accuracy_curves.png": plot_curves(results, records.ACCURACY),
        "loss_curves.png": plot_curves(results, records.LOSS),
        "test_accuracy_vs_params.png": plot_test_accuracy(rows),
        "generalization_gap.png": plot_generalization_gap(results),
        "translation_robustness.png": plot_translation(results),
        **evidence_figures(results, rows, evidence, cache_dir),
    }
    if load_model is None:
        return figures, None
    winner = best_seed(results, best_head(rows))
    if winner is not None and winner.model_uri:
        title = f"{winner.head} seed {winner.seed}, test split"
        figures["confusion_matrix.png"] = confusion_figure(
            load_model(winner.model_uri), cache_dir, title
        )
    gap = best_seed(results, "gap")
    if gap is None or not gap.model_uri:
        return figures, None
    figures["cam_grid.png"] = cam_figure(load_model(gap.model_uri), cache_dir)
    return figures, gap.model_uri


def write_report(
    results: list[RunResult],
    evidence: Evidence,
    out_dir: str | Path,
    cache_dir: str,
    load_model: ModelLoader | None = None,
) -> Report:
    """Write ``plots/*.png``, ``summary.csv``, ``summary.md`` and ``report.md`` to
    ``out_dir``; ``load_model`` (a URI -> model function) enables the CAM grid. The report's
    statistics are the studies' (``gap_models.findings``) on this run's cells."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    started = time.perf_counter()
    figures, cam_model = draw_figures(results, rows, evidence, cache_dir, load_model)
    plot_seconds = time.perf_counter() - started
    for name, figure in figures.items():
        figure.savefig(out / "plots" / name, dpi=110)
    table = summary_markdown(rows)
    analysis = analysis_markdown(analyse(evidence, Plan.every_pair(list(evidence.arms))), "###")
    (out / "summary.csv").write_text(summary_csv(rows))
    (out / "summary.md").write_text(table)
    (out / "report.md").write_text(report_markdown(results, table, analysis))
    return Report(out, rows, best_head(rows), table, analysis, plot_seconds, cam_model)


def overview_markdown(report: Report, links: dict[str, str]) -> str:
    """The short version for a dashboard: table (heads linked), winner, statistics, claims."""
    return "\n".join(
        [
            "# compare-heads",
            "",
            summary_markdown(report.rows, links),
            f"Best head by {SELECTION_TEXT}: **{report.best_head}**.",
            "",
            report.analysis_text,
        ]
    )


def report_markdown(results: list[RunResult], summary_table: str, analysis: str) -> str:
    """``report.md``: the summary, then the analysis with the claims and their rules."""
    seeds = sorted({r.seed for r in results})
    return "\n".join(
        [
            "# compare-heads report",
            "",
            f"Heads {[row[records.HEAD] for row in summarize(results)]}, seeds {seeds}. The best "
            f"head is chosen by {SELECTION_TEXT}. Every head of one seed started from identical "
            "backbone weights.",
            "",
            "## Summary",
            "",
            summary_table,
            "## Statistics",
            "",
            analysis,
            "Translation rule: each test photo is shifted by 0, 10, 20 and 30 pixels right, "
            "left, down and up; the uncovered band repeats the photo's edge pixels.",
            "",
            "Why only `gap` has class activation maps: its logit is the spatial mean of "
            "sum_k w_k A_k(x, y) + b, so that sum, map by map, says how much each position votes "
            "for each class. The `fc` head flattens the maps and mixes every position with "
            "every channel in its first dense layer: no per-position contribution exists.",
            "",
        ]
    )
