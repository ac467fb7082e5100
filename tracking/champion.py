"""What the registry and MLflow know of the current champion, for the retraining plan, and
where a plan is recorded (the parent run's tags, metrics and artifacts).

The champion's version names its child run; that run's parent (the flow run that trained
it) carries the data and code digests and the data manifest of its photos
(``data_manifest.tsv``); its sibling child runs carry each cell's configuration digest.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gap_models import planning, records
from gap_models.config import RunConfig
from gap_models.data import class_names, default_cache_dir
from gap_models.data.changes import diff_manifests
from gap_models.data.manifest import Manifest, build_manifest, decode_photos
from gap_models.data.selection import TRAIN_SPLIT
from gap_models.drift import MIN_PHOTOS, SAMPLE_SIZE, measure_drift, sample
from gap_models.identity import config_digest, planned_settings
from gap_models.planning import Champion, Plan, render_what_changed
from gap_models.planning import plan as decide
from gap_models.provenance import code_version
from tracking.logged_model import load_logged_model
from tracking.registry import (
    CHALLENGER,
    CHAMPION,
    champion_validation_accuracy,
    current_champion,
    registered_model_name,
)
from tracking.runs import log_metrics


def _manifest_of(client: MlflowClient, run_id: str) -> Manifest | None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, records.MANIFEST_ARTIFACT, folder)
        except (MlflowException, OSError):  # a champion from before plans were recorded
            return None
        return Manifest.from_tsv(Path(path).read_text())


def model_run_manifest(client: MlflowClient, model_uri: str) -> Manifest | None:
    """The data manifest of the flow run that trained a logged model (its parent run's
    ``data_manifest.tsv``): the photos it had, in every split. None when not recorded."""
    import mlflow

    run_id = mlflow.models.get_model_info(model_uri).run_id
    parent = client.get_run(run_id).data.tags.get(records.PARENT_RUN_TAG) if run_id else None
    return _manifest_of(client, parent) if parent else None


def _cells_of(client: MlflowClient, parent) -> dict[tuple[str, int], tuple[str, str]]:
    """(head, seed) -> (configuration digest, run id) of the parent's finished cells: those
    it trained and those it reused from an earlier run (a partial run's comparison is of
    both, so the next identical run has nothing left to train)."""
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{records.PARENT_RUN_TAG}` = '{parent.info.run_id}' "
        "and attributes.status = 'FINISHED'",
    )
    reused_ids = parent.data.tags.get(records.REUSED_RUNS_TAG, "")
    for run_id in filter(None, reused_ids.split(",")):
        try:
            children.append(client.get_run(run_id))
        except MlflowException:  # deleted since: that cell trains again
            continue
    cells = {}
    for child in reversed(children):  # the parent's own cells last: they win a tie
        tags = child.data.tags
        finished = child.info.status == "FINISHED"
        if (
            finished
            and records.CONFIG_DIGEST_TAG in tags
            and records.SELECTION_METRIC in child.data.metrics
        ):
            cell = (tags[records.HEAD], int(tags[records.SEED]))
            cells[cell] = (tags[records.CONFIG_DIGEST_TAG], child.info.run_id)
    return cells


def read_champion(client: MlflowClient, name: str, alias: str = CHAMPION) -> Champion | None:
    """The champion (or the version under another alias) of registered model ``name`` as the
    plan needs it (None: none yet)."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    trained_at = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
    try:  # the run that compared it (it may have reused the model), else the one that trained it
        compared_in = version.tags.get(records.COMPARED_IN_RUN_TAG)
        if not compared_in:
            compared_in = client.get_run(version.run_id).data.tags[records.PARENT_RUN_TAG]
        parent = client.get_run(compared_in)
    except (MlflowException, KeyError):
        return Champion(str(version.version), trained_at, None, None)
    return Champion(
        version=str(version.version),
        trained_at=trained_at,
        manifest=_manifest_of(client, parent.info.run_id),
        code_digest=parent.data.tags.get(records.CODE_DIGEST_TAG),
        cells=_cells_of(client, parent),
        settings=planned_settings(parent.data.params),
    )


def record_decision(client: MlflowClient, run_id: str, plan: Plan) -> str:
    """The plan's decision tags and ``what_changed.md`` (again, when it was escalated)."""
    markdown = render_what_changed(plan)
    for key, value in plan.tags().items():
        client.set_tag(run_id, key, value)
    client.log_text(run_id, markdown, records.WHAT_CHANGED_ARTIFACT)
    return markdown


