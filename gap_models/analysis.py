"""The article's claims, measured: statistics over seeds, translation robustness, CAMs.

Pure numpy / scipy / Keras; the compare task calls these and logs what they return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import combinations

import keras
import numpy as np
from scipy import ndimage, stats

from gap_models.probabilities import class_probabilities, predicted_classes

SHIFTS: tuple[int, ...] = (0, 10, 20, 30)
DIRECTIONS: tuple[tuple[int, int], ...] = ((0, 1), (0, -1), (1, 0), (-1, 0))
"""Right, left, down, up: each shift is measured in all four and averaged."""


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval over seeds; with one value the bounds are NaN."""
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size)
    return mean, mean - half, mean + half


MIN_SEEDS_FOR_INTERVAL = 3
"""Fewer seeds give a t-interval too wide to mean anything (two seeds: +-12.7 standard
errors); the report says so instead of printing it."""


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and does not
    count): a difference is significant at 5% family-wise when its adjusted p < 0.05."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted


def accuracy_interval(values: list[float]) -> tuple[float, float, float] | None:
    """Mean and 95% t-interval over seeds of an accuracy, clipped to [0, 1]; None when
    there are too few seeds (``MIN_SEEDS_FOR_INTERVAL``) for an interval worth printing."""
    if len(values) < MIN_SEEDS_FOR_INTERVAL:
        return None
    mean, low, high = confidence_interval(values)
    return mean, max(low, 0.0), min(high, 1.0)


@dataclass(frozen=True)
class PairedComparison:
    """Head A minus head B in test accuracy over the seeds both ran; ``p_holm`` is ``p_value``
    adjusted (Holm) within the family of comparisons it was computed with."""

    head_a: str
    head_b: str
    seeds: int
    mean_difference: float
    low: float
    high: float
    p_value: float
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        """At 5% family-wise (Holm-adjusted)."""
        return not math.isnan(self.p_holm) and self.p_holm < 0.05


def paired_comparisons(accuracy: dict[str, dict[int, float]]) -> list[PairedComparison]:
    """Paired t-test over seeds for every pair of heads (``accuracy[head][seed]``), with
    Holm's adjustment over all the pairs (one family).

    Paired by seed because, for one seed, both heads start from the same backbone weights and
    see the same shuffles: the pairing removes that shared variance. Over seeds rather than
    a bootstrap over test images, because the question is whether one *recipe* beats the
    other across training randomness, which a single trained model's test sample ignores.
    """
    comparisons = []
    for head_a, head_b in combinations(accuracy, 2):
        seeds = sorted(set(accuracy[head_a]) & set(accuracy[head_b]))
        differences = [accuracy[head_a][s] - accuracy[head_b][s] for s in seeds]
        mean, low, high = confidence_interval(differences) if differences else (math.nan,) * 3
        if len(differences) >= 2 and np.std(differences) > 0:
            p_value = float(stats.ttest_1samp(differences, 0.0).pvalue)
        else:
            p_value = math.nan
        comparisons.append(PairedComparison(head_a, head_b, len(seeds), mean, low, high, p_value))
    return adjusted(comparisons)


def adjusted(comparisons: list[PairedComparison]) -> list[PairedComparison]:
    """The comparisons with ``p_holm`` set, Holm's adjustment over them as one family."""
    family = holm([c.p_value for c in comparisons])
    return [replace(c, p_holm=p) for c, p in zip(comparisons, family, strict=True)]


def shift_images(images: np.ndarray, pixels: int, direction: tuple[int, int]) -> np.ndarray:
    """Translate a batch ``(n, h, w, c)`` by ``pixels`` along ``direction`` (rows, cols).

    Rule: content moves by ``pixels``; the uncovered band is filled by repeating the
    nearest edge row or column of the original image (numpy "edge" padding), so no black
    border is introduced; content pushed past the far edge is cropped away.
    """
    if pixels == 0:
        return images
    rows, cols = direction[0] * pixels, direction[1] * pixels
    pad = ((0, 0), (max(rows, 0), max(-rows, 0)), (max(cols, 0), max(-cols, 0)), (0, 0))
    padded = np.pad(images, pad, mode="edge")
    height, width = images.shape[1:3]
    top, left = max(-rows, 0), max(-cols, 0)
    return padded[:, top : top + height, left : left + width]


def translation_accuracy(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, shifts: tuple[int, ...] = SHIFTS
) -> dict[int, float]:
    """Test accuracy for each shift (pixels), averaged over the four directions."""
    results = {}
    for pixels in shifts:
        directions = DIRECTIONS if pixels else ((0, 0),)
        correct = []
        for direction in directions:
            shifted = shift_images(images, pixels, direction)
            outputs = model.predict(shifted, batch_size=256, verbose=0)
            correct.append(np.mean(predicted_classes(class_probabilities(outputs)) == labels))
        results[pixels] = float(np.mean(correct))
    return results


def class_activation_maps(
    model: keras.Model, images: np.ndarray, classes: np.ndarray | None = None
) -> np.ndarray:
    """Class-evidence maps ``(n, h, w)`` at image resolution for a ``gap`` model.

    With global average pooling, the logit of class c is ``b_c + sum_k w_kc * mean(A_k)``:
    the spatial mean of ``M_c(x, y) = sum_k w_kc A_k(x, y)`` plus the output bias. With the
    article's single sigmoid unit, M is the per-position vote for class 1 ("dog", positive)
    or class 0 ("cat", negative); with a softmax, each photo gets the map of ``classes[i]``
    (default: the class it is predicted as). The bias is a constant, not a place, so it is
    left out (Zhou et al. 2016). A flattened FC head mixes positions in its first dense
    layer, so no such per-position map exists for it.
    """
    if "global_average_pool" not in [layer.name for layer in model.layers]:
        raise ValueError(f"class activation maps need the 'gap' head, not {model.name!r}")
    features = keras.Model(model.inputs, model.get_layer("head_pool3").output)
    maps = np.asarray(features.predict(images, verbose=0), dtype=np.float32)  # (n, h', w', k)
    weights, _bias = model.get_layer("output").get_weights()
    if weights.shape[1] == 1:
        cams = np.tensordot(maps, weights[:, 0], axes=([3], [0]))
    else:
        if classes is None:
            classes = predicted_classes(class_probabilities(model.predict(images, verbose=0)))
        cams = np.einsum("nhwk,kn->nhw", maps, weights[:, np.asarray(classes)])
    zoom = (1, images.shape[1] / cams.shape[1], images.shape[2] / cams.shape[2])
    return ndimage.zoom(cams, zoom, order=1)
