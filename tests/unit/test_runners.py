"""Where the models train: the task runner each setting picks, and the pre-flight check of
an existing Dask cluster's workers."""

from __future__ import annotations

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows import runners
from gap_models.config import RunConfig
from tests.fixtures import make_pet_images


@pytest.fixture
def config(tmp_path):
    return RunConfig(source=str(make_pet_images(tmp_path, per_class=2)))


def test_default_trains_in_the_flows_process_one_model_at_a_time(config, monkeypatch):
    monkeypatch.delenv(runners.DASK_ADDRESS_ENV, raising=False)
    where = runners.placement(config, "http://127.0.0.1:1/api", "sqlite:///x.db")
    assert isinstance(where.runner, ThreadPoolTaskRunner)
    assert where.runner._max_workers == 1
    assert "one after another" in where.description


def test_workers_start_a_loopback_dask_cluster_that_reaches_prefect_and_mlflow(config, monkeypatch):
    monkeypatch.delenv(runners.DASK_ADDRESS_ENV, raising=False)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "user:secret")
    local = config.model_copy(update={"workers": 2, "threads_per_worker": 3})
    where = runners.placement(local, "http://127.0.0.1:4200/api", "http://127.0.0.1:5000")
    assert isinstance(where.runner, DaskTaskRunner)
    cluster = where.runner.cluster_kwargs
    assert cluster["n_workers"] == 2 and cluster["threads_per_worker"] == 1
    assert cluster["host"] == "127.0.0.1"
    env = cluster["env"]
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["PREFECT_API_AUTH_STRING"] == "user:secret"
    assert env["TF_NUM_INTRAOP_THREADS"] == "3"
    assert "2 workers x 3 threads" in where.description


def test_an_unreachable_scheduler_fails_naming_the_setting(config, monkeypatch):
    from tests.e2e.harness import free_port

    monkeypatch.setenv(runners.DASK_ADDRESS_ENV, f"tcp://127.0.0.1:{free_port()}")
    monkeypatch.setattr(runners, "CONNECT_SECONDS", 3.0)  # nothing listens: no need to wait 30
    with pytest.raises(ConnectionError, match=runners.DASK_ADDRESS_ENV):
        runners.placement(config, "http://127.0.0.1:1/api", "sqlite:///x.db")


def test_workers_without_prefect_and_mlflow_settings_are_refused(config, monkeypatch):
    from distributed import LocalCluster

    for name in runners.WORKER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        monkeypatch.setenv(runners.DASK_ADDRESS_ENV, cluster.scheduler_address)
        with pytest.raises(RuntimeError, match="PREFECT_API_URL") as error:
            runners.placement(config, "http://127.0.0.1:1/api", "sqlite:///x.db")
    assert "MLFLOW_TRACKING_URI" in str(error.value)
