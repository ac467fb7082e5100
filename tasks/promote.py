"""Prefect task: champion / challenger promotion (tracking.registry decides and records).

Flow runs may finish at the same moment (a schedule and a manual run, two workers): the
read-compare-move of the champion alias runs under a Prefect global concurrency limit of
one slot, so the champion always ends on the better model, never on whoever wrote last.
"""

from __future__ import annotations

import contextlib

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from gap_models.records import RunResult
from gap_models.results import best_head, best_seed, summarize
from tasks import run_logger
from tracking import registry, runs
from tracking.cells import TrainedRun
from tracking.logged_model import ServingCheck
from tracking.registry import Promotion
from tracking.runs import client

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


def start_serving_check(trained_runs: list[TrainedRun]) -> ServingCheck:
    """The fresh-process load check of the model promotion will weigh (the best head's best
    seed, both on validation, as ``promote_best`` chooses), started now: it loads while the
    comparison is drawn, instead of after it."""
    mlflow_client = client()
    results = [runs.fetch_result(mlflow_client, trained.run_id) for trained in trained_runs]
    chosen = best_seed(results, best_head(summarize(results)))
    logged_now = any(t.run_id == chosen.run_id and not t.reused for t in trained_runs)
    return ServingCheck(chosen.model_uri, by_kind=logged_now)


@task(name="promote", cache_policy=NONE)
def promote_best(
    results: list[RunResult],
    head: str,
    cache_dir: str,
    parent_run_id: str,
    name: str,
    reasons: list[str] | None = None,
    serving: ServingCheck | None = None,
) -> Promotion:
    """Register the best head's best seed (both chosen on validation) as challenger in
    ``name``, tagged with why it was trained; promote it if it beats the champion on this
    run's validation split (``serving``: its fresh-process check, if already started)."""
    logger = run_logger()
    mlflow_client = client()
    candidate = best_seed(results, head)
    ensure_promotion_limit()
    logger.info("Waiting for the promotion slot (%s)", PROMOTION_LIMIT)
    with concurrency(
        PROMOTION_LIMIT, occupy=1, strict=True, timeout_seconds=PROMOTION_WAIT_SECONDS
    ):
        promotion = registry.decide(
            mlflow_client, name, candidate, cache_dir, tuple(reasons or ()), serving,
            compared_in=parent_run_id,
        )  # fmt: skip
    registry.record(mlflow_client, parent_run_id, promotion)
    create_markdown_artifact(
        key="compare-heads-promotion",
        markdown=registry.promotion_markdown(promotion),
        description="Champion / challenger decision",
    )
    logger.info("Promotion: %s", promotion)
    return promotion
