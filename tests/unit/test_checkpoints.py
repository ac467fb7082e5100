"""A fit checkpointed after every epoch: paused at a deadline, resumed where it stopped with
its optimizer and early stopping's state, never confused by a half-written save."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from gap_models.checkpoints import (
    LATEST,
    STATE,
    EpochCheckpoint,
    TrainingPaused,
    checkpointed_epochs,
)
from gap_models.data import make_dataset
from gap_models.models import build_model
from gap_models.recipes import compile_for_recipe
from gap_models.training import train_model
from tests.unit.test_training import _tiny_set

EPOCHS = 4
BATCH = 16


def _fit(directory, until=None, seen=None, epochs=EPOCHS):
    """A tiny gap model under the convergence recipe (schedule, early stopping, precise
    BatchNorm), checkpointed in ``directory``; returns the model and the result."""
    images, labels = _tiny_set(64)
    model = build_model("gap", image_size=40, seed=0)
    compile_for_recipe(model, "converge", 0.01, len(labels) // BATCH, epochs)
    result = train_model(
        model,
        make_dataset(images, labels, BATCH, shuffle_seed=0),
        make_dataset(images[:32], labels[:32], BATCH),
        epochs,
        train_images=len(labels),
        on_epoch=lambda epoch, metrics: (seen if seen is not None else []).append(epoch),
        recipe="converge",
        calibration_data=make_dataset(images, labels, BATCH),
        checkpoint=EpochCheckpoint(directory, epochs, until),
    )
    return model, result


def _state(directory) -> dict:
    folder = directory / (directory / LATEST).read_text()
    return json.loads((folder / STATE).read_text())


def test_a_paused_fit_resumes_with_its_schedule_and_early_stopping_state(tmp_path):
    directory = tmp_path / "cell"
    with pytest.raises(TrainingPaused, match="after epoch 1 of 4") as paused:
        _fit(directory, until=0.0)  # a deadline long past: one epoch, then a pause
    assert paused.value.epochs_done == 1 and checkpointed_epochs(directory) == 1
    first = _state(directory)
    assert first["finished"] is False and len(first["history"]["val_accuracy"]) == 1

    # Early stopping's best score made unreachable: if the resumed fit did not carry it
    # on, an epoch would beat it. Kept, no epoch does, and at the end early stopping
    # restores the weights it saved as best: those of epoch 1.
    first["callback_state"]["0"]["best"] = 2.0
    folder = directory / (directory / LATEST).read_text()
    (folder / STATE).write_text(json.dumps(first))
    epoch_one = build_model("gap", image_size=40, seed=0)
    compile_for_recipe(epoch_one, "converge", 0.01, 64 // BATCH, EPOCHS)
    epoch_one.optimizer.build(epoch_one.trainable_variables)
    epoch_one.load_weights(folder / "model.weights.h5")

    seen: list[int] = []
    model, result = _fit(directory, seen=seen)
    assert seen == [1, 2, 3, 4]  # epoch 1 replayed to the caller, then three trained
    assert result.epochs == EPOCHS and result.resumed_at_epoch == 1
    assert all(len(values) == EPOCHS for values in result.history.values())
    assert int(model.optimizer.iterations) == EPOCHS * (64 // BATCH)  # the schedule went on
    end = _state(directory)
    assert end["finished"] and end["callback_state"]["0"]["best"] == 2.0
    assert end["callback_state"]["0"]["wait"] == 3  # three epochs without beating it
    for kept, restored in zip(epoch_one.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, restored)

    # Killed after the fit but before the model was stored: nothing is trained again.
    seen.clear()
    again, replayed = _fit(directory, seen=seen)
    assert seen == [1, 2, 3, 4] and replayed.history == result.history
    for left, right in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_half_written_or_foreign_checkpoints_are_never_resumed(tmp_path):
    directory = tmp_path / "cell"
    with pytest.raises(TrainingPaused):
        _fit(directory, until=0.0)
    # A save killed half-way leaves a hidden partial folder: ignored, the last epoch stands.
    (directory / ".epoch-002.partial-99").mkdir()
    assert checkpointed_epochs(directory) == 1
    # Another length of training (other settings): set aside, trained from the start.
    seen: list[int] = []
    _fit(directory, seen=seen, epochs=2)
    assert seen == [1, 2] and _state(directory)["epochs"] == 2
    # An unreadable pointer: no checkpoint, nothing raised.
    (directory / LATEST).write_text("epoch-007")
    assert checkpointed_epochs(directory) == 0
    seen.clear()
    _fit(directory, seen=seen, epochs=2)
    assert seen == [1, 2]


def test_only_one_trainer_of_a_model_keeps_its_checkpoint_at_a_time(tmp_path, monkeypatch):
    """Two runs of the same model at once (or a Dask worker taken for lost that still runs):
    the second trains without checkpoints instead of writing over the first's."""
    from gap_models.checkpoints import checkpoint_dir
    from tracking.cells import claimed_checkpoint

    monkeypatch.setenv("COMPARE_HEADS_CACHE_DIR", str(tmp_path))
    with claimed_checkpoint("cell-key") as first:
        with claimed_checkpoint("cell-key") as second:
            assert first == checkpoint_dir("cell-key") and second is None
        with claimed_checkpoint("other-key") as other:
            assert other == checkpoint_dir("other-key")
    with claimed_checkpoint("cell-key") as again:  # released with the block
        assert again == first


