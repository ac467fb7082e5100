"""Model builders: one convolutional backbone, one builder per classifier head.

Every model takes raw uint8 pixels (rescaling to [0, 1] lives inside the model, so a saved
model serves raw images) and ends in one sigmoid unit, P(class 1) (P(dog) for Cats vs Dogs), or
a softmax over the classes when there are more than two. All initialisers are seeded
from the run's seed, and the backbone's layers are built first with their own seeds, so for
one seed every head starts from identical backbone weights (the article shared one trained
backbone object across models; we build a fresh one each time).

The backbone's layers are named ``backbone_*``; class activation maps find the maps a
``gap`` head pools by the pooling layer, not by name, so models of earlier versions draw too.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from gap_models import records
from gap_models.architecture import (
    BACKBONE_NAMES,
    BACKBONES,
    HEAD_NAMES,
    HEADS,
    feature_map_side,
    min_image_size,
)
from gap_models.config import BATCH_NORMS, RESOLVED_PRECISIONS

BACKBONE_PREFIX = "backbone_"
DENSE_UNITS = 100
DROPOUT_RATE = 0.5


@keras.saving.register_keras_serializable(package="compare_heads")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization, trained through TensorFlow's fused kernel.

    Keras 3 computes a training-mode BatchNorm as separate moment, normalisation and cast
    ops; on small CPUs the backbone's three BN + ReLU + pool blocks can cost more than its
    convolutions (docs/RESULTS.md, performance, has the measurement). Same
    parameters, same maths (batch mean and biased variance normalise; the moving averages
    get the biased variance, as Keras does), same saved config, so a model built with it
    loads and infers exactly like one built with the stock layer. Inference, masks, 2-D
    inputs and non-TensorFlow backends take the stock path.
    """

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        if not (training and self.trainable) or mask is not None or rank != 4:
            return super().call(inputs, training=training, mask=mask)
        if self.axis not in (-1, 3, [3], [-1]) or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = (
            inputs
            if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16)
            else tf.cast(inputs, tf.float32)
        )
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,))
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,))
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, is_training=True
        )
        # The fused kernel returns the unbiased (n - 1) variance; Keras averages the biased one.
        count = tf.cast(tf.size(x) // channels, tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


class _Seeds:
    """Hands out a distinct, reproducible initializer seed per layer, in build order."""

    def __init__(self, seed: int, offset: int) -> None:
        self._next = seed * 1000 + offset

    def __call__(self) -> int:
        self._next += 1
        return self._next


def _batch_norm_class(batch_norm: str) -> type[layers.BatchNormalization]:
    if batch_norm not in BATCH_NORMS:
        raise ValueError(f"unknown batch_norm {batch_norm!r}; allowed are {list(BATCH_NORMS)}")
    return FusedBatchNormalization if batch_norm == "fused" else layers.BatchNormalization


def build_backbone(
    inputs: keras.KerasTensor,
    seed: int,
    rescale: bool = True,
    batch_norm: str = "fused",
    dtype: str = "float32",
    backbone: str = "article",
) -> keras.KerasTensor:
    """Rescale, then per block of the named backbone (``gap_models.architecture.BACKBONES``)
    Conv 3x3 -> BN -> ReLU -> MaxPool 2x2; the article's is 3 blocks of valid convolutions."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; allowed are {list(BACKBONE_NAMES)}")
    spec = BACKBONES[backbone]
    seeds = _Seeds(seed, offset=0)
    norm = _batch_norm_class(batch_norm)
    x = layers.Rescaling(1.0 / 255, name="rescale", dtype=dtype)(inputs) if rescale else inputs
    for block, filters in enumerate(spec.filters, start=1):
        x = layers.Conv2D(
            filters,
            3,
            padding=spec.padding,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seeds()),
            name=f"{BACKBONE_PREFIX}conv{block}",
            dtype=dtype,
        )(x)
        x = norm(name=f"{BACKBONE_PREFIX}bn{block}", dtype=dtype)(x)
        x = layers.ReLU(name=f"{BACKBONE_PREFIX}relu{block}", dtype=dtype)(x)
        x = layers.MaxPooling2D(2, name=f"{BACKBONE_PREFIX}pool{block}", dtype=dtype)(x)
    return x


def _dense(
    units: int, seeds: _Seeds, name: str, dtype: str, activation: str | None = None
) -> layers.Dense:
    initializer = keras.initializers.GlorotUniform(seed=seeds())
    # The sigmoid output stays float32 under a mixed-precision policy (stable probabilities).
    dtype = "float32" if name == "output" else dtype
    return layers.Dense(
        units, activation=activation, kernel_initializer=initializer, name=name, dtype=dtype
    )


def _output(x: keras.KerasTensor, seeds: _Seeds, dtype: str, num_classes: int) -> keras.KerasTensor:
    """The article's single sigmoid unit (P(class 1)) for two classes; a softmax over
    ``num_classes`` units for more."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if num_classes == 2:
        return _dense(1, seeds, "output", dtype, activation="sigmoid")(x)
    return _dense(num_classes, seeds, "output", dtype, activation="softmax")(x)


def _fc_head(
    x: keras.KerasTensor, seed: int, dropout_rate: float | None, dtype: str, num_classes: int
) -> keras.KerasTensor:
    # Stock BatchNormalization here: on 2-D inputs the fused kernel gains nothing.
    seeds = _Seeds(seed, offset=500)
    x = layers.Flatten(name="flatten", dtype=dtype)(x)
    x = layers.BatchNormalization(name="fc_bn1", dtype=dtype)(x)
    x = _dense(DENSE_UNITS, seeds, "fc_dense1", dtype)(x)
    x = layers.ReLU(name="fc_relu1", dtype=dtype)(x)
    if dropout_rate is not None:
        x = layers.Dropout(dropout_rate, seed=seeds(), name="fc_dropout", dtype=dtype)(x)
    x = layers.BatchNormalization(name="fc_bn2", dtype=dtype)(x)
    x = _dense(DENSE_UNITS, seeds, "fc_dense2", dtype)(x)
    x = layers.ReLU(name="fc_relu2", dtype=dtype)(x)
    return _output(x, seeds, dtype, num_classes)


def fc_head(
    x: keras.KerasTensor, seed: int, dtype: str = "float32", num_classes: int = 2
) -> keras.KerasTensor:
    """Flatten, BN, Dense 100, ReLU, BN, Dense 100, ReLU, output (the article's FC)."""
    return _fc_head(x, seed, None, dtype, num_classes)


def fc_dropout_head(
    x: keras.KerasTensor, seed: int, dtype: str = "float32", num_classes: int = 2
) -> keras.KerasTensor:
    """As ``fc_head``, with Dropout(0.5) after the first ReLU."""
    return _fc_head(x, seed, DROPOUT_RATE, dtype, num_classes)


def gap_head(
    x: keras.KerasTensor, seed: int, dtype: str = "float32", num_classes: int = 2
) -> keras.KerasTensor:
    """True global average pooling: one value per feature map, then the output layer."""
    x = layers.GlobalAveragePooling2D(name="global_average_pool", dtype=dtype)(x)
    return _output(x, _Seeds(seed, offset=500), dtype, num_classes)


def avgpool_head(
    x: keras.KerasTensor, seed: int, dtype: str = "float32", num_classes: int = 2
) -> keras.KerasTensor:
    """What the article's notebook ran as "GAP": a 2x2 average pool, Flatten, output."""
    x = layers.AveragePooling2D(2, name="average_pool_2x2", dtype=dtype)(x)
    x = layers.Flatten(name="flatten", dtype=dtype)(x)
    return _output(x, _Seeds(seed, offset=500), dtype, num_classes)


def fc_matched_head(
    x: keras.KerasTensor, seed: int, dtype: str = "float32", num_classes: int = 2
) -> keras.KerasTensor:
    """``fc`` at ``gap``'s size: a 1x1 convolution mixes the maps into one, Flatten, output.

    Like ``gap`` a linear function of the maps with one weight per map; unlike it, one
    learned weight per position instead of a uniform average: the flatten-or-pool question
    at equal (tiny) capacity."""
    seeds = _Seeds(seed, offset=500)
    x = layers.Conv2D(
        1,
        1,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds()),
        name="fc_matched_mix",
        dtype=dtype,
    )(x)
    x = layers.Flatten(name="flatten", dtype=dtype)(x)
    return _output(x, seeds, dtype, num_classes)


