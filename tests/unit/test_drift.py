"""Drift on what the model sees: the MMD test on a model's penultimate features separates
real photos from a shifted copy and leaves a fresh random split of the same photos alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gap_models.data.manifest import build_manifest, decode_photos
from gap_models.drift import image_statistics, measure_drift, mmd_test, sample

SHARED_PHOTOS = Path(__file__).resolve().parents[3] / "shared/data/kagglecatsanddogs_180px.zip"
SIZE = 48


def test_mmd_holds_its_level_on_one_distribution_and_sees_a_shift():
    rng = np.random.default_rng(0)
    false_alarms = sum(
        mmd_test(
            rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), permutations=100, seed=draw
        ).p_value
        < 0.05  # fmt: skip
        for draw in range(40)
    )
    assert false_alarms <= 6  # 2 expected at the 5 % level; 6 has probability < 1 %
    shifted = mmd_test(rng.normal(size=(60, 8)), rng.normal(0.5, 1.0, size=(60, 8)))
    assert shifted.p_value < 0.01 and shifted.drifted


@pytest.fixture(scope="module")
def real_photos(tmp_path_factory) -> np.ndarray:
    if not SHARED_PHOTOS.is_file():
        pytest.fail(f"the shared photos are missing: {SHARED_PHOTOS} (see ../shared/data)")
    cache = tmp_path_factory.mktemp("manifest-cache")
    manifest = build_manifest(str(SHARED_PHOTOS), [80, 10, 10], cache)
    chosen = sample(list(manifest.photos), limit=600, seed=1)
    return decode_photos(str(SHARED_PHOTOS), chosen, SIZE)


@pytest.fixture(scope="module")
def model():
    from gap_models.models import build_model

    return build_model("gap", image_size=SIZE, seed=0)


def test_a_random_split_of_the_same_photos_is_not_drift(real_photos, model):
    order = np.random.default_rng(2).permutation(len(real_photos))
    half = len(order) // 2
    test, changes = measure_drift(model, real_photos[order[:half]], real_photos[order[half:]])
    assert not test.drifted, test
    assert abs(changes["brightness"]) < 0.03


@pytest.mark.parametrize("shift", ["grayscale", "darkened"])
def test_shifted_photos_are_drift(real_photos, model, shift):
    reference, new = real_photos[::2], real_photos[1::2].astype(np.float32)
    if shift == "grayscale":
        new = np.repeat(new.mean(axis=-1, keepdims=True), 3, axis=-1)
    else:
        new = new * 0.6
    new = new.astype(np.uint8)
    test, changes = measure_drift(model, reference, new)
    assert test.drifted and test.p_value < 0.01, test
    expected = "colourfulness" if shift == "grayscale" else "brightness"
    assert changes[expected] < -0.02
    assert image_statistics(new)[expected] < image_statistics(reference)[expected]
