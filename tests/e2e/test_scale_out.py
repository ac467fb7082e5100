"""Scale-out, for real on loopback: PostgreSQL behind both servers, basic auth on both,
and the models of a flow run trained on a Dask cluster (a `dask scheduler` and two
`dask worker` processes) that the worker's flow runs reach via COMPARE_HEADS_DASK_ADDRESS.

The Dask workers are started the way the README tells a team to start them on other hosts:
with PREFECT_API_URL, PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_URI and the MLflow user in
their environment. Tests run in file order: the last one kills a Dask worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    ON_DEMAND,
    REQUEST_SECONDS,
    VENV_BIN,
    Services,
    child_runs_of,
    free_port,
    mlflow_client,
    parent_of,
    start_deployment,
    start_services,
    wait_for,
    wait_for_final_state,
)
from tests.fixtures import REGISTERED_MODEL

pytestmark = pytest.mark.e2e

MLFLOW_USER, MLFLOW_PASSWORD = "admin", "e2e-Secret-4711"
PREFECT_AUTH = "prefect-admin:e2e-Prefect-0815"
SMALL = {"image_size": 40, "batch_size": 16}
# The long run's epochs (0.5-1.5 s each on a 1-thread Dask worker): a window of epochs 2 to
# 9 to be caught in mid-training (each look takes well under a second), and few enough that
# the survivor's and the resumed model's training stay short.
LONG_EPOCHS = 14
WORKER_TAG = "compare_heads.worker"


@dataclass
class DaskCluster:
    address: str
    workers: dict[str, subprocess.Popen]  # worker address -> its `dask worker` process
    log_dir: Path

    def logs(self) -> str:
        return "\n".join(
            f"---- {log.name} ----\n"
            + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            for log in sorted(self.log_dir.glob("*.log"))
        )


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed whole, like a lost host
    )


@contextlib.contextmanager
def dask_cluster(home: Path, env: dict[str, str]) -> Iterator[DaskCluster]:
    """A scheduler and two single-threaded workers on loopback, as separate processes."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    home.mkdir(parents=True, exist_ok=True)
    processes = [
        _spawn(
            [str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"],
            env,
            home / "scheduler.log",
        )
    ]  # fmt: skip
    worker_ports = [free_port(), free_port()]
    workers = {}
    try:
        for index, worker_port in enumerate(worker_ports):
            process = _spawn(
                [str(VENV_BIN / "dask"), "worker", address, "--nthreads", "1", "--host",
                 "127.0.0.1", "--worker-port", str(worker_port), "--no-dashboard",
                 "--no-nanny", "--name", f"worker-{index}"],
                {**env, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"},
                home / f"worker-{index}.log",
            )  # fmt: skip
            processes.append(process)
            workers[f"tcp://127.0.0.1:{worker_port}"] = process
        from distributed import Client

        with Client(address, timeout=120, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=300)
        yield DaskCluster(address, workers, home)
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster_services(tmp_path_factory) -> Iterator[tuple[Services, DaskCluster]]:
    home = tmp_path_factory.mktemp("scale-out")
    # PostgreSQL runs as user "postgres" when the tests run as root: its data folder must be
    # somewhere that user can reach (pytest's own temporary folders are private to root).
    postgres_dir = Path(tempfile.mkdtemp(prefix="compare-heads-pg-"))
    postgres_dir.chmod(0o755)
    secrets = {
        "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
        "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
        "PREFECT_API_AUTH_STRING": PREFECT_AUTH,
    }
    mlflow_port, prefect_port = free_port(), free_port()
    cluster_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
        **secrets,
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        # A separate cache: workers read the flow's when it exists, else build the same one.
        "COMPARE_HEADS_CACHE_DIR": str(home / "worker-cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    try:
        with (
            dask_cluster(home / "dask", cluster_env) as cluster,
            start_services(
                home,
                {
                    **secrets,
                    "MLFLOW_PORT": str(mlflow_port),
                    "PREFECT_PORT": str(prefect_port),
                    "COMPARE_HEADS_MLFLOW_AUTH": "1",
                    "COMPARE_HEADS_PREFECT_AUTH": "1",
                    "COMPARE_HEADS_DATABASE": "postgres",
                    "COMPARE_HEADS_POSTGRES_DIR": str(postgres_dir),
                    "COMPARE_HEADS_POSTGRES_PORT": str(free_port()),
                    "COMPARE_HEADS_WORKER_LIMIT": "2",
                    "COMPARE_HEADS_DASK_ADDRESS": cluster.address,
                    # A team server's artifact store (a bucket there; a folder here).
                    "COMPARE_HEADS_ARTIFACTS": str(home / "team-artifacts"),
                },
            ) as services,
        ):
            yield services, cluster
    finally:
        shutil.rmtree(postgres_dir, ignore_errors=True)


def query(cluster_services, database: str, sql: str) -> list:
    """The first column of a query on our PostgreSQL server, as its admin."""
    import psycopg2

    services, _cluster = cluster_services
    postgres_dir = Path(services.env["COMPARE_HEADS_POSTGRES_DIR"])
    connection = psycopg2.connect(
        host="127.0.0.1",
        port=int(services.env["COMPARE_HEADS_POSTGRES_PORT"]),
        user="compare_heads",
        password=(postgres_dir / "password").read_text().strip(),
        dbname=database,
        connect_timeout=10,
    )
    with contextlib.closing(connection), connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def authenticated(monkeypatch):
    """This test's own MLflow client logs in like the flow's."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD)


def test_both_servers_run_on_postgres_and_refuse_anonymous_requests(cluster_services):
    services, _cluster = cluster_services
    mlflow_search = f"{services.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=5"
    flows = f"{services.prefect_api_url}/flows/filter"
    user, password = PREFECT_AUTH.split(":")
    with httpx.Client(timeout=REQUEST_SECONDS) as http:
        assert http.get(mlflow_search).status_code == 401
        assert http.get(mlflow_search, auth=(MLFLOW_USER, "wrong")).status_code == 401
        assert http.get(mlflow_search, auth=(MLFLOW_USER, MLFLOW_PASSWORD)).status_code == 200
        assert http.post(flows, json={}).status_code == 401
        assert http.post(flows, json={}, auth=(user, "wrong")).status_code == 401
        assert http.post(flows, json={}, auth=(user, password)).status_code == 200
    # Neither server made a SQLite file: their stores are the PostgreSQL databases.
    assert not (services.home / "mlflow" / "mlflow.db").exists()
    assert not (services.home / "services" / "prefect" / "prefect.db").exists()
    assert {"compare_heads_mlflow", "compare_heads_prefect"} <= set(
        query(cluster_services, "postgres", "SELECT datname FROM pg_database")
    )


def running_children(services: Services, parent_id: str) -> list:
    client = mlflow_client(services)
    experiment = client.get_experiment_by_name("compare-heads")
    return client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'",
    )


def test_models_train_on_both_dask_workers_and_a_lost_one_loses_no_model(
    cluster_services, pet_images, authenticated
):
    """Two flow runs at once on the cluster: the long one's two models train on the two
    workers; one worker is killed mid-training; its model is trained again on the other;
    both runs complete, the short one crowns a champion, and all of it is in PostgreSQL."""
    services, cluster = cluster_services
    long = {"source": str(pet_images), **SMALL, "epochs": LONG_EPOCHS, "heads": ["fc", "gap"],
            "promote": False}  # fmt: skip
    short = {"source": str(pet_images), **SMALL, "epochs": 2, "heads": ["gap"]}
    first = start_deployment(services, ON_DEMAND, long)
    second = start_deployment(services, ON_DEMAND, short)

    def training_mid_way():
        client = mlflow_client(services)
        experiment = client.get_experiment_by_name("compare-heads")
        if experiment is None:  # the first flow run has not reached MLflow yet
            return None
        runs = client.search_runs(
            [experiment.experiment_id],
            f"tags.`prefect.flow_run_id` = '{first}' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            worker = run.data.tags.get(WORKER_TAG)
            if "mlflow.parentRunId" not in run.data.tags or worker not in cluster.workers:
                continue
            epochs = len(client.get_metric_history(run.info.run_id, "val_accuracy"))
            if 2 <= epochs < LONG_EPOCHS - 4:
                return run
        return None

    try:
        victim_run = wait_for(training_mid_way, 300, "a model of the first run mid-training", 0.5)
    except AssertionError as error:
        from tests.e2e.harness import flow_run_state, runs_of_flow_run

        seen = [
            (r.info.run_name, r.info.status, r.data.tags.get(WORKER_TAG))
            for r in runs_of_flow_run(services, first)
        ]
        raise AssertionError(
            f"{error}: {flow_run_state(services, first)} {seen}\n{services.logs()}\n"
            f"{cluster.logs()}"
        ) from None
    victim = cluster.workers[victim_run.data.tags[WORKER_TAG]]
    os.killpg(victim.pid, signal.SIGKILL)  # the host is gone: no chance to clean up

    states = [wait_for_final_state(services, run) for run in (first, second)]
    assert [state["type"] for state in states] == ["COMPLETED", "COMPLETED"], (
        f"{states}\n{services.logs()}\n{cluster.logs()}"
    )
    client = mlflow_client(services)
    parent = parent_of(services, first)
    assert parent.info.status == "FINISHED"
    children = child_runs_of(services, parent, status="FINISHED")
    assert set(children) == {("fc", 0), ("gap", 0)}  # every model, once
    failed = child_runs_of(services, parent, status="FAILED")
    assert set(failed) == {(victim_run.data.tags["head"], 0)}  # the lost attempt, kept
    # The lost attempt is closed FAILED with the reason; its model was retrained elsewhere.
    lost = client.get_run(victim_run.info.run_id)
    assert lost.info.status == "FAILED"
    assert "lost" in lost.data.tags["compare_heads.failure"]
    head = victim_run.data.tags["head"]
    assert children[(head, 0)].info.run_id != victim_run.info.run_id
    assert children[(head, 0)].data.tags[WORKER_TAG] != victim_run.data.tags[WORKER_TAG]
    # ... from the lost attempt's last saved epoch (the workers share one cache folder).
    assert children[(head, 0)].data.metrics["resumed_at_epoch"] >= 1
    assert running_children(services, parent.info.run_id) == []
    # The two models of the long run trained on the two workers at once: the survivor's
    # model finished there, and the lost one had started on the other.
    other = next(h for h in children if h != (head, 0))
    assert {children[other].data.tags[WORKER_TAG], victim_run.data.tags[WORKER_TAG]} == set(
        cluster.workers
    )
    assert all(run.data.metrics["process_peak_memory_mb"] > 100 for run in children.values())
    short_parent = parent_of(services, second)
    assert short_parent.info.status == "FINISHED"
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    short_children = child_runs_of(services, short_parent, status="FINISHED")
    assert champion.run_id in {run.info.run_id for run in short_children.values()}
    # What the UIs show lives in PostgreSQL: MLflow's runs and Prefect's flow runs.
    run_ids = query(cluster_services, "compare_heads_mlflow", "SELECT run_uuid FROM runs")
    assert {parent.info.run_id, short_parent.info.run_id} <= set(run_ids)
    # ... and the models in the artifact store it was given, uploaded through the server.
    stored = list((services.home / "team-artifacts").rglob("MLmodel"))
    assert len(stored) >= len(children) + len(short_children), stored
    assert not list((services.home / "mlflow").rglob("MLmodel"))
    flow_runs = query(cluster_services, "compare_heads_prefect", "SELECT id::text FROM flow_run")
    assert {first, second} <= set(flow_runs)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, "COMPARE_HEADS_MLFLOW_AUTH=1 and COMPARE_HEADS_PREFECT_AUTH=1"),
        ({"COMPARE_HEADS_MLFLOW_AUTH": "1", "MLFLOW_TRACKING_PASSWORD": "x"}, "refused"),
    ],
)
def test_binding_beyond_loopback_without_both_auths_is_refused(tmp_path, settings, named):
    from tests.e2e.harness import SERVICES_SCRIPT, client_environment

    env = client_environment(
        {
            "COMPARE_HEADS_BIND_HOST": "0.0.0.0",
            "COMPARE_HEADS_SERVICES_DIR": str(tmp_path / "services"),
            "COMPARE_HEADS_MLFLOW_DIR": str(tmp_path / "mlflow"),
            "COMPARE_HEADS_WRITE_PREFECT_TOML": "0",
            "MLFLOW_PORT": str(free_port()),
            "PREFECT_PORT": str(free_port()),
            **settings,
        }
    )
    completed = subprocess.run(
        [str(SERVICES_SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1
    assert named in completed.stderr
    assert not list((tmp_path / "services").glob("*.pid")), "nothing may have started"


def test_an_unknown_database_setting_is_refused(tmp_path):
    from tests.e2e.harness import SERVICES_SCRIPT, client_environment

    env = client_environment(
        {
            "COMPARE_HEADS_DATABASE": "mysql://somewhere",
            "COMPARE_HEADS_SERVICES_DIR": str(tmp_path / "services"),
            "COMPARE_HEADS_MLFLOW_DIR": str(tmp_path / "mlflow"),
            "COMPARE_HEADS_WRITE_PREFECT_TOML": "0",
        }
    )
    completed = subprocess.run(
        [str(SERVICES_SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1
    assert "use sqlite, postgres or postgresql://" in completed.stderr
