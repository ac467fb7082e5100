"""The statistics of a comparison, in one place: intervals and tests from a two-level
bootstrap (seeds, then photos), Holm's adjustment of a pre-registered family,
equivalence by two one-sided tests, and the smallest difference a comparison could detect.

Accuracy differences are computed on integer counts of correctly classified photos, never on
float fractions: a difference that is the same on every seed then gives the same answer
whichever way it was handed in (no float-noise p-values).

Why two levels: a head's accuracy varies with the training seed (initial weights, data
order) and with the sample of test photos it happens to be scored on. Resampling the seeds
and, within them, the photos (the same photos and seeds for both heads of a pair: they are
paired) carries both into the interval. The per-seed t-test of earlier reports treated the
test photos as fixed and was too sure of itself.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_SEEDS_FOR_INTERVAL = 3
"""Fewer seeds say almost nothing about seed-to-seed variation; the report says so instead
of printing an interval."""
POWER = 0.8


@functools.lru_cache(maxsize=8)
def resampling_weights(
    seed: int, seeds: int, photos: int, draws: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per draw: how often each seed is taken (``(draws, seeds)``) and each photo
    (``(draws, photos)``), each resampled with replacement, from a generator seeded with
    ``seed``.

    Kept (read-only) for the next call with the same arguments: a study's analysis draws the
    same resamples for every pair of arms, and drawing a multinomial over thousands of photos
    4,000 times is most of its cost."""
    rng = np.random.default_rng(seed)
    seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=draws)
    photo_weights = rng.multinomial(photos, np.full(photos, 1 / photos), size=draws)
    kept = seed_weights.astype(np.int32), photo_weights.astype(np.int32)  # counts <= photos
    for array in kept:
        array.flags.writeable = False
    return kept


