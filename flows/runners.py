"""Where the (head, seed) models train: the flow's own process, a local Dask cluster, or an
existing Dask scheduler (prefect-dask's ``DaskTaskRunner``).

A Dask worker runs Prefect's task engine and logs to MLflow itself, so it needs the same
``PREFECT_API_URL`` (and ``PREFECT_API_AUTH_STRING``) and ``MLFLOW_TRACKING_URI`` (and
credentials) as the flow: without them each worker starts a temporary Prefect server of its
own and the run fails. A local cluster gets them from here; the workers of an existing
scheduler must be started with them, and are checked before any model is submitted.
"""

from __future__ import annotations

import functools
import os
import signal
from dataclasses import dataclass

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from gap_models.config import RunConfig


def patient_temporary_server() -> None:
    """An in-process flow run starts a temporary Prefect server unless PREFECT_API_URL names
    one (`make up`'s); on a busy machine it can take far longer than Prefect's 20 s default
    to start. A user's own setting wins. And Ctrl-C does not reach that server: a terminal
    signals its whole foreground process group, and a server stopped by it left the pausing
    run retrying its calls for 5 minutes, to end with status 1. This process stops it at its
    exit, as before."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
    _server_deaf_to_ctrl_c()


@functools.cache
def _server_deaf_to_ctrl_c() -> None:
    """Prefect (3.9) starts the temporary server with a bare ``subprocess.Popen``: start it
    with SIGINT blocked, a mask the child keeps through exec (uvicorn sets handlers, not
    masks), so it stays in this process group (a kill of the group ends it) and ends only
    when stopped."""
    from prefect.server.api import server

    start = getattr(server.SubprocessASGIServer, "_run_uvicorn_command", None)
    if start is None:  # another Prefect: leave its server as it starts it (the drill tells)
        return

    def without_ctrl_c(self):
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return start(self)
        finally:  # a Ctrl-C meanwhile was held pending, and is delivered here
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    server.SubprocessASGIServer._run_uvicorn_command = without_ctrl_c


DASK_ADDRESS_ENV = "COMPARE_HEADS_DASK_ADDRESS"
"""Address of a running Dask scheduler (``tcp://host:8786``): models train on its workers."""

WORKER_SETTINGS = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")
"""What every Dask worker must have in its environment (credentials come beside them)."""

PASSED_TO_WORKERS = (
    "PREFECT_API_AUTH_STRING",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "COMPARE_HEADS_CACHE_DIR",
    "COMPARE_HEADS_TRAIN_UNTIL",
    "ONEDNN_MAX_CPU_ISA",
)
"""Settings of the flow's process a local cluster's workers receive as they are."""


@dataclass(frozen=True)
class Placement:
    """The task runner for the models, and a sentence saying where they will train."""

    runner: TaskRunner
    description: str


def placement(config: RunConfig, prefect_api_url: str, tracking_uri: str) -> Placement:
    """The runner ``config.workers`` and ``$COMPARE_HEADS_DASK_ADDRESS`` ask for."""
    address = os.environ.get(DASK_ADDRESS_ENV, "").strip()
    if address:
        check_remote_workers(address)
        from prefect_dask import DaskTaskRunner

        return Placement(DaskTaskRunner(address=address), f"on the Dask cluster at {address}")
    if config.workers == 0:
        return Placement(
            ThreadPoolTaskRunner(max_workers=1), "in the flow's process, one after another"
        )
    from prefect_dask import DaskTaskRunner

    threads = config.threads_per_worker or max(1, (os.cpu_count() or 1) // config.workers)
    cluster = {
        "n_workers": config.workers,
        "threads_per_worker": 1,  # Dask threads = models at once: one per worker
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
        # Ctrl-C signals the terminal's whole process group, these workers included: they
        # ignore it, and pause their models when the flow asks (train_models.stop).
        "preload": ["tracking.dask_stop"],
        "env": worker_environment(prefect_api_url, tracking_uri, threads),
    }
    return Placement(
        DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster),
        f"on a local Dask cluster of {config.workers} workers x {threads} threads",
    )


def worker_environment(prefect_api_url: str, tracking_uri: str, threads: int) -> dict[str, str]:
    """A local worker's environment: the flow's Prefect API and MLflow store, credentials,
    and TensorFlow limited to its share of the cores (Dask sets OMP_NUM_THREADS=1 itself)."""
    passed = {name: os.environ[name] for name in PASSED_TO_WORKERS if os.environ.get(name)}
    return {
        **passed,
        "PREFECT_API_URL": prefect_api_url,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


def _worker_settings() -> dict[str, str]:
    """Runs on each Dask worker: which of the required settings it has (values not sent)."""
    return {name: "set" for name in WORKER_SETTINGS if os.environ.get(name)}


CONNECT_SECONDS = 30.0
"""How long a flow run waits for the Dask scheduler of COMPARE_HEADS_DASK_ADDRESS to answer."""


def check_remote_workers(address: str) -> None:
    """Fail before any model is submitted when the scheduler is unreachable, has no
    workers, or a worker lacks the Prefect API or MLflow tracking URI."""
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
    except OSError as error:
        raise ConnectionError(
            f"{DASK_ADDRESS_ENV}={address}: no Dask scheduler answers there ({error}); start "
            "one (`dask scheduler`) or unset the variable to train in the flow's process"
        ) from error
    with client:
        found = client.run(_worker_settings)
    if not found:
        raise RuntimeError(f"the Dask scheduler at {address} has no workers: start `dask worker`")
    lacking = {
        worker: [name for name in WORKER_SETTINGS if name not in settings]
        for worker, settings in found.items()
    }
    lacking = {worker: names for worker, names in lacking.items() if names}
    if lacking:
        raise RuntimeError(
            f"Dask workers at {address} lack settings they need to report to Prefect and "
            f"MLflow: {lacking}. Start each `dask worker` with PREFECT_API_URL, "
            "MLFLOW_TRACKING_URI (and PREFECT_API_AUTH_STRING / MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD where the servers ask for them) in its environment"
        )
