"""The flow's models on a local Dask cluster (``workers=2``), in-process under
prefect_test_harness: the worker processes report to the same Prefect server and MLflow
store, and each child run names the worker that trained it."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from flows.compare_heads import compare_heads
from tests.fixtures import child_runs, make_pet_images

pytestmark = pytest.mark.integration


def test_models_train_on_local_dask_workers(tmp_path, prefect_harness, monkeypatch):
    photos = make_pet_images(tmp_path / "photos", per_class=40)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("COMPARE_HEADS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COMPARE_HEADS_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("COMPARE_HEADS_DASK_ADDRESS", raising=False)
    result = compare_heads(
        source=str(photos),
        image_size=40,
        batch_size=16,
        epochs=1,
        heads=["gap", "fc"],
        seeds=[0],
        promote=False,
        workers=2,
        threads_per_worker=1,
    )
    client = MlflowClient(tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["workers"] == "2"
    children = child_runs(client, parent.info.experiment_id, result.parent_run_id)
    assert set(children) == {("gap", 0), ("fc", 0)}
    assert {run.info.status for run in children.values()} == {"FINISHED"}
    workers = {run.data.tags["compare_heads.worker"] for run in children.values()}
    # Dask worker addresses on loopback, not this process.
    assert all(worker.startswith("tcp://127.0.0.1:") for worker in workers), workers
    assert {run.data.tags["compare_heads.pid"] for run in children.values()} != {str(os.getpid())}
    assert all("test_accuracy" in run.data.metrics for run in children.values())
    assert all(run.data.metrics["process_peak_memory_mb"] > 100 for run in children.values())
    # The results come back in the order the models were listed.
    assert [(t.head, t.seed) for t in result.trained] == [("gap", 0), ("fc", 0)]
