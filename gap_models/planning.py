"""The retraining plan: what a run would do against the current champion, and why.

A ladder of decisions (``gap_models.records.RETRAIN_DECISIONS``), the cheapest that the
evidence allows:

- ``skip``: the photos (content and classes), the training code and every planned cell's
  configuration equal the champion's: training again would reproduce the same models.
- ``evaluate``: only validation or test photos changed: the models would be the same, so
  only the champion is scored again on the current photos (``champion_decayed`` escalates).
- ``partial``: data and code equal, some planned cells new (another head or seed): only
  those train; the others are reused from the champion's run.
- ``full``: everything trains: the training photos, the code or all cells changed, the
  features drifted, the champion is older than the deployment allows, there is no champion
  to compare with, or the run was forced.

Pure: the tracking package gathers what is known of the champion; this module decides and
says why, as reason codes (``REASON_*``) and a ``what_changed.md`` a person reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gap_models import records
from gap_models.data.changes import KINDS, DataChanges, diff_manifests
from gap_models.data.manifest import Manifest
from gap_models.drift import DRIFT_ALPHA, DriftTest

# --- the plan's vocabulary: decisions (the retrain_decision tag) and reason codes
# (the retrain_reasons tag, comma-separated) -----------------------------------------------
SKIP, EVALUATE, PARTIAL, FULL = "skip", "evaluate", "partial", "full"
RETRAIN_DECISIONS: tuple[str, ...] = (SKIP, EVALUATE, PARTIAL, FULL)
REASON_UNCHANGED = "unchanged"
REASON_FORCED = "forced"
REASON_NO_CHAMPION = "no_champion"
REASON_NOT_PROMOTING = "not_promoting"  # promote=false: a comparison, not a retraining
REASON_CHAMPION_UNRECORDED = "champion_unrecorded"  # promoted before plans were recorded
REASON_DATA_CHANGED = "data_changed"
REASON_PHOTOS = {  # the same words as the change metrics: photos_added, ...
    kind: records.PHOTOS_METRIC_PREFIX + kind for kind in ("added", "removed", "modified")
} | {"relabelled": "relabelled"}
REASON_CODE_CHANGED = "code_changed"
REASON_CONFIG_CHANGED = "config_changed"
REASON_DRIFT = "drift"
REASON_CHAMPION_DECAYED = "champion_decayed"
REASON_STALE = "stale"
REASON_UNCHANGED_SINCE_CHALLENGER = "unchanged_since_challenger"  # it was not promoted

EXIT_CODES = {SKIP: 0, EVALUATE: 10, PARTIAL: 11, FULL: 12}
"""``compare-heads plan``'s exit status per decision (1 and 2 stay errors and usage)."""
FULL_REASONS = (
    REASON_FORCED,
    REASON_NOT_PROMOTING,
    REASON_NO_CHAMPION,
    REASON_CHAMPION_UNRECORDED,
    REASON_CODE_CHANGED,
    REASON_DRIFT,
    REASON_STALE,
    REASON_CHAMPION_DECAYED,
)
DECAY_MARGIN = 0.02
"""A champion whose validation accuracy on the current photos is more than this below its
accuracy when promoted has decayed: retrain."""
LISTED_FILES = 200
"""Files listed per kind of change in what_changed.md (all are counted)."""


@dataclass(frozen=True)
class Champion:
    """What the registry and the champion's flow run record: its version, the digests and
    manifest of the data it was trained on, its code digest, its cells' configuration
    digests (head and seed to digest and run id), when it was trained, and the settings
    its flow run was given (``gap_models.identity.PLANNED_FIELDS``)."""

    version: str
    trained_at: datetime
    manifest: Manifest | None
    code_digest: str | None
    cells: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # its flow run's planned settings


