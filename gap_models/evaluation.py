"""Evaluation on the held-out test split: loss, accuracy, ROC AUC, per-class recall and
precision, and translation robustness, from predictions (two classes or more)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from gap_models import records
from gap_models.data import (
    TRAIN_SPLIT,
    cached_class_names,
    load_ids,
    load_split,
    train_indices,
)
from gap_models.probabilities import class_probabilities, predicted_classes
from gap_models.robustness import directions_of, translation_correct

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
        records.TEST_LOSS: float(loss),
        records.TEST_ACCURACY: float(np.mean(predicted == labels)),
        records.TEST_AUC: auc,
    }
    for index, name in enumerate(class_names):
        truly, called = labels == index, predicted == index
        key = metric_name(name)
        recall = float(np.mean(called[truly])) if truly.any() else 0.0
        precision = float(np.mean(truly[called])) if called.any() else 0.0
        metrics[records.recall_metric(records.TEST_PREFIX, key)] = recall
        metrics[records.precision_metric(records.TEST_PREFIX, key)] = precision
    return metrics


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


def score_on_validation(model, cache_dir: str) -> dict[str, float]:
    """The final model's validation loss, accuracy and AUC (``final_val_*``)."""
    images, labels = load_split(cache_dir, records.SELECTION_SPLIT)
    return records.as_validation(evaluate_model(model, images, labels))


TRAIN_SUBSET = 2000
"""Training photos every cell is also scored on, in inference mode (the first it trained
on, in cache order): overfitting measured on like terms with validation."""
PREDICTION_SPLITS: tuple[str, ...] = (
    records.SELECTION_SPLIT,
    records.REPORT_SPLIT,
    records.TRAIN_SUBSET_SPLIT,
)


@dataclass(frozen=True)
class CellScores:
    """A cell's scores (metric name -> value) and its per-photo predictions by split:
    P(class 1) for two classes, else ``(n, classes)`` probabilities, in cache order."""

    metrics: dict[str, float]
    predictions: dict[str, np.ndarray]
    # Test photos shifted by N pixels: per photo, the directions it is right in (uint8).
    shifts: dict[int, np.ndarray]
    # The scored photos' content ids and labels by split, in the predictions' order.
    ids: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def stored_predictions(probabilities: np.ndarray) -> np.ndarray:
    """What is kept of ``(n, classes)`` probabilities: P(class 1) alone for two classes."""
    return probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities


def _scored_photos(
    cache_dir: str, split: str, train_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and content ids of what ``score_cell`` scores of one split."""
    if split != records.TRAIN_SUBSET_SPLIT:
        return (*load_split(cache_dir, split), load_ids(cache_dir, split))
    kept = train_indices(load_ids(cache_dir, TRAIN_SPLIT), train_fraction)[:TRAIN_SUBSET]
    images, labels = load_split(cache_dir, TRAIN_SPLIT)
    return images[kept], labels[kept], load_ids(cache_dir, TRAIN_SPLIT)[kept]


def score_cell(
    model,
    cache_dir: str,
    progress: Callable[[str], None] | None = None,
    train_fraction: float = 1.0,
) -> CellScores:
    """Everything measured on a trained model: on the test split loss, accuracy, AUC, each
    class's recall and precision and accuracy under each translation shift (the robustness
    claim); the validation scores decisions are made on (``final_val_*``); loss and accuracy
    on ``TRAIN_SUBSET`` photos it trained on (of its ``train_fraction``), in inference mode
    (``train_subset_*``); the seconds all that took; and the per-photo predictions of the
    three. ``progress`` hears which pass starts (16 in all)."""
    started = time.perf_counter()
    say = progress or (lambda step: None)
    classes = cached_class_names(cache_dir)
    predictions, metrics, shifts, ids, truths = {}, {}, {}, {}, {}
    for split in PREDICTION_SPLITS:
        say(split)
        subset = split == records.TRAIN_SUBSET_SPLIT
        images, labels, ids[split] = _scored_photos(cache_dir, split, train_fraction)
        truths[split] = labels
        probabilities = predict_probabilities(model, images)
        scores = classification_metrics(labels, probabilities, classes)
        if split == records.SELECTION_SPLIT:
            scores = records.as_validation(scores)
        elif subset:
            scores = records.as_train_subset(scores)
        metrics.update(scores)
        predictions[split] = stored_predictions(probabilities)
        if split == records.REPORT_SPLIT:
            shifts = translation_correct(model, images, labels, progress=say)
            for pixels, counts in shifts.items():
                accuracy = float(counts.mean() / len(directions_of(pixels)))
                metrics[f"{records.SHIFT_PREFIX}{pixels}"] = accuracy
    metrics[records.EVALUATE_SECONDS] = time.perf_counter() - started
    return CellScores(metrics, predictions, shifts, ids, truths)
