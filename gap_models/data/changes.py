"""What changed between two content manifests: photos added, removed, modified, relabelled.

Photos are matched by content first: a photo whose bytes are in both manifests is the same
photo (renamed or not), relabelled when its class differs. Of the rest, a file name present
in both with other bytes is *modified*; what remains is *added* or *removed*.
"""

from __future__ import annotations

from collections import Counter
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


def diff_manifests(before: Manifest, after: Manifest) -> DataChanges:
    """The changes that turn ``before`` into ``after``."""
    old_by_digest = {photo.sha256: photo for photo in before.photos}
    new_by_digest = {photo.sha256: photo for photo in after.photos}
    relabelled = tuple(
        (photo, old_by_digest[photo.sha256].label)
        for photo in after.photos
        if photo.sha256 in old_by_digest and old_by_digest[photo.sha256].label != photo.label
    )
    appeared = [photo for photo in after.photos if photo.sha256 not in old_by_digest]
    vanished = [photo for photo in before.photos if photo.sha256 not in new_by_digest]
    vanished_names = {photo.file for photo in vanished}
    modified = tuple(photo for photo in appeared if photo.file in vanished_names)
    modified_names = {photo.file for photo in modified}
    return DataChanges(
        added=tuple(photo for photo in appeared if photo.file not in modified_names),
        removed=tuple(photo for photo in vanished if photo.file not in modified_names),
        modified=modified,
        relabelled=relabelled,
    )
