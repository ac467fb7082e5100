"""Do two flow runs' models (same seed, different arithmetic) classify the test split alike?

For each head both runs trained, loads the two logged models of ``--seed``, scores them on
the same test split and runs an exact McNemar test on the photos only one of them gets
right. Used to check that the fast defaults (bfloat16, fused BatchNorm) match the article's
float32 arithmetic within chance:

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 .venv/bin/python benchmarks/precision_agreement.py \
        sweet-fulmar intrepid-leopard --source ../shared/data/kagglecatsanddogs_180px.zip
"""

from __future__ import annotations

import argparse

from mlflow import MlflowClient
from scipy.stats import binomtest

from gap_models.data import load_split, preprocess
from gap_models.evaluation import predict_probabilities
from gap_models.probabilities import predicted_classes
from tracking.logged_model import load_logged_model


def models_of(client: MlflowClient, experiment_id: str, run_name: str, seed: int) -> dict:
    [parent] = client.search_runs([experiment_id], f"attributes.run_name = '{run_name}'")
    children = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return {
        run.data.params["head"]: run.data.tags["model_uri"]
        for run in children
        if run.data.params["seed"] == str(seed)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="flow run name (the MLflow parent run's name)")
    parser.add_argument("second")
    parser.add_argument("--source", default="../shared/data/kagglecatsanddogs_180px.zip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("compare-heads").experiment_id
    first = models_of(client, experiment_id, args.first, args.seed)
    second = models_of(client, experiment_id, args.second, args.seed)
    cache = preprocess(args.source, 100, [80, 10, 10], None).cache_dir
    images, labels = load_split(cache, "test")
    for head in sorted(set(first) & set(second)):
        a = (
            predicted_classes(predict_probabilities(load_logged_model(first[head]), images))
            == labels
        )
        b = (
            predicted_classes(predict_probabilities(load_logged_model(second[head]), images))
            == labels
        )
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        print(
            f"{head:<10} {args.first} {a.mean():.4f}  {args.second} {b.mean():.4f}  "
            f"right only in the first {only_a}, only in the second {only_b}, "
            f"agree on {int((a == b).sum())}/{len(a)}; McNemar exact p = {p:.3f}"
        )


if __name__ == "__main__":
    main()
