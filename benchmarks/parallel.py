"""One machine, two ways to train a study's models: one after another in the flow's process
(TensorFlow using every core), or on a local Dask cluster of single-threaded workers, one
model each at a time. Prints the wall time of the models' phase (train + evaluate) and of
the whole flow per arm, their ratio per interleaved repeat, and each Dask worker's peak
resident memory, with the CPU flags beside them.

Each arm is a fresh Python process running the real flow in-process (temporary Prefect
server, a throw-away SQLite MLflow store); the preprocessed cache is built once before the
first repeat and shared, so only training differs. Repeats alternate the arms, so drift on
this shared machine hits both alike: compare the ratio, not the seconds.

    .venv/bin/python benchmarks/parallel.py --source ../shared/data/kagglecatsanddogs_180px.zip
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARM_SCRIPT = """
import json, sys
from mlflow import MlflowClient
from flows.compare_heads import compare_heads

if __name__ == "__main__":
    params = json.loads(sys.argv[1])
    result = compare_heads(**params)
    client = MlflowClient(result.tracking_uri)
    workers = {}
    for trained in result.trained:
        run = client.get_run(trained.run_id)
        worker = run.data.tags.get("compare_heads.worker", "?")
        peak = run.data.metrics.get("process_peak_memory_mb", 0.0)
        workers[worker] = max(workers.get(worker, 0.0), peak)
    print("ARM-RESULT " + json.dumps({
        "models_seconds": result.timing["phase_seconds_train_evaluate"],
        "flow_seconds": result.timing["flow_seconds"],
        "flow_peak_mb": result.timing["peak_memory_mb"],
        "worker_peak_mb": workers,
        "accuracy": {row["head"]: round(row["test_accuracy"], 4) for row in result.rows},
    }))
"""


def run_arm(params: dict, home: Path) -> dict:
    """The flow in a fresh process with these parameters; its ARM-RESULT line as a dict."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "COMPARE_HEADS_OUTPUT_DIR": str(home / "outputs"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("PREFECT_API_URL", None)
    completed = subprocess.run(
        [sys.executable, "-c", ARM_SCRIPT, json.dumps(params)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("ARM-RESULT "):
            return json.loads(line.removeprefix("ARM-RESULT "))
    raise RuntimeError(
        f"arm {params} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", default=str(ROOT.parent / "shared/data/kagglecatsanddogs_180px.zip")
    )
    parser.add_argument("--max-images", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--heads", default="fc,fc_dropout,gap")
    args = parser.parse_args()

    from gap_models.hardware import detect

    hardware = detect()
    print(f"CPU: {hardware.cpu_model}, {os.cpu_count()} cores; flags: {hardware.reported_flags()}")
    base = {
        "source": args.source,
        "max_images": args.max_images,
        "epochs": args.epochs,
        "heads": args.heads.split(","),
        "promote": False,
    }
    arms = {
        "sequential": {"workers": 0},
        f"dask-{args.workers}x1": {"workers": args.workers, "threads_per_worker": 1},
    }
    print(f"study: {base}")
    with tempfile.TemporaryDirectory(prefix="parallel-bench-") as scratch:
        home = Path(scratch)
        os.environ.setdefault("COMPARE_HEADS_CACHE_DIR", str(home / "cache"))
        from gap_models.data import preprocess

        preprocess(args.source, 100, [80, 10, 10], args.max_images)  # shared, built once
        ratios = []
        results: dict[str, list[dict]] = {name: [] for name in arms}
        for repeat in range(args.repeats):
            order = list(arms) if repeat % 2 == 0 else list(reversed(arms))
            for name in order:
                result = run_arm({**base, **arms[name]}, home)
                results[name].append(result)
                print(
                    f"repeat {repeat + 1} {name:14s} models {result['models_seconds']:7.1f} s  "
                    f"flow {result['flow_seconds']:7.1f} s  flow peak "
                    f"{result['flow_peak_mb']:6.0f} MB  worker peaks "
                    f"{ {w: round(mb) for w, mb in result['worker_peak_mb'].items()} }",
                    flush=True,
                )
            sequential, parallel = (results[name][-1]["models_seconds"] for name in arms)
            ratios.append(sequential / parallel)
        print("\nsequential / dask (models phase), per repeat:", [f"{r:.2f}" for r in ratios])
        print(f"median ratio {statistics.median(ratios):.2f} (> 1: Dask faster)")
        for name in arms:
            print(f"{name}: accuracies {results[name][0]['accuracy']}")


if __name__ == "__main__":
    main()
