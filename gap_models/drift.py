"""Drift, measured on what the model sees: new photos against the champion's training photos.

The test is a kernel two-sample test on the champion's own penultimate features (the input
of its last Dense layer): the unbiased squared maximum mean discrepancy (MMD) with a
Gaussian kernel whose width is the median distance between the pooled features, and a
permutation p-value (the share of label shuffles whose MMD is at least the observed one).
Beside it, simple image statistics (brightness, colour) say in plain terms what moved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DRIFT_ALPHA = 0.01
"""A drift p-value below this is a reason to retrain (one test per run: no family)."""
MIN_PHOTOS = 20
"""Fewer new photos than this make no test: too few to tell drift from chance."""
PERMUTATIONS = 500


@dataclass(frozen=True)
class DriftTest:
    mmd: float  # unbiased squared MMD; about 0 when both samples come from one distribution
    p_value: float
    reference_photos: int
    new_photos: int

    @property
    def drifted(self) -> bool:
        return self.p_value < DRIFT_ALPHA


def _squared_distances(features: np.ndarray) -> np.ndarray:
    norms = np.sum(features**2, axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * features @ features.T, 0.0)


def _mmd(kernel: np.ndarray, first: np.ndarray) -> float:
    """Unbiased squared MMD between the rows marked ``first`` and the rest."""
    second = ~first
    a, b = kernel[np.ix_(first, first)], kernel[np.ix_(second, second)]
    m, n = a.shape[0], b.shape[0]
    within_a = (a.sum() - np.trace(a)) / (m * (m - 1))
    within_b = (b.sum() - np.trace(b)) / (n * (n - 1))
    return float(within_a + within_b - 2 * kernel[np.ix_(first, second)].mean())


def mmd_test(
    reference: np.ndarray, new: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0
) -> DriftTest:
    """Whether ``new`` (n x d features) comes from the distribution of ``reference``."""
    if len(reference) < 2 or len(new) < 2:
        raise ValueError("an MMD test needs at least 2 photos on each side")
    pooled = np.concatenate([reference, new]).astype(np.float64)
    pooled = (pooled - pooled.mean(axis=0)) / (pooled.std(axis=0) + 1e-8)
    distances = _squared_distances(pooled)
    width = np.median(distances[np.triu_indices_from(distances, k=1)]) or 1.0
    kernel = np.exp(-distances / width)
    first = np.zeros(len(pooled), dtype=bool)
    first[: len(reference)] = True
    observed = _mmd(kernel, first)
    generator = np.random.default_rng(seed)
    at_least = sum(
        _mmd(kernel, generator.permutation(first)) >= observed for _ in range(permutations)
    )
    return DriftTest(observed, (at_least + 1) / (permutations + 1), len(reference), len(new))


def image_statistics(images: np.ndarray) -> dict[str, float]:
    """Mean brightness, colour channels and colourfulness of uint8 or [0, 1] RGB images."""
    pixels = images.astype(np.float64)
    if pixels.max() > 1.5:
        pixels /= 255.0
    channel = pixels.reshape(-1, 3).mean(axis=0)
    return {
        "brightness": float(pixels.mean()),
        "red": float(channel[0]),
        "green": float(channel[1]),
        "blue": float(channel[2]),
        # How far pixels stray from grey: 0 for grayscale photos.
        "colourfulness": float(np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).mean()),
    }


def penultimate_features(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """What the model's last Dense layer sees for each image (raw pixels in, as served)."""
    import keras

    last_dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    extractor = keras.Model(model.inputs, last_dense.input)
    return np.asarray(extractor.predict(images, batch_size=batch_size, verbose=0))


SAMPLE_SIZE = 300
"""Photos per side of a drift test: enough to see a shift of a few percent of the features'
spread, a few seconds of features on 2 cores."""


def sample(items: list, limit: int = SAMPLE_SIZE, seed: int = 0) -> list:
    """Up to ``limit`` of ``items``, drawn without replacement, reproducibly."""
    if len(items) <= limit:
        return list(items)
    chosen = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
    return [items[index] for index in sorted(chosen)]


def measure_drift(
    model, reference: np.ndarray, new: np.ndarray
) -> tuple[DriftTest, dict[str, float]]:
    """The MMD test on the model's penultimate features, and how each image statistic moved
    (new minus reference)."""
    test = mmd_test(penultimate_features(model, reference), penultimate_features(model, new))
    before, after = image_statistics(reference), image_statistics(new)
    return test, {name: after[name] - before[name] for name in before}
