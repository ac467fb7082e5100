"""The logged model: an MLflow pyfunc that takes encoded image files and returns class
probabilities, around the trained Keras model.

MLflow logs this file as "models from code" and ships ``decoding.py`` and
``probabilities.py`` of ``gap_models`` beside it (``code_paths``), so loading and serving
need only MLflow, Keras, numpy, pandas and Pillow: never this repository. A photo is
decoded and resized exactly as training decoded it, and outputs are read exactly as
evaluation reads them.

Input: a DataFrame with a column ``image`` of encoded files (bytes; over JSON, base64, which
MLflow decodes for a ``binary`` column). Output: one row per image, a probability column
per class, ``label`` (the predicted class) and ``probability`` (its probability). A file
that is not a usable image fails the whole request with the row and the reason (HTTP 400
from ``mlflow models serve``). The Keras model itself: ``unwrap_python_model().model``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN = "image"
KERAS_ARTIFACT = "keras_model"
# The model's configuration keys. This file is loaded where this project is not installed,
# so it cannot import gap_models.records; tracking.logged_model writes through these names.
CLASS_NAMES, IMAGE_SIZE = "class_names", "image_size"


def _as_bytes(value, row: int) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):  # base64 text that no schema decoded
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise MlflowException(
        f"row {row}: column {IMAGE_COLUMN!r} must hold an encoded image file (bytes, or "
        f"base64 text over JSON), got {type(value).__name__}",
        INVALID_PARAMETER_VALUE,
    )


class ImageClassifier(PythonModel):
    """Encoded image files in, class probabilities out (see the module docstring)."""

    def load_context(self, context) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], safe_mode=True)
        self.class_names = list(context.model_config[CLASS_NAMES])
        self.image_size = int(context.model_config[IMAGE_SIZE])

    # The type hint tells MLflow the input is a table (checked against the logged signature);
    # without one, every load printed MLflow's "Add type hints to the `predict` method".
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        import numpy as np
        from decoding import ImageDecodeError, decode_image
        from probabilities import class_probabilities, predicted_classes

        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input:
            raise MlflowException(
                f"expected a table with a column {IMAGE_COLUMN!r} of encoded image files",
                INVALID_PARAMETER_VALUE,
            )
        images = []
        for row, value in enumerate(model_input[IMAGE_COLUMN]):
            try:
                images.append(decode_image(_as_bytes(value, row), self.image_size))
            except ImageDecodeError as error:
                raise MlflowException(
                    f"row {row}: not a usable image ({error})", INVALID_PARAMETER_VALUE
                ) from None
        if not images:
            return pd.DataFrame(columns=[*self.class_names, "label", "probability"])
        probabilities = class_probabilities(self.model.predict(np.stack(images), verbose=0))
        labels = predicted_classes(probabilities)
        table = pd.DataFrame(probabilities, columns=self.class_names)
        table["label"] = [self.class_names[label] for label in labels]
        table["probability"] = probabilities[np.arange(len(labels)), labels]
        return table


mlflow.models.set_model(ImageClassifier())
