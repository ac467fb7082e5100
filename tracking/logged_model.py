"""The model every run logs: the image-file pyfunc of ``tracking/image_classifier.py``
around a trained Keras model of stock layers, and how it is loaded back.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from gap_models import records
from tracking.runs import client, repo_root, tracking_uri

IMAGE_MODEL_CODE = Path(__file__).with_name("image_classifier.py")
"""The pyfunc every model is logged as (MLflow "models from code")."""
SHIPPED_CODE = (
    repo_root() / "gap_models" / "data" / "decoding.py",
    repo_root() / "gap_models" / "probabilities.py",
)
"""Standalone modules shipped inside each logged model: the training decode path and the
reading of outputs, importable there as ``decoding`` and ``probabilities``."""


def log_image_model(
    mlflow_client: MlflowClient,
    run_id: str,
    model,
    class_names: tuple[str, ...],
    pip_requirements: list[str],
) -> str:
    """Log a trained Keras model as the image-file pyfunc of ``tracking/image_classifier.py`` (with
    the class names and image size it needs); return its model URI, also kept as the run's
    ``model_uri`` tag (what resumption reuses)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    image_size = int(model.input_shape[1])
    config = {records.MODEL_CLASS_NAMES: list(class_names), records.MODEL_IMAGE_SIZE: image_size}
    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema(
            [ColSpec("double", name) for name in class_names]
            + [ColSpec("string", "label"), ColSpec("double", "probability")]
        ),
    )
    with tempfile.TemporaryDirectory(prefix="compare-heads-model-") as scratch:
        keras_file = Path(scratch) / "model.keras"
        model.save(keras_file)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(IMAGE_MODEL_CODE),
                artifacts={records.MODEL_KERAS_ARTIFACT: str(keras_file)},
                code_paths=[str(path) for path in SHIPPED_CODE],
                model_config=config,
                metadata=config,
                signature=signature,
                pip_requirements=pip_requirements,
            )
    mlflow_client.set_tag(run_id, records.MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def load_logged_model(model_uri: str):
    """The Keras model inside a model this project logged (Keras safe mode on: no arbitrary
    code)."""
    client()
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model


def logged_class_names(model_uri: str) -> tuple[str, ...]:
    """The classes a logged model predicts, in label order (from the model's metadata)."""
    client()
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    if records.MODEL_CLASS_NAMES not in metadata:
        raise ValueError(
            f"{model_uri} has no class names in its metadata: it was not logged by this "
            "version of compare-heads (retrain it, or load it with mlflow.pyfunc yourself)"
        )
    return tuple(metadata[records.MODEL_CLASS_NAMES])


def pip_requirements() -> list[str]:
    """What a logged model needs to load and serve (given explicitly: MLflow's inference of
    requirements imports the model in a subprocess)."""
    import keras
    import pandas
    import PIL
    import tensorflow as tf

    return [
        f"tensorflow-cpu=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"pillow=={PIL.__version__}",
        f"pandas=={pandas.__version__}",
    ]


def logged_split(model_uri: str) -> list[int]:
    """The split percentages of the flow run that trained a logged model (its parent run's
    ``split`` parameter; the default when the model has no such run)."""
    import ast

    from gap_models.config import RunConfig

    mlflow_client = client()
    run_id = mlflow.models.get_model_info(model_uri).run_id
    if run_id:
        parent = mlflow_client.get_run(run_id).data.tags.get(records.PARENT_RUN_TAG)
        if parent:
            logged = mlflow_client.get_run(parent).data.params.get(records.SPLIT_PARAM)
            if logged:
                return list(ast.literal_eval(logged))
    return RunConfig.model_fields[records.SPLIT_PARAM].get_default(call_default_factory=True)


SERVE_CHECK_SECONDS = 600
_SERVE_CHECK = """
import io, sys
import numpy as np, pandas as pd, mlflow
from PIL import Image
model = mlflow.pyfunc.load_model(sys.argv[1])
buffer = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
table = model.predict(pd.DataFrame({"image": [buffer.getvalue()]}))
assert list(table.columns[-2:]) == ["label", "probability"], list(table.columns)
assert 0.0 <= float(table["probability"].iloc[0]) <= 1.0
print("serves:", table["label"].iloc[0])
"""


class ServingCheck:
    """``serving_problem``, started now and answered later: the fresh process loads the
    model while the caller goes on (the flow draws its report meanwhile)."""

    def __init__(self, model_uri: str) -> None:
        import subprocess
        import sys

        self.model_uri = model_uri
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVE_CHECK, model_uri], env=env, cwd=tempfile.gettempdir(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._answer: tuple[str | None] | None = None

    def problem(self) -> str | None:
        """None when the model loaded and predicted, else what went wrong (the last lines
        of the fresh process's output); waits at most ``SERVE_CHECK_SECONDS``."""
        import subprocess

        if self._answer is None:
            try:
                output, _ = self._process.communicate(timeout=SERVE_CHECK_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.communicate()
                message = (
                    f"loading {self.model_uri} in a fresh process took over {SERVE_CHECK_SECONDS} s"
                )
                self._answer = (message,)
                return message
            tail = "\n".join(output.strip().splitlines()[-5:])
            failed = f"{self.model_uri} does not load and predict in a fresh process: {tail}"
            self._answer = (None if self._process.returncode == 0 else failed,)
        return self._answer[0]


def serving_problem(model_uri: str) -> str | None:
    """Load the logged model with ``mlflow.pyfunc`` in a fresh Python process (nothing of
    this one imported, as ``mlflow models serve`` loads it) and classify one photo; None when
    that works, else what went wrong (the last lines of its output)."""
    return ServingCheck(model_uri).problem()
