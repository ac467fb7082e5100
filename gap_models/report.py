"""The comparison: per-head summary table and the plots drawn from every (head, seed) run.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot global state), so they are
safe to draw from a worker thread and need no display.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure

from gap_models import HEAD_NAMES
from gap_models.probabilities import predicted_classes

HEAD_COLOURS = {
    "fc": "tab:blue",
    "fc_dropout": "tab:orange",
    "gap": "tab:green",
    "avgpool": "tab:red",
}
CURVE_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class RunResult:
    """Everything the comparison needs from one trained (head, seed) run."""

    head: str
    seed: int
    run_id: str
    trainable_params: int
    history: dict[str, list[float]]
    test_metrics: dict[str, float]
    train_seconds: float
    train_images_per_second: float
    shift_accuracy: dict[int, float] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    model_uri: str = ""
    # The final model on the validation split: what decisions are made on.
    final_val_accuracy: float = float("nan")

    @property
    def best_val_accuracy(self) -> float:
        values = self.history.get("val_accuracy") or [float("nan")]
        return float(max(values))


SUMMARY_COLUMNS = (
    "head",
    "seeds",
    "trainable_params",
    "final_val_accuracy",
    "test_accuracy",
    "test_accuracy_std",
    "test_loss",
    "test_auc",
    "best_val_accuracy",
    "final_train_minus_val_accuracy",
    "train_seconds",
    "train_images_per_second",
)


def _ordered_heads(results: list[RunResult]) -> list[str]:
    present = {result.head for result in results}
    return [head for head in HEAD_NAMES if head in present]


def summarize(results: list[RunResult]) -> list[dict]:
    """One row per head: means over seeds (and the spread of test accuracy)."""
    if not results:
        raise ValueError("no run results to summarize")
    rows = []
    for head in _ordered_heads(results):
        runs = [r for r in results if r.head == head]
        accuracies = np.array([r.test_metrics["test_accuracy"] for r in runs])
        gaps = [r.history["accuracy"][-1] - r.history["val_accuracy"][-1] for r in runs]
        rows.append(
            {
                "head": head,
                "seeds": len(runs),
                "trainable_params": runs[0].trainable_params,
                "final_val_accuracy": float(np.mean([r.final_val_accuracy for r in runs])),
                "test_accuracy": float(accuracies.mean()),
                "test_accuracy_std": float(accuracies.std(ddof=1)) if len(runs) > 1 else 0.0,
                "test_loss": float(np.mean([r.test_metrics["test_loss"] for r in runs])),
                "test_auc": float(np.mean([r.test_metrics["test_auc"] for r in runs])),
                "best_val_accuracy": float(np.mean([r.best_val_accuracy for r in runs])),
                "final_train_minus_val_accuracy": float(np.mean(gaps)),
                "train_seconds": float(np.mean([r.train_seconds for r in runs])),
                "train_images_per_second": float(
                    np.mean([r.train_images_per_second for r in runs])
                ),
            }
        )
    return rows


def best_head(rows: list[dict]) -> str:
    """The head with the highest mean final validation accuracy (ties: fewer parameters win).
    Chosen on validation, so its test accuracy stays an unbiased report."""
    return max(rows, key=lambda row: (row["final_val_accuracy"], -row["trainable_params"]))["head"]


def summary_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in SUMMARY_COLUMNS})
    return buffer.getvalue()


def summary_markdown(rows: list[dict], links: dict[str, str] | None = None) -> str:
    """A Markdown table; ``links`` maps a head to a URL (its MLflow runs) for the head cell."""
    links = links or {}
    header = (
        "| head | seeds | trainable params | test accuracy | test loss | test AUC "
        "| best val accuracy | train - val accuracy (last epoch) | train s | images/s |"
    )
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        head = f"[{row['head']}]({links[row['head']]})" if row["head"] in links else row["head"]
        accuracy = f"{row['test_accuracy']:.4f}"
        if row["seeds"] > 1:
            accuracy += f" ± {row['test_accuracy_std']:.4f}"
        lines.append(
            f"| {head} | {row['seeds']} | {row['trainable_params']:,} | {accuracy} "
            f"| {row['test_loss']:.4f} | {row['test_auc']:.4f} | {row['best_val_accuracy']:.4f} "
            f"| {row['final_train_minus_val_accuracy']:+.4f} | {row['train_seconds']:.1f} "
            f"| {row['train_images_per_second']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _mean_curve(runs: list[RunResult], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    length = min(len(r.history.get(metric, [])) for r in runs)
    values = np.array([r.history[metric][:length] for r in runs])
    return values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot_curves(results: list[RunResult], metric: str) -> Figure:
    """Training (dashed) and validation (solid) ``metric`` per epoch, one colour per head.

    With several seeds the line is the mean and the band spans min to max.
    """
    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', not {metric!r}")
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for head in _ordered_heads(results):
        runs = [r for r in results if r.head == head]
        colour = HEAD_COLOURS[head]
        for prefix, style, label in (("", "--", "train"), ("val_", "-", "validation")):
            mean, low, high = _mean_curve(runs, prefix + metric)
            epochs = np.arange(1, len(mean) + 1)
            axes.plot(epochs, mean, style, color=colour, marker="o", label=f"{head} {label}")
            if len(runs) > 1:
                axes.fill_between(epochs, low, high, color=colour, alpha=0.15)
    seeds = sorted({r.seed for r in results})
    axes.set_title(f"{metric.capitalize()} per epoch (seeds {seeds}; train dashed)")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(ncol=2, fontsize="small")
    return figure


def plot_test_accuracy(rows: list[dict]) -> Figure:
    """Test accuracy per head (error bar: std over seeds) beside its trainable parameters."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    accuracy_axes, params_axes = figure.subplots(1, 2)
    heads = [row["head"] for row in rows]
    colours = [HEAD_COLOURS[head] for head in heads]
    accuracies = [row["test_accuracy"] for row in rows]
    errors = [row["test_accuracy_std"] for row in rows]
    bars = accuracy_axes.bar(heads, accuracies, yerr=errors, color=colours, capsize=4)
    accuracy_axes.bar_label(bars, labels=[f"{a:.3f}" for a in accuracies], padding=3)
    low = max(0.0, math.floor((min(accuracies) - 0.1) * 10) / 10)
    accuracy_axes.set_ylim(low, 1.0)
    accuracy_axes.set_title("Test accuracy (held-out split)")
    params = [row["trainable_params"] for row in rows]
    bars = params_axes.bar(heads, params, color=colours)
    params_axes.bar_label(bars, labels=[f"{p:,}" for p in params], padding=3)
    params_axes.set_yscale("log")
    params_axes.set_title("Trainable parameters (log scale)")
    for axes in (accuracy_axes, params_axes):
        axes.grid(axis="y", alpha=0.3)
    return figure


