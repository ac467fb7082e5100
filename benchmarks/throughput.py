"""Training throughput: the article's input pipeline against the project's, same run.

Figure of merit: training images x epochs / wall seconds of ``fit`` (its validation passes
included), per head and pipeline variant, min / median / max over repeats, and the ratio
of each variant to the article's pipeline measured in the same invocation (these machines
are shared and noisy: compare ratios, not absolute numbers across runs).

Variants (levers, added one at a time; the same models, batch 64, shuffle buffer 1000):
  article          decode JPEG, cast, divide by 255, resize on every epoch (SPEC §1), float32,
                   Keras' BatchNormalization: the notebook's pipeline
  cached           uint8 arrays decoded once, batches gathered by index, rescaling inside
                   the model, prefetch; float32, Keras' BatchNormalization
  cached+fused     as cached, the head's BatchNorm through TensorFlow's fused kernel
  cached+bf16      as cached, Keras' mixed_bfloat16 policy (sigmoid output in float32)
  fused+bf16       both: the project's default (precision=mixed_bfloat16, batch_norm=fused)
  fused+bf16+xla   the default compiled with jit_compile=True

After each timed fit (outside the timing), BatchNorm statistics are recalibrated over the
training batches ("precise BN", as the flow does) and the validation accuracy is printed,
so a lever that costs accuracy shows. (Keras' moving averages after two short epochs
still predict one class: 0.495 for every variant.)

    .venv/bin/python benchmarks/throughput.py --source ../shared/data/kagglecatsanddogs_180px.zip
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from gap_models.data import assign_split, decode_image, hash_order, iter_source, make_dataset
from gap_models.models import build_model
from gap_models.training import recalibrate_batch_norm

VARIANTS = ("article", "cached", "cached+fused", "cached+bf16", "fused+bf16", "fused+bf16+xla")
DEFAULT_VARIANTS = ("article", "cached", "cached+fused", "cached+bf16", "fused+bf16")


def select(source: str, train_count: int, val_count: int, image_size: int):
    """The same photos for every variant: encoded bytes and decoded uint8 arrays."""
    chosen = {"train": [], "validation": []}
    wanted = {"train": train_count, "validation": val_count}
    for digest, source_file in hash_order(list(iter_source(source))):
        split = assign_split(digest, [80, 10, 10])
        if split in chosen and len(chosen[split]) < wanted[split]:
            chosen[split].append(source_file)
    selected = {}
    for split, files in chosen.items():
        encoded = np.array([f.data for f in files], dtype=object)
        labels = np.array([f.label for f in files], dtype=np.uint8)
        started = time.perf_counter()
        decoded = np.stack([decode_image(f.data, image_size) for f in files])
        selected[split] = (encoded, decoded, labels, time.perf_counter() - started)
    return selected


def article_dataset(encoded, labels, image_size: int, batch_size: int, shuffle: bool):
    """SPEC §1's pipeline, as the notebook ran it: all work repeated every epoch."""

    def preprocess(data, label):
        image = tf.io.decode_jpeg(data, channels=3)
        image = tf.cast(image, tf.float32) / 255.0
        image = tf.image.resize(image, (image_size, image_size))
        return image, tf.cast(label, tf.float32)

    dataset = tf.data.Dataset.from_tensor_slices((encoded.astype(bytes), labels)).map(preprocess)
    if shuffle:
        dataset = dataset.shuffle(1000)
    return dataset.batch(batch_size)


def fit_once(variant: str, head: str, data, args) -> tuple[float, float]:
    """Build, compile and fit one model; return (images per second, val accuracy)."""
    keras.utils.set_random_seed(0)
    precision = "mixed_bfloat16" if "bf16" in variant else "float32"
    batch_norm = "fused" if "fused" in variant else "keras"
    encoded, decoded, labels, _ = data["train"]
    val_encoded, val_decoded, val_labels, _ = data["validation"]
    if variant == "article":
        model = build_model(head, args.image_size, seed=0, rescale=False, batch_norm="keras")
        train = article_dataset(encoded, labels, args.image_size, args.batch_size, shuffle=True)
        val = article_dataset(
            val_encoded, val_labels, args.image_size, args.batch_size, shuffle=False
        )
    else:
        model = build_model(
            head, args.image_size, seed=0, precision=precision, batch_norm=batch_norm
        )
        train = make_dataset(decoded, labels, args.batch_size, shuffle_seed=0)
        val = make_dataset(val_decoded, val_labels, args.batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=variant.endswith("+xla"),
    )
    started = time.perf_counter()
    model.fit(train, validation_data=val, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - started
    recalibrate_batch_norm(model, train)
    _loss, accuracy = model.evaluate(val, verbose=0)
    return len(labels) * args.epochs / seconds, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="../shared/data/kagglecatsanddogs_180px.zip")
    parser.add_argument("--heads", nargs="+", default=["fc", "fc_dropout", "gap"])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--intra-op-threads", type=int, default=0, help="0: TensorFlow's default")
    parser.add_argument("--inter-op-threads", type=int, default=0, help="0: TensorFlow's default")
    args = parser.parse_args()
    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)

    data = select(args.source, args.train_images, args.val_images, args.image_size)
    print(
        f"{len(data['train'][2])} train / {len(data['validation'][2])} validation photos from "
        f"{args.source}; {args.epochs} epochs, batch {args.batch_size}, {args.repeats} repeats; "
        f"one-off decode for the cached path: {data['train'][3]:.1f} s; "
        f"TF {tf.__version__}, intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}"
    )
    rates: dict[tuple[str, str], list[float]] = {}
    accuracies: dict[tuple[str, str], list[float]] = {}
    for head in args.heads:
        for repeat in range(args.repeats):
            for variant in args.variants:  # interleaved, so drift hits every variant alike
                rate, val_accuracy = fit_once(variant, head, data, args)
                rates.setdefault((head, variant), []).append(rate)
                accuracies.setdefault((head, variant), []).append(val_accuracy)
                print(
                    f"  {head:<10} {variant:<15} repeat {repeat + 1}: {rate:7.1f} images/s (val accuracy {val_accuracy:.3f})",
                    flush=True,
                )
    print()
    print(
        f"{'head':<10} {'variant':<15} {'min':>7} {'median':>7} {'max':>7}  "
        "ratio to article: median (min..max of per-repeat ratios)  val accuracy (median)"
    )
    for head in args.heads:
        base = rates.get((head, "article"))
        for variant in args.variants:
            values = rates[(head, variant)]
            line = (
                f"{head:<10} {variant:<15} {min(values):7.1f} "
                f"{statistics.median(values):7.1f} {max(values):7.1f}"
            )
            if base:
                ratios = [v / b for v, b in zip(values, base, strict=True)]
                line += f"  {statistics.median(ratios):5.2f} ({min(ratios):.2f}..{max(ratios):.2f})"
            line += f"  {statistics.median(accuracies[(head, variant)]):.3f}"
            print(line)


if __name__ == "__main__":
    main()
