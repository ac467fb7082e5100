"""The promotion gate: better by a paired test, no class sacrificed."""

from __future__ import annotations

import numpy as np

from gap_models.gate import judge, mcnemar_p_value

CLASSES = ("cat", "dog")


def outputs_right_on(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Sigmoid outputs that classify exactly the photos marked ``right`` correctly."""
    predicted = np.where(right, labels, 1 - labels)
    return np.where(predicted == 1, 0.9, 0.1)[:, None]


def test_mcnemar_counts_only_the_photos_the_models_disagree_on():
    both = np.ones(1000, dtype=bool)
    assert mcnemar_p_value(both, both) == 1.0
    challenger, champion = both.copy(), both.copy()
    champion[:10] = False  # ten photos only the challenger gets right
    assert mcnemar_p_value(challenger, champion) == 0.5**10
    assert mcnemar_p_value(champion, challenger) == 1.0


def test_a_clearly_better_challenger_passes_and_an_equal_one_does_not():
    labels = np.tile([0, 1], 250)
    champion = np.arange(500) % 5 != 0  # 80 %
    challenger = np.arange(500) % 10 != 0  # 90 %, right wherever the champion is
    better = judge(labels, outputs_right_on(labels, challenger),
                   outputs_right_on(labels, champion), CLASSES)  # fmt: skip
    assert better.promote and better.p_value < 1e-10, better
    assert better.reason.startswith("better: +10.00 points on 500 validation photos")
    same = judge(labels, outputs_right_on(labels, champion), outputs_right_on(labels, champion),
                 CLASSES)  # fmt: skip
    assert not same.promote and same.p_value == 1.0
    assert same.reason.startswith("not shown better: +0.00 points")


def test_a_gain_the_photos_cannot_tell_from_chance_is_not_promoted():
    labels = np.tile([0, 1], 50)
    champion = np.ones(100, dtype=bool)
    champion[:3] = False  # the challenger is right on 3 more photos: p = 1/8
    decision = judge(labels, outputs_right_on(labels, np.ones(100, dtype=bool)),
                     outputs_right_on(labels, champion), CLASSES)  # fmt: skip
    assert not decision.promote and decision.p_value == 0.125


def test_a_better_average_bought_with_one_class_is_refused():
    labels = np.repeat([0, 1], 250)
    champion = np.ones(500, dtype=bool)
    champion[250:] = np.arange(250) % 2 == 0  # dogs at 50 %
    challenger = np.ones(500, dtype=bool)
    challenger[:25] = False  # cats lose 10 points of recall, dogs gain 50
    decision = judge(labels, outputs_right_on(labels, challenger),
                     outputs_right_on(labels, champion), CLASSES)  # fmt: skip
    assert not decision.promote
    assert decision.reason.startswith("class cat loses 10.00 points of recall (allowed 2)")
    assert decision.recall_change == {"cat": -10.0, "dog": 50.0}


def test_a_candidate_whose_test_loss_is_not_finite_is_refused_before_any_load():
    """A diverged model (NaN outputs) is not promoted, even as the first champion, and no
    fresh process is spent on it."""
    from tests.unit.test_training import _result
    from tracking.registry import _gate

    candidate = _result("gap", 0, 0.5)
    candidate.test_metrics["test_loss"] = float("nan")
    promote, reason, decision = _gate(None, "pets", candidate, "", None, None)
    assert (promote, decision) == (False, None)
    assert reason == "its test loss is not a finite number (a diverged model)"
