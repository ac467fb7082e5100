"""Evaluation on the held-out test split: loss, accuracy, ROC AUC and translation
robustness, from predictions."""

from __future__ import annotations

import time

import numpy as np
from scipy.stats import rankdata

from gap_models.analysis import translation_accuracy
from gap_models.data import load_split

EPSILON = 1e-7  # Keras' clipping of probabilities in binary cross-entropy


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Binary cross-entropy, accuracy at 0.5 and ROC AUC of P(dog) against 0/1 labels."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if labels.shape != probabilities.shape or labels.size == 0:
        raise ValueError(
            f"labels {labels.shape} and probabilities {probabilities.shape} "
            "must have one equal, non-empty shape"
        )
    clipped = np.clip(probabilities, EPSILON, 1 - EPSILON)
    loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    accuracy = np.mean((probabilities >= 0.5) == (labels == 1))
    return {
        "test_loss": float(loss),
        "test_accuracy": float(accuracy),
        "test_auc": roc_auc(labels, probabilities),
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (ties count half)."""
    labels = np.asarray(labels).reshape(-1) == 1
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores).reshape(-1))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def predict_probabilities(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """P(dog) for each image (uint8, ``(n, size, size, 3)``)."""
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0)).reshape(-1)


def evaluate_model(
    model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> dict[str, float]:
    """Test metrics of a trained model on the cached test split."""
    return binary_metrics(labels, predict_probabilities(model, images, batch_size))


SHIFT_METRIC_PREFIX = "test_accuracy_shift_"
"""Test accuracy on images shifted by N pixels is recorded as ``test_accuracy_shift_N``."""


def score_on_test(model, cache_dir: str) -> dict[str, float]:
    """Everything measured on the cached test split: loss, accuracy, AUC, accuracy under
    each translation shift (the robustness claim), and the seconds all that took."""
    images, labels = load_split(cache_dir, "test")
    started = time.perf_counter()
    metrics = evaluate_model(model, images, labels)
    for pixels, accuracy in translation_accuracy(model, images, labels).items():
        metrics[f"{SHIFT_METRIC_PREFIX}{pixels}"] = accuracy
    metrics["evaluate_seconds"] = time.perf_counter() - started
    return metrics
