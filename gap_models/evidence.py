"""The evidence of a comparison, photo by photo: for every arm (a head, or a head with the
settings a study varies) and seed, which validation, test and training-subset photos its
model got right, with what loss, and under which shifts; and the cells' curves and timings.

Built from a study's committed records (``from_records``) or from one flow run's cells
(``from_cells``): the report renders either the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gap_models import records
from gap_models.evaluation import EPSILON
from gap_models.records import RunResult
from gap_models.robustness import directions_of

SPLITS = (records.SELECTION_SPLIT, records.REPORT_SPLIT, records.TRAIN_SUBSET_SPLIT)


def per_photo(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per photo: right (0/1, int8) and cross-entropy, from stored predictions (P(class 1)
    for two classes, else ``(n, classes)`` probabilities)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim == 1:
        p = np.clip(probabilities, EPSILON, 1 - EPSILON)
        right = (probabilities >= 0.5).astype(np.int64) == labels
        loss = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    else:
        right = probabilities.argmax(axis=1) == labels
        chosen = probabilities[np.arange(len(labels)), labels]
        loss = -np.log(np.clip(chosen, EPSILON, 1 - EPSILON))
    return right.astype(np.int8), loss


@dataclass
class Arm:
    """One arm's cells, in seed order."""

    name: str
    head: str
    settings: dict = field(default_factory=dict)  # the study's settings of this arm's cells
    seeds: list[int] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)
    correct: dict[str, list[np.ndarray]] = field(default_factory=dict)  # split -> per seed
    loss: dict[str, list[np.ndarray]] = field(default_factory=dict)
    shifts: dict[int, list[np.ndarray]] = field(default_factory=dict)  # pixels -> per seed, 0..1
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)  # split -> stored predictions
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, seed: int, result: RunResult, predictions, labels, shifts) -> None:
        self.seeds.append(seed)
        self.results.append(result)
        for split in SPLITS:
            if split in predictions:
                self.scores.setdefault(split, []).append(np.asarray(predictions[split]))
                self.labels[split] = np.asarray(labels[split])
                right, loss = per_photo(predictions[split], labels[split])
                self.correct.setdefault(split, []).append(right)
                self.loss.setdefault(split, []).append(loss)
        for pixels, counts in shifts.items():
            share = np.asarray(counts, dtype=np.float64) / len(directions_of(pixels))
            self.shifts.setdefault(pixels, []).append(share)

    def matrix(self, split: str, seeds: list[int]) -> np.ndarray:
        """``(seeds, photos)`` right/wrong of the given seeds."""
        index = [self.seeds.index(seed) for seed in seeds]
        return np.stack([self.correct[split][i] for i in index])

    @property
    def trainable_params(self) -> int:
        return self.results[0].trainable_params

    @property
    def flops_per_image(self) -> int:
        return self.results[0].flops_per_image


@dataclass
class Evidence:
    """Every arm of a comparison, in display order, and what was declared about it."""

    title: str
    arms: dict[str, Arm]
    class_names: tuple[str, ...]
    missing: list[str] = field(default_factory=list)  # cells declared but not recorded

    def common_seeds(self, *names: str) -> list[int]:
        seeds = set(self.arms[names[0]].seeds)
        for name in names[1:]:
            seeds &= set(self.arms[name].seeds)
        return sorted(seeds)


def from_records(title: str, cell_records: list, data_files: dict, arms_order: list[str],
                 missing: list[str] | None = None) -> Evidence:  # fmt: skip
    """Evidence from a study's records (``gap_models.study_records.CellRecord``) and the data
    files their ``data`` keys name; the records of one arm must share one data set."""
    arms: dict[str, Arm] = {}
    class_names: tuple[str, ...] = ()
    for name in arms_order:
        for record in sorted((r for r in cell_records if r.arm == name), key=lambda r: r.seed):
            data = data_files[record.data]
            class_names = data.class_names
            arm = arms.setdefault(name, Arm(name, record.head, dict(record.settings)))
            labels = record.labels(data)
            arm.add(record.seed, record.result, record.predictions, labels, record.shifts)
    return Evidence(title, arms, class_names, missing or [])


def from_cells(title: str, cells: list[tuple[RunResult, dict[str, np.ndarray]]],
               class_names: tuple[str, ...]) -> Evidence:  # fmt: skip
    """Evidence from one flow run's cells: each result with the arrays of its
    ``predictions.npz`` (predictions, labels and shifts by name)."""
    arms: dict[str, Arm] = {}
    for result, arrays in sorted(cells, key=lambda cell: cell[0].seed):
        predictions = {s: arrays[s] for s in SPLITS if s in arrays}
        labels = {s: arrays[f"{records.LABELS_PREFIX}{s}"] for s in predictions}
        shifts = {
            int(k.removeprefix(records.SHIFT_ARRAY_PREFIX)): v
            for k, v in arrays.items()
            if k.startswith(records.SHIFT_ARRAY_PREFIX)
        }
        arm = arms.setdefault(result.head, Arm(result.head, result.head))
        arm.add(result.seed, result, predictions, labels, shifts)
    from gap_models.architecture import HEAD_NAMES

    ordered = {name: arms[name] for name in HEAD_NAMES if name in arms}
    return Evidence(title, ordered, class_names)
