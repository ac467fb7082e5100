"""The compare-heads flow: download, preprocess, train each head, evaluate, compare, promote.

Run it in-process with keyword parameters (``compare_heads(source=..., epochs=1)``), through
``compare-heads run``, or as the deployment ``compare-heads/compare-heads`` on a worker.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from gap_models.config import DEFAULT_SOURCE, RunConfig
from tasks import tracking
from tasks.compare import compare_runs
from tasks.data import download, preprocess, record_skipped
from tasks.evaluate import evaluate_head
from tasks.promote import promote_best
from tasks.train import train_head

flow_run_is_active = tracking.flow_run_is_active


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


def reused_test_scores(client, run_id: str) -> dict[str, float]:
    """Test metrics an adopted child run already holds (it was evaluated before)."""
    metrics = client.get_run(run_id).data.metrics
    return {key: value for key, value in metrics.items() if key.startswith("test_")}


def output_dir_for(run_name: str) -> Path:
    """Where a run's plots and tables go: ``$COMPARE_HEADS_OUTPUT_DIR`` or ``outputs/``."""
    base = os.environ.get("COMPARE_HEADS_OUTPUT_DIR") or tracking.repo_root() / "outputs"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(base).expanduser().resolve() / f"{stamp}-{run_name}"


@flow(name="compare-heads", log_prints=True, validate_parameters=True)
def compare_heads(
    source: str = DEFAULT_SOURCE,
    image_size: int = 100,
    batch_size: int = 64,
    epochs: int = 7,
    heads: list[str] | None = None,
    seeds: list[int] | None = None,
    learning_rate: float = 0.001,
    split: list[int] | None = None,
    max_images: int | None = None,
    promote: bool = True,
    recipe: str = "faithful",
    precision: str = "mixed_bfloat16",
    batch_norm: str = "fused",
) -> dict:
    """Train and fairly compare CNN classifier heads on Cats vs Dogs; returns the summary."""
    logger = get_run_logger()
    config = RunConfig(
        source=source,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        heads=heads if heads is not None else ["fc", "fc_dropout", "gap"],
        seeds=seeds if seeds is not None else [0],
        learning_rate=learning_rate,
        split=split if split is not None else [80, 10, 10],
        max_images=max_images,
        promote=promote,
        recipe=recipe,
        precision=precision,
        batch_norm=batch_norm,
    )
    started = time.perf_counter()
    uri = tracking.tracking_uri()
    tracking.check_tracking_server(uri)
    client = tracking.client()
    experiment_id = tracking.ensure_experiment(client)
    run_name = flow_run.get_name() or "local"
    flow_run_id = str(flow_run.get_id() or "")
    for stale in tracking.fail_stale_runs(client, experiment_id, flow_run_id, flow_run_is_active):
        logger.warning("Marked MLflow run %s FAILED: its flow run ended without closing it", stale)
    parent = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={tracking.FLOW_RUN_TAG: flow_run_id, "kind": "comparison", **tracking.owner_tags()},
    )
    parent_id = parent.info.run_id
    logger.info("MLflow: %s, experiment %s, parent run %s", uri, experiment_id, parent_id)
    try:
        tracking.log_params(client, parent_id, config.tracking_params())
        phases = PhaseClock()
        with phases("download"):
            local_source = download(config.source)
        with phases("preprocess"):
            prepared = preprocess(local_source, config.image_size, config.split, config.max_images)
        record_skipped(prepared, parent_id)
        compute = prepared.seconds  # the tasks' own work, without orchestration or tracking
        trained_runs, test_scores = [], []
        for seed in config.seeds:
            for head in config.heads:
                with phases("train"):
                    trained = train_head(
                        prepared.cache_dir,
                        head,
                        seed,
                        config,
                        experiment_id,
                        parent_id,
                        prepared.skipped_images,
                    )
                trained_runs.append(trained)
                compute += trained.compute_seconds
                with phases("evaluate"):
                    if trained.reused:
                        scores = reused_test_scores(client, trained.run_id)
                    else:
                        scores = evaluate_head(trained, prepared.cache_dir)
                test_scores.append(scores)
                compute += scores.get("evaluate_seconds", 0.0)
        output_dir = str(output_dir_for(run_name))
        with phases("compare"):
            summary = compare_runs(
                trained_runs, experiment_id, parent_id, output_dir, prepared.cache_dir
            )
        compute += summary.get("plot_seconds", 0.0)
        if config.promote:
            with phases("promote"):
                summary["promotion"] = promote_best(
                    trained_runs, test_scores, summary["best_head"], prepared.cache_dir, parent_id
                )
        flow_seconds = time.perf_counter() - started
        timing = {
            "flow_seconds": flow_seconds,
            "compute_seconds": compute,
            "overhead_fraction": max(flow_seconds - compute, 0.0) / flow_seconds,
            "preprocess_cache_hit": float(prepared.cache_hit),
            # Peak resident memory of this flow run's process (Linux reports KiB).
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "preprocess_compute_seconds": prepared.seconds,
            **{f"phase_seconds_{name}": seconds for name, seconds in phases.seconds.items()},
        }
        tracking.log_metrics(client, parent_id, timing)
        logger.info(
            "Time: %.1f s in all, %.1f s the tasks' own compute, overhead %.1f %%; phases %s; "
            "peak memory %.0f MB",
            flow_seconds,
            compute,
            100 * timing["overhead_fraction"],
            {name: round(seconds, 1) for name, seconds in phases.seconds.items()},
            timing["peak_memory_mb"],
        )
    except BaseException:
        tracking.finish_run(client, parent_id, failed=True)
        raise
    tracking.finish_run(client, parent_id)
    summary.update(
        parent_run_id=parent_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        cache_dir=prepared.cache_dir,
        images_used=prepared.images_used,
        skipped_images=prepared.skipped_images,
    )
    logger.info(
        "Done in %.1f s. Plots and tables: %s", time.perf_counter() - started, summary["output_dir"]
    )
    return summary
