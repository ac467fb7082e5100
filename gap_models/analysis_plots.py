"""Figures of an analysis, with their intervals: a forest plot of the pairwise differences,
each arm's accuracy, validation curves, overfitting on like terms, translation robustness
and speed. Drawn for a study's page and section of docs/RESULTS.md.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from gap_models import records
from gap_models.architecture import HEADS
from gap_models.plots import _finish, _mean_with_band
from gap_models.verdicts import Analysis


def _colour(analysis: Analysis, arm: str, index: int) -> str:
    head = analysis.evidence.arms[arm].head
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    same_head = [a for a in analysis.evidence.arms if analysis.evidence.arms[a].head == head]
    return HEADS[head].colour if len(same_head) == 1 else colours[index % len(colours)]


def _errorbars(axes, labels, values, colours, xlabel: str, title: str) -> None:
    """Horizontal points with interval bars, one row per label (top to bottom)."""
    rows = np.arange(len(labels))[::-1]
    for row, (value, low, high), colour in zip(rows, values, colours, strict=True):
        axes.errorbar(value, row, xerr=[[value - low], [high - value]], fmt="o", color=colour,
                      capsize=4)  # fmt: skip
    axes.set_yticks(rows, labels)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)


def plot_forest(analysis: Analysis) -> Figure:
    """Each pairwise test-accuracy difference with its 95% interval (points)."""
    figure = Figure(figsize=(7, 1.2 + 0.45 * max(len(analysis.family), 1)), layout="constrained")
    axes = figure.add_subplot()
    labels = [f"{d.arm_a} - {d.arm_b}" + (" *" if d.significant else "") for d in analysis.family]
    values = [(100 * d.difference, 100 * d.low, 100 * d.high) for d in analysis.family]
    colours = ["black" if d.significant else "grey" for d in analysis.family]
    _errorbars(axes, labels, values, colours, "test accuracy difference (points)",
               "Pairwise differences, 95% intervals (* Holm p < 0.05)")  # fmt: skip
    axes.axvline(0, color="grey", linewidth=0.8)
    return figure


def _per_arm(analysis: Analysis, values, xlabel: str, title: str, zero: bool = False) -> Figure:
    """One row per arm: a value with its interval (values in the arms' order)."""
    figure = Figure(figsize=(7, 1.2 + 0.45 * len(analysis.arms)), layout="constrained")
    axes = figure.add_subplot()
    labels = [s.arm for s in analysis.arms]
    colours = [_colour(analysis, s.arm, i) for i, s in enumerate(analysis.arms)]
    _errorbars(axes, labels, values, colours, xlabel, title)
    if zero:
        axes.axvline(0, color="grey", linewidth=0.8)
    return figure


def plot_accuracies(analysis: Analysis) -> Figure:
    """Each arm's test accuracy with its 95% interval."""
    values = [tuple(100 * x for x in s.test) for s in analysis.arms]
    return _per_arm(analysis, values, "test accuracy (%)", "Accuracy, 95% intervals")


def plot_curves(analysis: Analysis) -> Figure:
    """Validation accuracy per epoch, per arm over seeds: with BatchNorm statistics as
    Keras tracked them (the faithful recipe), or recomputed before each validation pass
    (the other recipes: precise BatchNorm)."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, (name, arm) in enumerate(analysis.evidence.arms.items()):
        series = [np.asarray(r.history[records.VAL_ACCURACY]) for r in arm.results]
        length = min(len(s) for s in series)
        values = np.array([s[:length] for s in series])
        _mean_with_band(
            axes, np.arange(1, length + 1), values, _colour(analysis, name, index), name
        )
    recipes = {arm.settings.get("recipe", "faithful") for arm in analysis.evidence.arms.values()}
    batch_norm = "precise BatchNorm" if "faithful" not in recipes else "Keras' BatchNorm"
    _finish(axes, f"Validation accuracy per epoch ({batch_norm}; mean, band: min-max over "
            "seeds)", "epoch", "validation accuracy")  # fmt: skip
    return figure


def plot_overfitting(analysis: Analysis) -> Figure:
    """Train-subset minus validation accuracy of the final model, inference mode."""
    values = [tuple(100 * x for x in s.overfit_accuracy) for s in analysis.arms]
    return _per_arm(analysis, values, "train-subset - validation accuracy (points)",
                    "Overfitting on like terms (inference mode), 95% intervals", zero=True)  # fmt: skip


def plot_translation(analysis: Analysis) -> Figure:
    """Test accuracy against shift, per arm, with 95% intervals."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, s in enumerate(analysis.arms):
        shifts = sorted(s.shift_accuracy)
        if not shifts:
            continue
        value, low, high = (np.array([s.shift_accuracy[p][k] for p in shifts]) for k in range(3))
        colour = _colour(analysis, s.arm, index)
        axes.plot(shifts, value, "-o", color=colour, label=s.arm)
        axes.fill_between(shifts, low, high, color=colour, alpha=0.15)
    _finish(axes, "Translation robustness (band: 95% interval)", "shift (pixels)",
            "test accuracy", integer_x=False)  # fmt: skip
    return figure


def plot_speed(analysis: Analysis) -> Figure:
    """Steady-state training images/s per arm (median, 95% interval) beside its FLOPs."""
    figure = Figure(figsize=(10, 1.6 + 0.45 * len(analysis.arms)), layout="constrained")
    speed_axes, flops_axes = figure.subplots(1, 2)
    labels = [s.arm for s in analysis.arms]
    colours = [_colour(analysis, s.arm, i) for i, s in enumerate(analysis.arms)]
    _errorbars(speed_axes, labels, [s.images_per_second for s in analysis.arms], colours,
               "training images / s", "Steady-state speed (epochs 2+)")  # fmt: skip
    rows = np.arange(len(labels))[::-1]
    flops_axes.barh(rows, [s.flops_per_image / 1e6 for s in analysis.arms], color=colours)
    flops_axes.set_yticks(rows, labels)
    flops_axes.set_xlabel("MFLOPs per image (forward)")
    flops_axes.set_title("Analytic cost")
    return figure


def plot_learning_curve(analysis: Analysis) -> Figure:
    """Test accuracy (95% interval) against the share of the training split, one line per
    head (arms that differ in ``train_fraction``)."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    by_head: dict[str, list] = {}
    for summary in analysis.arms:
        arm = analysis.evidence.arms[summary.arm]
        by_head.setdefault(arm.head, []).append((arm.settings.get("train_fraction", 1.0), summary))
    for head, points in by_head.items():
        points.sort(key=lambda point: point[0])
        fractions = np.array([fraction for fraction, _ in points])
        value, low, high = (np.array([100 * s.test[k] for _, s in points]) for k in range(3))
        colour = HEADS[head].colour
        axes.errorbar(fractions, value, yerr=[value - low, high - value], fmt="-o", capsize=4,
                      color=colour, label=head)  # fmt: skip
    axes.set_xscale("log", base=2)
    fractions = sorted({f for points in by_head.values() for f, _ in points})
    axes.set_xticks(fractions, [f"{f:g}" for f in fractions])
    _finish(axes, "Learning curve: test accuracy, 95% intervals", "share of the training split",
            "test accuracy (%)", integer_x=False)  # fmt: skip
    return figure


def plot_capacity(analysis: Analysis) -> Figure:
    """Test accuracy (95% interval) against trainable parameters (log scale), per arm."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, summary in enumerate(analysis.arms):
        value, low, high = (100 * x for x in summary.test)
        axes.errorbar(summary.trainable_params, value, yerr=[[value - low], [high - value]],
                      fmt="o", capsize=4, color=_colour(analysis, summary.arm, index),
                      label=summary.arm)  # fmt: skip
    axes.set_xscale("log")
    _finish(axes, "Accuracy against capacity (95% intervals)", "trainable parameters",
            "test accuracy (%)", integer_x=False)  # fmt: skip
    return figure


FIGURES = {
    "forest": plot_forest,
    "accuracies": plot_accuracies,
    "curves": plot_curves,
    "overfitting": plot_overfitting,
    "translation": plot_translation,
    "speed": plot_speed,
    "learning_curve": plot_learning_curve,
    "capacity": plot_capacity,
}
