"""Helpers of the end-to-end tier: the services under test and how to drive them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from tests.fixtures import child_runs

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SERVICES_SCRIPT = REPO_ROOT / "scripts" / "services.sh"
EXPERIMENT_NAME = "compare-heads"
ON_DEMAND = "compare-heads/compare-heads"
SCHEDULED = "compare-heads/compare-heads-scheduled"
DEEP = "compare-heads/compare-heads-deep"
WATCH = "watch-source/compare-heads-watch"
STARTUP_SECONDS = 300
FLOW_RUN_SECONDS = 600
# One HTTP request to a server: generous, since a busy 2-core machine's SQLite-backed
# Prefect server can stall a request for many seconds (a bound, not a measurement).
REQUEST_SECONDS = 120
# Images per class of the generated data set: large enough that a test split of about a
# dozen images exists, small enough that a run takes seconds.
IMAGES_PER_CLASS = 60
# The first run trains well on the generated (colour-coded) photos, so that it becomes a
# champion that a weaker challenger cannot beat.
FIRST_RUN_PARAMS = {"image_size": 40, "batch_size": 16, "epochs": 3, "heads": ["gap"]}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class FlowRunResult:
    """A `prefect deployment run ... --watch` as the user would see it."""

    returncode: int
    output: str
    flow_run_id: str | None
    flow_run_name: str | None


@dataclass
class Services:
    """Addresses and environment of the running services."""

    mlflow_url: str
    prefect_url: str
    prefect_api_url: str
    home: Path
    env: dict[str, str] = field(repr=False)

    def run(self, *command: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command against these services (their URLs in its environment)."""
        return subprocess.run(
            [str(part) for part in command],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def prefect(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run(VENV_BIN / "prefect", *args, timeout=timeout)

    def run_deployment(self, name: str, params: dict) -> FlowRunResult:
        """Start a run of a deployment and watch it to the end, as the README documents it."""
        completed = self.prefect(
            "deployment", "run", name,
            "--params", json.dumps(params),
            "--watch", "--watch-timeout", str(FLOW_RUN_SECONDS),
            timeout=FLOW_RUN_SECONDS + 60,
        )  # fmt: skip
        output = completed.stdout + completed.stderr
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", output)
        run_name = re.search(r"Created flow run '([^']+)'", output)
        return FlowRunResult(
            completed.returncode,
            output,
            run_id.group(1) if run_id else None,
            run_name.group(1) if run_name else None,
        )

    def logs(self, lines: int = 40) -> str:
        """The last lines of each service's log, for failure messages."""
        parts = []
        for log in (
            self.home / "mlflow" / "server.log",
            self.home / "services" / "prefect-server.log",
            self.home / "services" / "worker.log",
        ):
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            parts.append(f"---- {log.name} ----\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


def client_environment(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment without any Prefect or MLflow settings, plus ours."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "COMPARE_HEADS_"))
    }
    return {**inherited, **overrides}


def kill_leftovers(services_dir: Path) -> None:
    """Last resort after `services.sh down`: kill any process group still on record."""
    for pid_file in services_dir.glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)


def mlflow_client(services: Services) -> MlflowClient:
    return MlflowClient(tracking_uri=services.mlflow_url, registry_uri=services.mlflow_url)


def parent_run_of(services: Services, flow_run: FlowRunResult):
    """The MLflow parent run a flow run created (tagged with the Prefect flow run id)."""
    client = mlflow_client(services)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT_NAME!r}"
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run.flow_run_id}'",
    )
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1, f"expected one parent run for flow run {flow_run.flow_run_id}"
    return parents[0]


def runs_of_flow_run(services: Services, flow_run_id: str) -> list:
    client = mlflow_client(services)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:  # the flow run has not created it yet (the first run of a server)
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    )


def parent_of(services: Services, flow_run_id: str):
    [parent] = [
        run
        for run in runs_of_flow_run(services, flow_run_id)
        if "mlflow.parentRunId" not in run.data.tags
    ]
    return parent


