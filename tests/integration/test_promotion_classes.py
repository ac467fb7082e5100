"""One registered model, one set of classes: `cat`/`dog` (tensorflow-datasets' names) and
`Cat`/`Dog` (the PetImages folders) promote into the same model; other classes are refused
before any model trains."""

from __future__ import annotations

import shutil

import pytest
from mlflow.tracking import MlflowClient

from flows.compare_heads import compare_heads
from tests.fixtures import child_runs, make_pet_images

pytestmark = pytest.mark.integration

PARAMS = dict(image_size=32, batch_size=16, epochs=1, heads=["gap"], seeds=[0],
              model_name="pets")  # fmt: skip


def test_case_of_class_names_does_not_split_a_champion_and_other_classes_fail_early(
    tmp_path, tracking_uri, prefect_harness
):
    upper = make_pet_images(tmp_path / "upper", per_class=30, size=32)
    lower = tmp_path / "lower"
    for folder in ("Cat", "Dog"):  # the same photos under tfds' lower-case class names
        shutil.copytree(upper / "PetImages" / folder, lower / folder.lower())
    first = compare_heads(source=str(upper), **PARAMS)
    assert first.promotion.decision == "promoted"
    second = compare_heads(source=str(lower), **PARAMS)
    assert second.promotion.name == "pets" and second.promotion.version == "2"

    other = tmp_path / "other"
    for folder in ("Cat", "Dog"):
        shutil.copytree(
            upper / "PetImages" / folder, other / {"Cat": "bird", "Dog": "fish"}[folder]
        )
    with pytest.raises(ValueError, match=r"holds a champion for classes \['Cat', 'Dog'\]"):
        compare_heads(source=str(other), **PARAMS)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("compare-heads").experiment_id
    refused = client.search_runs([experiment], order_by=["attributes.start_time DESC"])[0]
    assert refused.data.tags.get("kind") == "comparison" and refused.info.status == "FAILED"
    assert child_runs(client, experiment, refused.info.run_id) == {}  # nothing trained
