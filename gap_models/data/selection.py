"""Selection: which files are used, in which split, decoded in parallel under a quota.

The split is a pure function of each image's bytes (sha256), so it is stable across runs,
does not move when images are added, and byte-identical duplicates always land together.
Files are examined in a content-hash order, which is deterministic and mixes the classes.
With ``max_images`` each class takes ``max_images // 2`` decodable images in that order;
files that cannot be decoded are skipped and listed with their reason, never fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from gap_models.data.decoding import CHUNK_SIZE, Decoded, DecoderPool, ImageDecodeError, chunked
from gap_models.data.sources import SourceFile

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
TRAIN_SPLIT = SPLIT_NAMES[0]
_BATCH_FILES = 8 * CHUNK_SIZE
"""Files decoded between two quota checks: enough chunks to keep every decoding thread busy."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(images taken, images expected)`` after every decoded chunk."""
HashOrdered = list[tuple[str, SourceFile]]
"""(sha256 hex digest, file) pairs, as ``hash_order`` returns them."""


# --- the split and the order -------------------------------------------------------------


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


def train_indices(ids: np.ndarray, fraction: float) -> np.ndarray:
    """Positions (ascending, so in cache order) of the training photos a run with
    ``train_fraction`` uses: the ``round(n * fraction)`` of smallest content id, at least one.

    Content ids are sha256 bits, so this is a uniform random subset, the same on every
    machine, and nested: the photos of 1/8 are among those of 1/4, and so on."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction {fraction} must be in (0, 1]")
    if fraction == 1:
        return np.arange(len(ids))
    kept = max(1, round(len(ids) * fraction))
    return np.sort(np.argsort(ids, kind="stable")[:kept])


def hash_order(files: list[SourceFile]) -> HashOrdered:
    """(digest, file) pairs in a content-hash order: deterministic and class-mixed, so a
    1000-image shuffle buffer sees both classes from the first batch.

    The order uses the digest's last 16 hex digits and the split its first 16: were they
    the same bits, a ``max_images`` prefix of this order would fall entirely in train.
    """
    return sorted(((f.digest, f) for f in files), key=lambda pair: (pair[0][-16:], pair[1].name))


# --- choosing and decoding the files -------------------------------------------------------


class _Quota:
    """Per-class quota bookkeeping: with ``max_images``, each of the ``num_classes`` classes
    takes ``max_images // num_classes`` decodable images; without it, every file counts."""

    def __init__(self, max_images: int | None, num_classes: int) -> None:
        self.max_images = max_images
        self.num_classes = num_classes
        self.per_class = None if max_images is None else max_images // num_classes
        self.taken: Counter = Counter()

    def is_open(self) -> bool:
        """Whether some class is still short of its quota."""
        if self.per_class is None:
            return True
        return any(self.taken[label] < self.per_class for label in range(self.num_classes))

    def still_counting(self, pending: HashOrdered) -> HashOrdered:
        """The pending files whose class is still short of its quota."""
        if self.per_class is None:
            return pending
        return [pair for pair in pending if self.taken[pair[1].label] < self.per_class]

    def take(self, label: int) -> bool:
        """Count one decoded image of ``label`` if its class still wants it; say whether."""
        if self.per_class is not None and self.taken[label] >= self.per_class:
            return False
        self.taken[label] += 1
        return True

    def files_to_decode(self, file_count: int) -> int:
        """About how many files will be decoded: what sizes the decoder pool."""
        return file_count if self.per_class is None else self.per_class * self.num_classes

    def images_to_take(self, file_count: int) -> int:
        """The most images that can be taken: the total progress is reported against."""
        return file_count if self.max_images is None else min(file_count, self.max_images)


class _Progress:
    """Reports ``(images taken, total)`` to the optional callback after every chunk."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total

    def __call__(self, done: int) -> None:
        if self.callback:
            self.callback(done, self.total)


class _Selection:
    """The images taken so far, each in the split its digest assigns, and the skipped files."""

    def __init__(self, split: list[int]) -> None:
        self.split = split
        self.images: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
        self.labels: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
        self.ids: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
        self.skipped: list[dict] = []
        self.count = 0

    def add(self, digest: str, source_file: SourceFile, pixels: np.ndarray) -> None:
        name = assign_split(digest, self.split)
        self.images[name].append(pixels)
        self.labels[name].append(source_file.label)
        self.ids[name].append(content_id(digest))
        self.count += 1

    def skip(self, source_file: SourceFile, error: ImageDecodeError) -> None:
        self.skipped.append(
            {"file": source_file.name, "reason": error.reason, "detail": error.detail}
        )

    def arrays(self, image_size: int) -> Selected:
        """What ``decode_selected`` returns."""
        empty = np.zeros((0, image_size, image_size, 3), np.uint8)
        return Selected(
            {n: np.stack(self.images[n]) if self.images[n] else empty for n in SPLIT_NAMES},
            {n: np.asarray(self.labels[n], dtype=np.uint8) for n in SPLIT_NAMES},
            {n: np.asarray(self.ids[n], dtype=np.uint64) for n in SPLIT_NAMES},
            self.skipped,
        )


@dataclass(frozen=True)
class Selected:
    """The decoded photos by split (images, labels, content ids) and the skipped files."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    ids: dict[str, np.ndarray]
    skipped: list[dict]


def content_id(digest: str) -> int:
    """A photo's content id: the first 64 bits of its sha256 (what records pair photos by;
    byte-identical photos share it and always land in the same split)."""
    return int(digest[:16], 16)


def _decode_batch(
    pool: DecoderPool, batch: HashOrdered
) -> Iterator[list[tuple[str, SourceFile, Decoded]]]:
    """Decode a batch chunk by chunk (in parallel); yield each chunk's outcomes in order."""
    chunks = chunked(batch)
    outcomes = pool.decode_chunks([[source_file.data for _, source_file in c] for c in chunks])
    for chunk, results in zip(chunks, outcomes, strict=True):
        yield [(digest, f, result) for (digest, f), result in zip(chunk, results, strict=True)]


def decode_selected(
    ordered: HashOrdered,
    image_size: int,
    split: list[int],
    max_images: int | None,
    progress: ProgressCallback | None,
    workers: int | None,
    num_classes: int = 2,
) -> Selected:
    """Decode files in hash order (in parallel), honouring the per-class quota.

    Before each batch, files of classes that have their quota are dropped, so a small
    ``max_images`` decodes little more than it keeps.
    """
    quota = _Quota(max_images, num_classes)
    selection = _Selection(split)
    report = _Progress(progress, quota.images_to_take(len(ordered)))
    pending = ordered
    with DecoderPool(image_size, quota.files_to_decode(len(ordered)), workers) as pool:
        while pending and quota.is_open():
            pending = quota.still_counting(pending)
            batch, pending = pending[:_BATCH_FILES], pending[_BATCH_FILES:]
            for chunk in _decode_batch(pool, batch):
                for digest, source_file, outcome in chunk:
                    if isinstance(outcome, ImageDecodeError):
                        selection.skip(source_file, outcome)
                    elif quota.take(source_file.label):
                        selection.add(digest, source_file, outcome)
                report(selection.count)
    return selection.arrays(image_size)
