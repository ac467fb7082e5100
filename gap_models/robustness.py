"""Robustness and explanation: accuracy on translated test photos (the article's
translation claim) and class activation maps of a ``gap`` model (its "category confidence
maps"). Pure numpy / scipy / Keras."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from scipy import ndimage

from gap_models.probabilities import class_probabilities, predicted_classes

SHIFTS: tuple[int, ...] = (0, 10, 20, 30)
DIRECTIONS: tuple[tuple[int, int], ...] = ((0, 1), (0, -1), (1, 0), (-1, 0))
"""Right, left, down, up: each shift is measured in all four and averaged."""
DIRECTION_NAMES = {(0, 1): "right", (0, -1): "left", (1, 0): "down", (-1, 0): "up", (0, 0): ""}


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


def directions_of(pixels: int) -> tuple[tuple[int, int], ...]:
    """The directions a shift is measured in (none to shift by 0 pixels)."""
    return DIRECTIONS if pixels else ((0, 0),)


def translation_correct(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    shifts: tuple[int, ...] = SHIFTS,
    progress: Callable[[str], None] | None = None,
) -> dict[int, np.ndarray]:
    """Per shift (pixels), per photo: in how many of the shift's directions the model is
    right (uint8; out of 4, or of 1 for no shift): what intervals over photos need."""
    results = {}
    for pixels in shifts:
        counts = np.zeros(len(labels), dtype=np.uint8)
        for direction in directions_of(pixels):
            if progress is not None:
                progress(f"shifted {pixels} px {DIRECTION_NAMES[direction]}")
            shifted = shift_images(images, pixels, direction)
            outputs = model.predict(shifted, batch_size=256, verbose=0)
            counts += predicted_classes(class_probabilities(outputs)) == labels
        results[pixels] = counts
    return results


def translation_accuracy(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, shifts: tuple[int, ...] = SHIFTS
) -> dict[int, float]:
    """Test accuracy for each shift (pixels), averaged over the four directions."""
    counts = translation_correct(model, images, labels, shifts)
    return {p: float(c.mean() / len(directions_of(p))) for p, c in counts.items()}


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
    pools = [
        layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)
    ]
    if not pools:
        raise ValueError(f"class activation maps need the 'gap' head, not {model.name!r}")
    # The maps the head pools, whatever the backbone's layers are named.
    features = keras.Model(model.inputs, pools[0].input)
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
