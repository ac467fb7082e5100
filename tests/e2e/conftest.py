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
    FlowRunResult,
    Services,
    start_services,
)
from tests.fixtures import make_pet_images  # noqa: E402


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Iterator[Services]:
    """MLflow server, Prefect server, a worker and the deployments, all torn down after."""
    with start_services(tmp_path_factory.mktemp("e2e-services")) as running:
        yield running


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
