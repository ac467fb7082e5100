"""Training: build a (head, seed) model, fit it on cached data, report every epoch, time it,
and recompute BatchNorm's statistics before the model is scored or saved."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras

from gap_models import records
from gap_models.config import RECIPES, RunConfig
from gap_models.data import TRAIN_SPLIT, load_split, make_dataset
from gap_models.models import build_model, compile_model

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
        self.reporting_seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._started
        self.epoch_seconds.append(seconds)
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics[records.EPOCH_SECONDS] = seconds
        metrics[records.IMAGES_PER_SECOND] = self._train_images / seconds if seconds else 0.0
        reporting_started = time.perf_counter()
        self._on_epoch(epoch + 1, metrics)
        self.reporting_seconds += time.perf_counter() - reporting_started


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

    @property
    def compute_seconds(self) -> float:
        """Fit plus BatchNorm recalibration: the training's own work."""
        return self.train_seconds + self.recalibration_seconds

    def final_metrics(self) -> dict[str, float]:
        """The run-level figures a tracker records once training is over."""
        return {
            records.TRAIN_SECONDS: self.train_seconds,
            records.TRAIN_IMAGES_PER_SECOND: self.images_per_second,
            records.BEST_VAL_ACCURACY: self.best_val_accuracy,
            records.EPOCHS_RUN: self.epochs,
            records.BN_RECALIBRATION_BATCHES: self.recalibration_batches,
            records.EPOCH_LOGGING_SECONDS: self.reporting_seconds,
            records.AUGMENTATION_CHANGE: self.augmentation_change,
        }

    @property
    def images_per_second(self) -> float:
        """Training images x epochs / wall seconds of the fit, validation passes included."""
        return self.train_images * self.epochs / self.train_seconds if self.train_seconds else 0.0

    @property
    def best_val_accuracy(self) -> float:
        return max(self.history.get(records.VAL_ACCURACY, [float("nan")]))


# Recipes (RunConfig.recipe): ``faithful`` is the article's training, unchanged.
# ``improved``: data augmentation, learning rate halved when validation loss stalls, early
# stopping on validation loss (best weights kept), with BatchNorm statistics recomputed
# before every validation pass (so the schedule and the stopping react to the model, not to
# Keras' lagging moving averages), so each head shows how far it goes when trained well.


class PreciseBatchNormValidation(keras.callbacks.Callback):
    """Before each validation pass inside ``fit``, recompute BatchNorm's statistics over
    ``batches`` training batches (see ``recalibrate_batch_norm``).

    Keras' moving averages lag the weights; validation loss measured with them swings by
    points from epoch to epoch, and learning-rate schedules and early stopping that watch it
    act on noise (docs/RESULTS.md, the improved recipe). Training itself is unchanged: in
    training mode BatchNorm normalises with batch statistics.
    """

    def __init__(self, dataset, batches: int = 50) -> None:
        super().__init__()
        self._dataset = dataset
        self._batches = batches
        self._fitting = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._fitting = True

    def on_train_end(self, logs: dict | None = None) -> None:
        self._fitting = False

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._fitting:
            recalibrate_batch_norm(self.model, self._dataset, self._batches)