def test_a_stop_request_pauses_only_its_own_flow_runs_models():
    """A stop reaches a Dask worker that outlives its flow run (a running scheduler's): it
    must pause that run's models and not the next run's, and a model of that run still
    queued must not start."""
    from gap_models.config import RunConfig
    from tracking.cells import (
        CellJob,
        RunStopped,
        StopPaused,
        TrainingDeadline,
        check_not_stopped,
        clear_stop,
        request_stop,
    )

    stopped, other = TrainingDeadline(None, "parent-a"), TrainingDeadline(None, "parent-b")
    far_future = TrainingDeadline(4e9, "parent-a")
    assert not stopped < 1e9 and not far_future < 1e9
    request_stop("parent-a")
    try:
        assert stopped < 1e9 and far_future < 1e9  # past its deadline at once
        assert not other < 1e9  # another flow run's model trains on
        job = CellJob("cache", "gap", 0, RunConfig(), "1", "parent-a")
        with pytest.raises(RunStopped, match="gap seed 0: not started"):
            check_not_stopped(job)
        assert pickle.loads(pickle.dumps(RunStopped("gap seed 0"))).label == "gap seed 0"
        paused = pickle.loads(pickle.dumps(StopPaused(3, 7, "cell")))  # from a Dask worker
        assert isinstance(paused, TrainingPaused) and paused.epochs_done == 3
        assert str(paused).startswith("paused after epoch 3 of 7 on a stop request")
    finally:
        clear_stop("parent-a")
    assert not stopped < 1e9

    # On Dask the request is a worker plugin: set up on each worker, those that join later
    # too; removed after the run, it clears the request on the workers that outlive it.
    from tracking.dask_stop import PauseFlowRun

    plugin = pickle.loads(pickle.dumps(PauseFlowRun("parent-a")))
    plugin.setup(worker=None)
    assert stopped < 1e9 and not other < 1e9
    plugin.teardown(worker=None)
    assert not stopped < 1e9
    assert plugin.name != PauseFlowRun("parent-b").name  # one per flow run


