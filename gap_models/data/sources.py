"""Sources: list, read and fingerprint the photos, and make them available locally.

A source is ``tfds:cats_vs_dogs`` (tensorflow-datasets downloads the real archive; we read
its raw encoded bytes so every file goes through our own decoder), or a zip archive or
folder in the image-folder convention (``<root>/<class>/<file>``, as Keras'
``image_dataset_from_directory`` and torchvision's ``ImageFolder`` read it): the class
folders' names, sorted, are the classes, and label i is the i-th name. The official
``PetImages/{Cat,Dog}`` archive is one instance (Cat = 0, Dog = 1, as in tensorflow-datasets).
A wrong layout is a ``DataError`` raised before any work, and an unreachable download host
an ``OfflineError`` raised within seconds: neither is worth a retry.
``tensorflow_datasets`` is imported only when a tfds source is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gap_models.config import TFDS_PREFIX
from gap_models.data.network import TFDS_HOST, check_network

TFDS_CLASS_NAMES: tuple[str, ...] = ("cat", "dog")
"""tensorflow-datasets' cats_vs_dogs labels: 0 = cat, 1 = dog."""
IGNORED_PARTS = ("__MACOSX",)
"""Folders that archivers add and that are never classes (hidden folders are skipped too)."""


class DataError(ValueError):
    """The source cannot be used (wrong layout, too few images): raised before training."""