def child_runs_of(
    services: Services, parent: Run, status: str | None = None
) -> dict[tuple[str, int], Run]:
    """The child runs of a parent run (only those in ``status`` when given), by (head, seed)."""
    return child_runs(
        mlflow_client(services), parent.info.experiment_id, parent.info.run_id, status
    )


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run, recursively."""
    files = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            files.extend(artifact_paths(client, run_id, item.path))
        else:
            files.append(item.path)
    return files


@contextlib.contextmanager
def start_services(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[Services]:
    """Start MLflow, Prefect and a worker with scripts/services.sh on free loopback ports (or
    ``MLFLOW_PORT`` / ``PREFECT_PORT`` of ``extra_env``) and a temporary home, apply the
    deployments; stop everything afterwards."""
    if not (VENV_BIN / "prefect").exists() or not (VENV_BIN / "mlflow").exists():
        pytest.skip(f"{VENV_BIN} lacks prefect/mlflow: run `make venv`")
    extra_env = extra_env or {}
    mlflow_port = int(extra_env.get("MLFLOW_PORT") or free_port())
    prefect_port = int(extra_env.get("PREFECT_PORT") or free_port())
    while prefect_port == mlflow_port:
        prefect_port = free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    prefect_url = f"http://127.0.0.1:{prefect_port}"
    env = client_environment(
        {
            "MLFLOW_PORT": str(mlflow_port),
            "PREFECT_PORT": str(prefect_port),
            "COMPARE_HEADS_SERVICES_DIR": str(home / "services"),
            "COMPARE_HEADS_MLFLOW_DIR": str(home / "mlflow"),
            "COMPARE_HEADS_WRITE_PREFECT_TOML": "0",
            # Inherited by the worker, hence by every flow run.
            "COMPARE_HEADS_CACHE_DIR": str(home / "cache"),
            "COMPARE_HEADS_OUTPUT_DIR": str(home / "outputs"),
            # For the clients the tests run (prefect CLI, compare-heads, MlflowClient).
            "PREFECT_HOME": str(home / "services" / "prefect"),
            "PREFECT_API_URL": f"{prefect_url}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # The worker looks for flow runs every 2 s (Prefect's default: 10): the tier
            # waits on it for every deployment run.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "MLFLOW_TRACKING_URI": mlflow_url,
            **extra_env,
        }
    )
    running = Services(mlflow_url, prefect_url, f"{prefect_url}/api", home, env)
    try:
        for step, timeout in (("up", STARTUP_SECONDS), ("deploy", 180)):
            completed = running.run(SERVICES_SCRIPT, step, timeout=timeout)
            if completed.returncode != 0:
                pytest.fail(
                    f"scripts/services.sh {step} failed ({completed.returncode}):\n"
                    f"{completed.stdout}\n{completed.stderr}\n{running.logs()}",
                    pytrace=False,
                )
        yield running
    finally:
        try:
            running.run(SERVICES_SCRIPT, "down", timeout=120)
        finally:
            kill_leftovers(home / "services")


def service_pid(services: Services, name: str) -> int:
    """The pid (and process group) scripts/services.sh recorded for a service."""
    return int((services.home / "services" / f"{name}.pid").read_text().strip())


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (flow runs run in sessions of their own)."""
    found = [pid]
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    for child in children:
        found.extend(process_tree(int(child)))
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and every descendant at once, as a lost machine would."""
    pids = process_tree(pid)
    for victim in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return pids


def start_deployment(services: Services, name: str, params: dict) -> str:
    """Create a flow run of a deployment without watching it; return its id."""
    completed = services.prefect("deployment", "run", name, "--params", json.dumps(params))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    match = re.search(r"UUID: ([0-9a-f-]{36})", completed.stdout + completed.stderr)
    assert match, completed.stdout
    return match.group(1)


def prefect_api(services: Services, method: str, path: str, body: dict | None = None):
    """A call of the Prefect server's REST API (with basic auth when it is on), as JSON."""
    import httpx

    credentials = services.env.get("PREFECT_API_AUTH_STRING")
    response = httpx.request(
        method,
        f"{services.prefect_api_url}{path}",
        json=body,
        auth=tuple(credentials.split(":", 1)) if credentials else None,
        timeout=REQUEST_SECONDS,
    )
    response.raise_for_status()
    return response.json()


def flow_run_state(services: Services, flow_run_id: str) -> dict:
    """The flow run's current state as the Prefect API reports it (type, name, message)."""
    return prefect_api(services, "GET", f"/flow_runs/{flow_run_id}")["state"] or {}


def flow_runs_of_deployment(services: Services, deployment: str) -> list[dict]:
    """Every flow run of the deployment named ``deployment`` (its short name), any state."""
    body = {"deployments": {"name": {"any_": [deployment]}}, "limit": 200}
    return prefect_api(services, "POST", "/flow_runs/filter", body)


def wait_for(condition, timeout: float, what: str, interval: float = 1.0):
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_final_state(services: Services, flow_run_id: str, timeout: float = FLOW_RUN_SECONDS):
    final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    return wait_for(
        lambda: (state := flow_run_state(services, flow_run_id)).get("type") in final and state,
        timeout,
        f"flow run {flow_run_id} to end",
    )
