"""The pre-registered analysis of a comparison, computed from its evidence: each arm's
accuracy, the family of differences (Holm), equivalences (TOST), overfitting on like terms,
speed, translation robustness, and the article's claims with verdicts that follow their
tests ("supported" only by a significant test, "not shown" with the size the test could
have detected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np

from gap_models import records, statistics
from gap_models.config import RunConfig
from gap_models.evidence import Evidence
from gap_models.records import TRAIN_SUBSET_SPLIT

SUPPORTED, NOT_SUPPORTED, NOT_SHOWN = "supported", "contradicted", "not shown"
VALIDATION, TEST = records.SELECTION_SPLIT, records.REPORT_SPLIT


@dataclass(frozen=True)
class Plan:
    """What to test: the family, the equivalences and their margin, the draws."""

    family: list[tuple[str, str]]
    equivalence: list[tuple[str, str]] = field(default_factory=list)
    margin: float = 0.01
    draws: int = 4000
    target_val_accuracy: float = 0.8
    # The arms a user may be handed, chosen on validation (None: every arm analysed).
    candidates: list[str] | None = None

    @classmethod
    def every_pair(cls, arms: list[str]) -> Plan:
        """A flow run's plan: every pair of its heads, one family."""
        return cls(family=list(combinations(arms, 2)), draws=2000)


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    seeds: int
    trainable_params: int
    flops_per_image: int
    test: tuple[float, float, float]  # accuracy, interval
    validation: tuple[float, float, float]
    overfit_accuracy: tuple[float, float, float]  # train subset - validation, inference mode
    overfit_loss: tuple[float, float, float]  # validation - train subset loss
    images_per_second: tuple[float, float, float]  # steady state: median, interval
    epochs_to_target: list[int | None]
    shift_accuracy: dict[int, tuple[float, float, float]]


@dataclass
class Analysis:
    evidence: Evidence
    plan: Plan
    arms: list[ArmSummary]
    family: list[statistics.Difference]
    equivalences: list[statistics.Equivalence]
    overfit_differences: list[statistics.Difference]
    shift_differences: list[statistics.Difference]


def _paired(evidence: Evidence, a: str, b: str, split: str):
    seeds = evidence.common_seeds(a, b)
    return {a: evidence.arms[a].matrix(split, seeds), b: evidence.arms[b].matrix(split, seeds)}


def _diff(evidence: Evidence, a: str, b: str, split: str, draws: int) -> statistics.Difference:
    correct = _paired(evidence, a, b, split)
    replicates = statistics.bootstrap_means(correct, draws)
    found = statistics.difference(a, b, replicates, correct)
    return replace(found, seed_ids=tuple(evidence.common_seeds(a, b)))


def _two_level(matrix: np.ndarray, draws: int) -> np.ndarray:
    """Replicates of the mean of a (seeds, photos) matrix of any numbers (loss, shares)."""
    seeds, photos = matrix.shape
    seed_w, photo_w = statistics.resampling_weights(1, seeds, photos, draws)
    return np.sum((photo_w @ matrix.T) * seed_w, axis=1) / (seeds * photos)


def _interval(point: float, replicates: np.ndarray) -> tuple[float, float, float]:
    return (point, *statistics.percentile_interval(replicates))


def _overfit(arm, draws: int) -> tuple[tuple, tuple, np.ndarray]:
    """Train-subset minus validation accuracy, and validation minus train-subset loss, both
    in inference mode, seeds paired, photos of each split resampled on their own."""
    train = np.stack(arm.correct[TRAIN_SUBSET_SPLIT]).astype(float)
    val = np.stack(arm.correct[VALIDATION]).astype(float)
    gap = _two_level(train, draws) - _two_level(val, draws)
    loss_gap = _two_level(np.stack(arm.loss[VALIDATION]), draws) - _two_level(
        np.stack(arm.loss[TRAIN_SUBSET_SPLIT]), draws
    )
    point = train.mean() - val.mean()
    loss_point = (
        np.stack(arm.loss[VALIDATION]).mean() - np.stack(arm.loss[TRAIN_SUBSET_SPLIT]).mean()
    )
    return _interval(point, gap), _interval(loss_point, loss_gap), gap


