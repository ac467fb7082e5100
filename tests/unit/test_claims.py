"""The report's verdict rules (``gap_models.claims``) on hand-made run results.

Each rule is checked on both sides of its threshold: the parameter ratio against 10 %,
the paired t-test's p against 0.05, the direction of a significant difference, and the
cases where no test is possible (one seed, differences without variance). No model is
trained: the ``RunResult`` values are written out below.
"""

from __future__ import annotations

import pytest
from scipy import stats

from gap_models.claims import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, claims
from gap_models.report import RunResult

PARAMETERS = "GAP removes most trainable parameters"
ACCURACY = "GAP is more accurate than FC"
SPEED = "GAP trains faster"
OVERFITTING = "GAP overfits less"
TRANSLATION = "GAP is more robust to translation"
CAM = "GAP turns feature maps into category confidence maps"
COMPARATIVE = (ACCURACY, SPEED, OVERFITTING, TRANSLATION)
# Trainable parameters at 100 px (tests/unit/test_models.py shows the arithmetic).
TRAINABLE = {"gap": 28_961, "fc": 692_197, "avgpool": 30_497}


def make_run(
    head: str,
    seed: int,
    *,
    trainable_params: int | None = None,
    test_accuracy: float = 0.8,
    accuracy: float = 0.9,
    val_accuracy: float = 0.8,
    epoch_seconds: tuple[float, ...] = (20.0, 10.0, 10.0),
    train_seconds: float = 40.0,
    shift_accuracy: dict[int, float] | None = None,
) -> RunResult:
    """One (head, seed) run; ``accuracy`` and ``val_accuracy`` are the last epoch's."""
    return RunResult(
        head=head,
        seed=seed,
        run_id=f"{head}-seed{seed}",
        trainable_params=TRAINABLE[head] if trainable_params is None else trainable_params,
        history={
            "loss": [0.7, 0.5],
            "accuracy": [0.6, accuracy],
            "val_loss": [0.7, 0.6],
            "val_accuracy": [0.55, val_accuracy],
        },
        test_metrics={"test_accuracy": test_accuracy, "test_loss": 0.5, "test_auc": 0.8},
        train_seconds=train_seconds,
        train_images_per_second=500.0,
        shift_accuracy={0: 0.8, 10: 0.75, 30: 0.6} if shift_accuracy is None else shift_accuracy,
        epoch_seconds=list(epoch_seconds),
    )


def paired(field: str, gap_values: list, fc_values: list, **common) -> list[RunResult]:
    """Runs of ``gap`` and ``fc`` over seeds 0, 1, ...: ``field`` takes the seed's value."""
    assert len(gap_values) == len(fc_values)
    return [
        make_run(head, seed, **{field: value}, **common)
        for head, values in (("gap", gap_values), ("fc", fc_values))
        for seed, value in enumerate(values)
    ]


def row(table: list[dict], claim: str) -> dict:
    [found] = [entry for entry in table if entry["claim"].startswith(claim)]
    return found


# Test accuracies of fc over three seeds; gap is fc plus a per-seed difference.
FC_ACCURACY = [0.74, 0.76, 0.75]


def with_differences(differences: list[float]) -> list[RunResult]:
    gap = [fc + difference for fc, difference in zip(FC_ACCURACY, differences, strict=True)]
    return paired("test_accuracy", gap, FC_ACCURACY)


# ---- which claims appear, and the two that do not depend on seeds -----------------------


def test_no_claims_without_both_heads():
    assert claims([make_run("gap", 0), make_run("gap", 1)]) == []
    assert claims([make_run("fc", 0)]) == []
    assert claims([make_run("avgpool", 0), make_run("fc", 0)]) == []


def test_claims_in_order_with_the_cam_claim_supported_by_construction():
    table = claims(paired("test_accuracy", [0.8, 0.8], [0.8, 0.8]))
    assert [entry["claim"].split(" (")[0] for entry in table] == [
        PARAMETERS,
        ACCURACY,
        SPEED,
        OVERFITTING,
        TRANSLATION,
        CAM,
    ]
    assert row(table, CAM)["verdict"] == SUPPORTED
    assert "class activation map" in row(table, CAM)["evidence"]