def rescore(
    client: MlflowClient, name: str, cache_dir: str, run_id: str
) -> tuple[float, float | None]:
    """The champion's validation accuracy on this run's photos (logged on the run) and as
    recorded on its version when it was promoted (None: not recorded)."""
    version = current_champion(client, name)
    now = champion_validation_accuracy(client, name, cache_dir)
    log_metrics(client, run_id, {records.CHAMPION_VAL_ACCURACY: now})
    recorded = version.tags.get(records.SELECTION_METRIC) if version else None
    return now, float(recorded) if recorded else None


def record_plan(client: MlflowClient, run_id: str, plan: Plan, manifest: Manifest) -> str:
    """The plan on a parent run: tags, change and drift metrics, ``what_changed.md`` and the
    data manifest (the next plan's reference when this run's model becomes champion).
    Returns the markdown."""
    markdown = record_decision(client, run_id, plan)
    log_metrics(client, run_id, plan.metrics())
    client.log_text(run_id, manifest.to_tsv(), records.MANIFEST_ARTIFACT)
    if plan.reused:
        reused = ",".join(plan.reused.values())
        client.set_tag(run_id, records.REUSED_RUNS_TAG, reused)
    return markdown


def _drift(source: str, manifest: Manifest, champion: Champion, model_uri: str, say):
    """The drift test of the new photos (added or modified since the champion) against a
    sample of the champion's training photos, on the champion's features; (None, {}) with a
    note when there are too few new photos to test."""
    changes = diff_manifests(champion.manifest, manifest)
    new = [*changes.added, *changes.modified]
    if len(new) < MIN_PHOTOS:
        return None, {}
    trained_on = {p.sha256 for p in champion.manifest.photos if p.split == TRAIN_SPLIT}
    reference = [p for p in manifest.photos if p.sha256 in trained_on]
    model = load_logged_model(model_uri)
    size = int(model.input_shape[1])
    say(f"drift: {min(len(new), SAMPLE_SIZE)} new photos against "
        f"{min(len(reference), SAMPLE_SIZE)} of the champion's training photos")  # fmt: skip
    reference_images = decode_photos(source, sample(reference), size)
    new_images = decode_photos(source, sample(new), size)
    if min(len(reference_images), len(new_images)) < 2:
        return None, {}
    return measure_drift(model, reference_images, new_images)


def plan_against_champion(
    config: RunConfig, source: str, mlflow_client: MlflowClient, say=lambda message: None
) -> tuple[Plan, Manifest]:
    """The retraining plan of ``config`` on the local ``source`` against the champion of the
    registered model it would promote into."""
    manifest = build_manifest(source, config.split, default_cache_dir())
    say(f"data: {len(manifest.photos)} photos, digest {manifest.digest}")
    name = registered_model_name(config, class_names(source))
    champion = read_champion(mlflow_client, name)
    drift, statistics = None, {}
    if config.promote and champion is not None and champion.manifest is not None:
        uri = f"models:/{name}@{CHAMPION}"
        drift, statistics = _drift(source, manifest, champion, uri, say)
    digests = {
        (head, seed): config_digest(config, head, seed)
        for seed in config.seeds
        for head in config.heads
    }
    plan = decide(
        manifest, code_version(), digests, champion, datetime.now(UTC),
        max_age_days=config.max_age_days, force=config.force, drift=drift,
        promote=config.promote, selected_subset=config.max_images is not None,
    )  # fmt: skip
    plan.drift_statistics = statistics
    if champion is not None and champion.settings:
        now = planned_settings(config.model_dump())
        plan.settings_changed = {
            name: (champion.settings[name], value)
            for name, value in now.items()
            if name in champion.settings and champion.settings[name] != value
        }
    if plan.decision != planning.SKIP and config.promote and not config.force:
        _unless_just_tried(plan, mlflow_client, name, manifest, digests, config.max_age_days)
    return plan, manifest


def _unless_just_tried(plan: Plan, mlflow_client, name: str, manifest, digests, max_age_days):
    """Skip after all when the challenger (a candidate that was not promoted) was trained on
    exactly these photos, code and settings: training again would only reproduce it."""
    challenger = read_champion(mlflow_client, name, CHALLENGER)
    if challenger is None or plan.champion is None or challenger.version == plan.champion.version:
        return
    again = decide(manifest, plan.code_digest, digests, challenger, datetime.now(UTC),
                   max_age_days=max_age_days)  # fmt: skip
    if again.decision != planning.SKIP:
        return
    plan.notes.append(
        f"against the champion (version {plan.champion.version}): {', '.join(plan.reasons)}; "
        f"but challenger version {challenger.version} was trained on these photos, code and "
        "settings and not promoted: training again would reproduce it"
    )
    plan.decision, plan.to_train, plan.reused = planning.SKIP, [], {}
    plan.reasons = [planning.REASON_UNCHANGED_SINCE_CHALLENGER]