def matched_width(side: int, channels: int) -> int:
    """Maps of ``gap_matched``'s widening convolution that give it ``fc``'s trainable
    parameter count on a ``side`` x ``side`` x ``channels`` feature map, two classes (with
    more, only the output layers grow).

    fc: Flatten (F values), BN (2F), Dense 100 (100F + 100), BN (200), Dense 100 (10,100),
    output (101); gap_matched: 3x3 conv (9CW + W), BN (2W), output (W + 1).
    """
    flat = side * side * channels
    return max(1, round((102 * flat + 10_500) / (9 * channels + 4)))


def gap_matched_head(
    x: keras.KerasTensor,
    seed: int,
    dtype: str = "float32",
    num_classes: int = 2,
    batch_norm: str = "fused",
) -> keras.KerasTensor:
    """``gap`` at ``fc``'s size: a 3x3 convolution to ``matched_width`` maps, BN, ReLU,
    global average pooling, output."""
    seeds = _Seeds(seed, offset=500)
    _, side, _, channels = x.shape
    x = layers.Conv2D(
        matched_width(side, channels),
        3,
        padding="same",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds()),
        name="gap_matched_conv",
        dtype=dtype,
    )(x)
    x = _batch_norm_class(batch_norm)(name="gap_matched_bn", dtype=dtype)(x)
    x = layers.ReLU(name="gap_matched_relu", dtype=dtype)(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pool", dtype=dtype)(x)
    return _output(x, seeds, dtype, num_classes)


HEAD_BUILDERS: dict[str, Callable[..., keras.KerasTensor]] = {
    "fc": fc_head,
    "fc_dropout": fc_dropout_head,
    "gap": gap_head,
    "avgpool": avgpool_head,
    "fc_matched": fc_matched_head,
    "gap_matched": gap_matched_head,
}
assert tuple(HEAD_BUILDERS) == tuple(HEADS) == HEAD_NAMES


def build_model(
    head: str,
    image_size: int = 100,
    seed: int = 0,
    rescale: bool = True,
    precision: str = "float32",
    batch_norm: str = "fused",
    num_classes: int = 2,
    backbone: str = "article",
) -> keras.Model:
    """Build a fresh, uncompiled model: the named backbone (``article``: the article's)
    topped by the named head, ending in one sigmoid unit for two classes (the article's) or
    a softmax of ``num_classes`` units.

    The model takes uint8 (or float 0-255) RGB images of ``image_size`` x ``image_size``;
    ``rescale=False`` drops the built-in 1/255 for inputs already in [0, 1] (the article's
    pipeline, used by the benchmark). ``precision`` is the Keras dtype policy of every
    layer but the float32 output; ``batch_norm`` picks the backbone's BatchNorm implementation
    (``precision="float32", batch_norm="keras"`` is the article's model bit for bit).
    """
    if head not in HEAD_BUILDERS:
        raise ValueError(f"unknown head {head!r}; allowed are {list(HEAD_BUILDERS)}")
    if precision not in RESOLVED_PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; allowed are {list(RESOLVED_PRECISIONS)} "
            "(resolve 'auto' first: gap_models.hardware.resolve_precision)"
        )
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; allowed are {list(BACKBONE_NAMES)}")
    if image_size < min_image_size(head, backbone):
        side = feature_map_side(image_size, backbone)
        raise ValueError(
            f"image_size {image_size} is too small for head {head!r} on backbone {backbone!r} "
            f"(feature map {side}x{side}); the smallest it can process is "
            f"{min_image_size(head, backbone)}"
        )
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    features = build_backbone(inputs, seed, rescale, batch_norm, precision, backbone)
    extra = {"batch_norm": batch_norm} if head == "gap_matched" else {}
    outputs = HEAD_BUILDERS[head](features, seed, dtype=precision, num_classes=num_classes, **extra)
    return keras.Model(inputs, outputs, name=head)


