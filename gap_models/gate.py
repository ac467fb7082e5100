"""The promotion gate: when a challenger may replace the champion, and why it may not.

Both models are scored on the same current validation photos (the test split only
reports). The challenger is promoted only when all of these hold:

- it is more accurate by more than ``MARGIN`` points, and McNemar's exact test on the photos
  the two models disagree on says so (one-sided p below ``ALPHA``): a gain the photos cannot
  tell from chance does not move the champion;
- no class loses more than ``MAX_RECALL_DROP`` points of recall (a better average bought
  with one class's photos is refused);
- (checked by the caller) the logged model loads and predicts in a fresh process, as
  ``mlflow models serve`` would load it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from gap_models import records
from gap_models.probabilities import class_probabilities, predicted_classes

MARGIN = 0.0
"""Accuracy points the challenger must gain (on top of a significant test)."""
ALPHA = 0.05
MAX_RECALL_DROP = 2.0
"""Points of recall any one class may lose."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # one sentence: why promoted, or what held it back
    challenger_accuracy: float
    champion_accuracy: float
    p_value: float  # McNemar's exact test, one-sided (challenger better)
    recall_change: dict[str, float]  # points, challenger minus champion, per class


def mcnemar_p_value(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> float:
    """One-sided exact McNemar: of the photos exactly one model gets right, is the
    challenger's share above one half?"""
    only_challenger = int(np.sum(challenger_correct & ~champion_correct))
    only_champion = int(np.sum(~challenger_correct & champion_correct))
    if only_challenger + only_champion == 0:
        return 1.0
    test = binomtest(only_challenger, only_challenger + only_champion, 0.5, alternative="greater")
    return float(test.pvalue)


def _recall(correct: np.ndarray, labels: np.ndarray, label: int) -> float:
    chosen = labels == label
    return float(correct[chosen].mean() * 100) if chosen.any() else float("nan")


def judge(
    labels: np.ndarray,
    challenger_outputs: np.ndarray,
    champion_outputs: np.ndarray,
    class_names: tuple[str, ...],
    margin: float = MARGIN,
    alpha: float = ALPHA,
    max_recall_drop: float = MAX_RECALL_DROP,
) -> GateDecision:
    """Decide from both models' outputs on the same photos (``labels`` their classes)."""
    challenger = predicted_classes(class_probabilities(challenger_outputs)) == labels
    champion = predicted_classes(class_probabilities(champion_outputs)) == labels
    gain = (challenger.mean() - champion.mean()) * 100
    p_value = mcnemar_p_value(challenger, champion)
    recall_change = {
        name: _recall(challenger, labels, index) - _recall(champion, labels, index)
        for index, name in enumerate(class_names)
    }
    worst = min(recall_change, key=lambda name: recall_change[name])
    evidence = f"{gain:+.2f} points on {len(labels)} validation photos, McNemar p = {p_value:.4f}"
    if gain <= margin or p_value >= alpha:
        reason = f"not shown better: {evidence} (needs more than {margin:g} points, p < {alpha})"
    elif -recall_change[worst] > max_recall_drop:
        reason = (f"class {worst} loses {-recall_change[worst]:.2f} points of recall "
                  f"(allowed {max_recall_drop:g}); {evidence}")  # fmt: skip
    else:
        reason = f"better: {evidence}; no class loses more than {max_recall_drop:g} points"
    return GateDecision(
        promote=reason.startswith("better"),
        reason=reason,
        challenger_accuracy=float(challenger.mean()),
        champion_accuracy=float(champion.mean()),
        p_value=p_value,
        recall_change=recall_change,
    )


def validation_inputs(cache_dir: str, sizes: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """This run's validation photos as each model needs them, one array per size in
    ``sizes``, and their labels. A model trained at another image size than this run gets
    the same photos decoded again from the source at its size (a cache of its own, built
    once), as serving would decode them, never this run's pixels resized; only photos
    present at every size are kept, in this run's order."""
    from pathlib import Path

    from gap_models.data import load_ids, load_split, preprocess, read_manifest

    split = records.SELECTION_SPLIT
    images, labels = load_split(cache_dir, split)
    ids = load_ids(cache_dir, split)
    manifest = read_manifest(Path(cache_dir))
    by_size: dict[int, tuple[np.ndarray, np.ndarray]] = {int(images.shape[1]): (images, ids)}
    for size in set(sizes) - set(by_size):
        other = preprocess(manifest["source"], size, manifest["split"], manifest["max_images"])
        by_size[size] = (load_split(other.cache_dir, split)[0], load_ids(other.cache_dir, split))
    common = set(ids.tolist())
    for _, other_ids in by_size.values():
        common &= set(other_ids.tolist())
    keep = np.array([value in common for value in ids.tolist()], dtype=bool)
    arrays = []
    for size in sizes:
        size_images, size_ids = by_size[size]
        position = {value: index for index, value in enumerate(size_ids.tolist())}
        arrays.append(size_images[[position[value] for value in ids[keep].tolist()]])
    return arrays, labels[keep]
