"""Training: build a (head, seed) model, fit it on cached data, report every epoch, time it,
and recompute BatchNorm's statistics before the model is scored or saved."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras

from gap_models import records
from gap_models.checkpoints import EpochCheckpoint, TrainingPaused
from gap_models.config import RunConfig
from gap_models.data import load_split, load_train, make_dataset
from gap_models.models import build_model
from gap_models.recipes import (
    augmenter,
    compile_for_recipe,
    recalibrate_batch_norm,
    recipe_callbacks,
)

EpochLogger = Callable[[int, dict[str, float]], None]
"""Called after every epoch with the 1-based epoch and its metrics (loss, accuracy, val_*,
epoch_seconds, images_per_second)."""


class EpochReporter(keras.callbacks.Callback):
    """Times each epoch and hands its metrics to ``on_epoch`` as soon as it ends.

    The tracking layer passes a function that logs to MLflow, so a long run can be watched
    live; the core stays free of any tracking library. The time ``on_epoch`` itself takes
    is measured too (``reporting_seconds``): tracking must stay a small part of training.
    """

    def __init__(self, on_epoch: EpochLogger, train_images: int) -> None:
        super().__init__()
        self._on_epoch = on_epoch
        self._train_images = train_images
        self._started = 0.0
        self.epoch_seconds: list[float] = []
        self.reported: list[dict[str, float]] = []  # what on_epoch got, epoch by epoch
        self.reporting_seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._started
        self.epoch_seconds.append(seconds)
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics[records.EPOCH_SECONDS] = seconds
        metrics[records.IMAGES_PER_SECOND] = self._train_images / seconds if seconds else 0.0
        self.report(epoch + 1, metrics)

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        """Hand one epoch's metrics on (also how a resumed fit replays its earlier epochs)."""
        self.reported.append(metrics)
        if len(self.epoch_seconds) < len(self.reported):
            self.epoch_seconds.append(metrics[records.EPOCH_SECONDS])
        reporting_started = time.perf_counter()
        self._on_epoch(epoch, metrics)
        self.reporting_seconds += time.perf_counter() - reporting_started


def epochs_to(val_accuracy: list[float]) -> dict[str, float]:
    """Epochs to the best validation accuracy, and to the first epoch that reached each of
    ``records.VAL_ACCURACY_TARGETS`` (targets never reached are left out)."""
    if not val_accuracy:
        return {}
    best = max(range(len(val_accuracy)), key=val_accuracy.__getitem__)
    reached = {records.EPOCHS_TO_BEST: float(best + 1)}
    for target in records.VAL_ACCURACY_TARGETS:
        first = next((i for i, value in enumerate(val_accuracy) if value >= target), None)
        if first is not None:
            reached[records.epochs_to_target(target)] = float(first + 1)
    return reached


@dataclass
class TrainingResult:
    """Per-epoch history and timing of one ``fit``, and what ``fit_head`` did after it."""

    history: dict[str, list[float]]
    train_seconds: float
    train_images: int
    epochs: int
    epoch_seconds: list[float] = field(default_factory=list)
    reporting_seconds: float = 0.0  # spent in the per-epoch callback (tracking)
    recalibration_batches: int = 0
    recalibration_seconds: float = 0.0
    callbacks: list[str] = field(default_factory=list)  # what ran inside fit, in order
    augmentation_change: float = 0.0  # mean |augmented - original| pixel, 0 without
    resumed_at_epoch: int = 0  # epochs restored from a checkpoint (0: trained in one go)

    @property
    def compute_seconds(self) -> float:
        """Fit plus BatchNorm recalibration: the training's own work."""
        return self.train_seconds + self.recalibration_seconds

    def final_metrics(self) -> dict[str, float]:
        """The run-level figures a tracker records once training is over (epochs to each
        ``records.VAL_ACCURACY_TARGETS`` only where it was reached)."""
        return {
            **epochs_to(self.history.get(records.VAL_ACCURACY, [])),
            records.TRAIN_SECONDS: self.train_seconds,
            records.TRAIN_IMAGES_PER_SECOND: self.images_per_second,
            records.BEST_VAL_ACCURACY: self.best_val_accuracy,
            records.EPOCHS_RUN: self.epochs,
            records.BN_RECALIBRATION_BATCHES: self.recalibration_batches,
            records.EPOCH_LOGGING_SECONDS: self.reporting_seconds,
            records.AUGMENTATION_CHANGE: self.augmentation_change,
            **({records.RESUMED_AT_EPOCH: self.resumed_at_epoch} if self.resumed_at_epoch else {}),
        }

    @property
    def images_per_second(self) -> float:
        """Training images x epochs / wall seconds of the fit, validation passes included."""
        return self.train_images * self.epochs / self.train_seconds if self.train_seconds else 0.0

    @property
    def best_val_accuracy(self) -> float:
        return max(self.history.get(records.VAL_ACCURACY, [float("nan")]))