def _steady_speed(arm) -> tuple[float, float, float]:
    """Median images/s of every epoch after the first (which traces the graph) of every
    seed, with its distribution-free interval."""
    speeds = []
    for result in arm.results:
        train_images = result.train_images_per_second * result.train_seconds
        per_epoch = train_images / max(len(result.epoch_seconds), 1)
        speeds += [per_epoch / s for s in result.epoch_seconds[1:] if s > 0]
    return statistics.median_interval(speeds)


def _epochs_to(arm, target: float) -> list[int | None]:
    out = []
    for result in arm.results:
        reached = [i for i, v in enumerate(result.history[records.VAL_ACCURACY], 1) if v >= target]
        out.append(reached[0] if reached else None)
    return out


def summarize_arm(evidence: Evidence, name: str, plan: Plan) -> ArmSummary:
    arm = evidence.arms[name]
    summaries = {}
    for split in (TEST, VALIDATION):
        matrix = np.stack(arm.correct[split])
        replicates = statistics.bootstrap_means({name: matrix}, plan.draws)[name]
        summaries[split] = statistics.mean_interval(replicates, matrix)
    overfit_accuracy, overfit_loss, _ = _overfit(arm, plan.draws)
    shifts = {
        pixels: _interval(float(np.mean(values)), _two_level(np.stack(values), plan.draws))
        for pixels, values in sorted(arm.shifts.items())
    }
    return ArmSummary(
        name, len(arm.seeds), arm.trainable_params, arm.flops_per_image, summaries[TEST],
        summaries[VALIDATION], overfit_accuracy, overfit_loss, _steady_speed(arm),
        _epochs_to(arm, plan.target_val_accuracy), shifts,
    )  # fmt: skip


def _measured_difference(
    a: str, b: str, seeds: list[int], point: float, deltas: np.ndarray, photos: int
) -> statistics.Difference:
    low, high = statistics.percentile_interval(deltas)
    return statistics.Difference(
        a, b, len(seeds), photos, point, low, high, statistics.bootstrap_p_value(deltas),
        float(np.std(deltas, ddof=1)), seed_ids=tuple(seeds),
    )  # fmt: skip


def _paired_measure(evidence: Evidence, a: str, b: str, measure, draws: int):
    """A - B of a per-(seed, photo) measure, paired by seed and photo (Holm-free)."""
    seeds = evidence.common_seeds(a, b)
    ma, mb = (np.stack([measure(evidence.arms[x], s) for s in seeds]) for x in (a, b))
    deltas = _two_level(ma - mb, draws)
    return _measured_difference(a, b, seeds, float((ma - mb).mean()), deltas, ma.shape[1])


def _overfit_difference(evidence: Evidence, a: str, b: str, draws: int):
    """A - B of (train-subset - validation accuracy): each split's photos paired across the
    arms and resampled on their own, seeds paired; over the seeds both arms have, it is
    exactly the difference of the arms' own figures (``_overfit``) on those seeds."""
    seeds = evidence.common_seeds(a, b)

    def rows(split: str) -> np.ndarray:
        arm_a, arm_b = evidence.arms[a], evidence.arms[b]
        return np.stack([
            arm_a.correct[split][arm_a.seeds.index(s)].astype(float)
            - arm_b.correct[split][arm_b.seeds.index(s)].astype(float)
            for s in seeds
        ])  # fmt: skip

    train, val = rows(TRAIN_SUBSET_SPLIT), rows(VALIDATION)
    deltas = _two_level(train, draws) - _two_level(val, draws)
    point = float(train.mean() - val.mean())
    return _measured_difference(a, b, seeds, point, deltas, val.shape[1])


def analyse(evidence: Evidence, plan: Plan) -> Analysis:
    """Everything the report prints, from the evidence and the plan."""
    names = list(evidence.arms)
    present = [(a, b) for a, b in plan.family if a in names and b in names]
    # Each family is adjusted over every comparison it declares, recorded or not yet.
    declared = len(plan.family)
    family = statistics.holm(
        [_diff(evidence, a, b, TEST, plan.draws) for a, b in present], declared
    )
    equivalences = []
    for a, b in plan.equivalence:
        if a in names and b in names:
            correct = _paired(evidence, a, b, TEST)
            replicates = statistics.bootstrap_means(correct, plan.draws)
            equivalences.append(statistics.equivalence(a, b, replicates, correct, plan.margin))

    def shift_drop(arm, seed):
        i = arm.seeds.index(seed)
        largest = max(arm.shifts)
        return arm.shifts[0][i] - arm.shifts[largest][i]

    overfit_differences = [_overfit_difference(evidence, a, b, plan.draws) for a, b in present]
    shift_differences = [
        _paired_measure(evidence, a, b, shift_drop, plan.draws)
        for a, b in present
        if evidence.arms[a].shifts and evidence.arms[b].shifts
    ]
    return Analysis(
        evidence, plan, [summarize_arm(evidence, n, plan) for n in names], family,
        statistics.holm_equivalences(equivalences, len(plan.equivalence)),
        statistics.holm(overfit_differences, declared),
        statistics.holm(shift_differences, declared),
    )  # fmt: skip