@dataclass
class Plan:
    decision: str
    reasons: list[str]
    data_digest: str
    code_digest: str
    cells: list[tuple[str, int]]  # every planned (head, seed)
    to_train: list[tuple[str, int]]
    reused: dict[tuple[str, int], str]  # (head, seed) -> the champion run's child run id
    champion: Champion | None = None
    changes: DataChanges | None = None
    drift: DriftTest | None = None
    drift_statistics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    settings_changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # champion, now

    @property
    def champion_data_digest(self) -> str:
        manifest = self.champion.manifest if self.champion else None
        return manifest.digest if manifest else ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]

    def escalate(self, reason: str, note: str) -> None:
        """Turn the plan into a full retraining for ``reason`` (found after planning)."""
        self.decision, self.to_train, self.reused = FULL, list(self.cells), {}
        self.reasons = [r for r in self.reasons if r != REASON_UNCHANGED] + [reason]
        self.notes.append(note)

    def tags(self) -> dict[str, str]:
        return {
            records.RETRAIN_DECISION_TAG: self.decision,
            records.RETRAIN_REASONS_TAG: ",".join(self.reasons),
            records.DATA_DIGEST_TAG: self.data_digest,
            records.CHAMPION_DATA_DIGEST_TAG: self.champion_data_digest,
            records.CODE_DIGEST_TAG: self.code_digest,
        }

    def metrics(self) -> dict[str, float]:
        counts = self.changes.counts() if self.changes else {}
        found = {records.PHOTOS_METRIC_PREFIX + kind: float(n) for kind, n in counts.items()}
        if self.drift is not None:
            found[records.DRIFT_MMD] = self.drift.mmd
            found[records.DRIFT_P_VALUE] = self.drift.p_value
        for name, value in self.drift_statistics.items():
            found[records.DRIFT_STATISTIC_PREFIX + name] = value
        return found


def config_changed_cells(
    cells: list[tuple[str, int]], digests: dict[tuple[str, int], str], champion: Champion
) -> list[tuple[str, int]]:
    """The planned cells that the champion's run did not train with today's configuration."""
    return [cell for cell in cells if champion.cells.get(cell, ("", ""))[0] != digests[cell]]


def plan(
    manifest: Manifest,
    code_digest: str,
    cell_digests: dict[tuple[str, int], str],
    champion: Champion | None,
    now: datetime,
    max_age_days: float | None = None,
    force: bool = False,
    drift: DriftTest | None = None,
    promote: bool = True,
    selected_subset: bool = False,
) -> Plan:
    """Decide what to train (see the module's ladder). ``cell_digests`` maps every planned
    (head, seed) to its configuration digest (``gap_models.identity.config_digest``). A run
    that promotes nothing (``promote=False``) is a comparison: it trains everything, and the
    plan only says what changed since the champion. ``selected_subset``: the run uses a
    per-class quota of the photos (``max_images``), shared by the splits, so any change of
    photos can move training photos in or out: it counts as a change of the training
    photos."""
    cells = list(cell_digests)
    result = Plan(FULL, [], manifest.digest, code_digest, cells, list(cells), {})
    result.champion, result.drift = champion, drift
    if force:
        result.reasons.append(REASON_FORCED)
    if not promote:
        result.reasons.append(REASON_NOT_PROMOTING)
    if champion is None:
        result.reasons.append(REASON_NO_CHAMPION)
        return result
    if champion.manifest is None or champion.code_digest is None:
        result.reasons.append(REASON_CHAMPION_UNRECORDED)
        return result
    result.changes = changes = diff_manifests(champion.manifest, manifest)
    if changes.any:
        result.reasons.append(REASON_DATA_CHANGED)
        result.reasons += [REASON_PHOTOS[k] for k in KINDS if changes.photos(k)]
    if champion.code_digest != code_digest:
        result.reasons.append(REASON_CODE_CHANGED)
    if drift is not None and drift.drifted:
        result.reasons.append(REASON_DRIFT)
    age_days = (now - champion.trained_at).total_seconds() / 86400
    if max_age_days is not None and age_days > max_age_days:
        result.reasons.append(REASON_STALE)
        result.notes.append(f"the champion is {age_days:.1f} days old (allowed {max_age_days:g})")
    changed = config_changed_cells(cells, cell_digests, champion)
    if changed:
        result.reasons.append(REASON_CONFIG_CHANGED)
    if selected_subset and changes.any and not changes.train_changed:
        result.notes.append(
            "max_images selects a quota of each class across the splits: a change of "
            "validation or test photos can change which training photos are used, so "
            "everything trains"
        )
    if (
        set(result.reasons) & set(FULL_REASONS)
        or changes.train_changed
        or (selected_subset and changes.any)
        or len(changed) == len(cells)
    ):
        return result
    if changed:
        if changes.any:  # new validation or test photos: no finished cell keeps its key
            return result
        result.decision, result.to_train = PARTIAL, changed
        result.reused = {c: champion.cells[c][1] for c in cells if c not in changed}
        return result
    result.decision = EVALUATE if changes.any else SKIP
    result.to_train = []
    result.reasons = result.reasons or [REASON_UNCHANGED]
    return result


