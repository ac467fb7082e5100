"""Prefect task: champion / challenger promotion in the MLflow model registry.

The best head (mean test accuracy over seeds) contributes its best seed's model as a new
version of the run's registered model (``cats-vs-dogs`` for Cats vs Dogs data, else
``model_name`` or the source's name) with alias ``challenger``. It becomes ``champion`` when there
is none yet, or when it beats the current champion with both scored on the *same* current
test split. Version and alias changes are undone together if any step fails.

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
from gap_models.data import cached_class_names, load_split
from gap_models.evaluation import evaluate_model
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
    challenger_test_accuracy: float
    champion_test_accuracy: float | None
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
    scored = [(s["test_accuracy"], t) for t, s in zip(trained_runs, test_scores, strict=True)]
    challenger_accuracy, candidate = max(
        ((acc, t) for acc, t in scored if t.head == best_head), key=lambda pair: pair[0]
    )
    ensure_promotion_limit()
    logger.info("Waiting for the promotion slot (%s)", PROMOTION_LIMIT)
    with concurrency(
        PROMOTION_LIMIT, occupy=1, strict=True, timeout_seconds=PROMOTION_WAIT_SECONDS
    ):
        promotion = _decide(client, name, candidate, challenger_accuracy, cache_dir)
    _record(client, parent_run_id, promotion)
    logger.info("Promotion: %s", promotion)
    return promotion


def _decide(client, name: str, candidate: TrainedRun, challenger_accuracy: float, cache_dir: str):
    """Register the candidate, score the current champion on our test split, move aliases."""
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
        images, labels = load_split(cache_dir, "test")
        champion_model = tracking.load_logged_model(champion_uri)
        champion_accuracy = evaluate_model(champion_model, images, labels)["test_accuracy"]
    promote = champion_accuracy is None or challenger_accuracy > champion_accuracy

    version = _register(client, name, candidate)
    try:
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    except BaseException:
        _roll_back(client, name, version.version, champion)
        raise

    promotion = Promotion(
        decision="promoted" if promote else "kept",
        version=str(version.version),
        challenger_test_accuracy=challenger_accuracy,
        champion_test_accuracy=champion_accuracy,
        champion_version=str(champion.version) if champion is not None else None,
        head=candidate.head,
        run_id=candidate.run_id,
        name=name,
    )
    return promotion


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
    metrics = {"challenger_test_accuracy": promotion.challenger_test_accuracy}
    if promotion.champion_test_accuracy is not None:
        metrics["champion_test_accuracy"] = promotion.champion_test_accuracy
    tracking.log_metrics(client, parent_run_id, metrics)
    client.set_tag(parent_run_id, "registered_model", promotion.name)
    client.set_tag(parent_run_id, "promotion_decision", promotion.decision)
    client.set_tag(parent_run_id, "registered_version", promotion.version)
    before = (
        f"version {promotion.champion_version} scored {promotion.champion_test_accuracy:.4f}"
        if promotion.champion_version
        else "there was no champion"
    )
    create_markdown_artifact(
        key="compare-heads-promotion",
        markdown=(
            f"# Model registry: `{promotion.name}`\n\n"
            f"Challenger: version {promotion.version} ({promotion.head}, run "
            f"`{promotion.run_id}`), test accuracy {promotion.challenger_test_accuracy:.4f}. "
            f"Champion before: {before} on the same test split.\n\n"
            f"Decision: **{promotion.decision}**."
        ),
        description="Champion / challenger decision",
    )
