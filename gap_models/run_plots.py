"""Plots people ask for beside the comparison's curves: training time per head (one of the
article's claims), ROC curves on the test split, and the photos the best model gets wrong."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from gap_models.evaluation import roc_auc
from gap_models.plots import HEAD_COLOURS
from gap_models.records import RunResult
from gap_models.results import ordered_heads, runs_of


def plot_training_time(results: list[RunResult]) -> Figure:
    """Training seconds per head (bar: mean over seeds; line: min to max) beside images/s."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    time_axes, speed_axes = figure.subplots(1, 2)
    heads = ordered_heads(results)
    colours = [HEAD_COLOURS[head] for head in heads]
    for axes, measure, title in (
        (time_axes, lambda r: r.train_seconds, "Training time per model (s)"),
        (speed_axes, lambda r: r.train_images_per_second, "Training images / s"),
    ):
        values = [[measure(r) for r in runs_of(results, head)] for head in heads]
        means = [float(np.mean(v)) for v in values]
        spread = [[m - min(v) for m, v in zip(means, values, strict=True)],
                  [max(v) - m for m, v in zip(means, values, strict=True)]]  # fmt: skip
        bars = axes.bar(heads, means, yerr=spread, color=colours, capsize=4)
        axes.bar_label(bars, labels=[f"{m:.0f}" for m in means], padding=3)
        axes.set_title(title + " (mean, min-max over seeds)")
        axes.grid(axis="y", alpha=0.3)
    return figure


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every threshold (ties taken together), and AUC."""
    labels = np.asarray(labels).reshape(-1) == 1
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ordered = np.asarray(scores, dtype=np.float64)[order]
    hits = labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    tpr = np.r_[0, np.cumsum(hits)[last_of_tie] / max(hits.sum(), 1)]
    fpr = np.r_[0, np.cumsum(~hits)[last_of_tie] / max((~hits).sum(), 1)]
    return fpr, tpr, roc_auc(labels, scores)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> Figure:
    """ROC curves on the test split: per head, its seed chosen on validation (head ->
    false positive rates, true positive rates, AUC)."""
    figure = Figure(figsize=(6, 5.5), layout="constrained")
    axes = figure.add_subplot()
    for head, (fpr, tpr, auc) in curves.items():
        axes.plot(fpr, tpr, color=HEAD_COLOURS.get(head), label=f"{head} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("ROC on the test split (each head's seed chosen on validation)")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def plot_misclassified(
    images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
    class_names: tuple[str, ...], title: str, count: int = 12,
) -> Figure:  # fmt: skip
    """The wrongly classified test photos the model was most sure about."""
    wrong = np.flatnonzero(predicted != labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    columns = 4
    rows = max(1, int(np.ceil(len(chosen) / columns)))
    figure = Figure(figsize=(2.3 * columns, 2.5 * rows + 0.4), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat:
        axes.set_axis_off()
    for axes, index in zip(grid.flat, chosen, strict=False):
        axes.imshow(images[index])
        axes.set_title(
            f"{class_names[labels[index]]} called {class_names[predicted[index]]}\n"
            f"P = {confidence[index]:.2f}",
            fontsize=8,
        )
    figure.suptitle(
        f"{title}: {len(wrong)} of {len(labels)} test photos wrong; the surest", fontsize=9
    )
    return figure
