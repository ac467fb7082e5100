"""The compare-heads flow: download, preprocess, train each head, evaluate, compare, promote.

Run it in-process with keyword parameters (``compare_heads(source=..., epochs=1)``), through
``compare-heads run``, or as the deployment ``compare-heads/compare-heads`` on a worker.
Every parameter's default and allowed values live in ``gap_models.config.RunConfig``; a
parameter left at None takes that default.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.train_models import train_models_on
from gap_models.config import RunConfig
from tasks import recovery, tracking
from tasks.compare import compare_runs
from tasks.data import download, preprocess, record_data
from tasks.promote import Promotion, promote_best
from tasks.train import TrainedRun, peak_memory_mb


@dataclass
class ComparisonResult:
    """What one flow run produced, by reference: where to look, and what was decided."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    cache_dir: str
    images_used: int
    skipped_images: int
    output_dir: str
    best_head: str
    rows: list[dict]
    markdown: str
    promotion: Promotion | None = None
    trained: list[TrainedRun] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


class PhaseClock:
    """Wall seconds per phase of the flow (summed over repeats): ``with phases("train"):``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def model_class_names(model_uri: str) -> tuple[str, ...]:
    """The classes a logged model predicts, label order (``compare-heads predict`` names them)."""
    return tracking.logged_class_names(model_uri)


def load_model(model_uri: str):
    """A model this project logged, by MLflow URI, from the configured tracking store (what
    ``compare-heads predict`` and ``compare-heads cams`` classify and draw with)."""
    return tracking.load_logged_model(model_uri)


def output_dir_for(run_name: str) -> Path:
    """Where a run's plots and tables go: ``$COMPARE_HEADS_OUTPUT_DIR`` or ``outputs/``."""
    base = os.environ.get("COMPARE_HEADS_OUTPUT_DIR") or tracking.repo_root() / "outputs"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(base).expanduser().resolve() / f"{stamp}-{run_name}"


@flow(name="compare-heads", log_prints=True, validate_parameters=True)
def compare_heads(
    source: str | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    heads: list[str] | None = None,
    seeds: list[int] | None = None,
    learning_rate: float | None = None,
    split: list[int] | None = None,
    max_images: int | None = None,
    promote: bool | None = None,
    recipe: str | None = None,
    precision: str | None = None,
    batch_norm: str | None = None,
    model_name: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
) -> ComparisonResult:
    """Train and fairly compare CNN classifier heads on labelled photos, Cats vs Dogs by
    default (parameters: RunConfig)."""
    config = RunConfig.from_parameters(**locals())
    started = time.perf_counter()
    logger = get_run_logger()
    uri = tracking.tracking_uri()
    tracking.check_tracking_server(uri)
    client = tracking.client()
    experiment_id = tracking.ensure_experiment(client)
    run_name = flow_run.get_name() or "local"
    flow_run_id = recovery.current_flow_run_id()
    for stale in recovery.fail_stale_runs(
        client, experiment_id, flow_run_id, recovery.flow_run_is_active
    ):
        logger.warning("Marked MLflow run %s FAILED: its flow run ended without closing it", stale)
    output_dir = output_dir_for(run_name)
    parent_id = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={
            recovery.FLOW_RUN_TAG: flow_run_id,
            "kind": "comparison",
            tracking.OUTPUT_DIR_TAG: str(output_dir),
            **recovery.owner_tags(),
        },
    ).info.run_id
    logger.info("MLflow: %s, experiment %s, parent run %s", uri, experiment_id, parent_id)
    with tracking.closing_run(client, parent_id):
        tracking.log_params(client, parent_id, config.tracking_params())
        result = _compare(config, client, experiment_id, parent_id, output_dir)
        result.tracking_uri = uri
        result.timing = _timing(result.timing, time.perf_counter() - started)
        tracking.log_metrics(client, parent_id, result.timing)
    logger.info(
        "Done in %.1f s (tasks' own compute %.1f s, peak memory %.0f MB). Plots and tables: %s",
        result.timing["flow_seconds"],
        result.timing["compute_seconds"],
        result.timing["peak_memory_mb"],
        result.output_dir,
    )
    return result


def _compare(config: RunConfig, client, experiment_id: str, parent_id: str, output_dir: Path):
    """The recipe: download, preprocess, train and evaluate each (seed, head), compare,
    promote. Returns the result with per-phase seconds in ``timing``."""
    phases = PhaseClock()
    with phases("download"):
        local_source = download(config.source)
    with phases("preprocess"):
        prepared = preprocess(local_source, config.image_size, config.split, config.max_images)
    record_data(prepared, parent_id)
    compute = prepared.seconds  # the tasks' own work, without orchestration or tracking
    with phases("train_evaluate"):
        outcomes = train_models_on(
            config, prepared.cache_dir, experiment_id, parent_id, prepared.skipped_images
        )
    trained_runs = [outcome.trained for outcome in outcomes]
    test_scores = [outcome.scores for outcome in outcomes]
    compute += sum(
        outcome.trained.compute_seconds + outcome.scores.get("evaluate_seconds", 0.0)
        for outcome in outcomes
    )
    with phases("compare"):
        report, markdown = compare_runs(
            trained_runs, experiment_id, parent_id, str(output_dir), prepared.cache_dir
        )
    promotion = None
    if config.promote:
        with phases("promote"):
            promotion = promote_best(
                trained_runs,
                test_scores,
                report.best_head,
                prepared.cache_dir,
                parent_id,
                config.registered_model_name(prepared.class_names),
            )
    return ComparisonResult(
        parent_run_id=parent_id,
        experiment_id=experiment_id,
        tracking_uri="",
        cache_dir=prepared.cache_dir,
        images_used=prepared.images_used,
        skipped_images=prepared.skipped_images,
        output_dir=str(report.out_dir),
        best_head=report.best_head,
        rows=report.rows,
        markdown=markdown,
        promotion=promotion,
        trained=trained_runs,
        timing={
            "compute_seconds": compute + report.plot_seconds,
            "preprocess_cache_hit": float(prepared.cache_hit),
            "preprocess_compute_seconds": prepared.seconds,
            **{f"phase_seconds_{name}": seconds for name, seconds in phases.seconds.items()},
        },
    )


def _timing(timing: dict[str, float], flow_seconds: float) -> dict[str, float]:
    """The parent run's time and memory metrics: flow wall time, overhead, peak memory."""
    return {
        **timing,
        "flow_seconds": flow_seconds,
        "overhead_fraction": max(flow_seconds - timing["compute_seconds"], 0.0) / flow_seconds,
        # Of this flow run's process; Dask workers log theirs on each child run.
        "peak_memory_mb": peak_memory_mb(),
    }
