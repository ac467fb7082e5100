"""The retraining plan's core: content manifests, their differences, and the decision ladder."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gap_models import planning, records
from gap_models.config import RunConfig
from gap_models.data.changes import diff_manifests
from gap_models.data.manifest import Manifest, build_manifest
from gap_models.drift import DriftTest
from gap_models.identity import config_digest
from gap_models.planning import EXIT_CODES, Champion, plan, render_what_changed
from tests.fixtures import make_pet_images, zip_folder

SPLIT = [80, 10, 10]
NOW = datetime(2026, 12, 2, tzinfo=UTC)


@pytest.fixture
def photos(tmp_path):
    return make_pet_images(tmp_path / "photos", per_class=40, size=32) / "PetImages"


def manifest_of(folder, tmp_path) -> Manifest:
    return build_manifest(str(folder), SPLIT, tmp_path / "cache")


def digests(config: RunConfig) -> dict[tuple[str, int], str]:
    return {(h, s): config_digest(config, h, s) for s in config.seeds for h in config.heads}


def champion_of(manifest: Manifest, config: RunConfig, code="code-1", age_days=1.0) -> Champion:
    cells = {cell: (digest, f"run-{cell[0]}-{cell[1]}") for cell, digest in digests(config).items()}
    return Champion("3", NOW - timedelta(days=age_days), manifest, code, cells)


def test_the_data_digest_follows_content_and_classes_not_names_or_containers(photos, tmp_path):
    first = manifest_of(photos, tmp_path)
    assert len(first.photos) == 80 and first.classes == ("Cat", "Dog")
    assert Manifest.from_tsv(first.to_tsv()) == first
    (photos / "Cat" / "0.jpg").rename(photos / "Cat" / "renamed.jpg")
    assert manifest_of(photos, tmp_path).digest == first.digest
    archive = zip_folder(photos.parent, tmp_path / "photos.zip")
    assert build_manifest(str(archive), SPLIT, tmp_path / "cache").digest == first.digest
    shutil.move(photos / "Dog" / "1.jpg", photos / "Cat" / "from-dog.jpg")
    assert manifest_of(photos, tmp_path).digest != first.digest


def test_unchanged_files_are_not_hashed_again(photos, tmp_path):
    """The stat cache: a file whose size and modification time are unchanged keeps its
    recorded digest (its bytes are not read again); a touched one is re-hashed."""
    before = {p.file: p.sha256 for p in manifest_of(photos, tmp_path).photos}
    target = photos / "Cat" / "2.jpg"
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF  # same size, other bytes, same mtime: a stat cache cannot see it
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert {p.file: p.sha256 for p in manifest_of(photos, tmp_path).photos} == before
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = {p.file: p.sha256 for p in manifest_of(photos, tmp_path).photos}
    assert after["Cat/2.jpg"] != before["Cat/2.jpg"]


def test_differences_name_added_removed_modified_and_relabelled_photos(photos, tmp_path):
    before = manifest_of(photos, tmp_path)
    extra = make_pet_images(tmp_path / "extra", per_class=25, size=32, seed=7) / "PetImages"
    for folder in ("Cat", "Dog"):
        for path in (extra / folder).iterdir():
            shutil.copy(path, photos / folder / f"new-{path.name}")
    for index in range(5):
        shutil.move(photos / "Dog" / f"{index}.jpg", photos / "Cat" / f"dog-{index}.jpg")
    (photos / "Cat" / "39.jpg").unlink()
    make_pet_images(tmp_path / "other", per_class=1, size=32, seed=99)
    shutil.copy(tmp_path / "other" / "PetImages" / "Cat" / "0.jpg", photos / "Cat" / "38.jpg")
    changes = diff_manifests(before, manifest_of(photos, tmp_path))
    assert changes.counts() == {"added": 50, "removed": 1, "modified": 1, "relabelled": 5}
    by_class = changes.by_class_and_split("added")
    assert sum(n for (label, _), n in by_class.items() if label == "Cat") == 25
    assert {(photo.label, before_label) for photo, before_label in changes.relabelled} == {
        ("Cat", "Dog")
    }
    assert changes.train_changed


def test_byte_identical_duplicates_count_and_the_same_bytes_in_two_classes_stay_put(
    photos, tmp_path
):
    """The digest counts duplicates (each is a training example), so the differences must:
    a copy of a photo added is a photo added; the same bytes under both classes, in both
    manifests, are not relabelled on every run."""
    shutil.copy(photos / "Dog" / "3.jpg", photos / "Cat" / "also-3.jpg")  # in both classes
    before = manifest_of(photos, tmp_path)
    assert diff_manifests(before, manifest_of(photos, tmp_path)).any is False
    shutil.copy(photos / "Cat" / "5.jpg", photos / "Cat" / "copy-of-5.jpg")
    after = manifest_of(photos, tmp_path)
    assert after.digest != before.digest
    changes = diff_manifests(before, after)
    assert changes.counts() == {"added": 1, "removed": 0, "modified": 0, "relabelled": 0}
    assert changes.added[0].file.endswith("copy-of-5.jpg")
    removed = diff_manifests(after, before)
    assert removed.counts() == {"added": 0, "removed": 1, "modified": 0, "relabelled": 0}
    config = RunConfig(source=str(photos), heads=["gap"], seeds=[0], precision="float32")
    decided = plan(after, "code-1", digests(config), champion_of(before, config), NOW)
    assert decided.decision != planning.SKIP


def test_with_max_images_a_validation_change_retrains_everything(photos, tmp_path):
    """max_images takes a quota of each class across the splits: a new validation photo can
    push a training photo out, so the plan cannot merely rescore the champion."""
    config = RunConfig(source=str(photos), heads=["gap"], seeds=[0], precision="float32")
    before = manifest_of(photos, tmp_path)
    (held,) = [p for p in before.photos if p.split == "validation"][:1]
    target = photos / held.file
    assert target.is_file()
    make_pet_images(tmp_path / "other", per_class=1, size=32, seed=42)
    shutil.copy(tmp_path / "other" / "PetImages" / "Cat" / "0.jpg", target)
    after = manifest_of(photos, tmp_path)
    changes = diff_manifests(before, after)
    assert changes.any and not changes.train_changed
    champion = champion_of(before, config)
    assert plan(after, "code-1", digests(config), champion, NOW).decision == planning.EVALUATE
    subset = plan(after, "code-1", digests(config), champion, NOW, selected_subset=True)
    assert subset.decision == planning.FULL
    assert any("max_images" in note for note in subset.notes)


def test_the_ladder_skips_evaluates_partially_retrains_or_retrains(photos, tmp_path):
    config = RunConfig(source=str(photos), heads=["gap"], seeds=[0], precision="float32")
    manifest = manifest_of(photos, tmp_path)
    champion = champion_of(manifest, config)
    same = plan(manifest, "code-1", digests(config), champion, NOW)
    assert (same.decision, same.reasons, same.to_train) == ("skip", ["unchanged"], [])
    assert same.exit_code == EXIT_CODES["skip"] == 0

    two_heads = config.model_copy(update={"heads": ["gap", "fc"]})
    partial = plan(manifest, "code-1", digests(two_heads), champion, NOW)
    assert partial.decision == "partial" and partial.to_train == [("fc", 0)]
    assert partial.reused == {("gap", 0): "run-gap-0"}
    assert partial.reasons == [planning.REASON_CONFIG_CHANGED]

    more_epochs = config.model_copy(update={"epochs": 3})
    assert plan(manifest, "code-1", digests(more_epochs), champion, NOW).decision == "full"
    coded = plan(manifest, "code-2", digests(two_heads), champion, NOW)
    assert coded.decision == "full" and planning.REASON_CODE_CHANGED in coded.reasons
    assert coded.to_train == [("gap", 0), ("fc", 0)] and not coded.reused
    old = plan(manifest, "code-1", digests(config), champion_of(manifest, config, age_days=40), NOW,
               max_age_days=28)  # fmt: skip
    assert (old.decision, old.reasons) == ("full", [planning.REASON_STALE])
    forced = plan(manifest, "code-1", digests(config), champion, NOW, force=True)
    assert (forced.decision, forced.reasons) == ("full", [planning.REASON_FORCED])
    none = plan(manifest, "code-1", digests(config), None, NOW)
    assert (none.decision, none.reasons) == ("full", [planning.REASON_NO_CHAMPION])
    drift = DriftTest(mmd=0.3, p_value=0.002, reference_photos=300, new_photos=40)
    drifted = plan(manifest, "code-1", digests(config), champion, NOW, drift=drift)
    assert drifted.decision == "full" and planning.REASON_DRIFT in drifted.reasons


def test_new_photos_only_outside_training_are_evaluated_not_trained(photos, tmp_path):
    config = RunConfig(source=str(photos), heads=["gap"], seeds=[0], precision="float32")
    manifest = manifest_of(photos, tmp_path)
    champion = champion_of(manifest, config)
    held_out = tuple(p for p in manifest.photos if p.split != "train")
    without = Manifest(tuple(p for p in manifest.photos if p.split == "train"))
    result = plan(manifest, "code-1", digests(config), replace(champion, manifest=without), NOW)
    assert result.decision == "evaluate" and result.to_train == []
    assert result.reasons == [planning.REASON_DATA_CHANGED, planning.REASON_PHOTOS["added"]]
    assert result.changes.counts()["added"] == len(held_out) > 0
    result.escalate(planning.REASON_CHAMPION_DECAYED, "dropped 5 points")
    assert result.decision == "full" and result.to_train == [("gap", 0)]
    assert result.reasons[-1] == planning.REASON_CHAMPION_DECAYED


def test_what_changed_lists_the_files_by_kind(photos, tmp_path):
    config = RunConfig(source=str(photos), heads=["gap"], seeds=[0], precision="float32")
    before = manifest_of(photos, tmp_path)
    for index in range(5):
        shutil.move(photos / "Dog" / f"{index}.jpg", photos / "Cat" / f"dog-{index}.jpg")
    result = plan(manifest_of(photos, tmp_path), "code-1", digests(config),
                  champion_of(before, config), NOW)  # fmt: skip
    assert result.decision == "full"
    assert result.reasons[:2] == [planning.REASON_DATA_CHANGED, "relabelled"]
    text = render_what_changed(result)
    assert "| relabelled | 5 |" in text
    for index in range(5):
        assert f"`Cat/dog-{index}.jpg` (Cat, was Dog" in text
    assert result.tags()[records.RETRAIN_REASONS_TAG].startswith("data_changed,relabelled")
    assert result.metrics()[records.PHOTOS_METRIC_PREFIX + "relabelled"] == 5.0


def test_a_comparison_that_promotes_nothing_trains_everything(photos, tmp_path):
    config = RunConfig(source=str(photos), heads=["gap"], seeds=[0], precision="float32")
    manifest = manifest_of(photos, tmp_path)
    result = plan(manifest, "code-1", digests(config), champion_of(manifest, config), NOW,
                  promote=False)  # fmt: skip
    assert (result.decision, result.to_train) == ("full", [("gap", 0)])
    assert result.reasons == [planning.REASON_NOT_PROMOTING]
