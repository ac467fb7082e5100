"""Sources: list, read and fingerprint the photos, and make them available locally.

A source is ``tfds:cats_vs_dogs`` (tensorflow-datasets downloads the real archive; we read
its raw encoded bytes so every file goes through our own decoder), a zip archive, or a
folder, the last two in the official ``PetImages/{Cat,Dog}/*.jpg`` layout where the folder
name is the label. A wrong layout is a ``DataError`` raised before any work, and an
unreachable download host an ``OfflineError`` raised within seconds: neither is worth a
retry. ``tensorflow_datasets`` is imported only when a tfds source is used.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gap_models.config import DEFAULT_SOURCE, TFDS_PREFIX

CLASS_NAMES: tuple[str, ...] = ("cat", "dog")
"""Label i is CLASS_NAMES[i]: 0 = cat, 1 = dog (the same as tensorflow-datasets)."""
FOLDER_LABELS = {"Cat": 0, "Dog": 1}
TFDS_HOST = ("download.microsoft.com", 443)
NETWORK_TIMEOUT_SECONDS = 10.0

_LAYOUT_PATTERN = re.compile(r"(?:^|/)PetImages/(Cat|Dog)/([^/]+)$")


class DataError(ValueError):
    """The source cannot be used (wrong layout, too few images): raised before training."""


class OfflineError(ConnectionError):
    """The download host is unreachable: permanent for this run, so not worth retrying."""


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
        import tensorflow_datasets as tfds

        builder = tfds.builder(source.removeprefix(TFDS_PREFIX))
        return f"{source}@{builder.version}"
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


def _layout_error(source: str, found: Counter) -> DataError:
    return DataError(
        f"source {source!r} is not in the expected layout: it needs files under "
        f"PetImages/Cat/ and PetImages/Dog/ (label = folder name), found "
        f"{dict(found) or 'none'}"
    )


def list_source(source: str) -> list[tuple[str, int]]:
    """(name, label) of every file in a zip or folder source; checks the layout.

    Raises ``DataError`` when the path is unreadable, has no ``PetImages/{Cat,Dog}`` files,
    or one class is empty.
    """
    path = Path(source).expanduser()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [info.filename for info in archive.infolist() if not info.is_dir()]
        elif path.is_dir():
            names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
            if path.name == "PetImages":
                names = [f"PetImages/{name}" for name in names]
        else:
            raise DataError(
                f"source {source!r} is neither a zip archive nor a folder; expected a .zip or "
                "folder in PetImages/{Cat,Dog}/*.jpg layout"
            )
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"source {source!r} cannot be read: {error}") from error
    entries = []
    for name in sorted(names):
        match = _LAYOUT_PATTERN.search(name)
        if match:
            entries.append((name, FOLDER_LABELS[match.group(1)]))
    found = Counter(CLASS_NAMES[label] for _, label in entries)
    if not all(found[name] for name in CLASS_NAMES):
        raise _layout_error(source, found)
    return entries


def iter_source(source: str) -> Iterator[SourceFile]:
    """Yield every file of the source with its label and raw (still encoded) bytes."""
    if source.startswith(TFDS_PREFIX):
        yield from _iter_tfds(source)
        return
    path = Path(source).expanduser()
    entries = list_source(source)
    if path.is_dir():
        base = path.parent if path.name == "PetImages" else path
        for name, label in entries:
            yield SourceFile(name, label, (base / name).read_bytes())
    else:
        with zipfile.ZipFile(path) as archive:
            for name, label in entries:
                yield SourceFile(name, label, archive.read(name))


def _iter_tfds(source: str) -> Iterator[SourceFile]:
    import tensorflow_datasets as tfds

    builder = tfds.builder(source.removeprefix(TFDS_PREFIX))
    dataset = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    for index, example in enumerate(tfds.as_numpy(dataset)):
        name = example.get("image/filename", b"").decode() or f"tfds/{index}"
        yield SourceFile(name, int(example["label"]), bytes(example["image"]))


def check_network(
    host: tuple[str, int] = TFDS_HOST, timeout: float = NETWORK_TIMEOUT_SECONDS
) -> None:
    """Fail within ``timeout`` seconds (DNS included) when the download host is unreachable."""
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection(host, timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome or outcome[0] is not None:
        reason = outcome[0] if outcome else f"no answer within {timeout:.0f} s"
        raise OfflineError(
            f"cannot reach {host[0]} to download {DEFAULT_SOURCE} ({reason}). Without network, "
            "set the `source` parameter to a local copy of the photos: a .zip archive or folder "
            "in PetImages/{Cat,Dog}/*.jpg layout, e.g. "
            "source=../shared/data/kagglecatsanddogs_180px.zip"
        )


def download(source: str, data_dir: str | None = None) -> str:
    """Make the source available locally and return it. For tfds, download and prepare
    the dataset unless it is already prepared; for paths, check the layout."""
    if not source.startswith(TFDS_PREFIX):
        list_source(source)
        return source
    import tensorflow_datasets as tfds

    builder = tfds.builder(source.removeprefix(TFDS_PREFIX), data_dir=data_dir)
    if not builder.is_prepared():
        check_network()
        builder.download_and_prepare()
    return source
