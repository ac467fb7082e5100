"""The report: the article's claims, what we measured, and a verdict for each.

Verdicts follow fixed rules from the numbers, so the report can be regenerated from any run:
with two or more seeds a difference is "supported" only if a paired t-test over seeds gives
p < 0.05 in the claimed direction; with one seed every comparative claim is "inconclusive".
"""

from __future__ import annotations

import math

import numpy as np

from gap_models.analysis import (
    MIN_SEEDS_FOR_INTERVAL,
    PairedComparison,
    accuracy_interval,
    adjusted,
    paired_comparisons,
)
from gap_models.report import RunResult, summarize

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


def _by_seed(results: list[RunResult], head: str, measure) -> dict[int, float]:
    return {r.seed: float(measure(r)) for r in results if r.head == head}


def _g(value: float, sign: bool = False) -> str:
    """4 significant digits; float noise around zero (e.g. -5.6e-17) prints as 0."""
    value = 0.0 if abs(value) < 1e-9 else value
    return f"{value:+.4g}" if sign else f"{value:.4g}"


def _comparison(results, head_a, head_b, measure) -> PairedComparison:
    """``head_a`` minus ``head_b`` in ``measure``, paired by seed (not yet adjusted)."""
    a, b = _by_seed(results, head_a, measure), _by_seed(results, head_b, measure)
    (comparison,) = paired_comparisons({head_a: a, head_b: b})
    return comparison


def _verdict(
    results, comparison: PairedComparison, measure, higher_is_claimed: bool, family: int
) -> tuple[str, str]:
    """Verdict and evidence that A is higher (or lower) than B, judged on the p-value Holm
    adjusted within the family of ``family`` claim tests."""
    a = _by_seed(results, comparison.head_a, measure)
    b = _by_seed(results, comparison.head_b, measure)
    direction = comparison.mean_difference if higher_is_claimed else -comparison.mean_difference
    evidence = (
        f"{comparison.head_a} {_g(np.mean(list(a.values())))} vs {comparison.head_b} "
        f"{_g(np.mean(list(b.values())))}; difference {_g(comparison.mean_difference, sign=True)}"
    )
    if comparison.seeds < 2:
        return INCONCLUSIVE, evidence + " (one seed: no test possible)"
    if math.isnan(comparison.p_value):
        return (
            INCONCLUSIVE,
            evidence + f" (identical difference on all {comparison.seeds} seeds: no test possible)",
        )
    evidence += (
        f", 95% CI [{_g(comparison.low, True)}, {_g(comparison.high, True)}], paired t-test over "
        f"{comparison.seeds} seeds p = {comparison.p_value:.3g}, Holm-adjusted p = "
        f"{comparison.p_holm:.3g} ({family} claim test{'s' if family != 1 else ''})"
    )
    if comparison.significant:
        return (SUPPORTED if direction > 0 else NOT_SUPPORTED), evidence
    return INCONCLUSIVE, evidence + " (not significant)"


def _epoch_seconds(run: RunResult) -> float:
    seconds = run.epoch_seconds[1:] or run.epoch_seconds  # epoch 1 includes tracing
    return float(np.mean(seconds)) if seconds else run.train_seconds


def _final_gap(run: RunResult) -> float:
    return run.history["accuracy"][-1] - run.history["val_accuracy"][-1]


def _shift_drop(run: RunResult) -> float:
    shifts = sorted(run.shift_accuracy)
    return run.shift_accuracy[shifts[0]] - run.shift_accuracy[shifts[-1]] if shifts else math.nan


def claims(results: list[RunResult], gap_head: str = "gap", fc_head: str = "fc") -> list[dict]:
    """Each claim of the article with our measurement and verdict (gap against fc)."""
    heads = {r.head for r in results}
    if not {gap_head, fc_head} <= heads:
        return []
    rows = {row["head"]: row for row in summarize(results)}
    ratio = rows[gap_head]["trainable_params"] / rows[fc_head]["trainable_params"]
    table = [
        {
            "claim": "GAP removes most trainable parameters",
            "verdict": SUPPORTED if ratio < 0.1 else NOT_SUPPORTED,
            "evidence": f"{rows[gap_head]['trainable_params']:,} vs {rows[fc_head]['trainable_params']:,} "
            f"trainable ({ratio:.1%})",
        }
    ]
    checks = [
        (
            "GAP is more accurate than FC (test accuracy)",
            lambda r: r.test_metrics["test_accuracy"],
            True,
        ),
        ("GAP trains faster (seconds per epoch, epoch 1 excluded)", _epoch_seconds, False),
        ("GAP overfits less (train - validation accuracy, last epoch)", _final_gap, False),
        (
            "GAP is more robust to translation (accuracy lost at the largest shift)",
            _shift_drop,
            False,
        ),
    ]
    checks = [
        check
        for check in checks
        if not (check[1] is _shift_drop and any(not r.shift_accuracy for r in results))
    ]
    family = adjusted([_comparison(results, gap_head, fc_head, m) for _, m, _ in checks])
    tested = sum(not math.isnan(c.p_value) for c in family)
    for (claim, measure, higher), comparison in zip(checks, family, strict=True):
        verdict, evidence = _verdict(results, comparison, measure, higher, tested)
        table.append({"claim": claim, "verdict": verdict, "evidence": evidence})
    table.append(
        {
            "claim": "GAP turns feature maps into category confidence maps",
            "verdict": SUPPORTED,
            "evidence": "by construction the class activation map's spatial mean plus the output "
            "bias is the logit (checked numerically in the tests); see cam_grid.png for where "
            "the evidence lies",
        }
    )
    return table


