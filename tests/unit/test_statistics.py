"""The statistics on synthetic photo-level results with a known answer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from gap_models import statistics


def _simulate(rng, seeds, photos, p_a, p_b, seed_sd=0.01):
    """Right/wrong per (seed, photo) for two arms sharing photo difficulty and seed luck."""
    difficulty = rng.normal(0, 1.0, photos)
    luck = rng.normal(0, seed_sd, seeds)

    def arm(p):  # noqa: E306
        logit = np.log(p / (1 - p)) + difficulty[None, :] * 0.0
        prob = 1 / (1 + np.exp(-logit)) + luck[:, None]
        return (rng.random((seeds, photos)) < np.clip(prob, 0, 1)).astype(np.int8)

    return {"a": arm(p_a), "b": arm(p_b)}


def test_the_two_level_interval_covers_the_true_difference_at_least_at_its_level():
    rng = np.random.default_rng(7)
    covered, runs = 0, 120
    for run in range(runs):
        correct = _simulate(rng, seeds=5, photos=400, p_a=0.80, p_b=0.77)
        replicates = statistics.bootstrap_means(correct, draws=400, seed=run)
        d = statistics.difference("a", "b", replicates, correct)
        covered += d.low <= 0.03 <= d.high
    # Nominal 95%; two levels of resampling err on the wide side, never far below.
    assert 0.9 <= covered / runs <= 1.0


def test_accuracies_stay_inside_zero_and_one():
    correct = {"a": np.ones((3, 50), np.int8), "b": np.zeros((3, 50), np.int8)}
    replicates = statistics.bootstrap_means(correct, draws=300)
    for arm in correct:
        value, low, high = statistics.mean_interval(replicates[arm], correct[arm])
        assert 0 <= low <= value <= high <= 1


@pytest.mark.parametrize("dtype", [np.int8, bool, np.float64])
def test_a_constant_difference_of_k_photos_reads_the_same_from_counts_or_fractions(dtype):
    rng = np.random.default_rng(0)
    a = (rng.random((5, 1000)) < 0.8).astype(np.int8)
    a[:, :30] = 1
    b = a.copy()
    b[:, :12] = 0  # 12 photos fewer right, on every seed alike: no seed-to-seed spread at all
    correct = {"a": a.astype(dtype), "b": b.astype(dtype)}
    replicates = statistics.bootstrap_means(correct, draws=1000)
    d = statistics.difference("a", "b", replicates, correct)
    assert d.difference == 12 / 1000  # exact, from integer counts
    assert np.isfinite(d.p_value) and d.p_value < 0.05  # a real answer, neither NaN nor 1e-27
    assert d.p_value > 1e-4


def test_tost_accepts_inside_the_margin_and_rejects_outside():
    rng = np.random.default_rng(3)
    same = _simulate(rng, seeds=5, photos=20_000, p_a=0.80, p_b=0.80)
    replicates = statistics.bootstrap_means(same, draws=500)
    assert statistics.equivalence("a", "b", replicates, same, margin=0.01).equivalent
    apart = _simulate(rng, seeds=5, photos=20_000, p_a=0.825, p_b=0.80)
    replicates = statistics.bootstrap_means(apart, draws=500)
    assert not statistics.equivalence("a", "b", replicates, apart, margin=0.01).equivalent


def test_holm_is_statsmodels_and_the_detectable_size_follows_the_standard_error():
    base = statistics.Difference("a", "b", 5, 100, 0.01, 0, 0.02, 0.01, 0.005)
    family = statistics.holm(
        [base, statistics.Difference("a", "c", 5, 100, 0.0, -0.01, 0.01, 0.04, 0.005)]
    )
    assert [d.p_holm for d in family] == pytest.approx([0.02, 0.04])
    rng = np.random.default_rng(7)
    for size in (1, 2, 5, 9):
        p = rng.choice([0.001, 0.01, 0.02, 0.2, 0.5, 0.9], size).tolist()  # with ties
        reference = multipletests(p, method="holm")[1]
        assert statistics.holm_adjusted(p) == pytest.approx(reference.tolist(), abs=1e-12)
    assert statistics.holm([]) == []
    assert base.detectable == pytest.approx(2.8016 * 0.005, rel=1e-3)
    # In a family of two, the detectable size is at the strictest level, 2.5% (two-sided).
    assert family[0].family_size == 2
    assert family[0].detectable == pytest.approx((2.2414 + 0.8416) * 0.005, rel=1e-3)


def test_a_provisional_family_is_adjusted_over_every_comparison_it_declares():
    # Two of four declared comparisons tested: the untested ones count as p = 1, which is
    # what statsmodels gives for the full family with those two at 1.
    p = [0.01, 0.03]
    reference = multipletests(p + [1.0, 1.0], method="holm")[1][:2]
    assert statistics.holm_adjusted(p, 4) == pytest.approx(reference.tolist())
    assert statistics.holm_adjusted(p, 4) == pytest.approx([0.04, 0.09])
    assert statistics.holm_adjusted(p) == pytest.approx([0.02, 0.03])  # two declared
    tested = [statistics.Difference("a", "b", 5, 100, 0.01, 0, 0.02, q, 0.005) for q in p]
    assert [d.p_holm for d in statistics.holm(tested, 4)] == pytest.approx([0.04, 0.09])


def test_equivalence_claims_are_one_holm_family():
    claims = [
        statistics.Equivalence("a", "b", 0.01, 0.0, -0.005, 0.005, 0.03, seeds=5, p_holm=0.03),
        statistics.Equivalence("c", "d", 0.01, 0.0, -0.005, 0.005, 0.01, seeds=5, p_holm=0.01),
    ]
    assert all(e.equivalent for e in claims)  # each alone
    adjusted = statistics.holm_equivalences(claims)
    assert [e.p_holm for e in adjusted] == pytest.approx([0.03, 0.02])
    assert [e.equivalent for e in adjusted] == [True, True]
    adjusted = statistics.holm_equivalences(claims[:1], family_size=2)  # one not yet tested
    assert adjusted[0].p_holm == pytest.approx(0.06) and not adjusted[0].equivalent


def test_the_median_interval_is_distribution_free():
    value, low, high = statistics.median_interval(list(range(1, 21)))
    assert value == 10.5 and low < value < high
    assert (low, high) == (6.0, 15.0)


def test_the_same_model_twice_is_called_identical_not_an_undetectable_difference():
    from gap_models.findings import call

    rng = np.random.default_rng(5)
    a = _simulate(rng, seeds=3, photos=500, p_a=0.8, p_b=0.8)["a"]
    b = a.copy()  # one right photo made wrong, one wrong made right: same count, not identical
    b[0, np.argmax(a[0] == 1)], b[0, np.argmax(a[0] == 0)] = 0, 1
    for other, identical in ((a.copy(), True), (b, False)):
        correct = {"a": a, "b": other}
        replicates = statistics.bootstrap_means(correct, draws=300)
        (d,) = statistics.holm([statistics.difference("a", "b", replicates, correct)])
        assert d.identical is identical
        assert call(d).startswith("identical" if identical else "no difference shown")


def test_the_bootstrap_p_value_has_a_floor_that_the_reports_name():
    """Every replicate on one side of 0 gives the smallest p the bootstrap can (a true p
    about this or smaller), and the note under every study's tables says where it lies."""
    from gap_models.findings import reading_note

    assert statistics.bootstrap_p_value(np.full(4000, 0.02)) == statistics.bootstrap_p_floor(4000)
    assert statistics.bootstrap_p_floor(4000) == pytest.approx(2 / 4001)
    assert statistics.bootstrap_p_value(np.linspace(-1, 1, 4001)) == pytest.approx(1.0)
    note = reading_note(4000)
    assert "not adjusted for the family" in note and "is 2/4,001, about 0.0005:" in note
    assert "is 2/2,000, about 0.001:" in reading_note(1999)


def test_seeds_on_which_two_arms_are_the_same_model_are_named():
    """A and B right and wrong on the same photos in some seeds (the same model trained
    twice there), not in others: the seeds are named, by id, beside a non-significant call."""
    from gap_models.findings import call

    rng = np.random.default_rng(5)
    a = rng.integers(0, 2, (3, 400))
    b = a.copy()
    b[1, :40] = 1 - b[1, :40]  # seed 1 differs on 40 photos
    correct = {"a": a, "b": b}
    found = statistics.difference("a", "b", statistics.bootstrap_means(correct, 400), correct)
    assert not found.identical and found.identical_rows == (0, 2)
    found = dataclasses.replace(found, seed_ids=(0, 3, 7), p_holm=0.5)
    assert found.identical_seeds == (0, 7)
    assert call(found).endswith("; identical in seeds 0, 7 (the same model there)")
    same = statistics.difference("a", "a", statistics.bootstrap_means({"a": a}, 400), {"a": a})
    assert same.identical and call(dataclasses.replace(same, p_holm=1.0)).startswith("identical")
