"""The compare-heads flow: download, plan, preprocess, train, evaluate, compare, promote.

Run it in-process with keyword parameters (``compare_heads(source=..., epochs=1)``), through
``compare-heads run``, or as the deployment ``compare-heads/compare-heads`` on a worker.
Every parameter's default and allowed values live in ``gap_models.config.RunConfig``; a
parameter left at None takes that default.
"""

import contextlib
import os
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import ValidationError

from flows.train_models import train_models_on
from gap_models import planning, records
from gap_models.config import (
    RunConfig,
    flow_parameter_types,
    parameter_errors,
    parameters_docstring,
)
from gap_models.hardware import hardware_params, resolve_precision
from gap_models.planning import render_what_changed
from gap_models.provenance import code_version
from tasks.compare import compare_runs
from tasks.data import download, preprocess, record_data
from tasks.plan import plan_retraining, rescore_champion
from tasks.promote import promote_best, start_serving_check
from tracking import recovery, runs
from tracking.cells import TrainedRun, peak_memory_mb, reused_run, train_until
from tracking.registry import Promotion, check_classes, registered_model_name


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
    decision: str = planning.FULL  # the retraining plan's (gap_models/planning.py)
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


def output_dir_for(run_name: str) -> Path:
    """Where a run's plots and tables go: ``$COMPARE_HEADS_OUTPUT_DIR`` or ``outputs/``."""
    base = os.environ.get("COMPARE_HEADS_OUTPUT_DIR") or runs.repo_root() / "outputs"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(base).expanduser().resolve() / f"{stamp}-{run_name}"


P = SimpleNamespace(**flow_parameter_types())
"""Each parameter's type and constraints, RunConfig's: Prefect's schema (the UI's choices and
limits, the server's check of a deployment run) comes from these."""


def compare_heads(
    source: P.source = None,
    image_size: P.image_size = None,
    batch_size: P.batch_size = None,
    epochs: P.epochs = None,
    heads: P.heads = None,
    seeds: P.seeds = None,
    learning_rate: P.learning_rate = None,
    split: P.split = None,
    max_images: P.max_images = None,
    promote: P.promote = None,
    recipe: P.recipe = None,
    precision: P.precision = None,
    batch_norm: P.batch_norm = None,
    backbone: P.backbone = None,
    train_fraction: P.train_fraction = None,
    protocol: P.protocol = None,
    model_name: P.model_name = None,
    force: P.force = None,
    max_age_days: P.max_age_days = None,
    workers: P.workers = None,
    threads_per_worker: P.threads_per_worker = None,
) -> ComparisonResult:
    """Train and fairly compare CNN classifier heads on labelled photos, Cats vs Dogs by
    default (parameters: RunConfig; None takes its default)."""
    try:
        requested = RunConfig.from_parameters(**locals())
    except ValidationError as error:  # every bad value, each with its parameter, no links
        raise ValueError("invalid parameters: " + "; ".join(parameter_errors(error))) from None
    train_until()  # a bad $COMPARE_HEADS_TRAIN_UNTIL fails now, not after preprocessing
    precision = resolve_precision(requested.precision)  # once per run, logged as resolved
    config = requested.resolved()
    started = time.perf_counter()
    logger = get_run_logger()
    uri = runs.tracking_uri()
    runs.check_tracking_server(uri)
    client = runs.client()
    experiment_id = runs.ensure_experiment(client)
    run_name = flow_run.get_name() or "local"
    for stale in recovery.fail_stale_runs(
        client, experiment_id, recovery.current_flow_run_id(), recovery.flow_run_is_active
    ):
        logger.warning("Marked MLflow run %s FAILED: its flow run ended without closing it", stale)
    output_dir = output_dir_for(run_name)
    tags = {records.KIND_TAG: records.KIND_COMPARISON, records.OUTPUT_DIR_TAG: str(output_dir)}
    parent_id = recovery.create_run(client, experiment_id, run_name, tags)
    logger.info("MLflow: %s, experiment %s, parent run %s", uri, experiment_id, parent_id)
    with runs.closing_run(client, parent_id):
        params = records.run_params(config, requested.precision, precision.reason, code_version())
        runs.log_params(client, parent_id, {**params, **hardware_params()})
        result = _compare(config, client, experiment_id, parent_id, output_dir)
        result.tracking_uri = uri
        result.timing = _timing(result.timing, time.perf_counter() - started)
        runs.log_metrics(client, parent_id, result.timing)
        client.set_tag(parent_id, records.NOTE_TAG, result.markdown)
    logger.info(
        "Done in %.1f s (tasks' own compute %.1f s, peak memory %.0f MB). %s",
        result.timing[records.FLOW_SECONDS],
        result.timing[records.COMPUTE_SECONDS],
        result.timing[records.PEAK_MEMORY_MB],
        f"Plots and tables: {result.output_dir}"
        if result.output_dir
        else f"Nothing trained (plan: {result.decision}; what_changed.md on the parent run)",
    )
    return result


