"""The default source, end to end with no internet: tensorflow-datasets' real
``download_and_prepare`` of cats_vs_dogs fetches a small zip in the official PetImages
layout from a local http.server, the flow trains on those photos, a second run is a cache
hit, and tfds' data lands in the configured folder (COMPARE_HEADS_TFDS_DIR)."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gap_models.data.sources as sources
from flows.compare_heads import compare_heads
from tests.fixtures import make_pet_images, zip_folder

pytestmark = pytest.mark.integration

PER_CLASS = 40


@pytest.fixture
def local_download(tmp_path, monkeypatch) -> Iterator[Path]:
    """The official archive's layout, served on 127.0.0.1; the builder pointed at it."""
    photos = make_pet_images(tmp_path / "archive", per_class=PER_CLASS)
    # Files tfds drops as corrupt (no JFIF header): a PNG named .jpg, and a text file.
    not_jfif = photos / "PetImages" / "Cat" / "9000.jpg"
    from PIL import Image

    Image.new("RGB", (20, 20), "red").save(not_jfif, format="PNG")
    (photos / "PetImages" / "Dog" / "9001.jpg").write_bytes(b"not an image at all")
    (photos / "readme[1].txt").write_text("beside PetImages, as in the official archive")
    served = tmp_path / "served"
    served.mkdir()
    zip_folder(photos, served / "kagglecatsanddogs_5340.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    from tensorflow_datasets.image_classification import cats_vs_dogs

    url = f"http://127.0.0.1:{server.server_port}/kagglecatsanddogs_5340.zip"
    monkeypatch.setattr(cats_vs_dogs, "_URL", url)
    monkeypatch.setattr(cats_vs_dogs, "_NUM_CORRUPT_IMAGES", 2)
    # Our URL has no registered checksum: validate nothing for it, register nothing (never
    # write into site-packages), and do not try Google's mirror.
    monkeypatch.setattr(
        sources,
        "TFDS_DOWNLOAD_CONFIG",
        {"force_checksums_validation": False, "register_checksums": False,
         "try_download_gcs": False},
    )  # fmt: skip
    data_dir = tmp_path / "tfds"
    monkeypatch.setenv(sources.TFDS_DIR_ENV, str(data_dir))
    try:
        yield data_dir
    finally:
        server.shutdown()
        server.server_close()


def test_default_source_downloads_prepares_and_trains_offline(
    local_download, tracking_uri, prefect_harness
):
    params = {"image_size": 32, "batch_size": 16, "epochs": 1, "heads": ["gap"],
              "promote": False}  # fmt: skip
    first = compare_heads(source="tfds:cats_vs_dogs", **params)
    # Every photo the zip holds but the two tfds drops, through our own decoder.
    assert first.images_used == 2 * PER_CLASS
    assert first.trained and first.rows[0]["test_accuracy"] > 0
    prepared = list(local_download.glob("cats_vs_dogs/*/dataset_info.json"))
    assert prepared, f"tfds prepared nothing under {local_download}"
    assert list((local_download / "downloads").iterdir()), "the download went elsewhere"
    second = compare_heads(source="tfds:cats_vs_dogs", **params)
    assert second.timing["preprocess_cache_hit"] == 1.0
    assert second.cache_dir == first.cache_dir


def test_the_download_says_where_it_is(local_download, monkeypatch):
    """A 786 MB download reports in the flow's log, not only in a worker's terminal."""
    monkeypatch.setattr(sources, "PROGRESS_SECONDS", 0.05)
    messages: list[str] = []
    real = sources.tfds_builder

    def slow_builder(source):  # runs until a progress line came, however fast the disk
        builder = real(source)
        prepare = builder.download_and_prepare

        def download_and_prepare(**kwargs):
            deadline = time.monotonic() + 120  # the reporter's first line, on any machine
            while not any("MB on disk" in m for m in messages) and time.monotonic() < deadline:
                time.sleep(0.01)
            return prepare(**kwargs)

        builder.download_and_prepare = download_and_prepare
        return builder

    monkeypatch.setattr(sources, "tfds_builder", slow_builder)
    assert sources.download("tfds:cats_vs_dogs", progress=messages.append) == "tfds:cats_vs_dogs"
    assert messages[0].startswith("tfds: downloading and preparing tfds:cats_vs_dogs into")
    assert any("MB on disk (the archive is ~786 MB" in line for line in messages[1:-1]), messages
    assert messages[-1].startswith("tfds: prepared in")