LATE_SHARE = 0.25
"""How far back the convergence table looks: the last quarter of a fit's epochs (at least
two). Under a decaying learning rate a late best epoch is expected and a small late gain
is the schedule finishing its work; a gain of several points means the fit stopped while
still learning. Either way, a gain within the validation split's sampling error (about
0.7 points at 90 % on 1,905 photos) is not evidence of either."""

UNCALIBRATED_RECIPES = frozenset({"faithful"})
"""Recipes whose per-epoch validation accuracy comes from Keras' moving BatchNorm
statistics, not the precise-BatchNorm pass (``gap_models.recipes.recipe_callbacks``): after
few epochs those statistics lag the weights, so the curve can sit points below the
accuracy the finished model scores."""


@dataclass(frozen=True)
class Convergence:
    """Whether an arm's fits had stopped learning, seed by seed: epochs run (of those
    declared; fewer: early stopping ended it), the epoch of the best validation accuracy,
    and how much the best validation accuracy of the last quarter of the epochs beat the
    best before it (points; see ``LATE_SHARE`` for how to read it). ``precise``: the
    per-epoch validation accuracy was measured with recalibrated BatchNorm statistics."""

    arm: str
    declared: int | None
    epochs_run: list[int]
    best_epoch: list[int]
    late_gain: list[float]
    precise: bool = True


def late_gain(curve: list[float]) -> float:
    """Best of the last quarter of ``curve`` (at least two values) minus the best before."""
    late = max(2, round(LATE_SHARE * len(curve)))
    return max(curve[-late:]) - max(curve[:-late]) if len(curve) > late else math.nan


def precise_validation(settings: dict) -> bool:
    """Whether a cell with these settings validated each epoch with precise BatchNorm."""
    recipe = settings.get("recipe", RunConfig.model_fields["recipe"].default)
    return recipe not in UNCALIBRATED_RECIPES


def convergence(evidence: Evidence) -> list[Convergence]:
    """Each arm's convergence, from its cells' per-epoch validation accuracy."""
    rows = []
    for name, arm in evidence.arms.items():
        curves = [r.history.get(records.VAL_ACCURACY) or [] for r in arm.results]
        if not all(curves):
            continue
        declared = arm.settings.get("epochs")
        epochs = int(declared) if declared is not None else None
        best = [int(np.argmax(c)) + 1 for c in curves]
        late = [late_gain(c) for c in curves]
        rows.append(
            Convergence(
                name,
                epochs,
                [len(c) for c in curves],
                best,
                late,
                precise_validation(arm.settings),
            )  # fmt: skip
        )
    return rows


@dataclass(frozen=True)
class ChosenModel:
    """The one trained model a comparison hands a user: the cell with the highest validation
    accuracy (ties: fewer trainable parameters, then the lower seed). The test split played
    no part in choosing it, so its test accuracy is an unbiased report of that model, and,
    the model being one, its interval is photo sampling alone (exact binomial)."""

    arm: str
    seed: int
    run_id: str
    trainable_params: int
    validation_correct: int
    validation_photos: int
    test_correct: int
    test_photos: int

    @property
    def validation(self) -> float:
        return self.validation_correct / self.validation_photos

    @property
    def test(self) -> tuple[float, float, float]:
        """Test accuracy and its exact 95% interval."""
        low, high = statistics.exact_interval(self.test_correct, self.test_photos)
        return self.test_correct / self.test_photos, low, high


