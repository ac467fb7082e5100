"""Checkpoints of a fit in progress, so that training longer than a session survives it.

After every epoch ``EpochCheckpoint`` writes the model's weights with the optimizer's state
(its step count drives the learning-rate schedule), the state of the callbacks that decide
when to stop (early stopping's best score, patience and best weights; the plateau
scheduler's), the history and the metrics every epoch reported, into a new folder beside
the previous one, and then points ``latest`` at it with one atomic rename: a process killed
at any moment leaves the last complete epoch, never a half-written one. A later ``fit`` of
the same cell (the caller keys the folder by everything that makes the cell what it is)
restores it and goes on from the next epoch; the caller replays the restored epochs' metrics
so its run shows every epoch.

What a resumed fit does not repeat exactly: the order in which the shuffle buffer and the
augmentation's random draws deliver the remaining epochs (their generators start again), so
a resumed model is a model of the same recipe, not bit for bit the one an uninterrupted fit
would have made. It says so: ``resumed_at_epoch`` is logged on its run.

``until`` (seconds since the epoch) pauses a fit: after an epoch, when the next one (as long
as the last) would end after it, the fit stops with its checkpoint kept and ``fit`` callers
get ``TrainingPaused``; run the same cell again to continue.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from gap_models.data import default_cache_dir

LATEST = "latest"  # names the folder of the last complete epoch
STATE = "state.json"
WEIGHTS = "model.weights.h5"  # the model's weights and the optimizer's variables
BEST_WEIGHTS = "best_weights.npz"  # early stopping's best weights, when it keeps them
FORMAT = 2  # 2: the fit's end decided (``stopping``) is saved; state keys renamed

log = logging.getLogger(__name__)

# The attributes of stateful callbacks that a resumed fit must carry on from (Keras resets
# them in on_train_begin). Best weights are arrays, kept beside the state.
CALLBACK_STATE: dict[type, tuple[str, ...]] = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}


class TrainingPaused(RuntimeError):
    """A fit stopped at its deadline with its checkpoint kept; running the same cell again
    resumes it."""

    def __init__(self, epochs_done: int, epochs: int, directory: Path) -> None:
        super().__init__(
            f"paused after epoch {epochs_done} of {epochs} at the training deadline; its "
            f"checkpoint is kept in {directory}: run the same model again to resume"
        )
        self.epochs_done = epochs_done
        self.epochs = epochs
        self.directory = directory

    def __reduce__(self):  # crosses processes (a Dask worker's task) whole
        return type(self), (self.epochs_done, self.epochs, self.directory)


@dataclass
class Restored:
    """What a checkpoint gives back: the epochs done, their history and reported metrics,
    the seconds they took, whether the fit had already ended (``finished``: its end saved)
    and whether its last epoch had decided to end it (``stopping``: early stopping fired or
    the last epoch was done, but the process ended before the fit did)."""

    epochs_done: int
    history: dict[str, list[float]] = field(default_factory=dict)
    reported: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    finished: bool = False
    stopping: bool = False

    def next_epoch(self, epochs: int) -> int:
        """``fit``'s ``initial_epoch``: the one after the last saved, or ``epochs`` (no
        epoch trained, only the fit's end) when the fit had decided to end."""
        return epochs if self.stopping else self.epochs_done


def checkpoint_dir(key: str) -> Path:
    """Where the fit of the model with this key (``gap_models.identity.cell_key``: its data,
    settings and code version, so only the same model of the same code resumes from it) is
    saved after each epoch; removed once the model is stored."""
    return default_cache_dir() / "checkpoints" / key


def checkpointed_epochs(directory: Path) -> int:
    """Epochs a checkpoint folder holds (0 when there is none or it cannot be read): what a
    planner counts as already done."""
    state = _read_state(directory)
    return 0 if state is None else int(state["epochs_done"])


def _read_state(directory: Path) -> dict | None:
    try:
        folder = directory / (directory / LATEST).read_text().strip()
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("format") != FORMAT or not (folder / WEIGHTS).is_file():
        return None
    state["folder"] = folder
    return state


def _plain(value):
    """A callback attribute as JSON holds it (numpy scalars, infinities)."""
    if isinstance(value, np.integer):
        return int(value)
    value = float(value) if isinstance(value, np.floating) else value
    return (
        {"float": repr(value)} if isinstance(value, float) and not math.isfinite(value) else value
    )


