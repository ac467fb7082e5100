"""One cell (one trained (head, seed) model) as an MLflow child run: the job that names it,
training it with every epoch logged, scoring it, and the trained run handed on by reference.

The Prefect tasks call ``train_cell`` and ``evaluate_cell``; the core (gap_models) does the
work, this module records it. A finished cell of an interrupted flow run whose key (data,
head, seed, training settings, code version) matches is adopted instead of retrained; one
interrupted while training goes on from its checkpoint (``checkpoint_dir``), and
``COMPARE_HEADS_TRAIN_UNTIL`` pauses training at a deadline (``train_until``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gap_models import identity, protocols, records
from gap_models.checkpoints import (
    TrainingPaused,
    checkpoint_dir,
    checkpointed_epochs,
    remove_checkpoint,
)
from gap_models.config import RunConfig
from gap_models.data import cached_class_names, default_cache_dir, read_manifest
from gap_models.evaluation import score_cell
from gap_models.hardware import hardware_params
from gap_models.models import flops_per_image, trainable_params, with_stock_layers
from gap_models.progress import describe_epoch
from gap_models.provenance import code_version
from gap_models.training import build_training_model, fit_head
from tracking import recovery
from tracking.logged_model import load_logged_model, log_image_model, pip_requirements
from tracking.runs import (
    client,
    closing_run,
    log_dataset,
    log_metrics,
    log_params,
    log_predictions,
    scores,
)

TRAIN_UNTIL_ENV = "COMPARE_HEADS_TRAIN_UNTIL"


def train_until() -> float | None:
    """``$COMPARE_HEADS_TRAIN_UNTIL`` as seconds since 1970: a time (ISO 8601, local when it
    names no zone) or seconds since 1970 after which no epoch starts that would end past it.
    A model stopped there keeps its checkpoint; the next run of it resumes. None: unset."""
    value = os.environ.get(TRAIN_UNTIL_ENV, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(
            f"{TRAIN_UNTIL_ENV}={value!r} is not a time: give an ISO 8601 time "
            "(2026-12-03T18:00, local unless it names a zone) or seconds since 1970"
        ) from None


_STOPPED: set[str] = set()
"""Parent runs (one per flow run) whose models in this process pause at their epoch's end."""


def request_stop(parent_id: str) -> None:
    """Ask every model of this flow run (its parent run) training in this process to pause at
    the end of its epoch, its checkpoint kept (the next run of it resumes), and any not
    started yet not to start. A SIGTERM or Ctrl-C reaches the flow's thread, not the one
    training: without this, the flow waited for the model to finish. Scoped to one flow run,
    so a Dask worker that outlives it trains the next run's models as usual."""
    _STOPPED.add(parent_id)


def clear_stop(parent_id: str) -> None:
    _STOPPED.discard(parent_id)


def check_not_stopped(job: CellJob) -> None:
    """RunStopped when the job's flow run was stopped before it began (queued on a Dask
    worker): checked before anything, the photos' cache included."""
    if job.parent_run_id in _STOPPED:
        raise RunStopped(job.label)


class RunStopped(RuntimeError):
    """A model of a stopped flow run that had not started (nothing of it was trained), or
    that trained without a checkpoint (``how``): another process trains the same model and
    keeps the checkpoint, so ending this one at its epoch's end loses nothing."""

    def __init__(self, label: str, how: str = "not started") -> None:
        super().__init__(f"{label}: {how}, its flow run was stopped")
        self.label = label
        self.how = how

    def __reduce__(self):  # crosses processes (a Dask worker's task) whole
        return type(self), (self.label, self.how)


class TrainingDeadline:
    """The ``until`` that ``fit_head`` hands to its ``EpochCheckpoint``: ``train_until()``'s
    time, or already past once ``request_stop(parent_id)`` was called. The checkpoint asks
    ``now + epoch > until``, which Python answers here (``until.__lt__``), so a stop request
    pauses the fit at its epoch's end exactly as a deadline does. (A duck-typed float because
    ``gap_models/checkpoints.py`` is training code: editing it would make every study record
    stale. When that code changes next, give ``EpochCheckpoint`` a stop event instead.)"""

    def __init__(self, at: float | None, parent_id: str) -> None:
        self.at = at
        self.parent_id = parent_id

    def __lt__(self, later: float) -> bool:
        return self.parent_id in _STOPPED or (self.at is not None and self.at < later)