def augmenter(seed: int) -> keras.Sequential:
    """Random flip, small rotation, zoom and translation (training batches only)."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 3),
        ],
        name="augmentation",
    )


def recipe_callbacks(recipe: str, calibration_data=None) -> list[keras.callbacks.Callback]:
    """The callbacks a recipe adds to ``fit`` (none for the faithful one).

    ``calibration_data`` (unaugmented training batches) lets the improved recipe validate
    with recalibrated BatchNorm statistics."""
    if recipe not in RECIPES:  # also called directly by benchmarks, not only via RunConfig
        raise ValueError(f"unknown recipe {recipe!r}; allowed are {list(RECIPES)}")
    if recipe == "faithful":
        return []
    precise = [] if calibration_data is None else [PreciseBatchNormValidation(calibration_data)]
    return [
        *precise,
        keras.callbacks.ReduceLROnPlateau(
            monitor=records.VAL_LOSS, factor=0.5, patience=1, min_lr=1e-5
        ),
        keras.callbacks.EarlyStopping(
            monitor=records.VAL_LOSS, patience=3, restore_best_weights=True
        ),
    ]


def train_model(
    model: keras.Model,
    train_data,
    validation_data,
    epochs: int,
    train_images: int,
    on_epoch: EpochLogger | None = None,
    recipe: str = "faithful",
    calibration_data=None,
) -> TrainingResult:
    """Fit ``model`` (compiled) for up to ``epochs``; return its history and timings."""
    reporter = EpochReporter(on_epoch or (lambda epoch, metrics: None), train_images)
    callbacks = [*recipe_callbacks(recipe, calibration_data), reporter]
    started = time.perf_counter()
    history = model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles (buffer 1000); Keras would only warn
        verbose=0,
    )
    seconds = time.perf_counter() - started
    return TrainingResult(
        history={key: [float(v) for v in values] for key, values in history.history.items()},
        train_seconds=seconds,
        train_images=train_images,
        epochs=len(reporter.epoch_seconds),  # fewer than asked when stopped early
        epoch_seconds=reporter.epoch_seconds,
        reporting_seconds=reporter.reporting_seconds,
        callbacks=[type(callback).__name__ for callback in callbacks],
    )


def build_training_model(
    head: str, seed: int, config: RunConfig, num_classes: int = 2
) -> keras.Model:
    """A fresh, compiled model for (head, seed) with the run's settings (precision resolved:
    ``RunConfig.resolved``) and the data's number of classes, in a clean Keras session
    (earlier models' graphs are freed: peak memory) and seeded random state."""
    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    model = build_model(
        head,
        config.image_size,
        seed,
        precision=config.precision,
        batch_norm=config.batch_norm,
        num_classes=num_classes,
    )
    return compile_model(model, config.learning_rate)


def fit_head(
    model: keras.Model,
    seed: int,
    config: RunConfig,
    cache_dir: str,
    on_epoch: EpochLogger | None = None,
) -> TrainingResult:
    """Train ``model`` (from ``build_training_model``) on the cached train split, validating
    on the validation split, with the run's recipe; then recompute BatchNorm's statistics
    over training batches ("precise BN"), so the model that is scored and saved does not
    carry Keras' lagging moving averages."""
    train_images, train_labels = load_split(cache_dir, TRAIN_SPLIT)
    val_images, val_labels = load_split(cache_dir, records.SELECTION_SPLIT)
    augment = augmenter(seed) if config.recipe == "improved" else None
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
    )
    started = time.perf_counter()
    result.recalibration_batches = recalibrate_batch_norm(model, calibration)
    result.recalibration_seconds = time.perf_counter() - started
    if augment is not None:  # evidence that the training batches were augmented
        images = next(iter(calibration))[0]
        changed = keras.ops.convert_to_numpy(augment(images, training=True))
        result.augmentation_change = float(abs(changed - images.numpy()).mean())
    return result


def recalibrate_batch_norm(model: keras.Model, dataset, max_batches: int = 100) -> int:
    """Replace BatchNorm's moving statistics by their average over training batches,
    computed by the trained network as it will be used: BatchNorm in training mode (it
    measures the batch), dropout off (inference keeps every unit, so the statistics after a
    dropout layer must be those of the full signal, not of a randomly thinned one).

    Why: Keras tracks the statistics as exponential moving averages with momentum 0.99, an
    average over roughly the last 100 steps' batches, each computed with the weights of its
    own step. While the weights still move fast (a short training, or a high learning rate)
    those averages lag behind the final weights, so inference normalises with statistics of
    a network that no longer exists. A lagging mean shifts every feature by the same amount;
    in front of ``gap``'s single logit that is one bias on every photo, which pushes the
    decisions towards one class (docs/RESULTS.md, precise BatchNorm). A forward pass with
    momentum (k - 1) / k at batch k makes each statistic the plain mean over the first
    ``max_batches`` batches ("precise BN"). Weights are untouched. Returns the number of
    batches used.
    """
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    momenta = [layer.momentum for layer in norms]
    rates = [layer.rate for layer in dropouts]
    used = 0
    try:
        for layer in dropouts:  # Dropout.call reads its rate at every (eager) call
            layer.rate = 0.0
        for used, (images, _labels) in enumerate(dataset.take(max_batches), start=1):
            for layer in norms:
                layer.momentum = (used - 1) / used
            model(images, training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, rates, strict=True):
            layer.rate = rate
    return used
