"""Recipes (``RunConfig.recipe``): how a model is trained, beyond its architecture.

- ``faithful``: the article's training, unchanged (Adam, binary cross-entropy, no
  augmentation, a fixed number of epochs).
- ``improved``: augmentation, learning rate halved when validation loss stalls, early
  stopping on validation loss (best weights kept), so each head shows how far it goes when
  trained well at about the article's budget.
- ``converge``: trains to convergence, for studies that must not measure under-fitting:
  AdamW, a linear warm-up then cosine decay over the run, label smoothing, random
  resized-crop / flip / colour augmentation, early stopping on validation accuracy (best
  weights kept). Give it 20-30 epochs.

Every recipe but ``faithful`` validates with BatchNorm statistics recomputed before each
validation pass (``PreciseBatchNormValidation``), so what the schedule and the stopping
watch is the model, not Keras' lagging moving averages.
"""

from __future__ import annotations

import keras

from gap_models import records
from gap_models.config import RECIPES

# The convergence recipe's settings. Weight decay is AdamW's decoupled one (a shrink of
# lr x decay per step), not applied to biases and BatchNorm's scale and offset.
CONVERGE_WEIGHT_DECAY = 0.05
CONVERGE_WARMUP_EPOCHS = 2  # at most a quarter of the run
CONVERGE_FINAL_LR_FRACTION = 0.01  # cosine decays to 1 % of the peak learning rate
CONVERGE_LABEL_SMOOTHING = 0.1  # two classes only (Keras' sparse loss has none)
CONVERGE_PATIENCE = 5  # epochs without a better validation accuracy before stopping


def check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:  # also called directly by benchmarks, not only via RunConfig
        raise ValueError(f"unknown recipe {recipe!r}; allowed are {list(RECIPES)}")


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


def augmenter(seed: int, recipe: str = "improved") -> keras.Sequential | None:
    """The recipe's augmentation of training batches (None for ``faithful``).

    ``improved``: random flip, small rotation, zoom and translation. ``converge``: a random
    resized crop (zoom in by up to 35 % on each axis independently, so the aspect ratio
    varies too, then a shift), flip, brightness and contrast."""
    check_recipe(recipe)
    if recipe == "faithful":
        return None
    if recipe == "improved":
        steps = [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 3),
        ]
    else:
        steps = [
            keras.layers.RandomZoom((-0.35, 0.0), (-0.35, 0.0), fill_mode="reflect", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomFlip("horizontal", seed=seed + 2),
            keras.layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4),
        ]
    return keras.Sequential(steps, name="augmentation")


def recipe_callbacks(recipe: str, calibration_data=None) -> list[keras.callbacks.Callback]:
    """The callbacks a recipe adds to ``fit`` (none for the faithful one).

    ``calibration_data`` (unaugmented training batches) lets the other recipes validate
    with recalibrated BatchNorm statistics."""
    check_recipe(recipe)
    if recipe == "faithful":
        return []
    precise = [] if calibration_data is None else [PreciseBatchNormValidation(calibration_data)]
    if recipe == "converge":
        return [
            *precise,
            keras.callbacks.EarlyStopping(
                monitor=records.VAL_ACCURACY,
                mode="max",
                patience=CONVERGE_PATIENCE,
                restore_best_weights=True,
            ),
        ]
    return [
        *precise,
        keras.callbacks.ReduceLROnPlateau(
            monitor=records.VAL_LOSS, factor=0.5, patience=1, min_lr=1e-5
        ),
        keras.callbacks.EarlyStopping(
            monitor=records.VAL_LOSS, patience=3, restore_best_weights=True
        ),
    ]


def converge_schedule(
    learning_rate: float, steps_per_epoch: int, epochs: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 1 % to ``learning_rate`` over ``CONVERGE_WARMUP_EPOCHS`` (at
    most a quarter of the run), then cosine decay to ``CONVERGE_FINAL_LR_FRACTION`` of it
    at the last step."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(CONVERGE_WARMUP_EPOCHS * steps_per_epoch, total // 4)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * CONVERGE_FINAL_LR_FRACTION,
        decay_steps=max(1, total - warmup),
        alpha=CONVERGE_FINAL_LR_FRACTION,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def compile_for_recipe(
    model: keras.Model, recipe: str, learning_rate: float, steps_per_epoch: int, epochs: int
) -> keras.Model:
    """Compile ``model`` as the recipe trains: the article's Adam and cross-entropy
    (``gap_models.models.compile_model``), or the convergence recipe's AdamW on its
    schedule with label smoothing."""
    from gap_models.models import compile_model, is_binary

    check_recipe(recipe)
    if recipe != "converge":
        return compile_model(model, learning_rate)
    optimizer = keras.optimizers.AdamW(
        learning_rate=converge_schedule(learning_rate, steps_per_epoch, epochs),
        weight_decay=CONVERGE_WEIGHT_DECAY,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    loss = (
        keras.losses.BinaryCrossentropy(label_smoothing=CONVERGE_LABEL_SMOOTHING)
        if is_binary(model)
        else keras.losses.SparseCategoricalCrossentropy()
    )
    model.compile(optimizer=optimizer, loss=loss, metrics=[records.ACCURACY])
    return model
