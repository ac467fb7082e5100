"""Shared test set-up: quiet, offline Prefect, and per-test homes for caches and outputs."""

from __future__ import annotations

import os
import sys

import pytest

# Set before Prefect is imported anywhere: no telemetry (no network here), quiet logs.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


SHARED_SERVICES_GROUP = "e2e-services"


def pytest_itemcollected(item):
    """Groups for pytest-xdist (``--dist loadgroup``): each test file runs in one process
    (its module-scoped set-up once), and every test of the end-to-end services (the servers,
    the worker and the shared flow run of tests/e2e/conftest.py) in one process, so that
    set-up happens once, not once per test process. (Marked as each test is collected:
    xdist reads the marks into the tests' ids when collection ends.)"""
    if item.get_closest_marker("xdist_group") is None:
        shared = "services" in getattr(item, "fixturenames", ())
        group = SHARED_SERVICES_GROUP if shared else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def shared_serving_checks(tmp_path_factory):
    """One folder of passed fresh-process serving checks for the test process: a kind of
    model (architecture, code, libraries) is loaded in a fresh process once, not once per
    test's cache (15 s or more each on 2 cores). Tests of the check itself use their own."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("serving-checks")
        patch.setenv("COMPARE_HEADS_SERVING_CHECKS_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def no_leaked_mlflow_run(monkeypatch):
    """Fail a test that leaves an MLflow run active, after ending it (MLflow's own suite does
    this): a leaked run becomes the parent or target of the next test's logging.

    Only this thread's active run is visible (MLflow keeps one per thread). Requesting
    ``monkeypatch`` tears this down before the test's environment (its tracking URI) is
    restored, so the run is ended in the store it lives in. MLflow is looked up, not
    imported: if no test code imported it, no run can be open.
    """
    yield
    active_run = getattr(sys.modules.get("mlflow"), "active_run", None)
    if active_run is None:
        return
    leaked = []
    while (run := active_run()) is not None and run.info.run_id not in leaked:
        leaked.append(run.info.run_id)
        sys.modules["mlflow"].end_run(status="KILLED")
    if leaked:
        pytest.fail(
            f"test left MLflow run(s) {', '.join(leaked)} active (ended now as KILLED): "
            "use `with mlflow.start_run(...)` or call mlflow.end_run()",
            pytrace=False,
        )


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A throw-away SQLite MLflow store, preprocessing cache and output folder for one
    test (set in the environment, as a user would); returns the tracking URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # tracking.runs.client() sets MLflow's process-wide URIs; an earlier test's must not
    # leak into this one's clients (a registry client would read the other store).
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    monkeypatch.setenv("COMPARE_HEADS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COMPARE_HEADS_OUTPUT_DIR", str(tmp_path / "outputs"))
    return uri
