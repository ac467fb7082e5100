"""Your own photos: a folder of ten classes (scikit-learn's bundled handwritten digits,
written out as PNG files, one folder per digit) through the whole flow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from flows.compare_heads import compare_heads
from tests.fixtures import child_runs
from tracking.logged_model import load_logged_model, logged_class_names

pytestmark = pytest.mark.integration

DIGITS = tuple(str(digit) for digit in range(10))


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """1,797 real 8x8 scans of handwritten digits as ``digits/<digit>/<n>.png``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("own") / "digits"
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{index}.png")
    (root / "README.txt").write_text("scikit-learn digits")  # beside the classes: ignored
    return root


@pytest.fixture(scope="module")
def digits_run(digits_folder, tmp_path_factory, prefect_harness):
    home = tmp_path_factory.mktemp("digits-run")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("COMPARE_HEADS_CACHE_DIR", str(home / "cache"))
        patch.setenv("COMPARE_HEADS_OUTPUT_DIR", str(home / "outputs"))
        result = compare_heads(
            source=str(digits_folder),
            image_size=32,
            batch_size=32,
            epochs=2,
            heads=["gap", "fc"],
            seeds=[0],
        )
        yield result, MlflowClient(uri)


def test_ten_classes_train_with_softmax_and_per_class_metrics(digits_run):
    result, client = digits_run
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["class_names"] == ",".join(DIGITS)
    children = child_runs(client, result.experiment_id, result.parent_run_id)
    assert set(children) == {("gap", 0), ("fc", 0)}
    for run in children.values():
        metrics = run.data.metrics
        assert metrics["test_accuracy"] > 0.3, metrics  # chance is 0.1
        assert 0.5 < metrics["test_auc"] <= 1  # one-vs-rest, averaged over the ten
        assert {f"test_recall_{d}" for d in DIGITS} <= set(metrics)
        assert {f"test_precision_{d}" for d in DIGITS} <= set(metrics)
        model = load_logged_model(run.data.tags["model_uri"])
        assert model.output_shape == (None, 10)
        assert logged_class_names(run.data.tags["model_uri"]) == DIGITS
    # gap on ten classes: 64 x 10 weights + 10 biases on top of the same backbone.
    gap = children[("gap", 0)]
    assert int(gap.data.params["trainable_params"]) == 28_961 - 65 + 650


def test_confusion_matrix_dataset_and_own_registered_model(digits_run):
    result, client = digits_run
    plots = {item.path for item in client.list_artifacts(result.parent_run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/cam_grid.png", "plots/misclassified.png"} <= plots
    assert "plots/roc_curves.png" not in plots  # ten classes: no single ROC curve
    # The data, as an MLflow dataset input: name, fingerprint, and split sizes by class.
    (dataset_input,) = client.get_run(result.parent_run_id).inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "digits"
    profile = json.loads(dataset.profile)
    assert profile["class_names"] == list(DIGITS)
    assert sum(sum(counts.values()) for counts in profile["split_counts"].values()) == 1797
    # Not the cats-vs-dogs champion: a registered model of its own, named after the folder.
    assert result.promotion.name == "digits"
    champion = client.get_model_version_by_alias("digits", "champion")
    assert champion.run_id in {trained.run_id for trained in result.trained}
    assert client.get_run(result.parent_run_id).data.tags["registered_model"] == "digits"
