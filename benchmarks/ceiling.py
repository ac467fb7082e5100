"""How close training gets to this CPU's compute ceiling.

For each head: the model's multiply-add FLOPs per image (convolutions and dense layers,
counted from the layer shapes; BatchNorm, ReLU and pooling are memory-bound and not
counted), the training FLOPs per image (forward + gradient w.r.t. inputs + gradient
w.r.t. weights = 3x forward, less the input gradient of the first convolution), and the
achieved training rate on random uint8 batches (steady state, no input pipeline, no
validation). The ceiling is measured in the same run: a large float32 and bfloat16 matrix
multiply through the same oneDNN library, the best a dense kernel reaches on these cores.

    .venv/bin/python benchmarks/ceiling.py [--steps 30] [--heads fc fc_dropout gap]
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from gap_models.models import build_model, compile_model


def forward_flops(model: keras.Model) -> int:
    """2 x multiply-adds of every Conv2D and Dense layer for one image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, filters = layer.output.shape
            kh, kw = layer.kernel_size
            channels = layer.input.shape[-1]
            total += 2 * height * width * filters * kh * kw * channels
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def training_flops(model: keras.Model) -> int:
    first_conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    single = keras.Model(model.inputs, first_conv.output)
    return 3 * forward_flops(model) - forward_flops(single)


def matmul_peak(dtype: tf.DType, size: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of a size x size matrix product (best of ``repeats``)."""
    a = tf.cast(tf.random.uniform((size, size)), dtype)
    b = tf.cast(tf.random.uniform((size, size)), dtype)
    product = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    product(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def training_rate(
    head: str, precision: str, batch_norm: str, steps: int, image_size: int = 100
) -> float:
    """Images per second of training steps on random uint8 batches of 64."""
    keras.utils.set_random_seed(0)
    model = compile_model(
        build_model(head, image_size, 0, precision=precision, batch_norm=batch_norm), 1e-3
    )
    shape = (64, image_size, image_size, 3)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 2, 64).astype(np.float32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat(steps)
    model.fit(dataset.take(3), verbose=0)  # compile the step
    started = time.perf_counter()
    model.fit(dataset, verbose=0)
    return 64 * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", nargs="+", default=["fc", "fc_dropout", "gap"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--image-sizes", nargs="*", type=int, default=[64, 100, 150],
        help="also measure how the default setting's cost grows with the image side",
    )  # fmt: skip
    args = parser.parse_args()
    peak32, peak16 = matmul_peak(tf.float32), matmul_peak(tf.bfloat16)
    print(
        f"matmul ceiling on this machine: float32 {peak32:.0f} GFLOP/s, bfloat16 {peak16:.0f} GFLOP/s"
    )
    print(
        f"{'head':<10} {'fwd MFLOP':>9} {'train MFLOP':>11}  {'setting':<22} {'images/s':>8} "
        f"{'GFLOP/s':>7} {'of ceiling':>10}"
    )
    for head in args.heads:
        model = build_model(head, 100)
        forward, train = forward_flops(model), training_flops(model)
        for precision, batch_norm, peak in (
            ("float32", "keras", peak32),
            ("mixed_bfloat16", "fused", peak16),
        ):
            rate = training_rate(head, precision, batch_norm, args.steps)
            achieved = rate * train / 1e9
            print(
                f"{head:<10} {forward / 1e6:9.1f} {train / 1e6:11.1f}  "
                f"{precision + '/' + batch_norm:<22} {rate:8.0f} {achieved:7.1f} "
                f"{achieved / peak:9.0%}",
                flush=True,
            )
    if args.image_sizes:
        print("\nscaling with image size (mixed_bfloat16/fused):")
        print(f"{'head':<10} {'size':>5} {'train MFLOP':>11} {'images/s':>8} {'GFLOP/s':>7}")
        for head in args.heads:
            for size in args.image_sizes:
                train = training_flops(build_model(head, size))
                rate = training_rate(head, "mixed_bfloat16", "fused", args.steps, size)
                print(
                    f"{head:<10} {size:5d} {train / 1e6:11.1f} {rate:8.0f} "
                    f"{rate * train / 1e9:7.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
