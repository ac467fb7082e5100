"""A trained model scored on photos it never saw: every photo of a labelled source, less
those (by content) that the model's own run had in any split, with an exact interval.

What checks that a study's best figure holds up beyond its test split: photos of the same
kind that no run of the study used give an accuracy that should land within the test
interval. The photos decode through the training decode path, at the model's input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gap_models.data.manifest import Manifest, Photo, decode_photos
from gap_models.evaluation import predict_probabilities
from gap_models.probabilities import predicted_classes
from gap_models.statistics import exact_interval

HOLDS_UP_WITHIN = 0.02
"""A study's figure holds up when its chosen model, scored on photos of the same kind that
no run of it saw, lands within this distance of its test accuracy: 2 points, a little more
than the 95% spread of the difference of two samples of this size from the same model (1.6
points at 90 % on 1,948 test photos and 5,000 unseen ones), so a miss means more than chance."""

BATCH_PHOTOS = 512
"""Photos decoded and scored at a time (memory stays flat on any source size)."""


@dataclass(frozen=True)
class HeldOutScore:
    """Accuracy on the scored photos, its exact (Clopper-Pearson) 95% interval, each
    class's recall, and what was left out."""

    photos: int
    correct: int
    low: float
    high: float
    recall: dict[str, float]
    seen: int  # photos of the source the model's run had (left out)
    undecodable: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.photos if self.photos else float("nan")

    def lines(self) -> list[str]:
        recall = ", ".join(f"{name} {100 * value:.1f} %" for name, value in self.recall.items())
        return [
            f"accuracy {100 * self.accuracy:.2f} % on {self.photos:,} photos "
            f"(95% interval {100 * self.low:.2f}-{100 * self.high:.2f} %, exact binomial)",
            f"recall by class: {recall}",
            f"left out: {self.seen:,} photos the model's run had (same bytes), "
            f"{self.undecodable:,} that do not decode",
        ]


def unseen_photos(source: Manifest, seen: Manifest | None) -> tuple[list[Photo], int]:
    """The photos of ``source`` whose bytes are not among ``seen``'s, and how many were."""
    known = {photo.sha256 for photo in seen.photos} if seen is not None else set()
    kept = [photo for photo in source.photos if photo.sha256 not in known]
    return kept, len(source.photos) - len(kept)


def score_photos(
    model, source: str, photos: list[Photo], image_size: int, class_names: tuple[str, ...],
    seen: int = 0,
) -> HeldOutScore:  # fmt: skip
    """Score ``model`` (a Keras model taking ``image_size`` photos) on ``photos`` of the
    local ``source``; a photo's class is matched to the model's class names whatever its
    case (``cat`` is ``Cat``)."""
    index = {name.casefold(): label for label, name in enumerate(class_names)}
    unknown = sorted({p.label for p in photos if p.label.casefold() not in index})
    if unknown:
        raise ValueError(
            f"the source has classes {unknown} the model does not know (it knows {list(class_names)})"
        )
    correct, total, undecodable = 0, 0, 0
    hits = np.zeros(len(class_names)), np.zeros(len(class_names))
    for start in range(0, len(photos), BATCH_PHOTOS):
        batch = photos[start : start + BATCH_PHOTOS]
        images, kept = decode_photos(source, batch, image_size, with_kept=True)
        undecodable += len(batch) - len(kept)
        if not kept:
            continue
        labels = np.array([index[photo.label.casefold()] for photo in kept])
        predicted = predicted_classes(predict_probabilities(model, images))
        correct += int((predicted == labels).sum())
        total += len(kept)
        np.add.at(hits[0], labels, predicted == labels)
        np.add.at(hits[1], labels, 1)
    low, high = exact_interval(correct, total)
    recall = {
        name: float(hits[0][k] / hits[1][k]) for k, name in enumerate(class_names) if hits[1][k]
    }
    return HeldOutScore(total, correct, float(low), float(high), recall, seen, undecodable)