class StopPaused(TrainingPaused):
    """A fit paused by a stop request (SIGTERM, Ctrl-C, a cancelled flow run), said so:
    ``TrainingPaused``'s own message names the training deadline (it lives in training code;
    see ``TrainingDeadline``)."""

    def __init__(self, epochs_done: int, epochs: int, directory: Path) -> None:
        super().__init__(epochs_done, epochs, directory)
        self.args = (
            f"paused after epoch {epochs_done} of {epochs} on a stop request (a signal or a "
            f"cancel); its checkpoint is kept in {directory}: run the same model again to "
            "resume",
        )


def _fit_until_stopped(job: CellJob, model, on_epoch, saved: Path | None):
    """``fit_head`` for the job, paused at ``train_until()`` or by a stop request."""
    try:
        return fit_head(
            model, job.seed, job.config, job.cache_dir, on_epoch, saved,
            TrainingDeadline(train_until(), job.parent_run_id),
        )  # fmt: skip
    except TrainingPaused as paused:
        if job.parent_run_id not in _STOPPED:
            raise
        raise StopPaused(paused.epochs_done, paused.epochs, paused.directory) from None


@contextlib.contextmanager
def claimed_checkpoint(key: str, wait: bool = False) -> Iterator[Path | None]:
    """The checkpoint folder of the model with this key, for this process alone while the
    block runs (an exclusive lock on a sibling file, released by the system if the process
    dies); None when another process holds it (the same model trained twice at once, or a
    Dask worker taken for lost that still runs): then this one trains without checkpoints.
    ``wait``: wait for the holder instead (never None)."""
    folder = checkpoint_dir(key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f"{folder.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class CellJob:
    """Everything one cell's training needs: small and picklable, so a Dask worker gets it
    as it is. ``config`` is resolved (``RunConfig.resolved``)."""

    cache_dir: str
    head: str
    seed: int
    config: RunConfig
    experiment_id: str
    parent_run_id: str
    skipped_images: int = 0
    position: tuple[int, int] = (1, 1)  # model k of n in its flow run (progress lines)

    @property
    def label(self) -> str:
        return f"{self.head} seed {self.seed}"

    def identity(self) -> dict[str, object]:
        return identity.cell_identity(
            self.config, self.head, self.seed, Path(self.cache_dir).name, code_version()
        )

    def key(self) -> str:
        """The cell's key: what a finished run must match to be adopted."""
        return identity.cell_key(self.identity())


@dataclass(frozen=True)
class TrainedRun:
    """A trained model, by reference: its MLflow child run and logged model.

    ``reused`` marks a run taken over from an interrupted flow run: already evaluated.
    """

    head: str
    seed: int
    run_id: str
    model_uri: str
    trainable_params: int
    reused: bool = False
    compute_seconds: float = 0.0  # fit + BatchNorm recalibration, this flow run only
    train_fraction: float = 1.0  # of the training split it trained on (what it is scored on)
    checkpoint_key: str = ""  # its training's checkpoint, removed once the run is scored


def _replays(job: CellJob) -> bool:
    return job.config.protocol == "article"


def _article_backbone(job: CellJob, num_classes: int, logger) -> protocols.BackboneWeights | None:
    """Under the article's protocol, the backbone the job's head starts from: trained by
    each head before it in the article's chain (``gap_models.protocols``)."""

    def train(head: str, start: protocols.BackboneWeights | None) -> protocols.BackboneWeights:
        """One step of the chain, checkpointed and paused at the deadline like a cell (a
        step is a whole fit: minutes to an hour), its epochs shown."""
        model = build_training_model(head, job.seed, job.config, num_classes=num_classes)
        if start is not None:
            protocols.load_backbone(model, start)
        label = f"{head} seed {job.seed} (a step of {job.head}'s chain)"
        seconds: list[float] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            seconds.append(metrics[records.EPOCH_SECONDS])
            logger.info(
                describe_epoch(label, epoch, job.config.epochs, metrics, job.position, seconds)
            )

        step = protocols.step_key(job.identity(), (*protocols.predecessors(head), head))
        # Another cell of this seed training the same step (Dask workers): wait for it, then
        # take its backbone, rather than train it twice past the deadline without a checkpoint.
        with claimed_checkpoint(protocols.step_checkpoint_key(step), wait=True) as saved:
            cached = protocols.load_step(default_cache_dir(), step)
            if cached is not None:
                logger.info("%s: trained meanwhile by another process, from the cache", label)
                return cached
            if done := checkpointed_epochs(saved):
                logger.info("%s: resuming from its checkpoint after epoch %d", label, done)
            _fit_until_stopped(job, model, on_epoch, saved)
            weights = protocols.backbone_weights(model)
            protocols.save_step(default_cache_dir(), step, weights)  # then its checkpoint goes
            remove_checkpoint(saved)
        return weights

    return protocols.chain_backbone(
        job.head, job.identity(), default_cache_dir(), train, lambda m: logger.info("%s", m)
    )


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (a Dask worker: every model it trained;
    Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reused_run(mlflow_client, run_id: str) -> TrainedRun:
    """A finished, scored cell of an earlier flow run that a partial retraining keeps (it
    stays under its own parent run)."""
    run = mlflow_client.get_run(run_id)
    return _trained_from(run)


def _trained_from(run) -> TrainedRun:
    return TrainedRun(
        run.data.tags[records.HEAD],
        int(run.data.tags[records.SEED]),
        run.info.run_id,
        run.data.tags[records.MODEL_URI_TAG],
        int(run.data.params[records.TRAINABLE_PARAMS]),
        reused=True,
    )


def _adopt(mlflow_client, job: CellJob, key: str, logger) -> TrainedRun | None:
    previous = recovery.adopt_finished_run(mlflow_client, job.experiment_id, key, job.parent_run_id)
    if previous is None:
        return None
    logger.info("%s: reusing finished run %s", job.label, previous.info.run_id)
    return _trained_from(previous)


def _open_child(mlflow_client, job: CellJob, key: str, logger) -> str:
    """Close this cell's attempts of lost workers, then open its child run."""
    for lost in recovery.fail_open_children(
        mlflow_client,
        job.experiment_id,
        job.parent_run_id,
        "its process died while training (a lost Dask worker); trained again elsewhere",
        key,
    ):
        logger.warning("%s: run %s of a lost worker marked FAILED", job.label, lost)
    tags = {
        records.HEAD: job.head,
        records.SEED: str(job.seed),
        records.RUN_KEY_TAG: key,
        records.CONFIG_DIGEST_TAG: identity.config_digest(job.config, job.head, job.seed),
    }
    return recovery.create_run(
        mlflow_client, job.experiment_id, f"{job.head}-seed{job.seed}", tags, job.parent_run_id
    )


def train_cell(job: CellJob, logger: logging.Logger | logging.LoggerAdapter) -> TrainedRun:
    """Train a fresh model for the job's head from its seed's initial weights, every epoch
    logged live; log the model (stock layers) and leave the run open for ``evaluate_cell``."""
    mlflow_client = client()
    key = job.key()
    adopted = _adopt(mlflow_client, job, key, logger)
    if adopted is not None:
        return adopted
    run_id = _open_child(mlflow_client, job, key, logger)
    classes = cached_class_names(job.cache_dir)
    with closing_run(mlflow_client, run_id, finish_on_success=False):
        start = _article_backbone(job, len(classes), logger) if _replays(job) else None
        model = build_training_model(job.head, job.seed, job.config, num_classes=len(classes))
        if start is not None:
            protocols.load_backbone(model, start)
        params = trainable_params(model)
        cell = identity.cell_params(job.config, job.head, job.seed, params, code_version())
        cell[records.FLOPS_PER_IMAGE] = flops_per_image(model)
        log_params(mlflow_client, run_id, {**cell, **hardware_params()})
        log_metrics(mlflow_client, run_id, {records.SKIPPED_IMAGES: job.skipped_images})
        log_dataset(mlflow_client, run_id, read_manifest(Path(job.cache_dir)))
        logger.info("Training %s (%s trainable parameters)", job.label, f"{params:,}")

        seconds: list[float] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            logged = {name: metrics[name] for name in records.EPOCH_METRICS if name in metrics}
            log_metrics(mlflow_client, run_id, logged, step=epoch)
            seconds.append(metrics[records.EPOCH_SECONDS])
            line = describe_epoch(
                job.label, epoch, job.config.epochs, metrics, job.position, seconds
            )
            logger.info(line)
            ending = epoch >= job.config.epochs or model.stop_training  # its last epoch
            if saved is None and job.parent_run_id in _STOPPED and not ending:
                # no checkpoint to pause at: end it (the other trainer keeps one)
                raise RunStopped(
                    job.label,
                    f"ended after epoch {epoch} without a checkpoint (another process "
                    "is training this model and keeps its checkpoint)",
                )

        with claimed_checkpoint(key) as saved:
            if saved is None:
                logger.warning(
                    "%s: another process is training this model now: this one trains "
                    "without checkpoints", job.label,
                )  # fmt: skip
            elif done := checkpointed_epochs(saved):
                logger.info(
                    "%s: resuming from its checkpoint after epoch %d of %d (%s)",
                    job.label, done, job.config.epochs, saved,
                )  # fmt: skip
            result = _fit_until_stopped(job, model, on_epoch, saved)
        checkpoint_key = key if saved is not None else ""
        if _replays(job):  # the next head of the chain starts from this backbone
            chain = (*protocols.predecessors(job.head), job.head)
            key = protocols.step_key(job.identity(), chain)
            protocols.save_step(default_cache_dir(), key, protocols.backbone_weights(model))
        finals = {**result.final_metrics(), records.PROCESS_PEAK_MEMORY_MB: peak_memory_mb()}
        log_metrics(mlflow_client, run_id, finals)
        log_params(mlflow_client, run_id, {records.CALLBACKS: ",".join(result.callbacks)})
        stock = with_stock_layers(model)  # loadable by any Keras / MLflow process
        model_uri = log_image_model(mlflow_client, run_id, stock, classes, pip_requirements())
    logger.info("%s: %.0f images/s; model %s", job.label, result.images_per_second, model_uri)
    return TrainedRun(
        job.head,
        job.seed,
        run_id,
        model_uri,
        params,
        compute_seconds=result.compute_seconds,
        train_fraction=job.config.train_fraction,
        checkpoint_key=checkpoint_key,
    )


def evaluate_cell(
    trained: TrainedRun, cache_dir: str, logger: logging.Logger | logging.LoggerAdapter
) -> dict[str, float]:
    """Score the logged model, loaded back from MLflow, on the test split (as is, and shifted
    for the translation claim) and on the validation split; log the scores and close the
    run, then remove its training's checkpoint. An adopted run keeps the scores it already
    has."""
    mlflow_client = client()
    if trained.reused:
        return scores(mlflow_client, trained.run_id)
    with closing_run(mlflow_client, trained.run_id):
        model = load_logged_model(trained.model_uri)
        label = f"{trained.head} seed {trained.seed}"
        scored = score_cell(
            model,
            cache_dir,
            lambda step: logger.info("%s: scoring %s", label, step),
            trained.train_fraction,
        )
        log_metrics(mlflow_client, trained.run_id, scored.metrics)
        log_predictions(mlflow_client, trained.run_id, scored)
    if trained.checkpoint_key:  # the run is finished and scored: adopted from now on
        with claimed_checkpoint(trained.checkpoint_key) as folder:
            if folder is not None:  # else another process resumes it, and removes it
                remove_checkpoint(folder)
    return scored.metrics