def _change_section(changes: DataChanges) -> list[str]:
    lines = ["## Data", ""]
    if not changes.any:
        return [*lines, "The same photos under the same classes as the champion's.", ""]
    lines += ["| change | photos | by class and split |", "|---|---:|---|"]
    for kind in KINDS:
        spread = changes.by_class_and_split(kind)
        shown = ", ".join(f"{label}/{split} {n}" for (label, split), n in spread.items())
        lines.append(f"| {kind} | {len(changes.photos(kind))} | {shown or '-'} |")
    for kind in KINDS:
        photos = changes.photos(kind)
        if not photos:
            continue
        lines += ["", f"### {kind.capitalize()} ({len(photos)})", ""]
        before = dict((p.file, label) for p, label in changes.relabelled)
        for photo in photos[:LISTED_FILES]:
            was = f", was {before[photo.file]}" if kind == "relabelled" else ""
            lines.append(f"- `{photo.file}` ({photo.label}{was}, {photo.split})")
        if len(photos) > LISTED_FILES:
            lines.append(f"- ... and {len(photos) - LISTED_FILES} more")
    return [*lines, ""]


def render_what_changed(result: Plan) -> str:
    """The plan for a person: decision, reasons, and what changed against the champion."""
    champion = result.champion
    against = f"champion version {champion.version}" if champion else "no champion"
    lines = [
        f"# What changed: {result.decision}",
        "",
        f"Against {against}. Reasons: {', '.join(f'`{r}`' for r in result.reasons)}.",
        "",
        *[f"- {note}" for note in result.notes],
        "",
        "| | now | champion |",
        "|---|---|---|",
        f"| data digest | `{result.data_digest}` | `{result.champion_data_digest or '-'}` |",
        f"| code digest | `{result.code_digest}` | `{(champion and champion.code_digest) or '-'}` |",
        "",
        "## Cells",
        "",
        f"To train: {', '.join(f'{h} seed {s}' for h, s in result.to_train) or 'none'}.",
    ]
    if result.reused:
        lines.append(
            "Reused from the champion's run: "
            + ", ".join(f"{h} seed {s} (run {run})" for (h, s), run in result.reused.items())
        )
    lines.append("")
    if result.settings_changed:
        lines += ["## Configuration", "", "| setting | champion | now |", "|---|---|---|"]
        lines += [f"| {k} | {old} | {new} |" for k, (old, new) in result.settings_changed.items()]
        lines.append("")
    if result.changes is not None:
        lines += _change_section(result.changes)
    if result.drift is not None:
        verdict = "drift" if result.drift.drifted else "no drift shown"
        lines += [
            "## Drift (the champion's penultimate features)",
            "",
            f"MMD² {result.drift.mmd:.4f}, permutation p = {result.drift.p_value:.4f} "
            f"({verdict} at {DRIFT_ALPHA}), {result.drift.new_photos} new photos against "
            f"{result.drift.reference_photos} of the champion's training photos.",
            "",
        ]
        if result.drift_statistics:
            lines += ["| image statistic | new minus reference |", "|---|---:|"]
            lines += [f"| {k} | {v:+.4f} |" for k, v in result.drift_statistics.items()]
            lines.append("")
    return "\n".join(lines)