@dataclass(frozen=True)
class ChosenArm:
    """The arm a user would pick without the test split: the highest mean validation
    accuracy over the seeds every candidate arm has (an arm with more seeds would otherwise
    be ranked on a different, less noisy mean), ties to fewer parameters. ``runner_up`` is
    the next arm by the same rule (None when alone)."""

    summary: ArmSummary
    validation: float  # its mean validation accuracy over ``seeds``
    seeds: tuple[int, ...]  # the seeds the arms were ranked on
    every_seed: bool  # True when every candidate arm has exactly these seeds
    runner_up: str | None


def chosen_arm(analysis: Analysis, arms: list[str] | None = None) -> ChosenArm | None:
    """The arm of ``arms`` (default: the plan's candidates, else every arm analysed) chosen
    on validation; None while none of them is recorded."""
    arms = arms if arms is not None else analysis.plan.candidates
    summaries = [s for s in analysis.arms if arms is None or s.arm in arms]
    if not summaries:
        return None
    evidence = analysis.evidence
    common = evidence.common_seeds(*(s.arm for s in summaries))

    def validation(summary: ArmSummary) -> float:
        if not common:  # no seed in common: each arm's own mean
            return summary.validation[0]
        return float(evidence.arms[summary.arm].matrix(VALIDATION, common).mean())

    ranked = sorted(summaries, key=lambda s: (-validation(s), s.trainable_params))
    every = bool(common) and all(len(evidence.arms[s.arm].seeds) == len(common) for s in summaries)
    return ChosenArm(
        ranked[0], validation(ranked[0]), tuple(common), every or not common,
        ranked[1].arm if len(ranked) > 1 else None,
    )  # fmt: skip


def among(analysis: Analysis) -> str:
    """ " among A, B" when the plan's candidates are fewer than the arms analysed (so a
    reader sees which arms the choice was made from), else ""."""
    candidates = analysis.plan.candidates
    if candidates is None or set(analysis.evidence.arms) <= set(candidates):
        return ""
    unrecorded = [arm for arm in candidates if arm not in analysis.evidence.arms]
    later = f" ({', '.join(unrecorded)} not recorded yet)" if unrecorded else ""
    return " among " + ", ".join(candidates) + later


def target_call(model: ChosenModel, target: float) -> str:
    """Whether the chosen model's test accuracy clears ``target``, by its exact interval."""
    accuracy, low, high = model.test
    bar = f"target {100 * target:.1f} % test accuracy"
    if low >= target:
        return f"{bar}: **reached** (the whole 95% interval lies above it)"
    if high < target:
        return f"{bar}: **missed** (the whole 95% interval lies below it)"
    side = "above" if accuracy >= target else "below"
    return f"{bar}: not shown either way (the estimate is {side} it, the interval spans it)"


def chosen_model(evidence: Evidence, arms: list[str] | None = None) -> ChosenModel | None:
    """The cell of ``arms`` (default: every arm) chosen on validation (None: no cell)."""
    candidates = []
    for name in arms if arms is not None else list(evidence.arms):
        arm = evidence.arms.get(name)
        if arm is None:
            continue
        for i, seed in enumerate(arm.seeds):
            validation, test = arm.correct[VALIDATION][i], arm.correct[TEST][i]
            candidates.append(
                ChosenModel(
                    name,
                    seed,
                    arm.results[i].run_id,
                    arm.trainable_params,
                    int(validation.sum()),
                    len(validation),
                    int(test.sum()),
                    len(test),
                )  # fmt: skip
            )
    return max(
        candidates,
        key=lambda c: (c.validation, -c.trainable_params, -c.seed),
        default=None,
    )


def verdict(d: statistics.Difference, claimed_positive: bool = True) -> str:
    """ "supported" when the Holm-adjusted test is significant in the claimed direction,
    "contradicted" when significant the other way, else "not shown"."""
    if not d.significant:
        return NOT_SHOWN
    return SUPPORTED if (d.difference > 0) == claimed_positive else NOT_SUPPORTED


