"""The comparison's figures, drawn from the cells' results: curves, accuracy against size,
overfitting, translation robustness, class activation maps and the confusion matrix.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot global state), so they are
safe to draw from a worker thread and need no display. Over several seeds a line is the
mean and its band spans the minimum to the maximum (``_mean_with_band``).
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gap_models import records
from gap_models.architecture import HEADS
from gap_models.probabilities import predicted_classes
from gap_models.records import RunResult
from gap_models.results import ordered_heads, runs_of

HEAD_COLOURS = {name: spec.colour for name, spec in HEADS.items()}


def _mean_with_band(
    axes: Axes, x, values: np.ndarray, colour: str, label: str, style: str = "-o"
) -> None:
    """One line per head: the mean over seeds (rows of ``values``), and with more than one
    seed a band from the minimum to the maximum."""
    values = np.asarray(values, dtype=float)
    axes.plot(x, values.mean(axis=0), style, color=colour, label=label)
    if len(values) > 1:
        axes.fill_between(x, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15)


def _per_epoch(runs: list[RunResult], measure) -> tuple[np.ndarray, np.ndarray]:
    """Epochs 1..n and a (seeds, n) array of ``measure(run)`` cut to the shortest run."""
    series = [np.asarray(measure(run), dtype=float) for run in runs]
    length = min(len(values) for values in series)
    return np.arange(1, length + 1), np.array([values[:length] for values in series])


def _finish(axes: Axes, title: str, xlabel: str, ylabel: str, integer_x: bool = True) -> None:
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if integer_x:
        axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(ncol=2, fontsize="small")


def plot_curves(results: list[RunResult], metric: str) -> Figure:
    """Training (dashed) and validation (solid) ``metric`` per epoch, one colour per head."""
    if metric not in (records.ACCURACY, records.LOSS):
        raise ValueError(f"metric must be {records.ACCURACY!r} or {records.LOSS!r}, not {metric!r}")
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for head in ordered_heads(results):
        runs = runs_of(results, head)
        for key, style, label in (
            (metric, "--o", "train"),
            ("val_" + metric, "-o", records.SELECTION_SPLIT),
        ):
            epochs, values = _per_epoch(runs, lambda run, key=key: run.history[key])
            _mean_with_band(axes, epochs, values, HEAD_COLOURS[head], f"{head} {label}", style)
    seeds = sorted({r.seed for r in results})
    _finish(axes, f"{metric.capitalize()} per epoch (seeds {seeds}; train dashed)", "epoch", metric)
    return figure


def plot_test_accuracy(rows: list[dict]) -> Figure:
    """Test accuracy per head (error bar: std over seeds) beside its trainable parameters."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    accuracy_axes, params_axes = figure.subplots(1, 2)
    heads = [row[records.HEAD] for row in rows]
    colours = [HEAD_COLOURS[head] for head in heads]
    accuracies = [row[records.TEST_ACCURACY] for row in rows]
    errors = [row[records.TEST_ACCURACY_STD_COLUMN] for row in rows]
    bars = accuracy_axes.bar(heads, accuracies, yerr=errors, color=colours, capsize=4)
    accuracy_axes.bar_label(bars, labels=[f"{a:.3f}" for a in accuracies], padding=3)
    low = max(0.0, math.floor((min(accuracies) - 0.1) * 10) / 10)
    accuracy_axes.set_ylim(low, 1.0)
    accuracy_axes.set_title("Test accuracy (held-out split; reported, not used to select)")
    params = [row[records.TRAINABLE_PARAMS] for row in rows]
    bars = params_axes.bar(heads, params, color=colours)
    params_axes.bar_label(bars, labels=[f"{p:,}" for p in params], padding=3)
    params_axes.set_yscale("log")
    params_axes.set_title("Trainable parameters (log scale)")
    for axes in (accuracy_axes, params_axes):
        axes.grid(axis="y", alpha=0.3)
    return figure


def plot_generalization_gap(results: list[RunResult]) -> Figure:
    """Train minus validation accuracy per epoch, one colour per head."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for head in ordered_heads(results):
        epochs, gaps = _per_epoch(
            runs_of(results, head),
            lambda run: np.subtract(
                run.history[records.ACCURACY], run.history[records.VAL_ACCURACY]
            ),
        )
        _mean_with_band(axes, epochs, gaps, HEAD_COLOURS[head], head)
    axes.axhline(0, color="grey", linewidth=0.8)
    _finish(
        axes,
        "Overfitting: train minus validation accuracy per epoch",
        "epoch",
        "train accuracy - validation accuracy",
    )
    return figure


def plot_translation(results: list[RunResult]) -> Figure:
    """Test accuracy against shift in pixels, per head."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for head in ordered_heads(results):
        runs = [r for r in runs_of(results, head) if r.shift_accuracy]
        if not runs:
            continue
        shifts = sorted(runs[0].shift_accuracy)
        values = np.array([[r.shift_accuracy[s] for s in shifts] for r in runs])
        _mean_with_band(axes, shifts, values, HEAD_COLOURS[head], head)
    _finish(
        axes,
        "Translation robustness: test images shifted, edge-filled (4 directions)",
        "shift (pixels)",
        "test accuracy",
        integer_x=False,
    )
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