def is_binary(model: keras.Model) -> bool:
    """Whether the model ends in the single sigmoid unit of two classes."""
    return model.output_shape[-1] == 1


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam, binary cross-entropy (sparse categorical for more than two classes), accuracy:
    the article's settings (keywords: Keras 3)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy" if is_binary(model) else "sparse_categorical_crossentropy",
        metrics=[records.ACCURACY],  # history keys: records.CURVE_METRICS
    )
    return model


def trainable_params(model: keras.Model) -> int:
    """Number of trainable scalars (what the article's parameter claim is about)."""
    return int(sum(keras.ops.size(weight) for weight in model.trainable_weights))


def with_stock_layers(model: keras.Model) -> keras.Model:
    """The same model, weights and outputs, with every ``FusedBatchNormalization`` replaced
    by Keras' own ``BatchNormalization`` (identical config and variables; the fused layer
    differs only in how it trains). What gets logged and served: any Keras or MLflow
    process can load it without importing this package."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, FusedBatchNormalization):
            return layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    stock = keras.models.clone_model(model, clone_function=clone)
    stock.set_weights(model.get_weights())
    return stock


def flops_per_image(model: keras.Model) -> int:
    """Floating-point operations of one forward pass, counted analytically: 2 per
    multiply-add of every convolution and dense layer (BatchNorm, pooling and activations,
    a few per value, are left out)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kernel = layer.kernel.shape  # (kh, kw, in, out)
            height, width = layer.output.shape[1:3]
            total += height * width * kernel[0] * kernel[1] * kernel[2] * kernel[3]
        elif isinstance(layer, layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(2 * total)
