"""The content manifest of a source: every photo's sha256, class and split, and one digest.

What retraining decides on (``gap_models.planning``): two sources with the same digest hold
the same photos under the same classes, whatever the files are named, so a rename retrains
nothing and a relabelled photo (same bytes, other class) is seen as such. The split of each
photo is the preprocessing's own (``assign_split``: a pure function of its bytes).

Hashing is the costly part (a few seconds per thousand photos), so it is done once per file
version: a folder's files are re-hashed only when their size or modification time changed
(a stat cache beside the preprocessing cache, as the cache's own fingerprint does), a zip
archive or a tfds dataset only when the archive or the dataset version changed. Caches are
written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gap_models.config import TFDS_PREFIX
from gap_models.data.decoding import ImageDecodeError, decode_image
from gap_models.data.selection import assign_split
from gap_models.data.sources import class_names, fingerprint_source, iter_source, list_source

MANIFEST_COLUMNS = ("file", "sha256", "class", "split")


@dataclass(frozen=True)
class Photo:
    """One photo of a source as the manifest sees it."""

    file: str
    sha256: str
    label: str  # the class name
    split: str


@dataclass(frozen=True)
class Manifest:
    """Every photo of a source, sorted by file name."""

    photos: tuple[Photo, ...]

    @property
    def digest(self) -> str:
        """24 hex digits over the sorted (sha256, class) pairs: the data's identity, blind to
        file names and order."""
        lines = sorted(f"{photo.sha256}\t{photo.label}\n" for photo in self.photos)
        return hashlib.sha256("".join(lines).encode()).hexdigest()[:24]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({photo.label for photo in self.photos}))

    def counts(self) -> dict[str, dict[str, int]]:
        """Photos per split and class."""
        counts: dict[str, Counter] = {}
        for photo in self.photos:
            counts.setdefault(photo.split, Counter())[photo.label] += 1
        return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}

    def to_tsv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows((p.file, p.sha256, p.label, p.split) for p in self.photos)
        return buffer.getvalue()

    @classmethod
    def from_tsv(cls, text: str) -> Manifest:
        rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
        if not rows or tuple(rows[0]) != MANIFEST_COLUMNS:
            raise ValueError(f"not a data manifest (expected columns {MANIFEST_COLUMNS})")
        return cls(tuple(Photo(*row) for row in rows[1:]))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # missing or torn: hash again
        return {}


def _cache_path(cache_root: Path, kind: str, identity: str) -> Path:
    name = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return cache_root / "manifests" / f"{kind}-{name}.json"


def _folder_digests(folder: Path, files: list[str], cache_root: Path) -> dict[str, str]:
    """sha256 of each file, re-hashing only files whose size or modification time changed."""
    path = _cache_path(cache_root, "folder", str(folder.resolve()))
    known = _read_json(path)
    digests, fresh = {}, {}
    for name in files:
        stat = (folder / name).stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = known.get(name)
        if entry and entry[:2] == stamp:
            digests[name] = entry[2]
        else:
            digests[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        fresh[name] = [*stamp, digests[name]]
    if fresh != known:
        _write_atomically(path, json.dumps(fresh))
    return digests


def _archive_digests(source: str, cache_root: Path) -> dict[str, tuple[str, int]]:
    """(sha256, label) of every file of a zip or tfds source, cached per archive version."""
    if source.startswith(TFDS_PREFIX):
        identity = fingerprint_source(source)
    else:
        stat = Path(source).expanduser().stat()
        identity = f"{Path(source).expanduser().resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    path = _cache_path(cache_root, "archive", identity)
    cached = _read_json(path)
    if cached:
        return {name: (digest, label) for name, (digest, label) in cached.items()}
    found = {item.name: (item.digest, item.label) for item in iter_source(source)}
    _write_atomically(path, json.dumps(found))
    return found


def build_manifest(source: str, split: list[int] | tuple[int, ...], cache_root: Path) -> Manifest:
    """The content manifest of a local source (a folder, a zip, or a prepared tfds dataset)
    under the split percentages ``split``; hashes cached under ``cache_root``."""
    names = class_names(source)
    path = Path(source).expanduser()
    if not source.startswith(TFDS_PREFIX) and path.is_dir():
        entries = list_source(source)
        digests = _folder_digests(path, [name for name, _ in entries], cache_root)
        found = {name: (digests[name], label) for name, label in entries}
    else:
        found = _archive_digests(source, cache_root)
    photos = (
        Photo(name, digest, names[label], assign_split(digest, split))
        for name, (digest, label) in sorted(found.items())
    )
    return Manifest(tuple(photos))


def decode_photos(
    source: str, photos: list[Photo], image_size: int, with_kept: bool = False
) -> np.ndarray | tuple[np.ndarray, list[Photo]]:
    """The given photos of a local source decoded as training decodes them: ``(n, size,
    size, 3)`` uint8; photos that do not decode are left out (as preprocessing skips them).
    ``with_kept``: also the photos decoded, in the images' order."""
    by_name = {photo.file: photo for photo in photos}
    wanted = {photo.file for photo in photos}
    path = Path(source).expanduser()
    if not source.startswith(TFDS_PREFIX) and path.is_dir():
        found = ((name, (path / name).read_bytes()) for name in sorted(wanted))
    elif not source.startswith(TFDS_PREFIX):
        with zipfile.ZipFile(path) as archive:
            found = [(name, archive.read(name)) for name in sorted(wanted)]
    else:
        found = ((item.name, item.data) for item in iter_source(source) if item.name in wanted)
    images, kept = [], []
    for name, data in found:
        try:
            images.append(decode_image(data, image_size))
        except ImageDecodeError:
            continue
        kept.append(by_name[name])
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return (stacked, kept) if with_kept else stacked