@dataclass(frozen=True)
class SourceFile:
    """One file of a source: where it came from, its label and its raw bytes."""

    name: str
    label: int
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def fingerprint_source(source: str) -> str:
    """A short identity of the source's content: sha256 of a zip, of a folder's listing
    (path, size, modification time), or the tfds dataset name and version."""
    if source.startswith(TFDS_PREFIX):
        return f"{source}@{tfds_builder(source).version}"
    path = Path(source).expanduser()
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    else:
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = child.stat()
            digest.update(
                f"{child.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class SourceLayout:
    """A zip or folder source read as image folders: every file with its label, and the
    class names (label i is ``class_names[i]``)."""

    entries: list[tuple[str, int]]
    class_names: tuple[str, ...]


def _names_in(source: str) -> list[str]:
    """Every file's path inside a zip archive or folder (posix, relative to the folder)."""
    path = Path(source).expanduser()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return [info.filename for info in archive.infolist() if not info.is_dir()]
        if path.is_dir():
            return [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"source {source!r} cannot be read: {error}") from error
    raise DataError(
        f"source {source!r} is neither a zip archive nor a folder; expected a .zip or "
        f"folder of image folders, {EXPECTED_LAYOUT}"
    )


EXPECTED_LAYOUT = (
    "<root>/<class>/<image> with two or more class folders (e.g. PetImages/Cat, PetImages/Dog)"
)


def _class_root(parts: list[tuple[str, ...]]) -> int:
    """How many leading folders all files share above the class folders (``PetImages/``)."""
    depth = 0
    while parts and all(len(p) > depth + 2 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
    return depth


def scan_source(source: str) -> SourceLayout:
    """The image-folder layout of a zip or folder source: files in class folders (at any
    depth below them), class names sorted. Files above the class folders (a readme beside
    ``PetImages/``), hidden files and folders, and ``__MACOSX`` are not photos of any class.

    Raises ``DataError`` naming the folders found when there are fewer than two classes.
    """
    usable = [
        name
        for name in _names_in(source)
        if not any(part.startswith(".") or part in IGNORED_PARTS for part in name.split("/"))
    ]
    parts = [tuple(name.split("/")) for name in usable if "/" in name]
    depth = _class_root(parts)
    classes = sorted({p[depth] for p in parts})
    if len(classes) < 2:
        found = Counter("/".join(p[: depth + 1]) for p in parts)
        raise DataError(
            f"source {source!r} is not in the expected layout {EXPECTED_LAYOUT}: found "
            f"{dict(found) or 'no files in folders'}"
        )
    label_of = {name: label for label, name in enumerate(classes)}
    entries = [
        (name, label_of[name.split("/")[depth]])
        for name in sorted(usable)
        if "/" in name and len(name.split("/")) > depth + 1
    ]
    return SourceLayout(entries, tuple(classes))


def list_source(source: str) -> list[tuple[str, int]]:
    """(name, label) of every file in a zip or folder source; checks the layout."""
    return scan_source(source).entries


def class_names(source: str) -> tuple[str, ...]:
    """The classes of a source, label order: tfds' names, or the sorted class folders."""
    if source.startswith(TFDS_PREFIX):
        return TFDS_CLASS_NAMES
    return scan_source(source).class_names


def iter_source(source: str) -> Iterator[SourceFile]:
    """Yield every file of the source with its label and raw (still encoded) bytes."""
    if source.startswith(TFDS_PREFIX):
        yield from _iter_tfds(source)
        return
    path = Path(source).expanduser()
    entries = list_source(source)
    if path.is_dir():
        for name, label in entries:
            yield SourceFile(name, label, (path / name).read_bytes())
    else:
        with zipfile.ZipFile(path) as archive:
            for name, label in entries:
                yield SourceFile(name, label, archive.read(name))


TFDS_DIR_ENV = "COMPARE_HEADS_TFDS_DIR"
TFDS_DOWNLOAD_CONFIG: dict[str, object] = {}
"""Keyword arguments of tfds' ``DownloadConfig`` for ``download_and_prepare`` (tests point
the builder at a local server and turn checksum validation off for that URL)."""


def tfds_data_dir() -> str | None:
    """Where tensorflow-datasets keeps downloads and prepared data: ``$COMPARE_HEADS_TFDS_DIR``,
    else tfds' own default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    configured = os.environ.get(TFDS_DIR_ENV)
    return str(Path(configured).expanduser()) if configured else None


def tfds_builder(source: str):
    """The tfds builder of a ``tfds:`` source, on the configured data folder: the one place
    that download, fingerprint and reading all go through."""
    import tensorflow_datasets as tfds

    return tfds.builder(source.removeprefix(TFDS_PREFIX), data_dir=tfds_data_dir())


def _tfds_download_host() -> tuple[str, int]:
    """The host the cats_vs_dogs builder downloads from (what the reachability probe asks)."""
    try:
        from tensorflow_datasets.image_classification import cats_vs_dogs

        url = urllib.parse.urlsplit(cats_vs_dogs._URL)
    except (ImportError, AttributeError):
        return TFDS_HOST
    return url.hostname or TFDS_HOST[0], url.port or (443 if url.scheme == "https" else 80)


def _iter_tfds(source: str) -> Iterator[SourceFile]:
    import tensorflow_datasets as tfds

    builder = tfds_builder(source)
    dataset = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    for index, example in enumerate(tfds.as_numpy(dataset)):
        name = example.get("image/filename", b"").decode() or f"tfds/{index}"
        yield SourceFile(name, int(example["label"]), bytes(example["image"]))


TFDS_ARCHIVE_MB = 786
"""The cats_vs_dogs archive's size, what download progress is measured against."""
PROGRESS_SECONDS = 15.0


def _folder_mb(folder: Path) -> float:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:  # a temporary file renamed away meanwhile
            continue
    return total / 1e6


@contextlib.contextmanager
def _reporting(folder: Path, say: Callable[[str], None]):
    """While the block runs, every ``PROGRESS_SECONDS``: how much ``folder`` holds."""
    done = threading.Event()
    every = PROGRESS_SECONDS

    def report() -> None:
        while not done.wait(every):
            say(f"tfds: {_folder_mb(folder):.0f} MB on disk (the archive is ~{TFDS_ARCHIVE_MB} MB, "
                "then about as much again prepared)")  # fmt: skip

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1)


def download(source: str, progress: Callable[[str], None] | None = None) -> str:
    """Make the source available locally and return it. For tfds, download and prepare
    the dataset in the configured data folder unless it is already prepared there, telling
    ``progress`` what happens (and every 15 s how far it is); for paths, check the layout."""
    if not source.startswith(TFDS_PREFIX):
        list_source(source)
        return source
    import tensorflow_datasets as tfds

    say = progress or (lambda message: None)
    builder = tfds_builder(source)
    if not builder.is_prepared():
        check_network(_tfds_download_host())
        folder = Path(builder.data_dir).parents[1]  # <data dir>/<name>/<version>
        say(f"tfds: downloading and preparing {source} into {folder}")
        started = time.perf_counter()
        with _reporting(folder, say):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(**TFDS_DOWNLOAD_CONFIG)
            )
        say(
            f"tfds: prepared in {time.perf_counter() - started:.0f} s ({_folder_mb(folder):.0f} MB)"
        )
    return source
