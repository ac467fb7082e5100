"""Classify image files with a trained model: one result per file, errors per file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gap_models.data import CLASS_NAMES, ImageDecodeError, decode_image

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


def classify_files(model, paths: list[str | Path], image_size: int) -> list[Prediction]:
    """P(dog) for each readable image; unreadable or undecodable files get an error line."""
    predictions: dict[int, Prediction] = {}
    images, indices = [], []
    for index, path in enumerate(paths):
        try:
            images.append(load_image_file(path, image_size))
            indices.append(index)
        except (ImageDecodeError, OSError) as error:
            predictions[index] = Prediction(str(path), error=str(error))
    if images:
        probabilities = np.asarray(model.predict(np.stack(images), verbose=0)).reshape(-1)
        for index, p_dog in zip(indices, probabilities, strict=True):
            label = int(p_dog >= 0.5)
            confidence = float(p_dog if label else 1 - p_dog)
            predictions[index] = Prediction(str(paths[index]), CLASS_NAMES[label], confidence)
    return [predictions[index] for index in range(len(paths))]