def statistics_markdown(results: list[RunResult]) -> str:
    """Per head: mean, std and 95% interval of the main scores; then every pairwise test."""
    lines = [
        "| head | seeds | test accuracy (95% CI) | std | test loss (std) | best val accuracy (std) |",
        "|---|---|---|---|---|---|",
    ]
    for row in summarize(results):
        runs = [r for r in results if r.head == row["head"]]
        accuracy = [r.test_metrics["test_accuracy"] for r in runs]
        loss = [r.test_metrics["test_loss"] for r in runs]
        best_val = [r.best_val_accuracy for r in runs]
        mean = float(np.mean(accuracy))
        bounds = accuracy_interval(accuracy)
        interval = (
            f"[{bounds[1]:.4f}, {bounds[2]:.4f}]"
            if bounds
            else f"n/a (fewer than {MIN_SEEDS_FOR_INTERVAL} seeds)"
        )
        spread = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
        lines.append(
            f"| {row['head']} | {len(runs)} | {mean:.4f} {interval} | {spread(accuracy):.4f} "
            f"| {np.mean(loss):.4f} ({spread(loss):.4f}) | {np.mean(best_val):.4f} ({spread(best_val):.4f}) |"
        )
    accuracy = {
        head: _by_seed(results, head, lambda r: r.test_metrics["test_accuracy"])
        for head in [row["head"] for row in summarize(results)]
    }
    lines += [
        "",
        "Pairwise test-accuracy differences (paired t-test over seeds, two-sided; p adjusted "
        "by Holm's method over all the pairs below, one family; significant = adjusted "
        "p < 0.05). The intervals are over seeds only: they treat the test photos as fixed.",
        "",
        "| A - B | seeds | mean difference | 95% CI | p | Holm p | significant |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in paired_comparisons(accuracy):
        if c.seeds < MIN_SEEDS_FOR_INTERVAL:
            interval = f"n/a (fewer than {MIN_SEEDS_FOR_INTERVAL} seeds)"
        elif math.isnan(c.p_value):
            interval = "n/a (the same difference on every seed)"
        else:
            interval = f"[{c.low:+.4f}, {c.high:+.4f}]"
        p_value = f"{c.p_value:.3g}" if not math.isnan(c.p_value) else "n/a"
        p_holm = f"{c.p_holm:.3g}" if not math.isnan(c.p_holm) else "n/a"
        lines.append(
            f"| {c.head_a} - {c.head_b} | {c.seeds} | {c.mean_difference:+.4f} | {interval} "
            f"| {p_value} | {p_holm} | {'yes' if c.significant else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def claims_markdown(results: list[RunResult]) -> str:
    """The claims table with verdicts in bold ("" when gap or fc did not run)."""
    table = claims(results)
    if not table:
        return ""
    lines = [
        "## The article's claims (gap against fc)",
        "",
        "| claim | verdict | what we measured |",
        "|---|---|---|",
    ]
    lines += [f"| {row['claim']} | **{row['verdict']}** | {row['evidence']} |" for row in table]
    return "\n".join(lines) + "\n"


def report_markdown(results: list[RunResult], summary_table: str) -> str:
    """``report.md``: the summary, the statistics, and the claims with verdicts."""
    seeds = sorted({r.seed for r in results})
    parts = [
        "# compare-heads report",
        "",
        f"Heads {[row['head'] for row in summarize(results)]}, seeds {seeds}. Test scores are on the "
        "held-out test split; every head of one seed started from identical backbone weights.",
        "",
        "## Summary",
        "",
        summary_table,
        "## Repeats and significance",
        "",
        statistics_markdown(results),
        "Why paired over seeds: for one seed all heads share initial backbone weights and data "
        "order, so pairing removes that variance; the question is whether one recipe beats "
        "another across training randomness, which a bootstrap over one model's test images "
        "would not capture.",
        "",
    ]
    table = claims_markdown(results)
    if table:
        parts += [
            table,
            "Translation rule: each test image is shifted by 0, 10, 20 and 30 pixels right, "
            "left, down and up; the uncovered band repeats the image's edge pixels; accuracy "
            "is averaged over the four directions.",
            "",
            "Why only `gap` has class activation maps: its logit is the spatial mean of "
            "sum_k w_k A_k(x, y) + b, so that sum, map by map, says how much each position "
            "votes for dog (positive) or cat (negative). The `fc` head flattens the maps and "
            "mixes every position with every channel in its first dense layer (6,400 x 100 at 100 px), followed by "
            "non-linearities: no per-position contribution to the output exists to draw.",
        ]
    return "\n".join(parts) + "\n"
