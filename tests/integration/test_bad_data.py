"""A source full of the official archive's defects runs to completion, every skip counted."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.compare_heads import compare_heads
from tests.fixtures import bad_files, make_pet_images, zip_folder

pytestmark = pytest.mark.integration


def test_defective_archive_completes_with_exact_skip_counts(
    tmp_path, monkeypatch, tracking_uri, prefect_harness
):
    uri = tracking_uri
    photos = make_pet_images(tmp_path / "photos", per_class=60, size=32)
    for index, (name, (payload, _)) in enumerate(bad_files().items()):
        folder = "Cat" if index % 2 else "Dog"
        (photos / "PetImages" / folder / name).write_bytes(payload)
    archive = zip_folder(photos, tmp_path / "defects.zip")
    summary = compare_heads(
        source=str(archive), image_size=32, batch_size=16, epochs=1, heads=["gap"], promote=False
    )
    expected = {name: reason for name, (_, reason) in bad_files().items() if reason}
    assert summary.skipped_images == len(expected) == 4
    assert summary.images_used == 120 + len(bad_files()) - len(expected)
    client = MlflowClient(uri)
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.metrics["skipped_images"] == 4
    assert parent.data.metrics["skipped_not_an_image"] == 2
    assert parent.data.metrics["skipped_empty_file"] == 1
    assert parent.data.metrics["skipped_truncated"] == 1
    listed = client.download_artifacts(parent.info.run_id, "skipped_files.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(Path(listed).read_text())))
    assert {row["file"].rsplit("/", 1)[-1]: row["reason"] for row in rows} == expected
