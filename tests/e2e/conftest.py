"""End-to-end set-up: a real MLflow server, Prefect server and worker on loopback.

The services are started by the same script as `make up` (scripts/services.sh), pointed by
environment variables at free ports and a temporary home, so nothing here touches the
checkout's own mlflow/, .services/, outputs/ or prefect.toml. The deployments are applied
from the repository's prefect.yaml, and one small `compare-heads` flow run is shared by
every test that only reads its results.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Plain asserts in the helpers explain themselves too.
pytest.register_assert_rewrite("tests.e2e.harness")

from tests.e2e.harness import (  # noqa: E402
    FIRST_RUN_PARAMS,
    IMAGES_PER_CLASS,
    ON_DEMAND,
    SERVICES_SCRIPT,
    STARTUP_SECONDS,
    VENV_BIN,
    FlowRunResult,
    Services,
    client_environment,
    free_port,
    kill_leftovers,
)
from tests.fixtures import make_pet_images  # noqa: E402


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
                    f"{completed.stdout}\n{completed.stderr}\n{running.logs()}",
                    pytrace=False,
                )
        yield running
    finally:
        try:
            running.run(SERVICES_SCRIPT, "down", timeout=120)
        finally:
            kill_leftovers(home / "services")


@pytest.fixture(scope="session")
def pet_images(tmp_path_factory) -> Path:
    """A small generated data set in the official PetImages/{Cat,Dog} layout."""
    return make_pet_images(tmp_path_factory.mktemp("pets"), per_class=IMAGES_PER_CLASS)


@pytest.fixture(scope="session")
def first_run(services: Services, pet_images: Path) -> FlowRunResult:
    """One on-demand run of the real deployment on the generated data, shared by the tier."""
    return services.run_deployment(ON_DEMAND, {"source": str(pet_images), **FIRST_RUN_PARAMS})


@pytest.fixture(scope="session")
def completed_first_run(first_run: FlowRunResult) -> FlowRunResult:
    """The shared run, once it completed (its output is in test_on_demand_run_completes)."""
    if first_run.returncode != 0:
        pytest.fail(
            f"the shared flow run {first_run.flow_run_name} did not complete "
            f"(exit {first_run.returncode}): see test_on_demand_run_completes",
            pytrace=False,
        )
    return first_run
