"""The improved recipe runs through the whole flow and is recorded on every run."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from flows.compare_heads import compare_heads
from tests.fixtures import make_pet_images

pytestmark = pytest.mark.integration


def test_improved_recipe_is_logged(tmp_path, tracking_uri, prefect_harness):
    uri = tracking_uri
    source = str(make_pet_images(tmp_path / "photos", per_class=60, size=32))
    summary = compare_heads(
        source=source, image_size=32, batch_size=16, epochs=2, heads=["gap"], promote=False,
        recipe="improved",
    )  # fmt: skip
    client = MlflowClient(uri)
    assert client.get_run(summary.parent_run_id).data.params["recipe"] == "improved"
    (child,) = client.search_runs(
        [summary.experiment_id], f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )
    assert child.data.params["recipe"] == "improved"
    # It really ran: the recipe's callbacks were inside fit, and the training batches changed.
    assert child.data.params["callbacks"] == (
        "PreciseBatchNormValidation,ReduceLROnPlateau,EarlyStopping,EpochReporter"
    )
    assert child.data.metrics["augmentation_mean_abs_change"] > 1.0  # pixels of 0-255
    epochs_run = int(child.data.metrics["epochs_run"])
    history = client.get_metric_history(child.info.run_id, "val_loss")
    assert 1 <= epochs_run <= 2 and len(history) == epochs_run
    assert summary.promotion is None
    with pytest.raises(Exception, match="recipe"):
        compare_heads(source=source, recipe="fast")
