"""Recovery: what a later flow run needs to resume or clean up after an interrupted one.

Every child run carries a key (``gap_models.records.cell_key``: its data, head, seed,
training settings and code version) and the flow run and process that write it. A new flow run adopts finished children of an interrupted one
with the same key instead of retraining them, and closes runs whose writer is gone, so no
run is left RUNNING after a crash.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable

from mlflow.tracking import MlflowClient

from gap_models.records import (
    FAILURE_TAG,
    FLOW_RUN_TAG,
    GIT_COMMIT_TAG,
    OWNER_HOST_TAG,
    OWNER_PID_TAG,
    PARENT_RUN_TAG,
    RESUMED_TAG,
    RUN_KEY_TAG,
    SELECTION_METRIC,
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    TEST_ACCURACY,
    WORKER_TAG,
)
from tracking.runs import finish_run, repo_root


def find_resumable(
    mlflow_client: MlflowClient,
    experiment_id: str,
    key: str,
    is_active: Callable[[str], bool] = lambda flow_run_id: False,
    current_flow_run_id: str = "",
):
    """A finished, evaluated child run with this key whose parent flow run did not finish
    (it crashed, was killed or failed later): its results can be reused, not retrained.

    A parent still RUNNING belongs to a flow run that may be alive (two runs of the same
    settings at once): its children are only taken when Prefect says that flow run is over,
    or its process on this host is gone."""
    runs = mlflow_client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        parent_id = run.data.tags.get(PARENT_RUN_TAG)
        scored = {TEST_ACCURACY, SELECTION_METRIC} <= set(run.data.metrics)
        if not scored or parent_id is None:
            continue
        parent = mlflow_client.get_run(parent_id)
        if parent.info.status == "FINISHED":
            continue
        owner = parent.data.tags.get(FLOW_RUN_TAG, "")
        alive = (
            parent.info.status == "RUNNING"
            and owner
            and owner != current_flow_run_id
            and not owner_is_dead(parent.data.tags)
            and is_active(owner)
        )
        if not alive:
            return run
    return None


def flow_run_is_active(flow_run_id: str) -> bool:
    """Whether Prefect knows this flow run and it has not reached a final state."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as prefect_client:
            state = prefect_client.read_flow_run(UUID(flow_run_id)).state
    except (ObjectNotFound, ValueError):
        return False
    return state is not None and not state.is_final()


def adopt_run(mlflow_client: MlflowClient, run, parent_run_id: str) -> None:
    """Move a reused child under the current parent, noting where it came from."""
    previous = run.data.tags.get(PARENT_RUN_TAG, "")
    mlflow_client.set_tag(run.info.run_id, RESUMED_TAG, previous)
    mlflow_client.set_tag(run.info.run_id, PARENT_RUN_TAG, parent_run_id)


def worker_name() -> str:
    """The Dask worker this code runs on (its address), else ``host:pid`` of this process."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not inside a Dask worker
        return f"{socket.gethostname()}:{os.getpid()}"


def owner_tags() -> dict[str, str]:
    """Which process writes a run: lets a later run on this host see that it died, and
    shows which Dask worker trained a model."""
    return {
        OWNER_HOST_TAG: socket.gethostname(),
        OWNER_PID_TAG: str(os.getpid()),
        WORKER_TAG: worker_name(),
    }


def owner_is_dead(tags: dict[str, str]) -> bool:
    """True when the run's writer ran on this host and its process no longer exists."""
    if tags.get(OWNER_HOST_TAG) != socket.gethostname():
        return False
    try:
        os.kill(int(tags.get(OWNER_PID_TAG, "")), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def fail_stale_runs(
    mlflow_client: MlflowClient,
    experiment_id: str,
    current_flow_run_id: str,
    is_active: Callable[[str], bool],
) -> list[str]:
    """Mark FAILED every RUNNING run whose Prefect flow run is over (or is this one being
    retried: nothing of ours runs yet), or whose writing process on this host is gone (a
    killed worker's flow run stays Running in Prefect until its heartbeat is missed). Such
    runs are left by a killed worker or a lost tracking server; returns their ids."""
    reaped = []
    for run in mlflow_client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        flow_run_id = tags.get(FLOW_RUN_TAG)
        if not flow_run_id:
            continue
        over = flow_run_id == current_flow_run_id or owner_is_dead(tags)
        if not over and is_active(flow_run_id):
            continue
        mlflow_client.set_tag(
            run.info.run_id,
            FAILURE_TAG,
            f"Prefect flow run {flow_run_id} ended without closing this run (found by a later run)",
        )
        finish_run(mlflow_client, run.info.run_id, failed=True)
        reaped.append(run.info.run_id)
    return reaped


def fail_open_children(
    mlflow_client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    reason: str,
    key: str | None = None,
) -> list[str]:
    """Mark FAILED the parent's children still RUNNING (only those with ``key`` when given).

    Within a live flow run such a child is an attempt whose process died: Dask runs a model
    again on another worker only when the worker that held it is lost, and after every model
    returned, no child of the parent may still be open. Returns their ids."""
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    if key is not None:
        query += f" and tags.`{RUN_KEY_TAG}` = '{key}'"
    closed = []
    for run in mlflow_client.search_runs([experiment_id], query):
        mlflow_client.set_tag(run.info.run_id, FAILURE_TAG, reason)
        finish_run(mlflow_client, run.info.run_id, failed=True)
        closed.append(run.info.run_id)
    return closed


def current_flow_run_id() -> str:
    """The top-level Prefect flow run this code runs in ("" outside one): the compare-heads
    flow run also for tasks of its ``train-models`` subflow, wherever they run."""
    from prefect.runtime import flow_run

    return str(flow_run.get_root_flow_run_id() or "")


def adopt_finished_run(
    mlflow_client: MlflowClient, experiment_id: str, key: str, parent_run_id: str
):
    """The finished child run with this key of an interrupted flow run, moved under
    ``parent_run_id`` (None when there is none: train it)."""
    previous = find_resumable(
        mlflow_client,
        experiment_id,
        key,
        is_active=flow_run_is_active,
        current_flow_run_id=current_flow_run_id(),
    )
    if previous is not None:
        adopt_run(mlflow_client, previous, parent_run_id)
    return previous


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags (the runs table's Source column and the code version
    the UI shows): the entry point, and the git commit when running from a checkout."""
    tags = {SOURCE_NAME_TAG: "flows/compare_heads.py", SOURCE_TYPE_TAG: "PROJECT"}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo_root()), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # not a checkout, or no git
        return tags
    return {**tags, GIT_COMMIT_TAG: commit}


def create_run(
    mlflow_client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> str:
    """A new run (the flow's parent, or a child under ``parent_run_id``), tagged with its
    flow run, its writer and its source code: the one way every run of ours is opened."""
    parent = {PARENT_RUN_TAG: parent_run_id} if parent_run_id else {}
    run = mlflow_client.create_run(
        experiment_id,
        run_name=run_name,
        tags={
            **parent,
            FLOW_RUN_TAG: current_flow_run_id(),
            **owner_tags(),
            **source_tags(),
            **tags,
        },
    )
    return run.info.run_id
