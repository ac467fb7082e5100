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


SERVING_KIND_PARAMS: tuple[str, ...] = (
    records.HEAD,
    "backbone",
    "batch_norm",
    "precision",
    "image_size",
    records.TRAINABLE_PARAMS,
    records.CODE_VERSION,
)
"""A logged model's run parameters that decide its architecture (its weights do not decide
whether it loads)."""


def serving_kind(model_uri: str) -> str:
    """24 hex digits naming everything that decides whether a logged model loads and
    predicts in a fresh process: the pyfunc's and the shipped modules' code, this module's,
    the requirements and the libraries that load it, Python, and the model's architecture
    (``SERVING_KIND_PARAMS`` of its run). Two models of one kind logged by this code differ
    only in weights."""
    import hashlib
    import json
    import sys

    run_id = mlflow.models.get_model_info(model_uri).run_id
    params = client().get_run(run_id).data.params if run_id else {}
    digest = hashlib.sha256()
    for path in (IMAGE_MODEL_CODE, *SHIPPED_CODE, Path(__file__)):
        digest.update(path.read_bytes())
    shape = {name: params.get(name) for name in SERVING_KIND_PARAMS}
    setting = [shape, pip_requirements(), mlflow.__version__, sys.version, run_id is None]
    digest.update(json.dumps(setting, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def serving_checks_dir() -> Path:
    """Where the kinds of model shown to load in a fresh process are remembered:
    ``$COMPARE_HEADS_SERVING_CHECKS_DIR``, else ``serving-checks`` in the cache (several
    caches of one machine, or a test session's many, can share one)."""
    from gap_models.data import default_cache_dir

    configured = os.environ.get("COMPARE_HEADS_SERVING_CHECKS_DIR")
    return Path(configured).expanduser() if configured else default_cache_dir() / "serving-checks"


def _passed_marker(model_uri: str) -> Path:
    return serving_checks_dir() / serving_kind(model_uri)


class ServingCheck:
    """Load a logged model with ``mlflow.pyfunc`` in a fresh Python process (nothing of this
    one imported, as ``mlflow models serve`` loads it) and classify one photo; started now
    and answered later by ``problem``: the fresh process loads the model while the caller
    goes on (the flow draws its report meanwhile).

    With ``by_kind`` (a model this process's code has just logged), a model of a kind
    (``serving_kind``) that has already loaded and predicted in a fresh process on this
    machine is not loaded again (that costs a process with TensorFlow, 15 s or more on 2
    cores): ``shown_by`` names the model that showed it. Its own artifacts were loaded back
    from the store when it was scored. A model logged earlier (a reused run) may have been
    logged by other code or libraries than the kind names: it is always loaded."""

    def __init__(self, model_uri: str, by_kind: bool = False) -> None:
        import subprocess
        import sys

        self.model_uri = model_uri
        self._by_kind = by_kind  # only what this code logged shows its kind
        self._marker = _passed_marker(model_uri)
        self.shown_by: str | None = None
        self._answer: tuple[str | None] | None = None
        self._process = None
        if by_kind and self._marker.is_file():
            self.shown_by = self._marker.read_text().strip() or "an earlier model"
            self._answer = (None,)
            return
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVE_CHECK, model_uri], env=env, cwd=tempfile.gettempdir(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    @property
    def verdict(self) -> str:
        """What a promotion says about it (once ``problem`` returned None)."""
        if self.shown_by is None:
            return "loads and predicts in a fresh process"
        return (
            "a model of its kind (the same architecture, code and libraries) loaded and "
            f"predicted in a fresh process ({self.shown_by})"
        )

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
            if self._process.returncode == 0 and self._by_kind:
                _write_atomically(self._marker, self.model_uri)
        return self._answer[0]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)
