"""Training throughput on this machine: the article's pipeline against the project's default
and each lever, as ratios measured in the same run, with the CPU flags beside them.

Figure of merit: training images x epochs / wall seconds of ``fit`` (its validation passes
included), per head and variant, min / median / max over repeats, and the ratio of each
variant to the article's pipeline in the same repeat (these machines are shared and noisy:
compare ratios, not absolute numbers across runs). Every fit runs in a fresh Python process,
so levers that TensorFlow reads once at start (oneDNN on/off, thread pools) are real, and
one variant's graphs and allocator state never leak into the next. Repeats are interleaved:
drift hits every variant alike.

Variants (the same photos and models; batch 64 and shuffle buffer 1000 unless named):
  article          decode JPEG, cast, /255, resize on every epoch (the notebook), float32, Keras
                   BatchNormalization: the notebook's pipeline
  faithful         the article's arithmetic (float32, Keras BN) on the cached uint8 pipeline
  default          what the flow runs by default: precision=auto (resolved here), fused BN
  float32          cached, float32, fused BN
  bf16             cached, mixed_bfloat16, fused BN (slow where bfloat16 is emulated)
  threads-2-1      default with intra-op 2 / inter-op 1 threads
  onednn-off       default with TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's Eigen kernels)
  batch-128        default with batch 128 (throughput only; training keeps the article's 64)
  xla              default compiled with jit_compile=True

Beside the ratio each default fit reports where its time goes: the first epoch's extra
seconds (graph tracing), one validation pass, one pass over the validation photos at each
of the 12 translation-robustness shifts' cost (one predict), and saving + reloading the model.

    .venv/bin/python benchmarks/throughput.py --source ../shared/data/kagglecatsanddogs_180px.zip
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS: dict[str, dict] = {
    "article": {"pipeline": "article", "precision": "float32", "batch_norm": "keras"},
    "faithful": {"precision": "float32", "batch_norm": "keras"},
    "default": {"precision": "auto", "batch_norm": "fused"},
    "float32": {"precision": "float32", "batch_norm": "fused"},
    "bf16": {"precision": "mixed_bfloat16", "batch_norm": "fused"},
    "threads-2-1": {"precision": "auto", "batch_norm": "fused", "threads": (2, 1)},
    "onednn-off": {
        "precision": "auto",
        "batch_norm": "fused",
        "env": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    },
    "batch-128": {"precision": "auto", "batch_norm": "fused", "batch_size": 128},
    "xla": {"precision": "auto", "batch_norm": "fused", "jit_compile": True},
}
DEFAULT_VARIANTS = (
    "article",
    "faithful",
    "default",
    "float32",
    "bf16",
    "threads-2-1",
    "onednn-off",
    "batch-128",
)


def select(source: str, train_count: int, val_count: int, image_size: int, out: Path) -> None:
    """The same photos for every variant: encoded bytes and decoded uint8 arrays, saved."""
    from gap_models.data import assign_split, decode_image, hash_order, iter_source

    chosen = {"train": [], "validation": []}
    wanted = {"train": train_count, "validation": val_count}
    for digest, source_file in hash_order(list(iter_source(source))):
        split = assign_split(digest, [80, 10, 10])
        if split in chosen and len(chosen[split]) < wanted[split]:
            chosen[split].append(source_file)
    arrays = {}
    for split, files in chosen.items():
        arrays[f"{split}_encoded"] = np.array([f.data for f in files], dtype=object)
        arrays[f"{split}_labels"] = np.array([f.label for f in files], dtype=np.uint8)
        arrays[f"{split}_decoded"] = np.stack([decode_image(f.data, image_size) for f in files])
    np.savez(out, **arrays)


def article_dataset(encoded, labels, image_size: int, batch_size: int, shuffle: bool):
    """The notebook's input pipeline: all work repeated every epoch."""
    import tensorflow as tf

    def preprocess(data, label):
        image = tf.io.decode_jpeg(data, channels=3)
        image = tf.cast(image, tf.float32) / 255.0
        image = tf.image.resize(image, (image_size, image_size))
        return image, tf.cast(label, tf.float32)

    dataset = tf.data.Dataset.from_tensor_slices((encoded.astype(bytes), labels)).map(preprocess)
    if shuffle:
        dataset = dataset.shuffle(1000)
    return dataset.batch(batch_size)


