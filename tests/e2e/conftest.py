"""End-to-end set-up: a real MLflow server, Prefect server and worker on loopback.

The services are started by the same script as `make up` (scripts/services.sh), pointed by
environment variables at free ports and a temporary home, so nothing here touches the
checkout's own mlflow/, .services/, outputs/ or prefect.toml. The deployments are applied
from the repository's prefect.yaml, and one small `compare-heads` flow run is shared by
every test that only reads its results.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import make_pet_images

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SERVICES_SCRIPT = REPO_ROOT / "scripts" / "services.sh"
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
    env: dict[str, str]

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


def _client_environment(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment without any Prefect or MLflow settings, plus ours."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "COMPARE_HEADS_"))
    }
    return {**inherited, **overrides}


def _kill_leftovers(services_dir: Path) -> None:
    """Last resort after `services.sh down`: kill any process group still on record."""
    for pid_file in services_dir.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Iterator[Services]:
    """MLflow server, Prefect server, a worker and the deployments, all torn down after."""
    if not (VENV_BIN / "prefect").exists() or not (VENV_BIN / "mlflow").exists():
        pytest.skip(f"{VENV_BIN} lacks prefect/mlflow: run `make venv`")
    home = tmp_path_factory.mktemp("e2e-services")
    mlflow_port = free_port()
    prefect_port = free_port()
    while prefect_port == mlflow_port:
        prefect_port = free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    prefect_url = f"http://127.0.0.1:{prefect_port}"
    env = _client_environment(
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
            "MLFLOW_TRACKING_URI": mlflow_url,
        }
    )
    running = Services(mlflow_url, prefect_url, f"{prefect_url}/api", home, env)
    try:
        for step, timeout in (("up", STARTUP_SECONDS), ("deploy", 180)):
            completed = running.run(SERVICES_SCRIPT, step, timeout=timeout)
            if completed.returncode != 0:
                pytest.fail(
                    f"scripts/services.sh {step} failed ({completed.returncode}):\n"
                    f"{completed.stdout}\n{completed.stderr}\n{running.logs()}"
                )
        yield running
    finally:
        running.run(SERVICES_SCRIPT, "down", timeout=120)
        _kill_leftovers(home / "services")


@pytest.fixture(scope="session")
def pet_images(tmp_path_factory) -> Path:
    """A small generated data set in the official PetImages/{Cat,Dog} layout."""
    return make_pet_images(tmp_path_factory.mktemp("pets"), per_class=IMAGES_PER_CLASS)


@pytest.fixture(scope="session")
def first_run(services: Services, pet_images: Path) -> FlowRunResult:
    """One on-demand run of the real deployment on the generated data, shared by the tier."""
    return services.run_deployment(ON_DEMAND, {"source": str(pet_images), **FIRST_RUN_PARAMS})


@pytest.fixture(scope="session")
def completed_first_run(services: Services, first_run: FlowRunResult) -> FlowRunResult:
    """The shared run; every test that reads its results shows its output if it failed."""
    if first_run.returncode != 0:
        pytest.fail(
            f"`prefect deployment run {ON_DEMAND} --watch` exited {first_run.returncode}:\n"
            f"{first_run.output[-6000:]}\n{services.logs()}"
        )
    return first_run
