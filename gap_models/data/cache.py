"""Cache: preprocess a source once and keep the resized uint8 pixels on disk.

The arrays are cached under a key made of the source's fingerprint and every setting that
shapes them, so a second run with the same data and settings decodes nothing. The cache
folder is built under a temporary name and renamed into place, so a reader never sees a
half-written cache, and it is checked writable before minutes of decoding, not after.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gap_models.data.selection import (
    SPLIT_NAMES,
    TRAIN_SPLIT,
    ProgressCallback,
    Selected,
    decode_selected,
    hash_order,
    train_indices,
)
from gap_models.data.sources import DataError, class_names, fingerprint_source, iter_source

PREPROCESS_VERSION = 4
"""Part of every cache key: bump it when decoding, resizing or the manifest's content
changes, so no cache of the old format is read."""


@dataclass
class PreparedData:
    """What preprocessing produced: the cache folder and its manifest."""

    cache_dir: Path
    manifest: dict
    cache_hit: bool = False
    seconds: float = 0.0
    skipped: list[dict] = field(default_factory=list)

    @property
    def images_used(self) -> int:
        return int(self.manifest["images_used"])

    @property
    def skipped_images(self) -> int:
        return int(self.manifest["skipped_images"])


# --- preprocessing -------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$COMPARE_HEADS_CACHE_DIR``, else ``~/.cache/compare-heads`` (outside the repo)."""
    configured = os.environ.get("COMPARE_HEADS_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "compare-heads"


def cache_key(fingerprint: str, image_size: int, split: list[int], max_images: int | None) -> str:
    """Key of a preprocessing result: the source's content and every setting that shapes it."""
    settings = {
        "fingerprint": fingerprint,
        "image_size": image_size,
        "split": list(split),
        "max_images": max_images,
        "version": PREPROCESS_VERSION,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def read_manifest(cache_dir: Path) -> dict | None:
    """The manifest of a complete cache folder, or None when there is none."""
    try:
        return json.loads((cache_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def preprocess(
    source: str,
    image_size: int = 100,
    split: list[int] | None = None,
    max_images: int | None = None,
    cache_root: Path | None = None,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> PreparedData:
    """Decode, validate, split and resize the source once; cache the uint8 result.

    A second call with the same source content and settings returns the cache without
    decoding anything. With ``max_images``, files are taken in content-hash order, per
    class, until each class has ``max_images // 2`` decodable images; ``skipped_images``
    then counts only the files that were examined.
    """
    started = time.perf_counter()
    split = list(split or [80, 10, 10])
    cache_root = Path(cache_root) if cache_root else default_cache_dir()
    fingerprint = fingerprint_source(source)
    cache_dir = cache_root / cache_key(fingerprint, image_size, split, max_images)
    manifest = read_manifest(cache_dir)
    if manifest is not None:
        return PreparedData(
            cache_dir, manifest, cache_hit=True, seconds=time.perf_counter() - started
        )

    _check_writable(cache_root)  # before minutes of decoding, not after
    classes = class_names(source)
    ordered = hash_order(list(iter_source(source)))
    selected = decode_selected(
        ordered, image_size, split, max_images, progress, workers, len(classes)
    )
    labels, skipped = selected.labels, selected.skipped
    counts = {name: Counter(int(label) for label in labels[name]) for name in SPLIT_NAMES}
    _check_enough(source, counts, skipped, classes)
    manifest = {
        "source": source,
        "fingerprint": fingerprint,
        "image_size": image_size,
        "split": split,
        "max_images": max_images,
        "version": PREPROCESS_VERSION,
        "images_used": sum(len(labels[name]) for name in SPLIT_NAMES),
        "skipped_images": len(skipped),
        "skipped_by_reason": dict(Counter(item["reason"] for item in skipped)),
        "skipped": skipped,
        "class_names": list(classes),
        "split_counts": {
            name: {classes[c]: counts[name][c] for c in range(len(classes))} for name in SPLIT_NAMES
        },
        "preprocess_seconds": round(time.perf_counter() - started, 3),
    }
    _write_cache_atomically(cache_dir, selected, manifest)
    final = read_manifest(cache_dir) or manifest
    return PreparedData(cache_dir, final, seconds=time.perf_counter() - started, skipped=skipped)


def local_cache(
    cache_dir: str | Path,
    source: str,
    image_size: int,
    split: list[int],
    max_images: int | None,
) -> Path:
    """The preprocessed data another process prepared at ``cache_dir``, on this machine.

    That folder itself when this machine sees it (the same host, or a shared folder mounted
    at the same path); otherwise this machine builds it from ``source`` (which must then be
    reachable from here) under its own cache root, with the same key and the same atomic
    write, so two workers on one host never collide and all train on identical arrays.
    """
    cache_dir = Path(cache_dir)
    if read_manifest(cache_dir) is not None:
        return cache_dir
    prepared = preprocess(source, image_size, split, max_images)
    if prepared.cache_dir.name != cache_dir.name:
        raise DataError(
            f"source {source!r} as seen from this machine differs from the one the flow "
            f"preprocessed (cache key {prepared.cache_dir.name}, expected {cache_dir.name}): "
            "give every worker the same data, or share the cache folder "
            "(COMPARE_HEADS_CACHE_DIR on a shared file system, mounted at the same path)"
        )
    return prepared.cache_dir


# --- checks and the cache folder -----------------------------------------------------------


def _check_enough(
    source: str, counts: dict[str, Counter], skipped: list[dict], classes: tuple[str, ...]
) -> None:
    for name in SPLIT_NAMES:
        if sum(counts[name].values()) == 0:
            raise DataError(
                f"source {source!r}: the {name} split is empty: too few usable images "
                f"({sum(sum(c.values()) for c in counts.values())} decoded, {len(skipped)} "
                "skipped) for the split; add images, raise max_images or change split"
            )
    missing = [classes[c] for c in range(len(classes)) if counts["train"][c] == 0]
    if missing:
        raise DataError(f"source {source!r}: the train split has no {missing} images")


def _check_writable(cache_root: Path) -> None:
    """Fail at once, with the fix, when the cache folder cannot be created or written."""
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_root):
            pass
    except OSError as error:
        raise OSError(
            f"cannot write the preprocessing cache under {cache_root} ({error}); make it "
            "writable or point COMPARE_HEADS_CACHE_DIR at a writable folder"
        ) from error


def _write_cache_atomically(cache_dir: Path, selected: Selected, manifest: dict) -> None:
    """Write into a temporary sibling folder, then rename it into place in one step.

    If another run finished the same cache first, ours is discarded. On any error the
    temporary folder is removed, so no half-written cache can ever be trusted later.
    """
    temporary = cache_dir.parent / f".tmp-{cache_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        temporary.mkdir(parents=True)
        for name in SPLIT_NAMES:
            np.save(temporary / f"images_{name}.npy", selected.images[name])
            np.save(temporary / f"labels_{name}.npy", selected.labels[name])
            np.save(temporary / f"ids_{name}.npy", selected.ids[name])
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(temporary, cache_dir)
        except OSError:
            if read_manifest(cache_dir) is None:
                raise
    except OSError as error:
        raise OSError(
            f"cannot write the preprocessing cache under {cache_dir.parent} ({error}); free "
            "space or point COMPARE_HEADS_CACHE_DIR at a writable folder"
        ) from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def load_split(cache_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The cached uint8 images ``(n, size, size, 3)`` and labels ``(n,)`` of one split.

    The images are one read-only memory map per file and process, shared by every caller:
    TensorFlow keeps each model's input pipeline (and the array it reads) alive until the
    process ends, so an array read per model cost a flow run 0.5 GB more peak memory per
    model on the 180 px photos (docs/RESULTS.md, memory).
    """
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; allowed are {list(SPLIT_NAMES)}")
    path = Path(cache_dir) / f"images_{name}.npy"
    images = _mapped(str(path.resolve()), path.stat().st_mtime_ns)
    return images, np.load(Path(cache_dir) / f"labels_{name}.npy")


def load_train(cache_dir: str | Path, fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The training photos and labels a run with ``train_fraction`` trains on
    (``selection.train_indices``): the whole memory-mapped split at 1, else a copy."""
    images, labels = load_split(Path(cache_dir), TRAIN_SPLIT)
    if fraction == 1:
        return images, labels
    kept = train_indices(load_ids(cache_dir, TRAIN_SPLIT), fraction)
    return images[kept], labels[kept]


def load_ids(cache_dir: str | Path, name: str) -> np.ndarray:
    """The content ids (uint64) of one split's photos, in the split's order."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; allowed are {list(SPLIT_NAMES)}")
    return np.load(Path(cache_dir) / f"ids_{name}.npy")


@functools.lru_cache(maxsize=16)
def _mapped(path: str, mtime_ns: int) -> np.ndarray:
    """A read-only memory map of a cached array (``mtime_ns`` keys out a rewritten file)."""
    return np.load(path, mmap_mode="r")


def cached_class_names(cache_dir: str | Path) -> tuple[str, ...]:
    """The class names of a cache folder, label order (what every model of it predicts)."""
    manifest = read_manifest(Path(cache_dir))
    if manifest is None:
        raise DataError(f"{cache_dir} is not a complete preprocessing cache (no manifest)")
    return tuple(manifest["class_names"])