def _unplain(value):
    return float(value["float"]) if isinstance(value, dict) and "float" in value else value


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the fit after every epoch and restores it (see the module's docstring). Put it
    after every callback whose state it keeps, so it saves what they decided this epoch and
    restores after they reset."""

    def __init__(self, directory: Path, epochs: int, until: float | None = None) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.epochs = epochs
        self.until = until
        self.paused = False
        self._restored: dict | None = None
        self._history: dict[str, list[float]] = {}
        self.reported: list[dict[str, float]] = []  # the fit's reporter's list, every epoch
        self._seconds_before = 0.0
        self._fit_started = 0.0
        self._epoch_started = 0.0
        self._epochs_done = 0

    # --- restoring ------------------------------------------------------------------------

    def restore(self, model: keras.Model) -> Restored | None:
        """Before ``fit``: load the last complete epoch into ``model`` (compiled), or None
        when there is no usable checkpoint (one that cannot be read, or is of another
        length of training, is set aside and training starts afresh)."""
        state = _read_state(self.directory)
        if state is None:
            if self.directory.exists():
                shutil.rmtree(self.directory, ignore_errors=True)
            return None
        if state["epochs"] != self.epochs:
            shutil.rmtree(self.directory, ignore_errors=True)
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(state["folder"] / WEIGHTS)
        except (OSError, ValueError) as error:  # the model may hold some of its weights now
            shutil.rmtree(self.directory, ignore_errors=True)
            raise RuntimeError(
                f"the checkpoint in {self.directory} could not be loaded ({error}); it was "
                "removed: run again to train this model from the start"
            ) from error
        self._restored = state
        self._history = {k: list(v) for k, v in state["history"].items()}
        self._seconds_before = state["seconds_so_far"]
        self._epochs_done = state["epochs_done"]
        return Restored(
            state["epochs_done"],
            {k: list(v) for k, v in state["history"].items()},
            list(state["reported"]),
            state["seconds_so_far"],
            state["finished"],
            state["stopping"],
        )

    def overruns(self, epoch_seconds: float) -> bool:
        """Whether one more epoch this long would end after the deadline: a resumed fit
        checks before it starts, as every fit does after each epoch."""
        return self.until is not None and time.time() + epoch_seconds > self.until

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._fit_started = time.perf_counter()
        if self._restored is None:
            return
        saved = self._restored["callback_state"]
        for index, callback in enumerate(self._stateful()):
            values = saved.get(str(index), {})
            for name in CALLBACK_STATE[type(callback)]:
                if name in values:
                    setattr(callback, name, _unplain(values[name]))
            if isinstance(callback, keras.callbacks.EarlyStopping):
                best = self._restored["folder"] / BEST_WEIGHTS
                if best.is_file():
                    with np.load(best) as arrays:
                        callback.best_weights = [arrays[f"w{i}"] for i in range(len(arrays))]

    # --- saving ---------------------------------------------------------------------------

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self._history.setdefault(key, []).append(float(value))
        self._epochs_done = epoch + 1
        stopping = bool(self.model.stop_training) or self._epochs_done >= self.epochs
        # the fit's end saves again (after the callbacks' own ends); ``stopping`` tells a
        # fit resumed from this save, should the process end before then, to train no more
        self._save(finished=False, stopping=stopping)
        if not stopping and self.overruns(time.perf_counter() - self._epoch_started):
            self.paused = True
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if not self.paused:  # early stopping has put its best weights back by now
            self._save(finished=True, stopping=True)

    def _stateful(self) -> list[keras.callbacks.Callback]:
        callbacks = getattr(self, "_callbacks", [])
        return [c for c in callbacks if type(c) in CALLBACK_STATE]

    def set_callbacks(self, callbacks: list[keras.callbacks.Callback]) -> None:
        """The fit's other callbacks (those in ``CALLBACK_STATE`` are saved and restored)."""
        self._callbacks = list(callbacks)

    def _save(self, finished: bool, stopping: bool) -> None:
        """Save the fit as it stands; a save that fails (a full disk, a folder gone) is
        warned about and training goes on: the fit loses only the chance to resume from
        this epoch, never the epoch."""
        try:
            self._write(finished, stopping)
        except OSError as error:
            log.warning(
                "could not save the checkpoint of epoch %d in %s (%s): training goes on; a "
                "run that stops now resumes from an earlier save or from the start",
                self._epochs_done,
                self.directory,
                error,
            )

    def _write(self, finished: bool, stopping: bool) -> None:
        name = f"epoch-{self._epochs_done:03d}{'-end' if finished else ''}"
        folder = self.directory / name
        partial = self.directory / f".{name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        self.model.save_weights(partial / WEIGHTS)
        callback_state = {}
        for index, callback in enumerate(self._stateful()):
            callback_state[str(index)] = {
                name: _plain(getattr(callback, name, None))
                for name in CALLBACK_STATE[type(callback)]
            }
            best = getattr(callback, "best_weights", None)
            if best is not None:
                np.savez(partial / BEST_WEIGHTS, **{f"w{i}": w for i, w in enumerate(best)})
        state = {
            "format": FORMAT,
            "epochs": self.epochs,
            "epochs_done": self._epochs_done,
            "finished": finished,
            "stopping": stopping,
            "history": self._history,
            "reported": self.reported,
            "seconds_so_far": self._seconds_before + time.perf_counter() - self._fit_started,
            "callback_state": callback_state,
        }
        (partial / STATE).write_text(json.dumps(state))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        pointer = self.directory / f".{LATEST}.{os.getpid()}"
        pointer.write_text(name)
        os.replace(pointer, self.directory / LATEST)  # the one step that switches epochs
        for old in self.directory.iterdir():
            if old.is_dir() and old.name != name and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)


def remove_checkpoint(directory: Path) -> None:
    """Once the trained model is safely stored elsewhere."""
    shutil.rmtree(directory, ignore_errors=True)
