"""Shared test helpers: generated photos (small, learnable cats and dogs, and every kind of
bad file) and the MLflow look-ups the integration and end-to-end tiers both need."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:  # MLflow only for the annotation: the unit tier need not import it
    from mlflow import MlflowClient
    from mlflow.entities import Run

REGISTERED_MODEL = "cats-vs-dogs"
"""The registered model name the README promises (a literal: the tests check the contract)."""


def make_pet_image(
    label: int, size: int = 64, rng: np.random.Generator | None = None
) -> Image.Image:
    """A synthetic photo: cats (0) warm with a disc, dogs (1) cool with a square, plus noise.

    The class is visible in colour and shape, so a tiny model learns it in one epoch.
    """
    rng = rng or np.random.default_rng(0)
    base = np.array([170, 90, 60]) if label == 0 else np.array([60, 100, 170])
    pixels = base + rng.normal(0, 30, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    side = int(rng.integers(size // 4, size // 2))
    x, y = (int(v) for v in rng.integers(0, size - side, 2))
    if label == 0:
        draw.ellipse((x, y, x + side, y + side), fill=(240, 200, 80))
    else:
        draw.rectangle((x, y, x + side, y + side), fill=(30, 30, 90))
    return image


def make_pet_images(root: Path, per_class: int, size: int = 64, seed: int = 0) -> Path:
    """Write ``root/PetImages/{Cat,Dog}/<i>.jpg`` (``per_class`` each); return ``root``."""
    rng = np.random.default_rng(seed)
    for label, folder in enumerate(("Cat", "Dog")):
        target = Path(root) / "PetImages" / folder
        target.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            make_pet_image(label, size, rng).save(target / f"{index}.jpg", quality=90)
    return Path(root)


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip a folder's contents (paths relative to it), as the official archive is laid out."""
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(folder).as_posix())
    return archive


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def bad_files(size: int = 64) -> dict[str, tuple[bytes, str | None]]:
    """Every defect of the official archive: file name -> (bytes, skip reason or None).

    A reason of None means the file must be converted and used, not skipped.
    """
    good = make_pet_image(0, size)
    full = jpeg_bytes(good)
    png = io.BytesIO()
    good.save(png, format="PNG")
    large = Image.new("RGB", (6000, 4000), (120, 80, 40))
    return {
        "empty.jpg": (b"", "empty_file"),
        "truncated.jpg": (full[: len(full) // 2], "truncated"),
        "not_an_image.jpg": (b"<html>this is not a photo</html>" * 20, "not_an_image"),
        "Thumbs.db": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500), "not_an_image"),
        "png_named.jpg": (png.getvalue(), None),
        "grayscale.jpg": (jpeg_bytes(good.convert("L")), None),
        "cmyk.jpg": (jpeg_bytes(good.convert("CMYK")), None),
        "large.jpg": (jpeg_bytes(large, quality=50), None),
    }


def child_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str, status: str | None = None
) -> dict[tuple[str, int], Run]:
    """The child runs of an MLflow parent run (only those in ``status`` when given), keyed
    by (head, seed) from their params.

    Two children for one (head, seed) fail the test rather than hide in the dictionary.
    """
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    if status is not None:
        query += f" and attributes.status = '{status}'"
    runs = client.search_runs([experiment_id], filter_string=query)
    keyed = {(run.data.params["head"], int(run.data.params["seed"])): run for run in runs}
    assert len(keyed) == len(runs), f"duplicate (head, seed) children of {parent_run_id}"
    return keyed


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