def points(value: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{100 * value:+.2f}" if not math.isnan(value) else "n/a"


HOLDS_WITHOUT = "holds without the protocol"
ONLY_WITH = "shown only with the protocol"
REVERSED_WITHOUT = "reversed without the protocol"
NOT_REPRODUCED = "not shown with the protocol"
REVERSED_WITH = "reversed with the protocol"
UNTESTED_WITHOUT = "not tested without the protocol yet"


@dataclass(frozen=True)
class OrderingStep:
    """One step of the ordering a study with a baseline declares (its family's pairs of its
    own arms, ``above`` claimed better than ``below``): as its family tested it under the
    study's protocol; as the baseline study's own pre-registered family tested the same
    heads without it (None: not tested there, or not yet); and, exploratory, how much more
    the protocol moved ``above`` than ``below`` (None: an arm not recorded)."""

    above: str
    below: str
    here: statistics.Difference
    baseline: statistics.Difference | None
    baseline_sign: int = 1  # -1 when the baseline tested below - above
    # (above - above@baseline) - (below - below@baseline) on the seeds all four have, x
    # photos: not in the declared family, so a single unadjusted test, said to be one.
    interaction: statistics.Difference | None = None

    @property
    def baseline_difference(self) -> tuple[float, float, float]:
        """above - below without the protocol: estimate and interval."""
        d = self.baseline
        if self.baseline_sign > 0:
            return d.difference, d.low, d.high
        return -d.difference, -d.high, -d.low

    @property
    def origin(self) -> str:
        """Where the step stands: with the protocol not shown or reversed; else, without
        it, held, reversed, not shown, or not tested."""
        here = verdict(self.here)
        if here != SUPPORTED:
            return REVERSED_WITH if here == NOT_SUPPORTED else NOT_REPRODUCED
        if self.baseline is None:
            return UNTESTED_WITHOUT
        without = verdict(self.baseline, self.baseline_sign > 0)
        return {SUPPORTED: HOLDS_WITHOUT, NOT_SUPPORTED: REVERSED_WITHOUT}.get(without, ONLY_WITH)


def ordering_steps(analysis: Analysis, baseline: Analysis | None, name: str) -> list[OrderingStep]:
    """Each tested pair of a study's own arms (none of them a baseline's "<arm>@<name>"),
    beside the baseline study's test of the same two heads (either way round) and the
    protocol's interaction with the step."""
    tested = {(b.arm_a, b.arm_b): b for b in (baseline.family if baseline is not None else [])}
    steps = []
    for d in analysis.family:
        if "@" in d.arm_a or "@" in d.arm_b:
            continue
        forward, backward = tested.get((d.arm_a, d.arm_b)), tested.get((d.arm_b, d.arm_a))
        found, sign = (forward, 1) if forward is not None else (backward, -1)
        steps.append(
            OrderingStep(
                d.arm_a,
                d.arm_b,
                d,
                found,
                sign if found else 1,
                protocol_interaction(analysis, d.arm_a, d.arm_b, name),
            )  # fmt: skip
        )
    return steps


def protocol_interaction(
    analysis: Analysis, above: str, below: str, baseline: str
) -> statistics.Difference | None:
    """How much more the protocol moved ``above`` than ``below``: (above - above@baseline)
    - (below - below@baseline), per seed and photo on the seeds all four arms have, with the
    two-level bootstrap's interval and p. Not part of the declared family: one exploratory
    test, unadjusted (its ``p_holm`` is its own p). None when an arm is not recorded."""
    found = interaction(analysis, above, f"{above}@{baseline}", below, f"{below}@{baseline}")
    return None if found is None else replace(found, arm_a=above, arm_b=below)


def interaction(analysis: Analysis, a: str, b: str, c: str, d: str) -> statistics.Difference | None:
    """(a - b) - (c - d), per seed and photo on the seeds all four arms have, with the
    two-level bootstrap's interval and p: one test outside the declared family, unadjusted
    (its ``p_holm`` is its own p). None when an arm is not recorded or no seed is shared."""
    evidence = analysis.evidence
    names = [a, b, c, d]
    if any(name not in evidence.arms for name in names):
        return None
    seeds = evidence.common_seeds(*names)
    if not seeds:
        return None
    right = {name: evidence.arms[name].matrix(TEST, seeds).astype(np.int64) for name in names}
    moved = {"first": right[a] - right[b], "second": right[c] - right[d]}
    replicates = statistics.bootstrap_means(moved, analysis.plan.draws)
    found = statistics.difference("first", "second", replicates, moved)
    return replace(
        found, arm_a=f"{a} - {b}", arm_b=f"{c} - {d}", p_holm=found.p_value,
        seed_ids=tuple(seeds),
    )  # fmt: skip
