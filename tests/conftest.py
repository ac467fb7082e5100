"""Shared test set-up: quiet, offline Prefect, and per-test homes for caches and outputs."""

from __future__ import annotations

import os

import pytest

# Set before Prefect is imported anywhere: no telemetry (no network here), quiet logs.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A throw-away SQLite MLflow store, preprocessing cache and output folder for one
    test (set in the environment, as a user would); returns the tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("COMPARE_HEADS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COMPARE_HEADS_OUTPUT_DIR", str(tmp_path / "outputs"))
    return uri