def fit_once(variant: str, head: str, data_path: str, epochs: int, image_size: int) -> dict:
    """One fit in this process (a fresh one per call); returns its figures as a dict."""
    import keras
    import tensorflow as tf

    from gap_models.data import make_dataset
    from gap_models.hardware import resolve_precision
    from gap_models.models import build_model
    from gap_models.recipes import recalibrate_batch_norm

    spec = VARIANTS[variant]
    if "threads" in spec:
        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"][0])
        tf.config.threading.set_inter_op_parallelism_threads(spec["threads"][1])
    data = np.load(data_path, allow_pickle=True)
    batch_size = spec.get("batch_size", 64)
    precision = resolve_precision(spec["precision"]).value
    keras.utils.set_random_seed(0)
    labels, val_labels = data["train_labels"], data["validation_labels"]
    if spec.get("pipeline") == "article":
        model = build_model(head, image_size, seed=0, rescale=False, batch_norm="keras")
        train = article_dataset(data["train_encoded"], labels, image_size, batch_size, True)
        val = article_dataset(data["validation_encoded"], val_labels, image_size, 64, False)
    else:
        model = build_model(
            head, image_size, seed=0, precision=precision, batch_norm=spec["batch_norm"]
        )
        train = make_dataset(data["train_decoded"], labels, batch_size, shuffle_seed=0)
        val = make_dataset(data["validation_decoded"], val_labels, 64)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=spec.get("jit_compile", False),
    )
    epoch_seconds: list[float] = []
    clock = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epoch_seconds.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: epoch_seconds.__setitem__(
            -1, epoch_seconds[-1] + time.perf_counter()
        ),
    )
    started = time.perf_counter()
    model.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[clock])
    seconds = time.perf_counter() - started
    result = {
        "variant": variant,
        "head": head,
        "precision": precision,
        "images_per_second": len(labels) * epochs / seconds,
        "first_epoch_extra_seconds": epoch_seconds[0] - min(epoch_seconds[1:] or epoch_seconds),
    }
    recalibrate_batch_norm(model, train)
    started = time.perf_counter()
    _loss, result["val_accuracy"] = model.evaluate(val, verbose=0)
    result["validation_pass_seconds"] = time.perf_counter() - started
    if variant == "default":
        started = time.perf_counter()
        model.predict(data["validation_decoded"], batch_size=256, verbose=0)
        result["predict_pass_seconds"] = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            model.save(Path(folder) / "model.keras")
            keras.saving.load_model(Path(folder) / "model.keras")
            result["save_load_seconds"] = time.perf_counter() - started
    return result


def run_in_subprocess(variant: str, head: str, data_path: str, args) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **VARIANTS[variant].get("env", {})}
    command = [
        sys.executable,
        __file__,
        "--one",
        variant,
        "--head-one",
        head,
        "--data",
        data_path,
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # reported in the table, not fatal: other variants still run
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return {"variant": variant, "head": head, "failed": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe_machine() -> str:
    from gap_models.hardware import detect, resolve_precision

    hardware = detect()
    choice = resolve_precision("auto", hardware)
    return (
        f"CPU: {hardware.cpu_model}, {os.cpu_count()} cores; flags: {hardware.reported_flags()}"
        f"\nprecision=auto resolves to {choice.value} ({choice.reason})"
        f"\nONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}"
    )


def print_table(results: list[dict], heads: list[str], variants: list[str]) -> None:
    print(
        f"\n{'head':<10} {'variant':<12} {'precision':<15} {'median':>7} {'min':>7} {'max':>7}"
        "  ratio to article: median (min..max per repeat)  val acc."
    )
    for head in heads:
        by_variant = {
            variant: [r for r in results if r["head"] == head and r["variant"] == variant]
            for variant in variants
        }
        base = [r.get("images_per_second", 0.0) for r in by_variant.get("article", [])]
        for variant, runs in by_variant.items():
            if any("failed" in r for r in runs):
                print(f"{head:<10} {variant:<12} failed: {runs[0].get('failed', '')}")
                continue
            rates = [r["images_per_second"] for r in runs]
            line = (
                f"{head:<10} {variant:<12} {runs[0]['precision']:<15} "
                f"{statistics.median(rates):7.1f} {min(rates):7.1f} {max(rates):7.1f}"
            )
            if base:
                ratios = [rate / b for rate, b in zip(rates, base, strict=True)]
                line += f"  {statistics.median(ratios):5.2f} ({min(ratios):.2f}..{max(ratios):.2f})"
            line += f"  {statistics.median(r['val_accuracy'] for r in runs):.3f}"
            print(line)
    print("\nWhere the default's time goes (median over repeats, seconds):")
    for head in heads:
        runs = [
            r
            for r in results
            if r["head"] == head and r["variant"] == "default" and "failed" not in r
        ]
        if not runs:
            continue
        fields = (
            "first_epoch_extra_seconds",
            "validation_pass_seconds",
            "predict_pass_seconds",
            "save_load_seconds",
        )
        print(
            f"  {head:<10} "
            + ", ".join(
                f"{field.removesuffix('_seconds')} {statistics.median(r[field] for r in runs):.2f}"
                for field in fields
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", default=str(ROOT.parent / "shared/data/kagglecatsanddogs_180px.zip")
    )
    parser.add_argument("--heads", nargs="+", default=["fc", "gap"])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=100)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--head-one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(
            json.dumps(fit_once(args.one, args.head_one, args.data, args.epochs, args.image_size))
        )
        return

    print(describe_machine(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        data_path = str(Path(folder) / "photos.npz")
        select(args.source, args.train_images, args.val_images, args.image_size, Path(data_path))
        print(
            f"{args.train_images} train / {args.val_images} validation photos from {args.source}; "
            f"{args.epochs} epochs, {args.repeats} repeats, one process per fit",
            flush=True,
        )
        for repeat in range(args.repeats):
            for head in args.heads:
                for variant in args.variants:
                    result = run_in_subprocess(variant, head, data_path, args)
                    results.append(result)
                    figure = result.get("failed") or f"{result['images_per_second']:7.1f} images/s"
                    print(f"  repeat {repeat + 1} {head:<10} {variant:<12} {figure}", flush=True)
    print_table(results, args.heads, args.variants)


if __name__ == "__main__":
    main()