compare_heads.__doc__ += "\n\n" + textwrap.indent(parameters_docstring(), "    ")
compare_heads = flow(name="compare-heads", log_prints=True, validate_parameters=True)(compare_heads)


def _compare(config: RunConfig, client, experiment_id: str, parent_id: str, output_dir: Path):
    """The recipe: download, plan, preprocess, train and evaluate what the plan says, compare,
    promote. Returns the result with per-phase seconds in ``timing``."""
    phases = PhaseClock()
    with phases("download"):
        local_source = download(config.source)
    with phases("plan"):
        plan = plan_retraining(config, local_source, parent_id)
    if plan.decision == planning.SKIP:
        return _without_training(plan, parent_id, experiment_id, phases)
    with phases("preprocess"):
        prepared = preprocess(local_source, config.image_size, config.split, config.max_images)
    record_data(prepared, parent_id, plan.data_digest)
    if config.promote:  # a champion of other classes: refused now, not after training
        check_classes(client, registered_model_name(config, prepared.class_names),
                      prepared.class_names)  # fmt: skip
    if plan.decision == planning.EVALUATE:
        with phases("evaluate_champion"):
            name = registered_model_name(config, prepared.class_names)
            plan = rescore_champion(plan, name, prepared.cache_dir, parent_id)
        if plan.decision == planning.EVALUATE:  # not escalated: the champion held up
            return _without_training(plan, parent_id, experiment_id, phases, prepared)
    compute = prepared.seconds  # the tasks' own work, without orchestration or tracking
    with phases("train_evaluate"):
        outcomes = train_models_on(
            config, prepared.cache_dir, experiment_id, parent_id, prepared.skipped_images,
            cells=plan.to_train,
        )  # fmt: skip
    trained_runs = [outcome.trained for outcome in outcomes]
    trained_runs += [reused_run(client, run_id) for run_id in plan.reused.values()]
    compute += sum(
        outcome.trained.compute_seconds + outcome.scores.get(records.EVALUATE_SECONDS, 0.0)
        for outcome in outcomes
    )
    # The candidate's fresh-process load check runs on while the comparison is drawn.
    serving = start_serving_check(trained_runs) if config.promote else None
    with phases("compare"):
        report, markdown, results = compare_runs(
            trained_runs, experiment_id, parent_id, str(output_dir), prepared.cache_dir
        )
    promotion = None
    if config.promote:
        with phases("promote"):
            name = registered_model_name(config, prepared.class_names)
            promotion = promote_best(
                results, report.best_head, prepared.cache_dir, parent_id, name, plan.reasons,
                serving,
            )  # fmt: skip
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
        decision=plan.decision,
        timing={
            records.COMPUTE_SECONDS: compute + report.plot_seconds,
            records.PREPROCESS_CACHE_HIT: float(prepared.cache_hit),
            records.PREPROCESS_COMPUTE_SECONDS: prepared.seconds,
            **{records.PHASE_SECONDS_PREFIX + name: s for name, s in phases.seconds.items()},
        },
    )


def _without_training(plan, parent_id: str, experiment_id: str, phases, prepared=None):
    """The result of a run whose plan trains nothing (skip, or evaluate with a champion that
    held up): the plan's what_changed.md is its summary."""
    return ComparisonResult(
        parent_run_id=parent_id,
        experiment_id=experiment_id,
        tracking_uri="",
        cache_dir=prepared.cache_dir if prepared else "",
        images_used=prepared.images_used if prepared else 0,
        skipped_images=prepared.skipped_images if prepared else 0,
        output_dir="",
        best_head="",
        rows=[],
        markdown=render_what_changed(plan),
        decision=plan.decision,
        timing={
            records.COMPUTE_SECONDS: 0.0,
            **{records.PHASE_SECONDS_PREFIX + name: s for name, s in phases.seconds.items()},
        },
    )


def _timing(timing: dict[str, float], flow_seconds: float) -> dict[str, float]:
    """The parent run's time and memory metrics: flow wall time, overhead, peak memory."""
    return {
        **timing,
        records.FLOW_SECONDS: flow_seconds,
        records.OVERHEAD_FRACTION: max(flow_seconds - timing[records.COMPUTE_SECONDS], 0.0)
        / flow_seconds,
        # Of this flow run's process; Dask workers log theirs on each child run.
        records.PEAK_MEMORY_MB: peak_memory_mb(),
    }
