"""What changed between two content manifests: photos added, removed, modified, relabelled.

Photos are matched by content first: a photo whose bytes are in both manifests is the same
photo (renamed or not), relabelled when its class differs. Of the rest, a file name present
in both with other bytes is *modified*; what remains is *added* or *removed*.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from gap_models.data.manifest import Manifest, Photo
from gap_models.data.selection import TRAIN_SPLIT

KINDS = ("added", "removed", "modified", "relabelled")


@dataclass(frozen=True)
class DataChanges:
    """The difference from ``before`` to ``after`` (each a tuple of the photos concerned:
    for ``relabelled`` and ``modified``, the photo as it is now)."""

    added: tuple[Photo, ...]
    removed: tuple[Photo, ...]
    modified: tuple[Photo, ...]
    relabelled: tuple[tuple[Photo, str], ...]  # (photo now, its class before)

    def photos(self, kind: str) -> tuple[Photo, ...]:
        if kind == "relabelled":
            return tuple(photo for photo, _ in self.relabelled)
        return getattr(self, kind)

    @property
    def any(self) -> bool:
        return any(self.photos(kind) for kind in KINDS)

    def splits_touched(self) -> set[str]:
        return {photo.split for kind in KINDS for photo in self.photos(kind)}

    @property
    def train_changed(self) -> bool:
        """Whether the training photos differ: what makes every model worth retraining."""
        return TRAIN_SPLIT in self.splits_touched()

    def counts(self) -> dict[str, int]:
        return {kind: len(self.photos(kind)) for kind in KINDS}

    def by_class_and_split(self, kind: str) -> dict[tuple[str, str], int]:
        """How many photos of this kind per (class, split)."""
        return dict(sorted(Counter((p.label, p.split) for p in self.photos(kind)).items()))


def _surplus(ours: list[Photo], theirs: list[Photo]) -> list[Photo]:
    """Of photos with the same bytes, those ``ours`` has beyond ``theirs``'s count (byte-
    identical duplicates count: each is a training example), files the other lacks first."""
    extra = len(ours) - len(theirs)
    if extra <= 0:
        return []
    names = {photo.file for photo in theirs}
    return sorted(ours, key=lambda photo: (photo.file in names, photo.file))[:extra]


def diff_manifests(before: Manifest, after: Manifest) -> DataChanges:
    """The changes that turn ``before`` into ``after``, as multisets: a byte-identical
    duplicate added or removed is a photo added or removed, and the same bytes under two
    classes in both are not relabelled."""
    old_by_digest: dict[str, list[Photo]] = defaultdict(list)
    new_by_digest: dict[str, list[Photo]] = defaultdict(list)
    for photo in before.photos:
        old_by_digest[photo.sha256].append(photo)
    for photo in after.photos:
        new_by_digest[photo.sha256].append(photo)
    relabelled = []
    for photo in after.photos:
        labels = {old.label for old in old_by_digest.get(photo.sha256, [])}
        if labels and photo.label not in labels:
            relabelled.append((photo, old_by_digest[photo.sha256][0].label))
    appeared = [p for digest, new in new_by_digest.items()
                for p in _surplus(new, old_by_digest.get(digest, []))]  # fmt: skip
    vanished = [p for digest, old in old_by_digest.items()
                for p in _surplus(old, new_by_digest.get(digest, []))]  # fmt: skip
    order = {photo.file: i for i, photo in enumerate(after.photos)}
    appeared.sort(key=lambda photo: order.get(photo.file, 0))
    vanished_names = {photo.file for photo in vanished}
    modified = tuple(photo for photo in appeared if photo.file in vanished_names)
    modified_names = {photo.file for photo in modified}
    return DataChanges(
        added=tuple(photo for photo in appeared if photo.file not in modified_names),
        removed=tuple(photo for photo in vanished if photo.file not in modified_names),
        modified=modified,
        relabelled=tuple(relabelled),
    )