def bootstrap_means(
    correct: dict[str, np.ndarray], draws: int = 4000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per arm, ``draws`` bootstrap replicates of its mean accuracy.

    ``correct[arm]`` is ``(seeds, photos)``: 1 where that seed's model got that photo right.
    Every arm is resampled with the same seed and photo draws (arms are paired by seed index
    and photo), so differences of the replicates are paired differences. The replicates
    are integer counts divided once, so they lie in [0, 1].
    """
    shapes = {array.shape for array in correct.values()}
    if len(shapes) != 1:
        raise ValueError(f"every arm needs the same (seeds, photos), got {sorted(shapes)}")
    ((seeds, photos),) = shapes
    seed_weights, photo_weights = resampling_weights(seed, seeds, photos, draws)
    replicates = {}
    for arm, array in correct.items():
        per_seed = photo_weights @ np.asarray(array, dtype=np.int64).T  # (draws, seeds) counts
        counts = np.sum(per_seed * seed_weights, axis=1)  # correct photos over the resample
        replicates[arm] = counts / (seeds * photos)
    return replicates


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_p_floor(draws: int) -> float:
    """The smallest p-value ``bootstrap_p_value`` gives over ``draws`` replicates."""
    return min(1.0, 2 / (draws + 1))


def bootstrap_p_value(replicates: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p-value of "the difference is ``null``": twice the smaller share of
    replicates on either side of it (with the +1 that keeps it above 0)."""
    below = (np.sum(replicates <= null) + 1) / (len(replicates) + 1)
    above = (np.sum(replicates >= null) + 1) / (len(replicates) + 1)
    return float(min(1.0, 2 * min(below, above)))


@dataclass(frozen=True)
class Difference:
    """Arm A minus arm B in accuracy, paired by seed and photo."""

    arm_a: str
    arm_b: str
    seeds: int
    photos: int
    difference: float  # point estimate: counts of A minus counts of B, over seeds x photos
    low: float
    high: float
    p_value: float
    standard_error: float
    p_holm: float = math.nan
    # Right and wrong on exactly the same photos in every seed: the same model trained twice
    # (a check of determinism), not a difference too small to detect.
    identical: bool = False
    # The rows (seeds, in order) on which A and B are right and wrong on the same photos:
    # the same model in those seeds, whatever the others say.
    identical_rows: tuple[int, ...] = ()
    family_size: int = 1  # the comparisons its Holm family declares (tested or not yet)
    seed_ids: tuple[int, ...] = ()  # the seeds both arms have, which it is computed on

    @property
    def detectable(self) -> float:
        """The smallest true difference this comparison had an 80% chance to call
        significant (two-sided) at the strictest level Holm can hold a member of its family
        to, 5% / m (Bonferroni's; conservative for all but the comparison tested first):
        (z_(1 - 0.025 / m) + z_0.8) standard errors."""
        level = 0.05 / self.family_size
        return (stats.norm.ppf(1 - level / 2) + stats.norm.ppf(POWER)) * self.standard_error

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < 0.05

    @property
    def identical_seeds(self) -> tuple[int, ...]:
        """The seeds of ``identical_rows`` (their row numbers where seed ids are not set)."""
        ids = self.seed_ids or tuple(range(self.seeds))
        return tuple(ids[row] for row in self.identical_rows)


def difference(
    arm_a: str, arm_b: str, replicates: dict[str, np.ndarray], correct: dict[str, np.ndarray],
    level: float = 0.95,
) -> Difference:  # fmt: skip
    """A minus B: the point estimate from integer counts, interval and p from the paired
    replicates of ``bootstrap_means``."""
    a, b = np.asarray(correct[arm_a], np.int64), np.asarray(correct[arm_b], np.int64)
    seeds, photos = a.shape
    point = (int(a.sum()) - int(b.sum())) / (seeds * photos)
    deltas = replicates[arm_a] - replicates[arm_b]
    low, high = percentile_interval(deltas, level)
    return Difference(
        arm_a, arm_b, seeds, photos, point, low, high, bootstrap_p_value(deltas),
        float(np.std(deltas, ddof=1)), identical=bool(np.array_equal(a, b)),
        identical_rows=tuple(int(i) for i in np.flatnonzero(np.all(a == b, axis=1))),
    )  # fmt: skip


def holm_adjusted(p_values: list[float], family_size: int | None = None) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest of m is
    multiplied by m - i + 1, made monotone, capped at 1. (statsmodels' ``multipletests(p,
    method="holm")`` gives the same numbers, and a test holds them equal, but forces a full
    garbage collection on every call: about 2 s in a process that holds TensorFlow.)

    ``family_size`` (m) counts the comparisons the family declares: those not tested yet
    (an arm not recorded) enter as p = 1, so a provisional family is adjusted as strictly
    as the finished one will be, never less."""
    m = max(len(p_values), family_size or 0)
    p = np.asarray(list(p_values) + [1.0] * (m - len(p_values)), dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * np.arange(m, 0, -1)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted[: len(p_values)].tolist()


def holm(differences: list[Difference], family_size: int | None = None) -> list[Difference]:
    """The family's differences with ``p_holm`` set (Holm's adjustment over ``family_size``
    declared comparisons, default: those given)."""
    from dataclasses import replace

    m = max(len(differences), family_size or 0)
    adjusted = holm_adjusted([d.p_value for d in differences], m)
    return [replace(d, p_holm=p, family_size=m) for d, p in zip(differences, adjusted, strict=True)]


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests that |A - B| < margin: the (1 - 2 alpha) interval lies inside
    (-margin, +margin), i.e. both one-sided p-values are below alpha. A study's equivalence
    claims are a family of their own: "equivalent" needs the Holm-adjusted p below 5%."""

    arm_a: str
    arm_b: str
    margin: float
    difference: float
    low: float  # the 90% interval (alpha = 0.05 on each side, before adjustment)
    high: float
    p_value: float  # the larger of the two one-sided p-values
    seeds: int = 0  # the seeds both arms have
    p_holm: float = math.nan  # Holm-adjusted over the study's declared equivalence claims

    @property
    def equivalent(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < 0.05


def holm_equivalences(
    equivalences: list[Equivalence], family_size: int | None = None
) -> list[Equivalence]:
    """The equivalence claims with ``p_holm`` set, one Holm family."""
    from dataclasses import replace

    adjusted = holm_adjusted([e.p_value for e in equivalences], family_size)
    return [replace(e, p_holm=p) for e, p in zip(equivalences, adjusted, strict=True)]


def equivalence(
    arm_a: str, arm_b: str, replicates: dict[str, np.ndarray], correct: dict[str, np.ndarray],
    margin: float,
) -> Equivalence:  # fmt: skip
    """TOST on the paired bootstrap replicates of A - B (a family of one: ``p_holm`` is its
    p until ``holm_equivalences`` adjusts it among others)."""
    point = difference(arm_a, arm_b, replicates, correct, level=0.90)
    deltas = replicates[arm_a] - replicates[arm_b]
    count = len(deltas) + 1
    p_lower = (np.sum(deltas <= -margin) + 1) / count  # H0: A - B <= -margin
    p_upper = (np.sum(deltas >= margin) + 1) / count  # H0: A - B >= +margin
    return Equivalence(
        arm_a, arm_b, margin, point.difference, point.low, point.high,
        float(max(p_lower, p_upper)), point.seeds, float(max(p_lower, p_upper)),
    )  # fmt: skip


def mean_interval(replicates: np.ndarray, correct: np.ndarray, level: float = 0.95):
    """An arm's accuracy: point estimate from counts, percentile interval (inside [0, 1])."""
    array = np.asarray(correct, np.int64)
    low, high = percentile_interval(replicates, level)
    return float(array.sum() / array.size), low, high


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Median and its distribution-free interval (order statistics of the binomial): for
    steady-state speeds, which have outliers (a busy machine) and no normal shape."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n = len(ordered)
    if n == 0:
        return math.nan, math.nan, math.nan
    low_rank = int(stats.binom.ppf((1 - level) / 2, n, 0.5))
    high_rank = int(stats.binom.isf((1 - level) / 2, n, 0.5))
    low = ordered[max(low_rank - 1, 0)]
    high = ordered[min(high_rank, n - 1)]
    return float(np.median(ordered)), float(low), float(high)


def exact_interval(correct: int, photos: int, level: float = 0.95) -> tuple[float, float]:
    """One model's accuracy interval on ``photos`` scored photos: exact (Clopper-Pearson)
    binomial, the photo sampling being all the variation one trained model has."""
    if photos == 0:
        return math.nan, math.nan
    low, high = stats.binomtest(correct, photos).proportion_ci(level, method="exact")
    return float(low), float(high)
