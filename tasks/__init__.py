"""Prefect tasks wrapping the gap_models core; they do the tracking (MLflow) and logging."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run; a plain logger when called directly
    (``task.fn()``), so the task functions also work outside the engine."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("compare_heads")
