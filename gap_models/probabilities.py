"""A model's outputs as class probabilities, and the class each one predicts.

Standalone on purpose (numpy only, no other module of this package): it is shipped inside
every logged model beside ``data/decoding.py``, so a served model reads its outputs exactly
as evaluation does, in a Python that has never installed this project.
"""

from __future__ import annotations

import numpy as np


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A model's outputs as ``(n, classes)`` probabilities: the sigmoid unit P(class 1)
    becomes ``[1 - p, p]``; a softmax is already that."""
    outputs = np.asarray(outputs, dtype=np.float64)
    outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        return np.concatenate([1 - outputs, outputs], axis=1)
    return outputs


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """The predicted label of each row of ``class_probabilities`` (two classes: class 1 at
    P >= 0.5, as the article's accuracy counts it; more: the most probable)."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= 0.5).astype(np.int64)
    return probabilities.argmax(axis=1)