# --- the article's claims ------------------------------------------------------------------


def plot_generalization_gap(results: list[RunResult]) -> Figure:
    """Train minus validation accuracy per epoch, one colour per head (mean over seeds)."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for head in _ordered_heads(results):
        runs = [r for r in results if r.head == head]
        length = min(len(r.history["accuracy"]) for r in runs)
        gaps = np.array(
            [
                np.subtract(r.history["accuracy"][:length], r.history["val_accuracy"][:length])
                for r in runs
            ]
        )
        epochs = np.arange(1, length + 1)
        axes.plot(epochs, gaps.mean(axis=0), "-o", color=HEAD_COLOURS[head], label=head)
        if len(runs) > 1:
            axes.fill_between(
                epochs, gaps.min(axis=0), gaps.max(axis=0), color=HEAD_COLOURS[head], alpha=0.15
            )
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_title("Overfitting: train minus validation accuracy per epoch")
    axes.set_xlabel("epoch")
    axes.set_ylabel("train accuracy - validation accuracy")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def plot_translation(results: list[RunResult]) -> Figure:
    """Test accuracy against shift in pixels (mean over seeds, band min-max), per head."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for head in _ordered_heads(results):
        runs = [r for r in results if r.head == head and r.shift_accuracy]
        if not runs:
            continue
        shifts = sorted(runs[0].shift_accuracy)
        values = np.array([[r.shift_accuracy[s] for s in shifts] for r in runs])
        axes.plot(shifts, values.mean(axis=0), "-o", color=HEAD_COLOURS[head], label=head)
        if len(runs) > 1:
            axes.fill_between(
                shifts, values.min(axis=0), values.max(axis=0), color=HEAD_COLOURS[head], alpha=0.15
            )
    axes.set_title("Translation robustness: test images shifted, edge-filled (4 directions)")
    axes.set_xlabel("shift (pixels)")
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def plot_cam_grid(
    images: np.ndarray,
    cams: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: tuple[str, ...] = ("cat", "dog"),
) -> Figure:
    """Per photo: the photo, and where the evidence for its classes lies.

    Two classes: ``cams`` are class-1 evidence maps (positive = class 1, "dog"); the class-0
    map is the negated map. Both maps of a photo are clipped at zero and share one colour
    scale, the photo's largest evidence of either sign: strong evidence shows strongly, and
    the weak evidence for the losing class stays faint instead of being stretched to full
    colour. More classes: the map of the predicted class. Overlaid at 50%.
    """
    binary = len(class_names) == 2
    count = len(images)
    columns = 3 if binary else 2
    figure = Figure(figsize=(2.2 * columns, 2.2 * count), layout="constrained")
    grid = figure.subplots(count, columns, squeeze=False)
    predicted = predicted_classes(probabilities)
    for row in range(count):
        truth, guess = class_names[labels[row]], class_names[predicted[row]]
        grid[row, 0].imshow(images[row])
        title = f"{truth}: P({guess})={probabilities[row, predicted[row]]:.2f}"
        grid[row, 0].set_title(title, fontsize=9)
        scale = float(np.abs(cams[row]).max()) or 1.0
        panels = (
            ((1, class_names[1], "Reds"), (-1, class_names[0], "Blues"))
            if binary
            else ((1, guess, "Reds"),)
        )
        for column, (sign, name, colours) in enumerate(panels, 1):
            grid[row, column].imshow(images[row])
            evidence = np.clip(sign * cams[row], 0, None)
            grid[row, column].imshow(evidence, cmap=colours, alpha=0.5, vmin=0, vmax=scale)
            grid[row, column].set_title(f"evidence for {name}", fontsize=9)
    for axes in grid.flat:
        axes.set_axis_off()
    return figure


def plot_confusion_matrix(matrix: np.ndarray, class_names: tuple[str, ...], title: str) -> Figure:
    """Counts of (true, predicted) class on the test split, rows normalised by colour."""
    figure = Figure(figsize=(1.6 + 0.55 * len(class_names), 1.2 + 0.5 * len(class_names)))
    axes = figure.subplots()
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if shares[row, column] > 0.6 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    figure.set_layout_engine("constrained")
    return figure
