"""Runs left RUNNING by a process that died are closed by the next flow run, and only those."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from mlflow import MlflowClient

from tracking import recovery
from tracking import runs as tracking


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    return int(finished.stdout)


def test_reaper_closes_runs_of_dead_writers_even_while_prefect_says_running(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = tracking.ensure_experiment(client)
    host = socket.gethostname()

    def run(name: str, pid: int, run_host: str = host) -> str:
        tags = {
            recovery.FLOW_RUN_TAG: "flow-run-still-running-in-prefect",
            recovery.OWNER_HOST_TAG: run_host,
            recovery.OWNER_PID_TAG: str(pid),
        }
        return client.create_run(experiment, run_name=name, tags=tags).info.run_id

    dead = run("dead-writer", _dead_pid())
    alive = run("live-writer", os.getpid())
    elsewhere = run("other-host", _dead_pid(), run_host=f"not-{host}")

    reaped = recovery.fail_stale_runs(client, experiment, "current", is_active=lambda _: True)

    assert reaped == [dead]
    assert client.get_run(dead).info.status == "FAILED"
    assert "ended without closing" in client.get_run(dead).data.tags["compare_heads.failure"]
    # A live writer, or one on another machine whose flow run Prefect still calls active,
    # is left alone: only a heartbeat-driven Crashed state (or the end) closes it.
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    # Once Prefect reports their flow run over, they are closed too.
    later = recovery.fail_stale_runs(client, experiment, "current", is_active=lambda _: False)
    assert set(later) == {alive, elsewhere}


def test_finished_heads_of_a_live_concurrent_run_are_not_adopted(tracking_uri):
    """Two runs of the same settings at once: the second must not take the first's
    finished child while the first is still alive; once that run is over, it may."""
    client = MlflowClient(tracking_uri)
    experiment = tracking.ensure_experiment(client)
    parent = client.create_run(
        experiment,
        run_name="live-parent",
        tags={recovery.FLOW_RUN_TAG: "other-flow-run", **recovery.owner_tags()},
    ).info.run_id
    child = client.create_run(
        experiment,
        run_name="gap-seed0",
        tags={"mlflow.parentRunId": parent, recovery.RUN_KEY_TAG: "key-1"},
    ).info.run_id
    client.log_metric(child, "test_accuracy", 0.8)
    client.log_metric(child, "final_val_accuracy", 0.81)  # scored: adoptable
    tracking.finish_run(client, child)

    def find(active: bool):
        return recovery.find_resumable(
            client, experiment, "key-1", is_active=lambda _: active, current_flow_run_id="me"
        )

    assert find(active=True) is None  # its flow run is alive (and so is its process)
    found = find(active=False)  # Prefect says that flow run is over
    assert found is not None and found.info.run_id == child


def test_open_children_of_a_parent_are_closed_only_for_the_given_key(tracking_uri):
    """A Dask retry closes the lost attempt of its own model (by key), and the end of the
    models' subflow closes whatever child is still open; other parents are untouched."""
    client = MlflowClient(tracking_uri)
    experiment = tracking.ensure_experiment(client)
    parent = client.create_run(experiment, run_name="parent").info.run_id
    other_parent = client.create_run(experiment, run_name="other").info.run_id

    def child(of: str, key: str) -> str:
        tags = {"mlflow.parentRunId": of, recovery.RUN_KEY_TAG: key}
        return client.create_run(experiment, tags=tags).info.run_id

    lost, other_model, elsewhere = (
        child(parent, "k1"),
        child(parent, "k2"),
        child(other_parent, "k1"),
    )
    closed = recovery.fail_open_children(client, experiment, parent, "worker lost", key="k1")
    assert closed == [lost]
    assert client.get_run(lost).info.status == "FAILED"
    assert client.get_run(lost).data.tags["compare_heads.failure"] == "worker lost"
    assert client.get_run(other_model).info.status == "RUNNING"
    assert recovery.fail_open_children(client, experiment, parent, "left open") == [other_model]
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert client.get_run(parent).info.status == "RUNNING"  # the parent is not its own child