@pytest.mark.parametrize(
    ("gap_params", "fc_params", "verdict", "evidence"),
    [
        (28_961, 692_197, SUPPORTED, "28,961 vs 692,197 trainable (4.2%)"),
        (99, 1_000, SUPPORTED, "99 vs 1,000 trainable (9.9%)"),
        # The rule is ratio < 10 %: exactly 10 % is not "most parameters removed".
        (100, 1_000, NOT_SUPPORTED, "100 vs 1,000 trainable (10.0%)"),
        (101, 1_000, NOT_SUPPORTED, "101 vs 1,000 trainable (10.1%)"),
        (30_497, 30_497, NOT_SUPPORTED, "30,497 vs 30,497 trainable (100.0%)"),
    ],
)
def test_parameter_claim_threshold_is_ten_percent(gap_params, fc_params, verdict, evidence):
    # One seed each: the parameter count needs no repeats, so it is never inconclusive.
    results = [
        make_run("gap", 0, trainable_params=gap_params),
        make_run("fc", 0, trainable_params=fc_params),
    ]
    assert row(claims(results), PARAMETERS) == {
        "claim": PARAMETERS,
        "verdict": verdict,
        "evidence": evidence,
    }


# ---- the paired t-test: threshold, direction, and when no test is possible ---------------


@pytest.mark.parametrize(
    ("differences", "verdict", "evidence"),
    [
        # t = 0.05 / (0.02 / sqrt 3) = 4.33 with 2 degrees of freedom: p just below 0.05,
        # and the 95% interval just excludes 0 (the two agree).
        (
            [0.07, 0.05, 0.03],
            SUPPORTED,
            "gap 0.8 vs fc 0.75; difference +0.05, 95% CI [+0.0003172, +0.09968], "
            "paired t-test over 3 seeds p = 0.0494, Holm-adjusted p = 0.0494 (1 claim test)",
        ),
        # One seed 0.001 better for gap widens the spread more than it moves the mean.
        (
            [0.071, 0.05, 0.03],
            INCONCLUSIVE,
            "gap 0.8003 vs fc 0.75; difference +0.05033, 95% CI [-0.0005965, +0.1013], "
            "paired t-test over 3 seeds p = 0.0511, Holm-adjusted p = 0.0511 (1 claim test) "
            "(not significant)",
        ),
    ],
)
def test_accuracy_claim_significance_threshold(differences, verdict, evidence):
    p_value = stats.ttest_1samp(differences, 0.0).pvalue
    assert (p_value < 0.05) == (verdict == SUPPORTED) and abs(p_value - 0.05) < 0.0015
    found = row(claims(with_differences(differences)), ACCURACY)
    assert found["verdict"] == verdict
    assert found["evidence"] == evidence


def test_a_significant_difference_against_the_claim_is_not_supported():
    found = row(claims(with_differences([-0.07, -0.05, -0.03])), ACCURACY)
    assert found["verdict"] == NOT_SUPPORTED
    assert found["evidence"].startswith("gap 0.7 vs fc 0.75; difference -0.05, 95% CI [-0.09968")
    assert "p = 0.0494" in found["evidence"]
    # The same spread just past the threshold is inconclusive, whatever its sign.
    found = row(claims(with_differences([-0.071, -0.05, -0.03])), ACCURACY)
    assert found["verdict"] == INCONCLUSIVE and found["evidence"].endswith("(not significant)")


def test_one_seed_makes_every_comparison_inconclusive():
    results = [
        make_run("gap", 0, test_accuracy=0.85, accuracy=0.86, val_accuracy=0.85),
        make_run("fc", 0, test_accuracy=0.8, accuracy=0.99, val_accuracy=0.8),
    ]
    table = claims(results)
    for claim in COMPARATIVE:
        assert row(table, claim)["verdict"] == INCONCLUSIVE, claim
        assert row(table, claim)["evidence"].endswith("(one seed: no test possible)"), claim
    assert row(table, ACCURACY)["evidence"] == (
        "gap 0.85 vs fc 0.8; difference +0.05 (one seed: no test possible)"
    )
    # Rules that need no repeats keep their verdicts.
    assert row(table, PARAMETERS)["verdict"] == SUPPORTED
    assert row(table, CAM)["verdict"] == SUPPORTED


def test_only_seeds_both_heads_ran_are_paired():
    """gap ran seeds 0-2, fc only seed 0: one pair, so no test."""
    results = [make_run("gap", seed, test_accuracy=0.9) for seed in range(3)]
    results.append(make_run("fc", 0, test_accuracy=0.7))
    found = row(claims(results), ACCURACY)
    assert found["verdict"] == INCONCLUSIVE
    assert found["evidence"] == "gap 0.9 vs fc 0.7; difference +0.2 (one seed: no test possible)"


