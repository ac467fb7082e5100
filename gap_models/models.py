"""Model builders: one shared convolutional head, one builder per classifier back-end.

Every model takes raw uint8 pixels (rescaling to [0, 1] lives inside the model, so a saved
model serves raw images) and ends in one sigmoid unit: P(dog). All initialisers are seeded
from the run's seed, and the head's layers are built first with their own seeds, so for one
seed every back-end starts from identical head weights (the article shared one trained head
object across models; we build a fresh one each time).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from gap_models import HEAD_NAMES
from gap_models.config import feature_map_side, min_image_size

HEAD_FILTERS: tuple[int, ...] = (32, 32, 64)
DENSE_UNITS = 100
DROPOUT_RATE = 0.5


class _Seeds:
    """Hands out a distinct, reproducible initializer seed per layer, in build order."""

    def __init__(self, seed: int, offset: int) -> None:
        self._next = seed * 1000 + offset

    def __call__(self) -> int:
        self._next += 1
        return self._next


def build_feature_extractor(
    inputs: keras.KerasTensor, seed: int, rescale: bool = True
) -> keras.KerasTensor:
    """The shared head: rescale, then 3 x (Conv 3x3 valid -> BN -> ReLU -> MaxPool 2x2)."""
    seeds = _Seeds(seed, offset=0)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs) if rescale else inputs
    for block, filters in enumerate(HEAD_FILTERS, start=1):
        x = layers.Conv2D(
            filters,
            3,
            padding="valid",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seeds()),
            name=f"head_conv{block}",
        )(x)
        x = layers.BatchNormalization(name=f"head_bn{block}")(x)
        x = layers.ReLU(name=f"head_relu{block}")(x)
        x = layers.MaxPooling2D(2, name=f"head_pool{block}")(x)
    return x


def _dense(units: int, seeds: _Seeds, name: str, activation: str | None = None) -> layers.Dense:
    initializer = keras.initializers.GlorotUniform(seed=seeds())
    # The sigmoid output stays float32 under a mixed-precision policy (stable probabilities).
    dtype = "float32" if name == "output" else None
    return layers.Dense(
        units, activation=activation, kernel_initializer=initializer, name=name, dtype=dtype
    )


def _fc_backend(x: keras.KerasTensor, seed: int, dropout_rate: float | None) -> keras.KerasTensor:
    seeds = _Seeds(seed, offset=500)
    x = layers.Flatten(name="flatten")(x)
    x = layers.BatchNormalization(name="fc_bn1")(x)
    x = _dense(DENSE_UNITS, seeds, "fc_dense1")(x)
    x = layers.ReLU(name="fc_relu1")(x)
    if dropout_rate is not None:
        x = layers.Dropout(dropout_rate, seed=seeds(), name="fc_dropout")(x)
    x = layers.BatchNormalization(name="fc_bn2")(x)
    x = _dense(DENSE_UNITS, seeds, "fc_dense2")(x)
    x = layers.ReLU(name="fc_relu2")(x)
    return _dense(1, seeds, "output", activation="sigmoid")(x)


def fc_backend(x: keras.KerasTensor, seed: int) -> keras.KerasTensor:
    """Flatten, BN, Dense 100, ReLU, BN, Dense 100, ReLU, Dense 1 sigmoid (the article's FC)."""
    return _fc_backend(x, seed, dropout_rate=None)


def fc_dropout_backend(x: keras.KerasTensor, seed: int) -> keras.KerasTensor:
    """As ``fc_backend``, with Dropout(0.5) after the first ReLU."""
    return _fc_backend(x, seed, dropout_rate=DROPOUT_RATE)


def gap_backend(x: keras.KerasTensor, seed: int) -> keras.KerasTensor:
    """True global average pooling: one value per feature map, then Dense 1 sigmoid."""
    x = layers.GlobalAveragePooling2D(name="global_average_pool")(x)
    return _dense(1, _Seeds(seed, offset=500), "output", activation="sigmoid")(x)


def avgpool_backend(x: keras.KerasTensor, seed: int) -> keras.KerasTensor:
    """What the article's notebook ran as "GAP": a 2x2 average pool, Flatten, Dense 1 sigmoid."""
    x = layers.AveragePooling2D(2, name="average_pool_2x2")(x)
    x = layers.Flatten(name="flatten")(x)
    return _dense(1, _Seeds(seed, offset=500), "output", activation="sigmoid")(x)


BACKENDS: dict[str, Callable[[keras.KerasTensor, int], keras.KerasTensor]] = {
    "fc": fc_backend,
    "fc_dropout": fc_dropout_backend,
    "gap": gap_backend,
    "avgpool": avgpool_backend,
}
assert tuple(BACKENDS) == HEAD_NAMES


def build_model(
    head: str, image_size: int = 100, seed: int = 0, rescale: bool = True
) -> keras.Model:
    """Build a fresh, uncompiled model: the shared head topped by the named back-end.

    The model takes uint8 (or float 0-255) RGB images of ``image_size`` x ``image_size``;
    ``rescale=False`` drops the built-in 1/255 for inputs already in [0, 1] (the article's
    pipeline, used by the benchmark).
    """
    if head not in BACKENDS:
        raise ValueError(f"unknown head {head!r}; allowed are {list(BACKENDS)}")
    if image_size < min_image_size(head):
        raise ValueError(
            f"image_size {image_size} is too small for head {head!r} "
            f"(feature map {feature_map_side(image_size)}x{feature_map_side(image_size)}); "
            f"the smallest it can process is {min_image_size(head)}"
        )
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    features = build_feature_extractor(inputs, seed, rescale)
    outputs = BACKENDS[head](features, seed)
    return keras.Model(inputs, outputs, name=head)


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam, binary cross-entropy, accuracy: the article's settings (keywords: Keras 3)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def head_layer_names(model: keras.Model) -> list[str]:
    """Names of the shared head's layers in a built model (for weight-identity checks)."""
    return [layer.name for layer in model.layers if layer.name.startswith("head_")]


def trainable_params(model: keras.Model) -> int:
    """Number of trainable scalars (what the article's parameter claim is about)."""
    return int(sum(keras.ops.size(weight) for weight in model.trainable_weights))