def test_a_stop_ends_a_model_that_trains_without_its_checkpoint(tmp_path, tracking_uri):
    """The same model trained twice at once: the second trainer has no checkpoint to pause
    at, so a stop ends it at its epoch's end (the first keeps the checkpoint); it used to
    train on to its last epoch while the stopping run waited for it. A stop during its last
    epoch lets it finish: its model is whole."""
    import logging

    from mlflow.tracking import MlflowClient

    from gap_models.config import RunConfig
    from gap_models.data import preprocess
    from tests.fixtures import make_pet_images
    from tracking.cells import (
        CellJob,
        RunStopped,
        claimed_checkpoint,
        clear_stop,
        request_stop,
        train_cell,
    )

    source = make_pet_images(tmp_path / "photos", per_class=20, size=32)
    prepared = preprocess(str(source), image_size=32, cache_root=tmp_path / "photos-cache")
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("stops")

    class StopAtFirstEpoch(logging.Handler):  # the signal, as the first epoch ends
        parent = ""

        def emit(self, record):
            if " epoch 1/" in record.getMessage():
                request_stop(self.parent)

    logger = logging.getLogger("test-stop-without-checkpoint")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler := StopAtFirstEpoch())

    def train_second(epochs: int):
        """Train the model while this test holds its checkpoint, as another trainer would."""
        config = RunConfig(source=str(source), image_size=32, epochs=epochs, batch_size=16,
                           heads=["gap"], precision="float32")  # fmt: skip
        handler.parent = client.create_run(experiment).info.run_id
        job = CellJob(str(prepared.cache_dir), "gap", 0, config, experiment, handler.parent)
        try:
            with claimed_checkpoint(job.key()) as held:
                assert held is not None
                return train_cell(job, logger)
        finally:
            clear_stop(handler.parent)
            client.set_terminated(handler.parent)

    try:
        with pytest.raises(RunStopped, match="ended after epoch 1 without a checkpoint"):
            train_second(epochs=5)
        assert train_second(epochs=1).model_uri  # stopped in its last epoch: it ends whole
    finally:
        logger.removeHandler(handler)
    children = client.search_runs([experiment], "tags.`mlflow.parentRunId` != ''")
    stopped = next(run for run in children if run.info.status == "FAILED")
    assert len(client.get_metric_history(stopped.info.run_id, "val_accuracy")) == 1


def test_a_fit_that_had_decided_to_end_trains_no_more_when_resumed(tmp_path):
    """Killed between the epoch that ended the fit (early stopping fired) and the fit's
    end: the resumed fit trains no further epoch, it only ends."""
    directory = tmp_path / "cell"
    with pytest.raises(TrainingPaused):
        _fit(directory, until=0.0)
    state = _state(directory)
    state["stopping"] = True  # as the epoch that fired early stopping saved it
    folder = directory / (directory / LATEST).read_text()
    (folder / STATE).write_text(json.dumps(state))
    seen: list[int] = []
    model, result = _fit(directory, seen=seen)
    assert seen == [1] and result.epochs == 1  # replayed, nothing trained
    assert int(model.optimizer.iterations) == 64 // BATCH
    assert _state(directory)["finished"]


def test_a_resumed_fit_past_its_deadline_trains_no_epoch(tmp_path):
    directory = tmp_path / "cell"
    with pytest.raises(TrainingPaused):
        _fit(directory, until=0.0)
    seen: list[int] = []
    with pytest.raises(TrainingPaused, match="after epoch 1 of 4"):
        _fit(directory, until=0.0, seen=seen)
    assert seen == [1] and checkpointed_epochs(directory) == 1


def test_a_checkpoint_that_cannot_be_saved_does_not_end_the_fit(tmp_path, monkeypatch, caplog):
    def full_disk(self, finished, stopping):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EpochCheckpoint, "_write", full_disk)
    seen: list[int] = []
    with caplog.at_level("WARNING", logger="gap_models.checkpoints"):
        _, result = _fit(tmp_path / "cell", seen=seen)
    assert seen == [1, 2, 3, 4] and result.epochs == EPOCHS
    assert "could not save the checkpoint of epoch 1" in caplog.text
    assert checkpointed_epochs(tmp_path / "cell") == 0
