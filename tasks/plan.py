"""Prefect task: the retraining plan, before any preprocessing or training (what changed
since the champion, and what this run will train because of it)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from gap_models import planning
from gap_models.config import RunConfig
from gap_models.planning import DECAY_MARGIN, Plan
from tasks import run_logger
from tracking import champion
from tracking.runs import client


@task(name="plan", cache_policy=NONE)
def plan_retraining(config: RunConfig, source: str, parent_run_id: str) -> Plan:
    """Fingerprint the photos, compare them, the code and the settings with the champion's,
    measure drift on the new photos; record the plan on the parent run and as a Prefect
    artifact (``what_changed.md``)."""
    logger = run_logger()
    mlflow_client = client()
    plan, manifest = champion.plan_against_champion(config, source, mlflow_client, logger.info)
    markdown = champion.record_plan(mlflow_client, parent_run_id, plan, manifest)
    create_markdown_artifact(
        key="compare-heads-what-changed", markdown=markdown, description="The retraining plan"
    )
    logger.info(
        "Plan: %s (%s); to train: %s",
        plan.decision,
        ", ".join(plan.reasons),
        ", ".join(f"{head} seed {seed}" for head, seed in plan.to_train) or "nothing",
    )
    return plan


@task(name="rescore-champion", cache_policy=NONE)
def rescore_champion(plan: Plan, name: str, cache_dir: str, parent_run_id: str) -> Plan:
    """Score the champion on the current validation photos (only they changed); a drop of
    more than ``DECAY_MARGIN`` below its score at promotion turns the plan into a full
    retraining (``champion_decayed``). Returns the plan, escalated or not."""
    mlflow_client = client()
    now, then = champion.rescore(mlflow_client, name, cache_dir, parent_run_id)
    if then is not None and then - now > DECAY_MARGIN:
        plan.escalate(
            planning.REASON_CHAMPION_DECAYED,
            f"the champion scores {now:.2%} on the current validation photos, "
            f"{then:.2%} when promoted (allowed drop {DECAY_MARGIN:.0%})",
        )
        champion.record_decision(mlflow_client, parent_run_id, plan)
    run_logger().info("Champion on the current validation photos: %.4f (at promotion %s)",
                      now, "unknown" if then is None else f"{then:.4f}")  # fmt: skip
    return plan
