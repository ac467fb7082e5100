"""Faults injected for real into running services: two flow runs at once, a worker killed
in the middle of training, and the MLflow server stopped in the middle of a run. (Servers
behind basic auth are tested in test_scale_out.py.)

These services are separate from the shared tier's: the worker runs two flow runs at once,
MLflow clients give up after two quick retries (so a lost server fails a run in seconds,
not minutes), and flow runs send heartbeats every 30 s (a silent one is marked Crashed
after 60 s by the automation scripts/services.sh creates).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import (
    EXPERIMENT_NAME,
    ON_DEMAND,
    SERVICES_SCRIPT,
    Services,
    child_runs_of,
    flow_run_state,
    kill_tree,
    mlflow_client,
    parent_of,
    runs_of_flow_run,
    service_pid,
    start_deployment,
    start_services,
    wait_for,
    wait_for_final_state,
)
from tests.fixtures import REGISTERED_MODEL

pytestmark = pytest.mark.e2e

SMALL = {"image_size": 40, "batch_size": 16}


@pytest.fixture(scope="module")
def fault_services(tmp_path_factory) -> Iterator[Services]:
    with start_services(
        tmp_path_factory.mktemp("fault-services"),
        {
            "COMPARE_HEADS_WORKER_LIMIT": "2",
            "COMPARE_HEADS_ZOMBIE_SECONDS": "60",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        },
    ) as running:
        yield running


def running_runs(services: Services) -> list:
    client = mlflow_client(services)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    return client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


def training_in_progress(services: Services, flow_run_id: str, head: str, epochs: int):
    """The child run of ``head`` once it logged a few epochs but not all of them."""

    def check():
        for run in runs_of_flow_run(services, flow_run_id):
            if run.data.tags.get("head") != head or run.info.status != "RUNNING":
                continue
            history = mlflow_client(services).get_metric_history(run.info.run_id, "val_accuracy")
            if 2 <= len(history) < epochs - 5:
                return run
        return None

    return wait_for(check, 300, f"{head} to be in the middle of training", interval=0.5)


def test_two_simultaneous_runs_both_complete_and_one_champion_wins(fault_services, pet_images):
    params = {"source": str(pet_images), **SMALL, "epochs": 2, "heads": ["gap"]}
    first = start_deployment(fault_services, ON_DEMAND, params)
    second = start_deployment(fault_services, ON_DEMAND, params)
    states = [wait_for_final_state(fault_services, run) for run in (first, second)]
    assert [state["type"] for state in states] == ["COMPLETED", "COMPLETED"], (
        f"{states}\n{fault_services.logs()}"
    )
    # Separate MLflow records: one parent and one child each.
    parents = [parent_of(fault_services, run) for run in (first, second)]
    assert parents[0].info.run_id != parents[1].info.run_id
    for parent in parents:
        assert parent.info.status == "FINISHED"
        [child] = child_runs_of(fault_services, parent).values()
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    # One preprocessing result, complete, no temporary folder left behind.
    cache = fault_services.home / "cache"
    others = ("manifests", "checkpoints", "serving-checks")  # the plan's, training's, promotion's
    folders = [path.name for path in cache.iterdir() if path.name not in others]
    assert len(folders) == 1 and not folders[0].startswith(".tmp"), folders
    # The same model trained twice at once: one kept checkpoints, both are gone once scored.
    assert not [path for path in (cache / "checkpoints").iterdir() if path.is_dir()]
    assert (cache / folders[0] / "manifest.json").exists()
    assert parents[0].data.metrics["images_used"] == parents[1].data.metrics["images_used"]
    # Identical settings train identical models: the promotion slot lets exactly one become
    # champion; the other, scored against it on the same test split, is not better and is
    # kept out. Without the slot both would read "no champion" and both claim it.
    decisions = sorted(parent.data.tags["promotion_decision"] for parent in parents)
    assert decisions == ["kept", "promoted"], decisions
    client = mlflow_client(fault_services)
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    promoted = next(p for p in parents if p.data.tags["promotion_decision"] == "promoted")
    assert champion.version == promoted.data.tags["registered_version"]
    best = max(p.data.metrics["challenger_test_accuracy"] for p in parents)
    assert promoted.data.metrics["challenger_test_accuracy"] == best


def test_worker_killed_mid_training_rerun_reuses_finished_work_and_resumes_the_rest(
    fault_services, pet_images
):
    epochs = 14  # a window of epochs 2 to 8 to be caught in; the rerun finishes fc
    params = {"source": str(pet_images), **SMALL, "epochs": epochs, "heads": ["gap", "fc"]}
    killed_run = start_deployment(fault_services, ON_DEMAND, params)
    interrupted = training_in_progress(fault_services, killed_run, "fc", epochs)
    finished_gap = next(
        run
        for run in runs_of_flow_run(fault_services, killed_run)
        if run.data.tags.get("head") == "gap"
    )
    assert finished_gap.info.status == "FINISHED"

    killed = kill_tree(service_pid(fault_services, "worker"))
    assert len(killed) >= 2, "the worker and its flow-run process"
    restarted = fault_services.run(SERVICES_SCRIPT, "up", timeout=300)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    # Nothing closed the killed run's MLflow records: they are still RUNNING here.
    assert {run.info.run_id for run in running_runs(fault_services)} >= {interrupted.info.run_id}

    rerun = fault_services.run_deployment(ON_DEMAND, params)
    assert rerun.returncode == 0, f"{rerun.output[-6000:]}\n{fault_services.logs()}"
    parent = parent_of(fault_services, rerun.flow_run_id)
    assert parent.data.metrics["preprocess_cache_hit"] == 1.0
    children = {head: run for (head, _seed), run in child_runs_of(fault_services, parent).items()}
    assert set(children) == {"gap", "fc"}
    # gap had finished before the kill: its run is adopted, not retrained.
    assert children["gap"].info.run_id == finished_gap.info.run_id
    assert children["gap"].data.tags["compare_heads.resumed_from_parent"]
    # fc was interrupted: a new run goes on from its last saved epoch (the checkpoint the
    # worker's process left), every epoch in its curves; the old one is closed as FAILED.
    assert children["fc"].info.run_id != interrupted.info.run_id
    assert children["fc"].info.status == "FINISHED"
    assert children["fc"].data.metrics["resumed_at_epoch"] >= 1
    curve = mlflow_client(fault_services).get_metric_history(
        children["fc"].info.run_id, "val_accuracy"
    )
    assert sorted(point.step for point in curve) == list(range(1, epochs + 1))
    old = mlflow_client(fault_services).get_run(interrupted.info.run_id)
    assert old.info.status == "FAILED"
    assert "ended without closing" in old.data.tags["compare_heads.failure"]
    assert running_runs(fault_services) == []
    # The comparison covers both heads and the report exists.
    assert parent.data.metrics["images_used"] > 0
    # Prefect learns of the lost flow run from its missing heartbeat.
    crashed = wait_for(
        lambda: flow_run_state(fault_services, killed_run).get("type") == "CRASHED",
        150,
        "the killed flow run to be marked Crashed (missed heartbeats)",
        interval=3,
    )
    assert crashed


def test_mlflow_stopped_mid_run_leaves_no_running_runs(fault_services, pet_images):
    epochs = 40
    # force: the run before may have made a champion of exactly these settings, and the
    # retraining plan would then (rightly) skip; this drill needs training in progress.
    params = {"source": str(pet_images), **SMALL, "epochs": epochs, "heads": ["fc"],
              "force": True}  # fmt: skip
    flow_run_id = start_deployment(fault_services, ON_DEMAND, params)
    child = training_in_progress(fault_services, flow_run_id, "fc", epochs)
    parent_id = child.data.tags["mlflow.parentRunId"]

    kill_tree(service_pid(fault_services, "mlflow"))
    state = wait_for_final_state(fault_services, flow_run_id, timeout=300)
    assert state["type"] == "FAILED", state
    assert "127.0.0.1" in (state.get("message") or "") or "Connection" in str(state), state

    restarted = fault_services.run(SERVICES_SCRIPT, "up", timeout=300)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    # The next run closes what the lost server could not record.
    follow_up = fault_services.run_deployment(
        ON_DEMAND, {"source": str(pet_images), **SMALL, "epochs": 1, "heads": ["gap"]}
    )
    assert follow_up.returncode == 0, f"{follow_up.output[-6000:]}\n{fault_services.logs()}"
    client = mlflow_client(fault_services)
    for run_id in (parent_id, child.info.run_id):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED", (run_id, run.info.status)
    assert running_runs(fault_services) == []