def test_equal_scores_are_inconclusive_and_print_zero():
    found = row(claims(paired("test_accuracy", [0.8, 0.7, 0.9], [0.8, 0.7, 0.9])), ACCURACY)
    assert found["verdict"] == INCONCLUSIVE
    assert found["evidence"] == (
        "gap 0.8 vs fc 0.8; difference +0 (identical difference on all 3 seeds: no test possible)"
    )


def test_a_difference_without_variance_cannot_be_tested():
    """Every seed exactly 0.125 apart (binary fractions, so exactly): the t statistic is
    undefined, p is NaN, and the rule says inconclusive rather than guess."""
    gap, fc = [0.75, 0.625, 0.875], [0.625, 0.5, 0.75]
    assert len({g - f for g, f in zip(gap, fc, strict=True)}) == 1
    found = row(claims(paired("test_accuracy", gap, fc)), ACCURACY)
    assert found["verdict"] == INCONCLUSIVE
    assert found["evidence"] == (
        "gap 0.75 vs fc 0.625; difference +0.125 "
        "(identical difference on all 3 seeds: no test possible)"
    )


def test_claim_tests_are_one_family_holm_adjusted():
    """Accuracy alone at p = 0.0494 is supported; when the speed test also comes out at
    p = 0.029, Holm doubles the smaller p (0.057) and the larger may not go below it:
    neither survives, both are inconclusive."""
    results = with_differences([0.07, 0.05, 0.03])
    assert row(claims(results), ACCURACY)["verdict"] == SUPPORTED
    epochs = {0: (20.0, 9.0, 9.0), 1: (20.0, 8.7, 8.7), 2: (20.0, 9.3, 9.3)}
    for run in results:  # gap 0.7-1.3 s faster per epoch than fc's 10 s on every seed
        if run.head == "gap":
            run.epoch_seconds[:] = list(epochs[run.seed])
    p_speed = stats.ttest_1samp([1.0, 1.3, 0.7], 0.0).pvalue
    p_accuracy = stats.ttest_1samp([0.07, 0.05, 0.03], 0.0).pvalue
    assert 0.025 < p_speed < p_accuracy < 0.05  # each significant on its own
    table = claims(results)
    speed, accuracy = row(table, SPEED), row(table, ACCURACY)
    assert (
        f"p = {p_speed:.3g}, Holm-adjusted p = {2 * p_speed:.3g} (2 claim tests)"
        in (speed["evidence"])
    )
    assert (
        f"Holm-adjusted p = {2 * p_speed:.3g} (2 claim tests) (not significant)"
        in (accuracy["evidence"])
    )
    assert speed["verdict"] == accuracy["verdict"] == INCONCLUSIVE


def test_too_few_seeds_print_no_interval_and_intervals_stay_in_0_1():
    from gap_models.claims import statistics_markdown

    two = statistics_markdown(paired("test_accuracy", [0.7, 0.71], [0.6, 0.9]))
    assert "n/a (fewer than 3 seeds)" in two
    near_one = statistics_markdown(paired("test_accuracy", [0.99, 0.999, 0.90], [0.6, 0.7, 0.8]))
    gap_line = next(line for line in near_one.splitlines() if line.startswith("| gap |"))
    high = float(gap_line.split("[")[1].split("]")[0].split(",")[1])
    assert high == 1.0  # the t-interval reaches past 1: clipped
    assert "Holm" in near_one


def test_speed_excludes_the_first_epoch_and_lower_is_the_claim():
    # gap's first epoch (tracing) is the slowest of all, but later epochs are faster.
    gap = [(90.0, 5.0, 5.0), (80.0, 6.0, 6.0), (95.0, 5.5, 5.5)]
    fc = [(10.0, 9.0, 9.0), (10.0, 9.5, 9.5), (10.0, 8.0, 8.0)]
    found = row(claims(paired("epoch_seconds", gap, fc)), SPEED)
    assert found["verdict"] == SUPPORTED
    assert found["evidence"].startswith("gap 5.5 vs fc 8.833; difference -3.333, 95% CI [")
    # The other way round gap is significantly slower: the claim is not supported.
    found = row(claims(paired("epoch_seconds", fc, gap)), SPEED)
    assert found["verdict"] == NOT_SUPPORTED
    assert found["evidence"].startswith("gap 8.833 vs fc 5.5; difference +3.333")


