import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server on SQLite for the whole integration tier (a generous
    start-up limit: a busy CI machine must not fail a test by being slow)."""
    with prefect_test_harness(server_startup_timeout=600):
        yield
