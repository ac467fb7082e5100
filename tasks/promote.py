"""Prefect task: champion / challenger promotion in the MLflow model registry.

The best head (mean final validation accuracy over seeds) contributes its best seed (by
the same measure) as a new version of the run's registered model (``cats-vs-dogs`` for Cats
vs Dogs data, else ``model_name`` or the source's name) with alias ``challenger``. It
becomes ``champion`` when there is none yet, or when it beats the current champion with
both scored on the *same* current validation split. The test split decides nothing: its
accuracy is recorded beside the validation accuracy on the version, as a report. Version
and alias changes are undone together if any step fails.

Flow runs may finish at the same moment (a schedule and a manual run, two workers): the
read-compare-move of the champion alias runs under a Prefect global concurrency limit of
one slot, so the champion always ends on the better model, never on whoever wrote last.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from gap_models.config import CATS_VS_DOGS_MODEL
from gap_models.data import cached_class_names
from gap_models.evaluation import SELECTION_METRIC, score_on_validation
from tasks import run_logger, tracking
from tasks.train import TrainedRun

CHAMPION, CHALLENGER = "champion", "challenger"
PROMOTION_LIMIT = "compare-heads-promotion"
"""Prefect global concurrency limit (one slot) that serialises champion decisions."""
PROMOTION_WAIT_SECONDS = 1800


def ensure_promotion_limit() -> None:
    """Create the one-slot limit on the Prefect server if it is not there yet (idempotent,
    safe when two runs race to create it)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(PROMOTION_LIMIT)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=PROMOTION_LIMIT, limit=1)
            )


@dataclass(frozen=True)
class Promotion:
    """What the registry step decided, and on which scores."""

    decision: str  # "promoted" (no champion yet or challenger better) or "kept"
    version: str
    challenger_val_accuracy: float  # decides, with the champion's on the same split
    champion_val_accuracy: float | None
    challenger_test_accuracy: float  # reports only
    champion_version: str | None
    head: str
    run_id: str
    name: str = CATS_VS_DOGS_MODEL


def _current_champion(client, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _register(client, name: str, candidate: TrainedRun):
    with contextlib.suppress(MlflowException):  # exists already
        client.create_registered_model(name)
    # MLflow 3 logged models live at models:/<model id>; a tracking server insists that the
    # version names that id as well as the source.
    model_id = candidate.model_uri.removeprefix("models:/")
    return client.create_model_version(
        name, source=candidate.model_uri, run_id=candidate.run_id, model_id=model_id
    )


@task(name="promote", cache_policy=NONE)
def promote_best(
    trained_runs: list[TrainedRun],
    test_scores: list[dict[str, float]],
    best_head: str,
    cache_dir: str,
    parent_run_id: str,
    name: str = CATS_VS_DOGS_MODEL,
) -> Promotion:
    """Register the best head's best seed as challenger in ``name``; promote it if it beats
    the champion."""
    logger = run_logger()
    client = tracking.client()
    scored = [(s, t) for t, s in zip(trained_runs, test_scores, strict=True) if t.head == best_head]
    scores, candidate = max(scored, key=lambda pair: pair[0][SELECTION_METRIC])
    ensure_promotion_limit()
    logger.info("Waiting for the promotion slot (%s)", PROMOTION_LIMIT)
    with concurrency(
        PROMOTION_LIMIT, occupy=1, strict=True, timeout_seconds=PROMOTION_WAIT_SECONDS
    ):
        promotion = _decide(client, name, candidate, scores, cache_dir)
    _record(client, parent_run_id, promotion)
    logger.info("Promotion: %s", promotion)
    return promotion


def _decide(client, name: str, candidate: TrainedRun, scores: dict[str, float], cache_dir: str):
    """Register the candidate, score the current champion on our validation split, move
    the aliases; the version records both the validation and the test accuracy."""
    challenger_accuracy = scores[SELECTION_METRIC]
    champion = _current_champion(client, name)
    champion_accuracy = None
    if champion is not None:
        champion_uri = f"models:/{name}@{CHAMPION}"
        classes = cached_class_names(cache_dir)
        if tracking.logged_class_names(champion_uri) != classes:
            raise ValueError(
                f"registered model {name!r} holds a champion for classes "
                f"{list(tracking.logged_class_names(champion_uri))}, not this data's "
                f"{list(classes)}: pass model_name to register these models elsewhere"
            )
        champion_model = tracking.load_logged_model(champion_uri)
        champion_accuracy = score_on_validation(champion_model, cache_dir)[SELECTION_METRIC]
    promote = champion_accuracy is None or challenger_accuracy > champion_accuracy

    version = _register(client, name, candidate)
    try:
        for key, value in (
            (SELECTION_METRIC, challenger_accuracy),
            ("test_accuracy", scores["test_accuracy"]),
        ):
            client.set_model_version_tag(name, version.version, key, f"{value:.6f}")
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    except BaseException:
        _roll_back(client, name, version.version, champion)
        raise

    return Promotion(
        decision="promoted" if promote else "kept",
        version=str(version.version),
        challenger_val_accuracy=challenger_accuracy,
        champion_val_accuracy=champion_accuracy,
        challenger_test_accuracy=scores["test_accuracy"],
        champion_version=str(champion.version) if champion is not None else None,
        head=candidate.head,
        run_id=candidate.run_id,
        name=name,
    )


def _roll_back(client, name: str, version: str, champion) -> None:
    """Undo a half-done registration: the new version goes, the old champion stays. What
    could not be undone is logged (the original error is re-raised by the caller)."""
    steps = []
    if champion is not None:
        steps.append(
            (
                f"point {CHAMPION} back at version {champion.version}",
                lambda: client.set_registered_model_alias(name, CHAMPION, champion.version),
            )
        )
    steps.append((f"delete version {version}", lambda: client.delete_model_version(name, version)))
    for description, step in steps:
        try:
            step()
        except MlflowException as error:
            run_logger().error(
                "Registry roll-back of %s could not %s: %s; fix it by hand in the MLflow UI",
                name,
                description,
                error,
            )


def _record(client, parent_run_id: str, promotion: Promotion) -> None:
    metrics = {
        "challenger_val_accuracy": promotion.challenger_val_accuracy,
        "challenger_test_accuracy": promotion.challenger_test_accuracy,
    }
    if promotion.champion_val_accuracy is not None:
        metrics["champion_val_accuracy"] = promotion.champion_val_accuracy
    tracking.log_metrics(client, parent_run_id, metrics)
    client.set_tag(parent_run_id, "registered_model", promotion.name)
    client.set_tag(parent_run_id, "promotion_decision", promotion.decision)
    client.set_tag(parent_run_id, "registered_version", promotion.version)
    before = (
        f"version {promotion.champion_version} scored {promotion.champion_val_accuracy:.4f}"
        if promotion.champion_version
        else "there was no champion"
    )
    create_markdown_artifact(
        key="compare-heads-promotion",
        markdown=(
            f"# Model registry: `{promotion.name}`\n\n"
            f"Challenger: version {promotion.version} ({promotion.head}, run "
            f"`{promotion.run_id}`), validation accuracy {promotion.challenger_val_accuracy:.4f} "
            f"(test accuracy {promotion.challenger_test_accuracy:.4f}, reported only). "
            f"Champion before: {before} on the same validation split.\n\n"
            f"Decision: **{promotion.decision}**."
        ),
        description="Champion / challenger decision",
    )
