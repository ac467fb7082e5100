"""Helpers of the end-to-end tier: the services under test and how to drive them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SERVICES_SCRIPT = REPO_ROOT / "scripts" / "services.sh"
EXPERIMENT_NAME = "compare-heads"
ON_DEMAND = "compare-heads/compare-heads"
SCHEDULED = "compare-heads/compare-heads-scheduled"
STARTUP_SECONDS = 300
FLOW_RUN_SECONDS = 600
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
        """Start a run of a deployment and watch it to the end, as documented in SPEC §3."""
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


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run, recursively."""
    files = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            files.extend(artifact_paths(client, run_id, item.path))
        else:
            files.append(item.path)
    return files
