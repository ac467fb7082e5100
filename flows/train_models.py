"""The models of one flow run, each its own task, where the run's settings place them.

A subflow, so that its task runner is chosen per flow run (flows/runners.py): the flow's
own task runner is fixed when the module is loaded. It lives in an importable module, not
in the deployment's entrypoint file: a Dask scheduler unpickles the task graph, and Prefect
loads an entrypoint file under a bare module name that no other process can import.
"""

from __future__ import annotations

import contextlib

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.futures import as_completed, wait

from flows import runners
from gap_models.config import RunConfig
from tasks.cell import CellOutcome, train_and_evaluate
from tracking import recovery, runs
from tracking.cells import CellJob, clear_stop, request_stop


def train_models_on(
    config: RunConfig,
    cache_dir: str,
    experiment_id: str,
    parent_id: str,
    skipped_images: int,
    cells: list[tuple[str, int]] | None = None,
) -> list[CellOutcome]:
    """Train and score the (head, seed) ``cells`` (default: every one of ``config``) where
    ``config`` places them (flows/runners.py)."""
    cells = [(h, s) for s in config.seeds for h in config.heads] if cells is None else cells
    with get_client(sync_client=True) as prefect_client:
        api_url = str(prefect_client.api_url)
    where = runners.placement(config, api_url, runs.tracking_uri())
    get_run_logger().info("Training %d models %s", len(cells), where.description)
    return train_models.with_options(task_runner=where.runner)(
        cache_dir, config, experiment_id, parent_id, skipped_images, cells
    )


@flow(name="train-models", log_prints=True)
def train_models(
    cache_dir: str,
    config: RunConfig,
    experiment_id: str,
    parent_id: str,
    skipped_images: int,
    cells: list[tuple[str, int]],
) -> list[CellOutcome]:
    """Every (head, seed) cell as its own task on this flow's task runner; results in submission
    order. Each result is fetched and released as soon as its task ends, so a worker that
    dies later holds nothing Dask would compute again. Afterwards no child run is left
    RUNNING (an attempt on a lost worker is closed FAILED). Stopped (Ctrl-C, SIGTERM), every
    model in training pauses at its epoch's end with its checkpoint (``stop``)."""
    clear_stop(parent_id)
    submitted: list = []
    outcomes: dict[int, CellOutcome] = {}
    try:  # a signal while submitting (a local cluster starting) stops what was submitted
        for index, (head, seed) in enumerate(cells, start=1):
            job = CellJob(cache_dir, head, seed, config, experiment_id, parent_id,
                          skipped_images, position=(index, len(cells)))  # fmt: skip
            submitted.append(train_and_evaluate.submit(job))
        order = {id(future): index for index, future in enumerate(submitted)}
        for future in as_completed(submitted):
            outcomes[order[id(future)]] = future.result()
            release(future)
    except (KeyboardInterrupt, TerminationSignal):  # Ctrl-C, SIGTERM: this thread gets them
        pending = [f for index, f in enumerate(submitted) if index not in outcomes]
        stop(parent_id, pending)
        raise
    client = runs.client()
    for run_id in recovery.fail_open_children(
        client, experiment_id, parent_id, "left open by a lost worker; its model was retrained"
    ):
        get_run_logger().warning("Marked MLflow run %s FAILED: its worker was lost", run_id)
    return [outcomes[index] for index in range(len(submitted))]


def stop(parent_id: str, pending: list) -> None:
    """Pause every model of this flow run at the end of its epoch, its checkpoint kept; those
    not started do not start. In this process the thread pool's exit then cancels the queued
    models and waits for the one training. On Dask the signal reached only this process: the
    workers are asked too (a worker plugin, so one that starts later is asked as well), and
    this waits for their models, else a local cluster closed with this process and its
    workers lost their epoch in progress. Not when the run is being cancelled (its runner
    kills it 30 s after the signal), and a second Ctrl-C or SIGTERM ends the wait at once."""
    request_stop(parent_id)
    logger = get_run_logger()
    logger.warning(
        "Stopping: the model in training pauses at the end of its epoch, its checkpoint "
        "kept (running it again resumes it); kill -9 stops at once, losing that epoch"
    )
    workers = _dask_client()
    if workers is None or _cancelling():
        return
    from tracking.dask_stop import PauseFlowRun

    plugin = PauseFlowRun(parent_id)
    try:
        workers.register_plugin(plugin)
    except Exception as error:  # the scheduler is gone: nothing left there to pause
        logger.warning("Could not ask the Dask workers to pause their models: %s", error)
        return
    wait(pending)
    with contextlib.suppress(Exception):  # never in place of the signal being handled
        workers.unregister_worker_plugin(plugin.name)  # a scheduler's workers outlive it


def _cancelling() -> bool:
    """Whether Prefect's runner is cancelling this flow run (a deployment run cancelled in
    the UI or CLI): it sends SIGTERM, then kills the process 30 s later, so waiting for an
    epoch to end would only lose the clean-up."""
    try:
        from prefect._internal import control_listener
    except ImportError:  # a Prefect without the control channel: no intent to read
        return False
    return control_listener.get_intent() == "cancel"


def _dask_client():
    """The Dask client of this flow's task runner, None when models train in this process."""
    runner = FlowRunContext.get().task_runner
    if type(runner).__module__.startswith("prefect_dask"):
        # Its client once made (the ``client`` property would start a cluster if stopped
        # while the first one was starting).
        return getattr(runner, "_client", None)
    return None


def release(future) -> None:
    """Let Dask forget a consumed result (a no-op for in-process futures)."""
    wrapped = getattr(future, "wrapped_future", None)
    if hasattr(wrapped, "release"):
        wrapped.release()
