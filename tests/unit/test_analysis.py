"""Image shifts and class activation maps."""

from __future__ import annotations

import numpy as np
import pytest

from gap_models.models import build_model
from gap_models.robustness import class_activation_maps, shift_images, translation_accuracy


def test_shift_fills_with_the_edge_and_moves_content():
    image = np.arange(25, dtype=np.uint8).reshape(1, 5, 5, 1)
    right = shift_images(image, 2, (0, 1))[0, :, :, 0]
    np.testing.assert_array_equal(right[:, 2:], image[0, :, :3, 0])
    np.testing.assert_array_equal(right[:, 0], image[0, :, 0, 0])  # edge column repeated
    up = shift_images(image, 1, (-1, 0))[0, :, :, 0]
    np.testing.assert_array_equal(up[:4], image[0, 1:, :, 0])
    np.testing.assert_array_equal(up[4], image[0, 4, :, 0])
    assert shift_images(image, 0, (0, 1)) is image


def test_translation_accuracy_has_every_shift():
    model = build_model("gap", image_size=40)
    images = np.random.default_rng(0).integers(0, 255, (8, 40, 40, 3), dtype=np.uint8)
    result = translation_accuracy(model, images, np.arange(8) % 2, shifts=(0, 10))
    assert set(result) == {0, 10} and all(0 <= v <= 1 for v in result.values())


def test_cam_mean_reproduces_the_logit():
    """For GAP, the map's spatial mean plus the output bias is the model's logit."""
    model = build_model("gap", image_size=100, seed=1)
    images = np.random.default_rng(1).integers(0, 255, (3, 100, 100, 3), dtype=np.uint8)
    cams = class_activation_maps(model, images)
    assert cams.shape == (3, 100, 100)
    probabilities = model.predict(images, verbose=0).reshape(-1)
    logits = np.log(probabilities / (1 - probabilities))
    bias = model.get_layer("output").get_weights()[1][0]
    np.testing.assert_allclose(cams.mean(axis=(1, 2)) + bias, logits, atol=0.05)
    with pytest.raises(ValueError, match="need the 'gap' head"):
        class_activation_maps(build_model("fc"), images)
