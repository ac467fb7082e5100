"""Classify image files with a trained model: one result per file, errors per file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gap_models.data import ImageDecodeError, decode_image
from gap_models.probabilities import class_probabilities, predicted_classes

MAX_FILE_BYTES = 50 * 1024 * 1024
"""Files larger than this are refused before decoding (prediction must never hang)."""


@dataclass(frozen=True)
class Prediction:
    """The verdict on one file: a label and P(label), or an error message."""

    path: str
    label: str | None = None
    probability: float | None = None
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.path}\terror\t{self.error}"
        return f"{self.path}\t{self.label}\t{self.probability:.4f}"


def load_image_file(path: str | Path, image_size: int) -> np.ndarray:
    """Read and decode one file through the training decode path."""
    path = Path(path)
    size = os.stat(path).st_size
    if size > MAX_FILE_BYTES:
        raise ImageDecodeError("too_large", f"{size:,} bytes (limit {MAX_FILE_BYTES:,})")
    return decode_image(path.read_bytes(), image_size)


def classify_files(
    model, paths: list[str | Path], image_size: int, class_names: tuple[str, ...]
) -> list[Prediction]:
    """The predicted class and its probability for each readable image (the same decode
    path as training, the same reading of outputs as evaluation and the served model);
    unreadable or undecodable files get an error line."""
    predictions: dict[int, Prediction] = {}
    images, indices = [], []
    for index, path in enumerate(paths):
        try:
            images.append(load_image_file(path, image_size))
            indices.append(index)
        except (ImageDecodeError, OSError) as error:
            predictions[index] = Prediction(str(path), error=str(error))
    if images:
        probabilities = class_probabilities(model.predict(np.stack(images), verbose=0))
        labels = predicted_classes(probabilities)
        for row, index in enumerate(indices):
            label = int(labels[row])
            predictions[index] = Prediction(
                str(paths[index]), class_names[label], float(probabilities[row, label])
            )
    return [predictions[index] for index in range(len(paths))]
