"""Evaluation on the held-out test split: loss, accuracy, ROC AUC, per-class recall and
precision, and translation robustness, from predictions (two classes or more)."""

from __future__ import annotations

import re
import time

import numpy as np
from scipy.stats import rankdata

from gap_models.analysis import translation_accuracy
from gap_models.data import cached_class_names, load_split
from gap_models.probabilities import class_probabilities, predicted_classes

EPSILON = 1e-7  # Keras' clipping of probabilities in binary cross-entropy


def metric_name(class_name: str) -> str:
    """A class name as it can appear in an MLflow metric key."""
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", class_name)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...] = ()
) -> dict[str, float]:
    """Cross-entropy, accuracy and ROC AUC of ``(n, classes)`` probabilities against integer
    labels (two classes: AUC of P(class 1); more: one-vs-rest AUC averaged over the classes
    present), and each named class's recall and precision."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(labels) != len(probabilities) or labels.size == 0:
        raise ValueError(
            f"labels {labels.shape} and probabilities {probabilities.shape} "
            "must be non-empty, one row of class probabilities per label"
        )
    clipped = np.clip(probabilities, EPSILON, 1 - EPSILON)
    if probabilities.shape[1] == 2:  # the article's binary cross-entropy on P(class 1)
        positive = clipped[:, 1]
        loss = -np.mean(labels * np.log(positive) + (1 - labels) * np.log(1 - positive))
        auc = roc_auc(labels, probabilities[:, 1])
    else:
        loss = -np.mean(np.log(clipped[np.arange(len(labels)), labels]))
        per_class = [
            roc_auc(labels == c, probabilities[:, c]) for c in range(probabilities.shape[1])
        ]
        auc = float(np.nanmean(per_class)) if not np.all(np.isnan(per_class)) else float("nan")
    predicted = predicted_classes(probabilities)
    metrics = {
        "test_loss": float(loss),
        "test_accuracy": float(np.mean(predicted == labels)),
        "test_auc": auc,
    }
    for index, name in enumerate(class_names):
        truly, called = labels == index, predicted == index
        key = metric_name(name)
        metrics[f"test_recall_{key}"] = float(np.mean(called[truly])) if truly.any() else 0.0
        metrics[f"test_precision_{key}"] = float(np.mean(truly[called])) if called.any() else 0.0
    return metrics


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Binary cross-entropy, accuracy at 0.5 and ROC AUC of P(class 1) against 0/1 labels."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape != probabilities.shape or labels.size == 0:
        raise ValueError(
            f"labels {labels.shape} and probabilities {probabilities.shape} "
            "must have one equal, non-empty shape"
        )
    return classification_metrics(labels, class_probabilities(probabilities))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (ties count half)."""
    labels = np.asarray(labels).reshape(-1) == 1
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores).reshape(-1))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def predict_probabilities(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``(n, classes)`` probabilities for each image (uint8, ``(n, size, size, 3)``)."""
    return class_probabilities(model.predict(images, batch_size=batch_size, verbose=0))


def evaluate_model(
    model, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...] = ()
) -> dict[str, float]:
    """Test metrics of a trained model on the cached test split."""
    return classification_metrics(labels, predict_probabilities(model, images), class_names)


def confusion_matrix(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Counts ``[true, predicted]`` over ``(n, classes)`` probabilities."""
    classes = probabilities.shape[1]
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels).astype(np.int64), predicted_classes(probabilities)), 1)
    return matrix


SELECTION_METRIC = "final_val_accuracy"
"""What every decision uses (best head, seed to register, champion): the final model's
accuracy on the validation split, with the BatchNorm statistics it is saved with. The test
split only reports: a figure that also chose the winner would be biased upward."""


def score_on_validation(model, cache_dir: str) -> dict[str, float]:
    """The final model's validation loss, accuracy and AUC (``final_val_*``)."""
    images, labels = load_split(cache_dir, "validation")
    scores = evaluate_model(model, images, labels)
    return {f"final_val_{key.removeprefix('test_')}": value for key, value in scores.items()}


SHIFT_METRIC_PREFIX = "test_accuracy_shift_"
"""Test accuracy on images shifted by N pixels is recorded as ``test_accuracy_shift_N``."""


def score_on_test(model, cache_dir: str) -> dict[str, float]:
    """Everything measured on the cached test split: loss, accuracy, AUC, each class's
    recall and precision, accuracy under each translation shift (the robustness claim); the
    validation scores decisions are made on (``score_on_validation``); and the seconds all
    that took."""
    images, labels = load_split(cache_dir, "test")
    started = time.perf_counter()
    metrics = evaluate_model(model, images, labels, cached_class_names(cache_dir))
    metrics.update(score_on_validation(model, cache_dir))
    for pixels, accuracy in translation_accuracy(model, images, labels).items():
        metrics[f"{SHIFT_METRIC_PREFIX}{pixels}"] = accuracy
    metrics["evaluate_seconds"] = time.perf_counter() - started
    return metrics
