"""The comparison's tables: one summary row per head (means over seeds), the head and the
seed that decisions pick, and the summary as CSV and Markdown.

Every decision is made on the validation split (``records.SELECTION_METRIC``); test scores
are reported beside it and decide nothing.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from gap_models import records
from gap_models.architecture import HEAD_NAMES
from gap_models.records import RunResult

SUMMARY_COLUMNS = (
    records.HEAD,
    records.SEEDS_COLUMN,
    records.TRAINABLE_PARAMS,
    records.SELECTION_METRIC,
    records.TEST_ACCURACY,
    records.TEST_ACCURACY_STD_COLUMN,
    records.TEST_LOSS,
    records.TEST_AUC,
    records.BEST_VAL_ACCURACY,
    records.TRAIN_MINUS_VAL_COLUMN,
    records.TRAIN_SECONDS,
    records.TRAIN_IMAGES_PER_SECOND,
)
SELECTION_TEXT = "mean final validation accuracy (the validation split; test only reports)"
"""How the summary names the rule that picks the best head."""


def ordered_heads(results: list[RunResult]) -> list[str]:
    """The heads present in ``results``, in display order."""
    present = {result.head for result in results}
    return [head for head in HEAD_NAMES if head in present]


def runs_of(results: list[RunResult], head: str) -> list[RunResult]:
    return [result for result in results if result.head == head]


def spread(values: list[float]) -> float:
    """Standard deviation over seeds (0 for a single seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def final_gap(run: RunResult) -> float:
    """Train minus validation accuracy at the last epoch (the curves' generalisation gap)."""
    return run.history[records.ACCURACY][-1] - run.history[records.VAL_ACCURACY][-1]


def summarize(results: list[RunResult]) -> list[dict]:
    """One row per head: means over seeds (and the spread of test accuracy)."""
    if not results:
        raise ValueError("no run results to summarize")
    rows = []
    for head in ordered_heads(results):
        runs = runs_of(results, head)
        mean = lambda values: float(np.mean(values))  # noqa: E731
        accuracies = [r.test_accuracy for r in runs]
        rows.append(
            {
                records.HEAD: head,
                records.SEEDS_COLUMN: len(runs),
                records.TRAINABLE_PARAMS: runs[0].trainable_params,
                records.SELECTION_METRIC: mean([r.final_val_accuracy for r in runs]),
                records.TEST_ACCURACY: mean(accuracies),
                records.TEST_ACCURACY_STD_COLUMN: spread(accuracies),
                records.TEST_LOSS: mean([r.test_metrics[records.TEST_LOSS] for r in runs]),
                records.TEST_AUC: mean([r.test_metrics[records.TEST_AUC] for r in runs]),
                records.BEST_VAL_ACCURACY: mean([r.best_val_accuracy for r in runs]),
                records.TRAIN_MINUS_VAL_COLUMN: mean([final_gap(r) for r in runs]),
                records.TRAIN_SECONDS: mean([r.train_seconds for r in runs]),
                records.TRAIN_IMAGES_PER_SECOND: mean([r.train_images_per_second for r in runs]),
            }
        )
    return rows


def best_head(rows: list[dict]) -> str:
    """The head with the highest mean final validation accuracy (ties: fewer parameters win).
    Chosen on validation, so its test accuracy stays an unbiased report."""
    best = max(
        rows, key=lambda row: (row[records.SELECTION_METRIC], -row[records.TRAINABLE_PARAMS])
    )
    return best[records.HEAD]


def best_seed(results: list[RunResult], head: str) -> RunResult | None:
    """The run of ``head`` with the highest final validation accuracy (None when the head
    did not run): the model that is drawn and registered, chosen without the test split."""
    return max(runs_of(results, head), key=lambda r: r.final_val_accuracy, default=None)


def summary_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in SUMMARY_COLUMNS})
    return buffer.getvalue()


def summary_markdown(rows: list[dict], links: dict[str, str] | None = None) -> str:
    """A Markdown table; ``links`` maps a head to a URL (its MLflow runs) for the head cell.
    Every score column names its split."""
    links = links or {}
    header = (
        "| head | seeds | trainable params | final val accuracy (selects) | test accuracy "
        "| test loss | test AUC | best val accuracy (any epoch) "
        "| train - val accuracy (last epoch) | train s | images/s |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        head = row[records.HEAD]
        label = f"[{head}]({links[head]})" if head in links else head
        accuracy = f"{row[records.TEST_ACCURACY]:.4f}"
        if row[records.SEEDS_COLUMN] > 1:
            accuracy += f" ± {row[records.TEST_ACCURACY_STD_COLUMN]:.4f}"
        lines.append(
            f"| {label} | {row[records.SEEDS_COLUMN]} | {row[records.TRAINABLE_PARAMS]:,} "
            f"| {row[records.SELECTION_METRIC]:.4f} | {accuracy} | {row[records.TEST_LOSS]:.4f} "
            f"| {row[records.TEST_AUC]:.4f} | {row[records.BEST_VAL_ACCURACY]:.4f} "
            f"| {row[records.TRAIN_MINUS_VAL_COLUMN]:+.4f} | {row[records.TRAIN_SECONDS]:.1f} "
            f"| {row[records.TRAIN_IMAGES_PER_SECOND]:.0f} |"
        )
    return "\n".join(lines) + "\n"