def train_model(
    model: keras.Model,
    train_data,
    validation_data,
    epochs: int,
    train_images: int,
    on_epoch: EpochLogger | None = None,
    recipe: str = "faithful",
    calibration_data=None,
    checkpoint: EpochCheckpoint | None = None,
) -> TrainingResult:
    """Fit ``model`` (compiled) for up to ``epochs``; return its history and timings.

    With a ``checkpoint``, the fit goes on from its last saved epoch (those epochs' metrics
    are handed to ``on_epoch`` again first), saves every epoch, and raises
    ``TrainingPaused`` when it stops at the checkpoint's deadline."""
    reporter = EpochReporter(on_epoch or (lambda epoch, metrics: None), train_images)
    callbacks = [*recipe_callbacks(recipe, calibration_data), reporter]
    restored = checkpoint.restore(model) if checkpoint is not None else None
    if checkpoint is not None:
        checkpoint.set_callbacks(callbacks)
        callbacks.append(checkpoint)
    history: dict[str, list[float]] = {}
    before = 0.0
    if restored is not None:
        for epoch, metrics in enumerate(restored.reported, start=1):
            reporter.report(epoch, metrics)
        history, before = restored.history, restored.seconds
    if checkpoint is not None:
        checkpoint.reported = reporter.reported  # saved with every epoch, to be replayed
    if (
        restored is not None
        and not restored.stopping
        and reporter.epoch_seconds
        and checkpoint.overruns(reporter.epoch_seconds[-1])
    ):  # the deadline passed while the fit was stopped: not one more epoch
        raise TrainingPaused(restored.epochs_done, epochs, checkpoint.directory)
    started = time.perf_counter()
    if restored is None or not restored.finished:
        fitted = model.fit(
            train_data,
            validation_data=validation_data,
            epochs=epochs,
            initial_epoch=restored.next_epoch(epochs) if restored is not None else 0,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles (buffer 1000); Keras would only warn
            verbose=0,
        )
        for key, values in fitted.history.items():
            history[key] = [*history.get(key, []), *(float(v) for v in values)]
    if checkpoint is not None and checkpoint.paused:
        raise TrainingPaused(len(reporter.epoch_seconds), epochs, checkpoint.directory)
    seconds = before + time.perf_counter() - started
    return TrainingResult(
        history=history,
        train_seconds=seconds,
        train_images=train_images,
        epochs=len(reporter.epoch_seconds),  # fewer than asked when stopped early
        epoch_seconds=reporter.epoch_seconds,
        reporting_seconds=reporter.reporting_seconds,
        callbacks=[type(callback).__name__ for callback in callbacks],
        resumed_at_epoch=restored.epochs_done if restored is not None else 0,
    )


def build_training_model(
    head: str, seed: int, config: RunConfig, num_classes: int = 2
) -> keras.Model:
    """A fresh model for (head, seed) with the run's settings (precision resolved:
    ``RunConfig.resolved``) and the data's number of classes, in a clean Keras session
    (earlier models' graphs are freed: peak memory) and seeded random state; ``fit_head``
    compiles it as the recipe trains."""
    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    model = build_model(
        head,
        config.image_size,
        seed,
        precision=config.precision,
        batch_norm=config.batch_norm,
        num_classes=num_classes,
        backbone=config.backbone,
    )
    return model


def fit_head(
    model: keras.Model,
    seed: int,
    config: RunConfig,
    cache_dir: str,
    on_epoch: EpochLogger | None = None,
    checkpoint_dir: Path | None = None,
    until: float | None = None,
) -> TrainingResult:
    """Compile ``model`` (from ``build_training_model``) as the run's recipe trains, train it
    on the cached train split (its ``train_fraction``), validating on the validation split;
    then recompute BatchNorm's statistics over training batches ("precise BN"), so the
    model that is scored and saved does not carry Keras' lagging moving averages.

    ``checkpoint_dir`` (one folder per model) makes the fit resumable: it saves after every
    epoch and goes on from there when called again; ``until`` (seconds since the epoch)
    pauses it at the last epoch that ends before then (``gap_models.checkpoints``)."""
    train_images, train_labels = load_train(cache_dir, config.train_fraction)
    val_images, val_labels = load_split(cache_dir, records.SELECTION_SPLIT)
    steps_per_epoch = -(-len(train_labels) // config.batch_size)
    compile_for_recipe(model, config.recipe, config.learning_rate, steps_per_epoch, config.epochs)
    augment = augmenter(seed, config.recipe)
    # Unaugmented, in order: what the statistics are computed over (during and after fit).
    calibration = make_dataset(train_images, train_labels, config.batch_size)
    result = train_model(
        model,
        make_dataset(
            train_images, train_labels, config.batch_size, shuffle_seed=seed, augment=augment
        ),
        make_dataset(val_images, val_labels, config.batch_size),
        config.epochs,
        train_images=len(train_labels),
        on_epoch=on_epoch,
        recipe=config.recipe,
        calibration_data=calibration,
        checkpoint=(
            EpochCheckpoint(checkpoint_dir, config.epochs, until) if checkpoint_dir else None
        ),
    )
    started = time.perf_counter()
    result.recalibration_batches = recalibrate_batch_norm(model, calibration)
    result.recalibration_seconds = time.perf_counter() - started
    if augment is not None:  # evidence that the training batches were augmented
        images = next(iter(calibration))[0]
        changed = keras.ops.convert_to_numpy(augment(images, training=True))
        result.augmentation_change = float(abs(changed - images.numpy()).mean())
    return result
