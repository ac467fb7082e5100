"""Data: read a source, decode every file, split by content hash, resize once, cache.

Sources are ``tfds:cats_vs_dogs`` (tensorflow-datasets downloads the real archive; we read
its raw encoded bytes and decode them ourselves), a zip archive, or a folder, the last two
in the official ``PetImages/{Cat,Dog}/*.jpg`` layout. Every file goes through one decode
path (Pillow): grayscale, CMYK, palette and PNG-named-.jpg files are converted to RGB; files
that cannot be decoded are skipped and counted by reason, never fatal.

The split is a pure function of each image's bytes (sha256), so it is stable across runs,
does not move when images are added, and byte-identical duplicates always land together.
The decoded, resized uint8 arrays are cached on disk under a key made of the source's
fingerprint and the preprocessing settings; the cache folder is built under a temporary
name and renamed into place, so a reader never sees a half-written cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gap_models.config import DEFAULT_SOURCE, TFDS_PREFIX

CLASS_NAMES: tuple[str, ...] = ("cat", "dog")
"""Label i is CLASS_NAMES[i]: 0 = cat, 1 = dog (the same as tensorflow-datasets)."""
FOLDER_LABELS = {"Cat": 0, "Dog": 1}
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
PREPROCESS_VERSION = 2
"""Bump when decoding or resizing changes: it is part of every cache key."""
MAX_DECODE_PIXELS = 100_000_000
"""Images with more pixels are refused as ``too_large`` (a decompression bomb guard)."""
TFDS_HOST = ("download.microsoft.com", 443)
NETWORK_TIMEOUT_SECONDS = 10.0

_LAYOUT_PATTERN = re.compile(r"(?:^|/)PetImages/(Cat|Dog)/([^/]+)$")

ProgressCallback = Callable[[int, int], None]


class DataError(ValueError):
    """The source cannot be used (wrong layout, too few images): raised before training."""


class OfflineError(ConnectionError):
    """The download host is unreachable: permanent for this run, so not worth retrying."""


class ImageDecodeError(ValueError):
    """One file is not a usable image; ``reason`` is the short name it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class SourceFile:
    """One file of a source: where it came from, its label and its raw bytes."""

    name: str
    label: int
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


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


# --- sources -------------------------------------------------------------------------------


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


# --- decoding ------------------------------------------------------------------------------


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """Decode encoded image bytes to a ``(image_size, image_size, 3)`` uint8 RGB array.

    Any format Pillow reads is accepted whatever the file is named; grayscale, CMYK,
    palette and alpha images are converted to RGB. Raises ``ImageDecodeError`` with reason
    ``empty_file``, ``not_an_image``, ``truncated``, ``too_large`` or ``decode_error``.
    """
    if not data:
        raise ImageDecodeError("empty_file", "zero bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about odd EXIF data; the pixels are fine
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_DECODE_PIXELS:
                raise ImageDecodeError("too_large", f"{width}x{height} pixels")
            if width * height > 64 * image_size * image_size and image.format == "JPEG":
                image.draft("RGB", (4 * image_size, 4 * image_size))  # decode huge JPEGs scaled
            image.load()
        except ImageDecodeError:
            raise
        except UnidentifiedImageError as error:
            raise ImageDecodeError("not_an_image", str(error)) from error
        except Image.DecompressionBombError as error:
            raise ImageDecodeError("too_large", str(error)) from error
        except (OSError, SyntaxError, ValueError) as error:
            reason = "truncated" if "truncated" in str(error).lower() else "decode_error"
            raise ImageDecodeError(reason, str(error)) from error
        if image.mode != "RGB":
            image = image.convert("RGB")
        resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _decode_chunk(
    chunk: list[tuple[str, bytes]], image_size: int
) -> list[tuple[np.ndarray | None, str]]:
    """Decode a chunk in a worker thread: (pixels, "") or (None, skip reason)."""
    results: list[tuple[np.ndarray | None, str]] = []
    for _name, data in chunk:
        try:
            results.append((decode_image(data, image_size), ""))
        except ImageDecodeError as error:
            results.append((None, str(error)))
    return results


# --- splitting -----------------------------------------------------------------------------


def assign_split(digest: str, split: list[int] | tuple[int, ...]) -> str:
    """Map an image's sha256 hex digest to train / validation / test by the split's percents.

    A pure function of the bytes: adding images never moves an old one, and identical
    files always share a split.
    """
    fraction = int(digest[:16], 16) / float(1 << 64)
    train_end = split[0] / 100
    validation_end = (split[0] + split[1]) / 100
    if fraction < train_end:
        return "train"
    if fraction < validation_end:
        return "validation"
    return "test"


def hash_order(files: list[SourceFile]) -> list[tuple[str, SourceFile]]:
    """(digest, file) pairs in a content-hash order: deterministic and class-mixed, so a
    1000-image shuffle buffer sees both classes from the first batch.

    The order uses the digest's last 16 hex digits and the split its first 16: were they
    the same bits, a ``max_images`` prefix of this order would fall entirely in train.
    """
    return sorted(((f.digest, f) for f in files), key=lambda pair: (pair[0][-16:], pair[1].name))


# --- preprocessing and the cache ---------------------------------------------------------


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
    ordered = hash_order(list(iter_source(source)))
    arrays, labels, skipped = _decode_selected(
        ordered, image_size, split, max_images, progress, workers
    )
    counts = {name: Counter(int(label) for label in labels[name]) for name in SPLIT_NAMES}
    _check_enough(source, counts, skipped)
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
        "split_counts": {
            name: {CLASS_NAMES[c]: counts[name][c] for c in range(len(CLASS_NAMES))}
            for name in SPLIT_NAMES
        },
        "preprocess_seconds": round(time.perf_counter() - started, 3),
    }
    _write_cache_atomically(cache_dir, arrays, labels, manifest)
    final = read_manifest(cache_dir) or manifest
    return PreparedData(cache_dir, final, seconds=time.perf_counter() - started, skipped=skipped)


