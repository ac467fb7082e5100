"""Where one training step of the article's backbone goes, kernel by kernel, on this CPU.

For each of the three conv blocks (batch 64, 100 px input): the convolution's forward pass,
its gradient with respect to the filter (backward-filter) and to its input (backward-input;
TensorFlow skips it for the first block, whose input is the image), the fused BatchNorm
forward and backward, ReLU and max-pool forward and backward. Each kernel is timed alone
(median of repeats after a warm-up, inside ``tf.function``), then the sum is set against a
measured full training step of the ``fc`` model, so what the kernels do not explain
(optimizer, head, framework overhead) shows. Prints the CPU flags and the precision.

    .venv/bin/python benchmarks/step_profile.py                  # this CPU as it is
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/step_profile.py   # oneDNN on AVX2 only
    TF_ENABLE_ONEDNN_OPTS=0 .venv/bin/python benchmarks/step_profile.py   # TensorFlow's Eigen
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gap_models.hardware import detect, resolve_precision  # noqa: E402

BLOCKS = ((3, 32, 100), (32, 32, 49), (32, 64, 23))  # (in channels, filters, input side)
BATCH = 64


def milliseconds(function, *arguments, repeats: int = 15) -> float:
    """Median wall milliseconds of ``function(*arguments)``, after one warm-up call."""
    function(*arguments)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*arguments)
        _ = [value.numpy() for value in tf.nest.flatten(result)]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def block_kernels(channels: int, filters: int, side: int, dtype: tf.DType) -> dict[str, float]:
    """Milliseconds of each kernel of one conv block, forward and backward."""
    inputs = tf.cast(tf.random.uniform((BATCH, side, side, channels)), dtype)
    kernel = tf.cast(tf.random.normal((3, 3, channels, filters)) * 0.1, dtype)
    out_side = side - 2
    grad = tf.cast(tf.random.normal((BATCH, out_side, out_side, filters)), dtype)
    scale, offset = tf.ones((filters,)), tf.zeros((filters,))
    conv = tf.function(lambda x, k: tf.raw_ops.Conv2D(input=x, filter=k, strides=[1] * 4,
                                                      padding="VALID"))  # fmt: skip
    filter_grad = tf.function(lambda x, g: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=kernel.shape, out_backprop=g, strides=[1] * 4, padding="VALID"))  # fmt: skip
    input_grad = tf.function(lambda k, g: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=inputs.shape, filter=k, out_backprop=g, strides=[1] * 4, padding="VALID"))  # fmt: skip

    pooled = tf.cast(tf.random.normal((BATCH, out_side // 2, out_side // 2, filters)), dtype)

    @tf.function
    def norm_relu_pool(x, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, scale, offset, is_training=True)
            y = tf.nn.max_pool2d(tf.nn.relu(y), 2, 2, "VALID")
        return tape.gradient(y, x, output_gradients=upstream)

    times = {
        "conv forward": milliseconds(conv, inputs, kernel),
        "conv backward-filter": milliseconds(filter_grad, inputs, grad),
        "conv backward-input": milliseconds(input_grad, kernel, grad) if channels > 3 else 0.0,
        "BN+ReLU+pool fwd+bwd": milliseconds(norm_relu_pool, grad, pooled),
    }
    return times


def full_step_ms(precision: str) -> float:
    """Median milliseconds of one training step of the fc model (batch 64, 100 px)."""
    import keras

    from gap_models.models import build_model, compile_model

    keras.utils.set_random_seed(0)
    model = compile_model(build_model("fc", 100, precision=precision, batch_norm="fused"), 1e-3)
    images = np.random.default_rng(0).integers(0, 255, (BATCH, 100, 100, 3), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 2, (BATCH,)).astype(np.float32)
    model.train_on_batch(images, labels)
    times = []
    for _ in range(15):
        started = time.perf_counter()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "float32", "mixed_bfloat16"]
    )
    args = parser.parse_args()
    hardware = detect()
    precision = resolve_precision(args.precision).value
    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    print(f"CPU: {hardware.cpu_model}; flags: {hardware.reported_flags()}")
    print(
        f"precision {precision}; TF_ENABLE_ONEDNN_OPTS="
        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(default: on)')}; batch {BATCH}"
    )
    totals: dict[str, float] = {}
    print(f"{'block':<14}" + "".join(f"{name:>23}" for name in (
        "conv forward", "conv backward-filter", "conv backward-input", "BN+ReLU+pool fwd+bwd")))  # fmt: skip
    for channels, filters, side in BLOCKS:
        times = block_kernels(channels, filters, side, dtype)
        for name, value in times.items():
            totals[name] = totals.get(name, 0.0) + value
        print(
            f"{f'{channels}->{filters} @{side}':<14}"
            + "".join(f"{v:20.1f} ms" for v in times.values())
        )
    kernels = sum(totals.values())
    step = full_step_ms(precision)
    print(f"{'all blocks':<14}" + "".join(f"{v:20.1f} ms" for v in totals.values()))
    print(
        f"\nkernels of the backbone {kernels:.1f} ms; full fc training step {step:.1f} ms "
        f"({BATCH / step * 1000:.0f} images/s); the rest (head, optimizer, framework) "
        f"{step - kernels:.1f} ms"
    )
    for name, value in totals.items():
        print(f"  {name:<22} {100 * value / step:5.1f} % of the step")


if __name__ == "__main__":
    main()
