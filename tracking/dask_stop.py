"""A stop request for one flow run's models on every Dask worker, those that join later
included (a worker restarted by its nanny, or added to a running scheduler): a worker
plugin, which Dask sets up on each worker it has and each it gets until it is removed.

Also the preload of a local cluster's workers (``dask_setup``): they ignore Ctrl-C's SIGINT,
which a terminal sends to its whole foreground process group, so that only the flow's
process handles it and asks them to pause (a worker that got it closed, its epoch lost and
its model never paused)."""

from __future__ import annotations

import contextlib
import signal

from distributed.diagnostics.plugin import WorkerPlugin

from tracking.cells import clear_stop, request_stop


class PauseFlowRun(WorkerPlugin):
    """While registered, every model of the flow run ``parent_id`` on this worker pauses at
    its epoch's end, and any that has not started does not start."""

    def __init__(self, parent_id: str) -> None:
        self.parent_id = parent_id
        self.name = f"compare-heads-pause-{parent_id}"

    def setup(self, worker) -> None:
        request_stop(self.parent_id)

    def teardown(self, worker) -> None:
        clear_stop(self.parent_id)


def dask_setup(worker) -> None:
    """Run by each worker of a local cluster as it starts (in its main thread)."""
    with contextlib.suppress(ValueError):  # not the main thread: leave it as it is
        signal.signal(signal.SIGINT, signal.SIG_IGN)