def _decode_selected(
    ordered: list[tuple[str, SourceFile]],
    image_size: int,
    split: list[int],
    max_images: int | None,
    progress: ProgressCallback | None,
    workers: int | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict]]:
    """Decode files in hash order (in parallel), honouring the per-class quota."""
    quota = None if max_images is None else max_images // len(CLASS_NAMES)
    taken: Counter = Counter()
    images: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    labels: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    skipped: list[dict] = []
    chunk_size = 256
    pending = [pair for pair in ordered]
    total = len(pending) if quota is None else min(len(pending), max_images or 0)
    done = 0
    executor = _decoder_pool(len(pending) if quota is None else quota * 2, workers)
    try:
        while pending and (quota is None or any(taken[c] < quota for c in range(len(CLASS_NAMES)))):
            if quota is not None:  # only files of classes still short of their quota
                pending = [pair for pair in pending if taken[pair[1].label] < quota]
            batch, pending = pending[: chunk_size * 8], pending[chunk_size * 8 :]
            chunks = [batch[i : i + chunk_size] for i in range(0, len(batch), chunk_size)]
            payloads = [[(f.name, f.data) for _, f in chunk] for chunk in chunks]
            mapped = (
                executor.map(_decode_chunk, payloads, [image_size] * len(payloads))
                if executor
                else (_decode_chunk(p, image_size) for p in payloads)
            )
            for chunk, results in zip(chunks, mapped, strict=True):
                for (digest, source_file), (pixels, error) in zip(chunk, results, strict=True):
                    if pixels is None:
                        reason, _, detail = error.partition(": ")
                        skipped.append(
                            {"file": source_file.name, "reason": reason, "detail": detail}
                        )
                        continue
                    if quota is not None and taken[source_file.label] >= quota:
                        continue
                    taken[source_file.label] += 1
                    name = assign_split(digest, split)
                    images[name].append(pixels)
                    labels[name].append(source_file.label)
                    done += 1
                if progress:
                    progress(min(done, total), total)
    finally:
        if executor:
            executor.shutdown()
    shape = (0, image_size, image_size, 3)
    return (
        {n: np.stack(images[n]) if images[n] else np.zeros(shape, np.uint8) for n in SPLIT_NAMES},
        {n: np.asarray(labels[n], dtype=np.uint8) for n in SPLIT_NAMES},
        skipped,
    )


def _decoder_pool(file_count: int, workers: int | None) -> ThreadPoolExecutor | None:
    """A thread pool for large jobs: Pillow releases the GIL while it decodes and resizes,
    so threads use every core without pickling bytes to other processes."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or file_count < 500:
        return None
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")


def _check_enough(source: str, counts: dict[str, Counter], skipped: list[dict]) -> None:
    for name in SPLIT_NAMES:
        if sum(counts[name].values()) == 0:
            raise DataError(
                f"source {source!r}: the {name} split is empty: too few usable images "
                f"({sum(sum(c.values()) for c in counts.values())} decoded, {len(skipped)} "
                "skipped) for the split; add images, raise max_images or change split"
            )
    missing = [CLASS_NAMES[c] for c in range(len(CLASS_NAMES)) if counts["train"][c] == 0]
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


def _write_cache_atomically(
    cache_dir: Path, arrays: dict[str, np.ndarray], labels: dict[str, np.ndarray], manifest: dict
) -> None:
    """Write into a temporary sibling folder, then rename it into place in one step.

    If another run finished the same cache first, ours is discarded. On any error the
    temporary folder is removed, so no half-written cache can ever be trusted later.
    """
    temporary = cache_dir.parent / f".tmp-{cache_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        temporary.mkdir(parents=True)
        for name in SPLIT_NAMES:
            np.save(temporary / f"images_{name}.npy", arrays[name])
            np.save(temporary / f"labels_{name}.npy", labels[name])
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
    """The cached uint8 images ``(n, size, size, 3)`` and labels ``(n,)`` of one split."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; allowed are {list(SPLIT_NAMES)}")
    cache_dir = Path(cache_dir)
    return np.load(cache_dir / f"images_{name}.npy"), np.load(cache_dir / f"labels_{name}.npy")


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment=None,
):
    """A batched, prefetched ``tf.data.Dataset`` of (uint8 images, float labels).

    With ``shuffle_seed`` it reshuffles every epoch through a 1000-image buffer (the
    article's setting); images stay uint8 until the model rescales them. ``augment``, a
    Keras layer, is applied to each training batch (the improved recipe).

    The dataset shuffles and batches image *indices* and gathers each batch from the numpy
    arrays: ``from_tensor_slices`` on the arrays would copy every image into a TensorFlow
    constant (480 MB more for the 180 px photos' train split).
    """
    import tensorflow as tf

    images = np.ascontiguousarray(images)
    targets = labels.astype(np.float32)
    shape = images.shape[1:]

    def gather(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return images[indices], targets[indices]

    def load(indices):
        batch, batch_labels = tf.numpy_function(
            gather, [indices], (tf.uint8, tf.float32), stateful=False
        )
        batch.set_shape((None, *shape))
        batch_labels.set_shape((None,))
        return batch, batch_labels

    dataset = tf.data.Dataset.range(len(images))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(1000, seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        dataset = dataset.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