def test_speed_falls_back_to_one_epoch_or_the_whole_fit():
    # A one-epoch run has nothing to exclude; a run without epoch times uses train_seconds.
    results = paired("epoch_seconds", [(4.0,), (5.0,)], [(9.0,), (9.0,)])
    assert row(claims(results), SPEED)["evidence"].startswith("gap 4.5 vs fc 9;")
    results = paired("train_seconds", [20.0, 22.0, 21.0], [30.0, 33.0, 30.0], epoch_seconds=())
    found = row(claims(results), SPEED)
    assert found["evidence"].startswith("gap 21 vs fc 31; difference -10")
    assert found["verdict"] == SUPPORTED


def test_overfitting_is_train_minus_validation_accuracy_at_the_last_epoch():
    def runs(gap_train: list[float], fc_train: list[float]) -> list[RunResult]:
        return [
            make_run(head, seed, accuracy=train, val_accuracy=0.75)
            for head, values in (("gap", gap_train), ("fc", fc_train))
            for seed, train in enumerate(values)
        ]

    # gap's gap: 0.05, 0.0625, 0.0375; fc's: 0.2, 0.25, 0.1875.
    found = row(claims(runs([0.8, 0.8125, 0.7875], [0.95, 1.0, 0.9375])), OVERFITTING)
    assert found["verdict"] == SUPPORTED
    assert found["evidence"].startswith("gap 0.05 vs fc 0.2125; difference -0.1625")
    found = row(claims(runs([0.95, 1.0, 0.9375], [0.8, 0.8125, 0.7875])), OVERFITTING)
    assert found["verdict"] == NOT_SUPPORTED


def test_translation_drop_is_smallest_minus_largest_shift():
    # Keys out of order on purpose: the rule sorts the shifts.
    gap = [{30: 0.7, 0: 0.8, 10: 0.5}, {30: 0.72, 0: 0.8, 10: 0.5}, {30: 0.69, 0: 0.8, 10: 0.5}]
    fc = [{0: 0.8, 10: 0.9, 30: 0.5}, {0: 0.8, 10: 0.9, 30: 0.55}, {0: 0.8, 10: 0.9, 30: 0.5}]
    found = row(claims(paired("shift_accuracy", gap, fc)), TRANSLATION)
    assert found["verdict"] == SUPPORTED
    assert found["evidence"].startswith("gap 0.09667 vs fc 0.2833; difference -0.1867")
    assert row(claims(paired("shift_accuracy", fc, gap)), TRANSLATION)["verdict"] == NOT_SUPPORTED


def test_translation_claim_is_left_out_when_any_run_lacks_shifts():
    results = paired("test_accuracy", [0.8, 0.8], [0.7, 0.7])
    results[-1] = make_run("fc", 1, test_accuracy=0.7, shift_accuracy={})
    table = claims(results)
    assert not [entry for entry in table if entry["claim"].startswith(TRANSLATION)]
    assert len(table) == 5


def test_other_heads_can_be_compared():
    results = [
        make_run(head, seed, test_accuracy=accuracy)
        for head, accuracies in (("avgpool", [0.9, 0.91, 0.92]), ("fc", [0.8, 0.8, 0.8]))
        for seed, accuracy in enumerate(accuracies)
    ]
    table = claims(results, gap_head="avgpool")
    assert row(table, PARAMETERS)["evidence"] == "30,497 vs 692,197 trainable (4.4%)"
    found = row(table, ACCURACY)
    assert found["verdict"] == SUPPORTED
    assert found["evidence"].startswith("avgpool 0.91 vs fc 0.8; difference +0.11")


def test_winner_and_its_seed_are_chosen_on_validation_not_test():
    """fc has the better test accuracy, gap the better final validation accuracy: gap wins,
    and of gap's seeds the one best on validation is drawn and registered, even though
    another seed scored higher on test. The test split only reports."""
    from dataclasses import replace

    from gap_models.comparison import best_seed
    from gap_models.report import best_head, summarize

    runs = [
        replace(make_run("gap", 0, test_accuracy=0.80), final_val_accuracy=0.85),
        replace(make_run("gap", 1, test_accuracy=0.83), final_val_accuracy=0.81),
        replace(make_run("fc", 0, test_accuracy=0.90), final_val_accuracy=0.70),
        replace(make_run("fc", 1, test_accuracy=0.90), final_val_accuracy=0.72),
    ]
    rows = summarize(runs)
    assert best_head(rows) == "gap"
    assert best_seed(runs, "gap").seed == 0
    assert {row["head"]: row["final_val_accuracy"] for row in rows} == pytest.approx(
        {"gap": 0.83, "fc": 0.71}
    )
