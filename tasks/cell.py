"""Prefect tasks of one cell (one (head, seed) model): train it, score it, or both as the
unit a task runner places (in the flow's process, or on any Dask worker)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from prefect import task
from prefect.cache_policies import NONE

from gap_models import records
from gap_models.data import local_cache
from tasks import run_logger
from tracking.cells import CellJob, TrainedRun, check_not_stopped, evaluate_cell, train_cell


@dataclass(frozen=True)
class CellOutcome:
    """A trained model by reference, and its scores: small, so a lost worker holds nothing
    that is expensive to recompute."""

    trained: TrainedRun
    scores: dict[str, float]


@task(name="train", task_run_name="train-{job.head}-seed{job.seed}", cache_policy=NONE)
def train_head(job: CellJob) -> TrainedRun:
    """Train a fresh model for the job's head from its seed's initial weights; log it to
    MLflow (a finished run of an interrupted flow run with the same key is adopted)."""
    return train_cell(job, run_logger())


@task(
    name="evaluate", task_run_name="evaluate-{trained.head}-seed{trained.seed}", cache_policy=NONE
)
def evaluate_head(trained: TrainedRun, cache_dir: str) -> dict[str, float]:
    """Score the logged model on the test and validation splits; close its run."""
    scores = evaluate_cell(trained, cache_dir, run_logger())
    run_logger().info("%s seed %d: scores %s", trained.head, trained.seed, _brief(scores))
    return scores


def _brief(scores: dict[str, float]) -> str:
    shown = {k: v for k, v in scores.items() if not k.startswith(records.SHIFT_PREFIX)}
    return ", ".join(f"{k} {v:.4f}" for k, v in shown.items())


@task(name="model", task_run_name="model-{job.head}-seed{job.seed}", cache_policy=NONE)
def train_and_evaluate(job: CellJob) -> CellOutcome:
    """Train and score one cell on whichever process runs this: it reads the flow's
    preprocessed data where it can see it, or builds the same cache from the source."""
    check_not_stopped(job)
    config = job.config
    here = local_cache(
        job.cache_dir, config.source, config.image_size, config.split, config.max_images
    )
    job = replace(job, cache_dir=str(here))
    trained = train_head(job)
    return CellOutcome(trained, evaluate_head(trained, job.cache_dir))
