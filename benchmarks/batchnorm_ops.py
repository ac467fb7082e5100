"""Where a training step goes: each conv block's convolution against its BatchNorm + ReLU +
max-pool, Keras' unfused BatchNorm against TensorFlow's fused kernel, float32 and bfloat16.

Forward + backward of one batch of 64 at the shapes of the article's backbone (100 px input),
mean over 20 repeats after a warm-up call.

    .venv/bin/python benchmarks/batchnorm_ops.py
"""

from __future__ import annotations

import time

import tensorflow as tf

BLOCKS = ((3, 32, 100), (32, 32, 49), (32, 64, 23))  # (in channels, filters, input side)


def milliseconds(function, argument, repeats: int = 20) -> float:
    function(argument)
    started = time.perf_counter()
    for _ in range(repeats):
        result = function(argument)
    _ = [value.numpy() for value in result]
    return (time.perf_counter() - started) / repeats * 1000


def convolution(dtype: tf.DType, kernel: tf.Variable):
    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tf.nn.conv2d(inputs, kernel, 1, "VALID")
            total = tf.reduce_sum(tf.cast(outputs, tf.float32))
        return tape.gradient(total, [inputs, kernel])

    return step


def unfused(dtype: tf.DType):
    """What Keras 3 runs in training: moments and normalisation in float32, then cast back."""

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            x = tf.cast(inputs, tf.float32)
            mean, variance = tf.nn.moments(x, [0, 1, 2])
            x = tf.nn.batch_normalization(x, mean, variance, None, None, 1e-3)
            x = tf.nn.max_pool2d(tf.nn.relu(tf.cast(x, dtype)), 2, 2, "VALID")
            total = tf.reduce_sum(tf.cast(x, tf.float32))
        return tape.gradient(total, [inputs])

    return step


def fused(channels: int):
    scale, offset = tf.ones((channels,)), tf.zeros((channels,))

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            x, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=1e-3, is_training=True
            )
            x = tf.nn.max_pool2d(tf.nn.relu(x), 2, 2, "VALID")
            total = tf.reduce_sum(tf.cast(x, tf.float32))
        return tape.gradient(total, [inputs])

    return step


def main() -> None:
    print(f"{'dtype':<9} {'block':<14} {'conv':>8} {'BN+ReLU+pool':>13} {'fused BN+ReLU+pool':>19}")
    for dtype in (tf.float32, tf.bfloat16):
        for channels, filters, side in BLOCKS:
            inputs = tf.cast(tf.random.uniform((64, side, side, channels)), dtype)
            kernel = tf.Variable(tf.cast(tf.random.normal((3, 3, channels, filters)) * 0.1, dtype))
            activations = tf.cast(tf.random.uniform((64, side - 2, side - 2, filters)), dtype)
            conv = milliseconds(convolution(dtype, kernel), inputs)
            slow = milliseconds(unfused(dtype), activations)
            fast = milliseconds(fused(filters), activations)
            print(
                f"{dtype.name:<9} {f'{channels}->{filters} @{side}':<14} {conv:6.1f} ms "
                f"{slow:10.1f} ms {fast:16.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
