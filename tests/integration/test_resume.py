"""An interrupted flow run leaves no RUNNING MLflow run; a rerun reuses finished work."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import tracking.cells
from flows.compare_heads import compare_heads
from gap_models.checkpoints import checkpointed_epochs
from tests.fixtures import child_runs, make_pet_images

pytestmark = pytest.mark.integration

PARAMS = dict(image_size=32, batch_size=16, epochs=1, heads=["gap", "fc"], seeds=[0], promote=False)


def test_rerun_after_a_crash_reuses_finished_heads(
    tmp_path, monkeypatch, tracking_uri, prefect_harness
):
    source = str(make_pet_images(tmp_path / "photos", per_class=60, size=32))
    uri = tracking_uri
    real_train = tracking.cells.fit_head
    trained_heads: list[str] = []

    def crash_on_fc(model, *args, **kwargs):
        trained_heads.append(model.name)
        if model.name == "fc":
            raise RuntimeError("worker lost in the middle of training")
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(tracking.cells, "fit_head", crash_on_fc)
    with pytest.raises(RuntimeError, match="worker lost"):
        compare_heads(source=source, **PARAMS)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("compare-heads").experiment_id
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([experiment])}
    assert "RUNNING" not in statuses.values()
    assert statuses["gap-seed0"] == "FINISHED" and statuses["fc-seed0"] == "FAILED"
    first_gap = client.search_runs([experiment], "attributes.run_name = 'gap-seed0'")[0]
    # a run left RUNNING by a worker killed outright (no chance to mark it): a later run closes it
    orphan = client.create_run(
        experiment, run_name="orphan", tags={"prefect.flow_run_id": str(uuid.uuid4())}
    ).info.run_id

    # The same settings under other code: nothing of the crashed run may be adopted.
    real_version = tracking.cells.code_version
    monkeypatch.setattr(tracking.cells, "code_version", lambda: "other-code-version")
    trained_heads.clear()
    with pytest.raises(RuntimeError, match="worker lost"):
        compare_heads(source=source, **PARAMS)
    assert trained_heads == ["gap", "fc"]  # gap retrained: its finished run is older code
    monkeypatch.setattr(tracking.cells, "code_version", real_version)

    monkeypatch.setattr(
        tracking.cells,
        "fit_head",
        lambda model, *a, **k: (trained_heads.append(model.name), real_train(model, *a, **k))[1],
    )
    trained_heads.clear()
    summary = compare_heads(source=source, **PARAMS)
    assert trained_heads == ["fc"]  # gap was not retrained
    children = child_runs(client, experiment, summary.parent_run_id)
    by_head = {head: run for (head, _seed), run in children.items()}
    assert by_head["gap"].info.run_id == first_gap.info.run_id
    assert by_head["gap"].data.tags["compare_heads.resumed_from_parent"]
    assert {row["head"] for row in summary.rows} == {"gap", "fc"}
    assert client.get_run(summary.parent_run_id).info.status == "FINISHED"
    assert client.get_run(orphan).info.status == "FAILED"
    assert "ended without closing" in client.get_run(orphan).data.tags["compare_heads.failure"]


@pytest.mark.parametrize(
    ("workers", "ctrl_c"), [(0, False), (1, True)], ids=["sigterm-in-process", "ctrl-c-on-dask"]
)
def test_a_stop_pauses_the_model_in_training_at_its_epochs_end_with_its_checkpoint(
    tmp_path, tracking_uri, prefect_harness, workers, ctrl_c
):
    """SIGTERM (or Ctrl-C) reaches the flow's thread, not the one training: the flow used to
    wait for the model to finish all its epochs. Now the model pauses at its epoch's end with
    its checkpoint, and the process exits (143, or 130 after Ctrl-C) with nothing left
    running: a kill skipped the clean-up that stops the temporary Prefect server it started
    for itself. Ctrl-C in a terminal signals the whole process group: that server stopped
    at once, and the run retried its calls for 5 minutes to end with status 1. On a local
    Dask cluster the worker was closed with the run (or by Ctrl-C), its epoch lost."""
    source = make_pet_images(tmp_path / "photos", per_class=30, size=32)
    epochs = 300  # a fraction of a second each: minutes to run them all
    log = tmp_path / "run.log"
    argv = [str(Path(sys.executable).with_name("compare-heads")), "run", "--source", str(source),
            "--image-size", "32", "--batch-size", "16", "--epochs", str(epochs), "--head",
            "gap", "--no-promote", "--workers", str(workers)]  # fmt: skip
    with log.open("w") as out:
        # Its own process group: the ephemeral Prefect server it starts goes with it below.
        child = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
        deadline = time.monotonic() + 600
        while not re.search(r"epoch 3/", log.read_text()):
            assert child.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no third epoch in 10 minutes"
            time.sleep(0.2)
        if ctrl_c:  # what a terminal does: SIGINT to its whole foreground process group
            os.killpg(child.pid, signal.SIGINT)
        else:
            child.send_signal(signal.SIGTERM)
        child.wait(timeout=600)
        # Anything of its process group still alive after a while (a Dask worker may still
        # be on its way out; an exited process not reaped yet, a zombie, is not alive).
        settled = time.monotonic() + 120  # generous: a slow machine is not a leak
        while (left_behind := live_members(child.pid)) and time.monotonic() < settled:
            time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    text = log.read_text()
    # An exit, not a kill: its clean-up ran (a kill left that server running, orphaned).
    assert child.returncode == 128 + (signal.SIGINT if ctrl_c else signal.SIGTERM), text[-3000:]
    assert not left_behind, f"processes of the paused run outlived it: {left_behind}"
    # That server ignored Ctrl-C and was stopped by the run's exit.
    port = int(re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", text).group(1))
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert "Stopping: the model in training pauses at the end of its epoch" in text
    paused = re.search(r"paused after epoch (\d+) of 300 on a stop request", text)
    assert paused, text[-3000:]
    stopped_at = int(paused.group(1))
    assert 3 <= stopped_at < epochs / 2  # it stopped, not ran on to the end
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("compare-heads").experiment_id
    (run,) = client.search_runs(experiment, "attributes.run_name = 'gap-seed0'")
    assert run.info.status == "FAILED"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == stopped_at

    # The checkpoint holds every epoch it trained: the next run of the model goes on from it.
    folder = re.search(r"its checkpoint is kept in (\S+):", text).group(1)
    assert checkpointed_epochs(Path(folder)) == stopped_at


def live_members(group: int) -> list[str]:
    """The command names of the processes of a process group that are alive (not zombies)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        state, _parent, process_group = fields.split()[:3]
        if int(process_group) == group and state != "Z":
            members.append(name)
    return members
