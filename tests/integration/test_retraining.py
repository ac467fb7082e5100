"""Retraining that trains only what changed, and says what did: the flow's plan step against
the champion, end to end in-process (skip, partial, full on new or relabelled photos), and
`compare-heads plan`'s exit status."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from flows.compare_heads import compare_heads
from tests.fixtures import child_runs, make_pet_images

pytestmark = pytest.mark.integration

PARAMS = dict(image_size=32, batch_size=16, epochs=1, heads=["gap"], seeds=[0],
              precision="float32", model_name="pets-retraining")  # fmt: skip


def parent_tags(client: MlflowClient, result) -> dict[str, str]:
    return client.get_run(result.parent_run_id).data.tags


def artifact_text(client: MlflowClient, result, name: str, tmp_path: Path) -> str:
    return Path(client.download_artifacts(result.parent_run_id, name, str(tmp_path))).read_text()


def test_unchanged_data_skips_a_new_head_trains_alone_new_photos_retrain(
    tmp_path, tracking_uri, prefect_harness
):
    source = make_pet_images(tmp_path / "photos", per_class=40, size=32)
    client = MlflowClient(tracking_uri)

    first = compare_heads(source=str(source), **PARAMS)
    tags = parent_tags(client, first)
    assert (first.decision, tags["retrain_decision"], tags["retrain_reasons"]) == (
        "full", "full", "no_champion")  # fmt: skip
    assert first.promotion.decision == "promoted"
    [dataset] = client.get_run(first.parent_run_id).inputs.dataset_inputs
    assert dataset.dataset.digest == tags["data_digest"]  # the MLflow dataset input carries it
    version = client.get_model_version("pets-retraining", first.promotion.version)
    assert version.tags["trained_because"] == "no_champion"

    second = compare_heads(source=str(source), **PARAMS)
    tags = parent_tags(client, second)
    assert (second.decision, second.trained) == ("skip", [])
    assert (tags["retrain_decision"], tags["retrain_reasons"]) == ("skip", "unchanged")
    assert tags["data_digest"] == tags["champion_data_digest"] != ""
    assert not child_runs(client, second.experiment_id, second.parent_run_id)
    assert "# What changed: skip" in artifact_text(client, second, "what_changed.md", tmp_path)

    both = compare_heads(source=str(source), **{**PARAMS, "heads": ["gap", "fc"]})
    assert both.decision == "partial"
    assert [(run.head, run.reused) for run in both.trained] == [("fc", False), ("gap", True)]
    assert list(child_runs(client, both.experiment_id, both.parent_run_id)) == [("fc", 0)]
    assert {row["head"] for row in both.rows} == {"fc", "gap"}
    assert parent_tags(client, both)["retrain_reasons"] == "config_changed"
    text = artifact_text(client, both, "what_changed.md", tmp_path)
    assert "| heads | ['gap'] | ['gap', 'fc'] |" in text, text
    # The same two heads again: the partial run's comparison covered both (one trained, one
    # reused), whichever model it promoted: nothing is left to train.
    repeat = compare_heads(source=str(source), **{**PARAMS, "heads": ["gap", "fc"]})
    said = artifact_text(client, repeat, "what_changed.md", tmp_path)
    assert (repeat.decision, repeat.trained) == ("skip", []), said
    version = client.get_model_version("pets-retraining", both.promotion.version)
    assert version.tags["compared_in_run"] == both.parent_run_id  # not the reused run's parent

    extra = make_pet_images(tmp_path / "extra", per_class=25, size=32, seed=5) / "PetImages"
    added = []
    for folder in ("Cat", "Dog"):
        for path in sorted((extra / folder).iterdir()):
            added.append(f"PetImages/{folder}/new-{path.name}")
            shutil.copy(path, source / "PetImages" / folder / f"new-{path.name}")
    grown = compare_heads(source=str(source), **PARAMS)
    tags = parent_tags(client, grown)
    assert grown.decision == "full" and [run.head for run in grown.trained] == ["gap"]
    assert tags["retrain_reasons"] == "data_changed,photos_added"
    text = artifact_text(client, grown, "what_changed.md", tmp_path)
    assert "| added | 50 |" in text
    assert all(f"`{name}`" in text for name in added)
    assert client.get_run(grown.parent_run_id).data.metrics["photos_added"] == 50
    # Promoted or kept as challenger, the model of these photos exists: no second training.
    again = compare_heads(source=str(source), **PARAMS)
    assert again.decision == "skip" and not again.trained
    expected = (
        "unchanged" if grown.promotion.decision == "promoted" else "unchanged_since_challenger"
    )
    assert parent_tags(client, again)["retrain_reasons"] == expected

    for index in range(5):
        shutil.move(source / "PetImages" / "Dog" / f"{index}.jpg",
                    source / "PetImages" / "Cat" / f"was-dog-{index}.jpg")  # fmt: skip
    relabelled = compare_heads(source=str(source), **PARAMS)
    assert "relabelled" in parent_tags(client, relabelled)["retrain_reasons"].split(",")
    text = artifact_text(client, relabelled, "what_changed.md", tmp_path)
    assert "| relabelled | 5 |" in text and "`PetImages/Cat/was-dog-4.jpg` (Cat, was Dog" in text


def test_plan_command_exits_with_the_decision_and_code_changes_retrain_every_cell(
    tmp_path, tracking_uri, prefect_harness, monkeypatch
):
    from flows.cli import app

    source = make_pet_images(tmp_path / "photos", per_class=30, size=32)
    compare_heads(source=str(source), **{**PARAMS, "model_name": "pets-plan"})
    params = (
        '{"image_size": 32, "batch_size": 16, "epochs": 1, "heads": ["gap"], "seeds": [0], '
        '"precision": "float32", "model_name": "pets-plan"}'
    )
    runner = CliRunner()
    same = runner.invoke(app, ["plan", "--source", str(source), "--params", params])
    assert same.exit_code == 0, same.output
    assert "# What changed: skip" in same.stdout
    monkeypatch.setattr("tracking.champion.code_version", lambda: "other-code")
    changed = runner.invoke(app, ["plan", "--source", str(source), "--params", params])
    assert changed.exit_code == 12, changed.output
    assert "code_changed" in changed.stdout and "To train: gap seed 0." in changed.stdout
    bad = runner.invoke(app, ["plan", "--params", '{"epochs": 0, "recipe": "fast"}'])
    assert bad.exit_code == 2 and "epochs" in bad.output and "recipe" in bad.output


def test_a_worse_challenger_stays_challenger_with_the_reason_a_better_one_is_promoted(
    tmp_path, tracking_uri, prefect_harness
):
    """An untrained-like model (learning rate 1e-6) becomes the first champion; a trained one
    beats it by McNemar's test and is promoted with the p-value on its version; the weak one
    trained again is kept out, its reason on its version, holding the challenger alias."""
    source = make_pet_images(tmp_path / "photos", per_class=80, size=32)
    client = MlflowClient(tracking_uri)
    # 30 % validation photos: enough disagreements for the paired test to see a real gain.
    params = {**PARAMS, "model_name": "pets-gate", "epochs": 2, "split": [60, 30, 10]}
    weak = compare_heads(source=str(source), **{**params, "learning_rate": 1e-6})
    assert weak.promotion.decision == "promoted"
    first = client.get_model_version("pets-gate", weak.promotion.version)
    reason = first.tags["promotion_reason"]  # its kind may have been shown by an earlier test
    assert (
        reason.startswith("no champion yet; ") and "predict" in reason and "fresh process" in reason
    )

    # At another image size: the gate scores each model on the same photos decoded at its own.
    strong = compare_heads(source=str(source), **{**params, "image_size": 40})
    assert strong.promotion.decision == "promoted", strong.promotion
    version = client.get_model_version("pets-gate", strong.promotion.version)
    assert float(version.tags["mcnemar_p_value"]) < 0.05
    assert version.tags["promotion_reason"].startswith("better: +")
    assert version.tags["trained_because"] == "config_changed"
    assert set(strong.promotion.recall_change) == {"Cat", "Dog"}  # points per class, logged

    again = compare_heads(source=str(source), **{**params, "learning_rate": 1e-6})
    assert again.promotion.decision == "kept"
    kept = client.get_model_version("pets-gate", again.promotion.version)
    assert kept.tags["promotion_reason"].startswith("not shown better: -")
    assert client.get_model_version_by_alias("pets-gate", "challenger").version == kept.version
    assert client.get_model_version_by_alias("pets-gate", "champion").version == version.version
    assert parent_tags(client, again)["promotion_reason"] == kept.tags["promotion_reason"]


def test_new_photos_only_in_validation_or_test_rescore_the_champion_without_training(
    tmp_path, tracking_uri, prefect_harness
):
    import hashlib

    from gap_models.data.selection import assign_split

    source = make_pet_images(tmp_path / "photos", per_class=30, size=32)
    params = {**PARAMS, "model_name": "pets-evaluate"}
    compare_heads(source=str(source), **params)
    candidates = make_pet_images(tmp_path / "more", per_class=20, size=32, seed=11) / "PetImages"
    held_out = 0
    for path in sorted(candidates.rglob("*.jpg")):
        if assign_split(hashlib.sha256(path.read_bytes()).hexdigest(), [80, 10, 10]) != "train":
            shutil.copy(path, source / "PetImages" / path.parent.name / f"held-{path.name}")
            held_out += 1
    assert held_out > 0
    client = MlflowClient(tracking_uri)
    result = compare_heads(source=str(source), **params)
    assert (result.decision, result.trained) == ("evaluate", [])
    run = client.get_run(result.parent_run_id)
    assert run.data.tags["retrain_reasons"] == "data_changed,photos_added"
    assert run.data.metrics["photos_added"] == held_out
    assert 0 <= run.data.metrics["champion_val_accuracy"] <= 1
    assert not child_runs(client, result.experiment_id, result.parent_run_id)
