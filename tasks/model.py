"""Prefect task: one (head, seed) model, trained and scored: the unit a task runner places
(in the flow's process, or on any Dask worker)."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NONE

from gap_models.config import RunConfig
from gap_models.data import local_cache
from tasks.evaluate import evaluate_head
from tasks.train import TrainedRun, train_head


@dataclass(frozen=True)
class ModelOutcome:
    """A trained model by reference, and its test metrics: small, so a lost worker holds
    nothing that is expensive to recompute."""

    trained: TrainedRun
    scores: dict[str, float]


@task(name="model", task_run_name="model-{head}-seed{seed}", cache_policy=NONE)
def train_and_evaluate(
    cache_dir: str,
    head: str,
    seed: int,
    config: RunConfig,
    experiment_id: str,
    parent_run_id: str,
    skipped_images: int = 0,
) -> ModelOutcome:
    """Train ``head`` from the seed's initial weights and score it on the test split, on
    whichever process runs this: it reads the flow's preprocessed data where it can see it,
    or builds the same cache from the source (gap_models.data.local_cache)."""
    here = local_cache(cache_dir, config.source, config.image_size, config.split, config.max_images)
    trained = train_head(
        str(here), head, seed, config, experiment_id, parent_run_id, skipped_images
    )
    return ModelOutcome(trained, evaluate_head(trained, str(here)))
