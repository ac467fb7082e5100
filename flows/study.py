"""Studies: train what a study file declares and has no record yet, within a budget, through
the same flow code as every run; say what is done, missing or stale.

Each cell is one in-process ``compare-heads`` flow run (one head, one seed, nothing
promoted), logged to MLflow like any run; when it ends, its record (curves, scores, per-photo
predictions) is written atomically to ``studies/<name>/records/``, to be committed. A study
run killed at any moment loses at most the cell in progress, and even that one's finished
MLflow run is adopted by the next attempt (same key) instead of trained again, and a cell
killed while training goes on from its last epoch's checkpoint. A budget is a deadline for
training: a cell that would not end within it trains until then and pauses, its checkpoint
kept, so cells longer than any one session still get trained, a session at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from flows.runners import patient_temporary_server
from gap_models import records
from gap_models.checkpoints import TrainingPaused
from gap_models.data import TRAIN_SPLIT, load_ids, load_split
from gap_models.evaluation import PREDICTION_SPLITS, TRAIN_SUBSET
from gap_models.hardware import detect
from gap_models.protocols import step_checkpoint_key
from gap_models.provenance import code_version
from gap_models.studies import Study, load_study, study_names
from gap_models.study_records import (
    CellRecord,
    DataFile,
    data_path,
    find_record_by_key,
    read_record,
    record_path,
    write_json_atomically,
)
from gap_models.study_state import (
    PRIOR_IMAGES_PER_SECOND,
    CellState,
    cell_states,
    estimate_seconds,
    head_factor,
    seconds_per_flop,
    train_images,
)
from tracking.cells import TRAIN_UNTIL_ENV, StopPaused
from tracking.runs import repo_root

Say = Callable[[str], None]


def _rate_basis(rate: float | None) -> str:
    """How the time left was sized, and on which CPU."""
    basis = (
        f"this CPU's measured rate: {1 / rate / 1e9:.1f} GFLOP/s of forward passes over "
        "training images, whole cells included"
        if rate
        else f"no cell trained on this CPU yet: assumed {PRIOR_IMAGES_PER_SECOND:.0f} images/s"
    )
    return f"{basis}; {detect().cpu_model}, {detect().reported_flags()}"


def _status(root: Path, name: str) -> tuple[list[str], list[CellState], dict[str, int], float]:
    """A study's cell lines, its cells' states, their counts and the seconds left here."""
    study = load_study(root, name)
    states = cell_states(root, study)
    lines = [f"study {name}: {study.description}"]
    remaining = 0.0
    pending: set[tuple[str, int]] = set()  # (head, seed) of the cells left, listed so far
    for state in states:
        extra = ""
        elsewhere = find_record_by_key(root, state.key) if state.state != "done" else None
        if elsewhere is not None:  # copied, not trained, when `study run` reaches it
            extra = f"  recorded in {elsewhere.parent.parent.name}: copied by `study run`"
        elif state.state != "done":
            earlier = frozenset(h for h, seed in pending if seed == state.cell.seed)
            seconds = _needed_seconds(root, study, state, earlier)
            pending.add((state.cell.head, state.cell.seed))
            remaining += seconds
            extra = f"  ~{seconds / 60:.0f} min"
            if state.epochs_done:
                extra += f" (resumes after epoch {state.epochs_done} of {state.epochs})"
        lines.append(f"  {state.state:8} {state.cell.arm} seed {state.cell.seed}{extra}")
    counts = {s: sum(1 for x in states if x.state == s) for s in ("done", "missing", "stale")}
    return lines, states, counts, remaining


def _counted(counts: dict[str, int]) -> str:
    return f"{counts['done']} done, {counts['missing']} missing, {counts['stale']} stale"


def status_lines(root: Path, name: str) -> tuple[list[str], list[CellState]]:
    """``compare-heads study status NAME``: one line per cell and a summary with the time
    left."""
    lines, states, counts, remaining = _status(root, name)
    lines.append(
        f"{_counted(counts)}; about {remaining / 60:.0f} min left on this CPU "
        f"({_rate_basis(seconds_per_flop(root))})"
    )
    return lines, states


def overview_lines(root: Path) -> tuple[list[str], list[CellState]]:
    """``compare-heads study status``: every study on one line (its cells' counts and the
    time its missing and stale cells take here), then the total: what is left before every
    figure in the docs is final."""
    lines, every_state, total = [], [], 0.0
    names = study_names(root)
    width = max((len(name) for name in names), default=0)
    for name in names:
        _, states, counts, remaining = _status(root, name)
        every_state += states
        total += remaining
        left = f"; about {remaining / 60:.0f} min left" if remaining else ""
        lines.append(f"{name:{width}}  {_counted(counts)}{left}")
    counts = {s: sum(1 for x in every_state if x.state == s) for s in ("done", "missing", "stale")}
    lines.append(
        f"{len(names)} studies: {_counted(counts)}; about {total / 3600:.1f} h left on this "
        f"CPU ({_rate_basis(seconds_per_flop(root))})"
    )
    return lines, every_state


def _write_data_file(root: Path, study: Study, data: str, cache_dir: str) -> None:
    path = data_path(root, study.name, data)
    if path.is_file():
        return
    from gap_models.data import cached_class_names

    ids, labels = {}, {}
    for split in PREDICTION_SPLITS:
        name = TRAIN_SPLIT if split == records.TRAIN_SUBSET_SPLIT else split
        count = TRAIN_SUBSET if split == records.TRAIN_SUBSET_SPLIT else None
        ids[split] = load_ids(cache_dir, name)[:count]
        labels[split] = load_split(cache_dir, name)[1][:count]
    train = len(load_split(cache_dir, TRAIN_SPLIT)[1])
    content = DataFile(data, cached_class_names(cache_dir), train, ids, labels)
    write_json_atomically(path, content.to_json())


def _train_cell(root: Path, study: Study, state: CellState, say: Say) -> None:
    """Train one cell through the flow and write its record."""
    from flows.compare_heads import compare_heads
    from gap_models.data import default_cache_dir
    from tracking import runs

    started = time.perf_counter()
    config = state.cell.config()
    client = runs.client()
    run_id = _finished_unrecorded_run(client, state)
    if run_id:  # trained to the end by a run killed before it wrote the record
        say(f"{state.cell.arm} seed {state.cell.seed}: run {run_id} trained it to the end and "
            "was stopped before recording it: recorded from that run, not trained again")  # fmt: skip
        cache_dir, reused = str(default_cache_dir() / state.data), True
    else:
        result = compare_heads(**config.model_dump())
        run_id, reused = result.trained[0].run_id, result.trained[0].reused
        cache_dir = result.cache_dir
    _write_data_file(root, study, state.data, cache_dir)
    tracked = runs.tracked_run(client, run_id)
    predictions = runs.fetch_predictions(client, run_id)
    here = detect()
    subset = records.TRAIN_SUBSET_SPLIT
    own = config.train_fraction < 1  # trained (and scored) on its own part of the split
    record = CellRecord(
        study=study.name,
        arm=state.cell.arm,
        head=state.cell.head,
        seed=state.cell.seed,
        key=state.key,
        data=state.data,
        code_version=code_version(),
        settings=state.cell.settings,
        machine={records.CPU_MODEL: here.cpu_model, records.CPU_FLAGS: here.reported_flags()},
        result=records.RunResult.from_tracked(tracked),
        predictions={split: predictions[split] for split in PREDICTION_SPLITS},
        shifts={
            int(name.removeprefix(records.SHIFT_ARRAY_PREFIX)): values
            for name, values in predictions.items()
            if name.startswith(records.SHIFT_ARRAY_PREFIX)
        },
        flops_per_image=int(float(tracked.params[records.FLOPS_PER_IMAGE])),
        train_images=round((train_images(root, study, state.data) or 0) * config.train_fraction),
        # An adopted run (trained by a killed attempt) took its own time, not this wait; a
        # resumed one this wait and its earlier sessions' training (its train_seconds).
        cell_seconds=(
            tracked.metrics[records.TRAIN_SECONDS]
            + tracked.metrics.get(records.EVALUATE_SECONDS, 0.0)
            if reused
            else time.perf_counter() - started + _earlier_seconds(tracked.metrics)
        ),
        extra_metrics={
            k: v
            for k, v in tracked.metrics.items()
            if k.startswith((records.TRAIN_SUBSET_PREFIX, records.FINAL_VAL_PREFIX))
            or k.startswith(records.EPOCHS_TO_PREFIX)
            or k in (records.EPOCHS_TO_BEST, records.RESUMED_AT_EPOCH)
        },
        recorded_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        own_ids={subset: predictions[f"{records.IDS_PREFIX}{subset}"]} if own else {},
        own_labels={subset: predictions[f"{records.LABELS_PREFIX}{subset}"]} if own else {},
    )
    write_json_atomically(record_path(root, study.name, state.cell.file_stem), record.to_json())
    say(f"recorded {state.cell.arm} seed {state.cell.seed} ({record.cell_seconds / 60:.1f} min)")


def _finished_unrecorded_run(client, state: CellState) -> str:
    """A finished, scored run of this cell's model (its key) whose predictions this
    machine's store holds: a `study run` killed between the end of the flow and the record
    leaves one, and recording it costs seconds where training again costs the whole cell.
    "" when none (or its preprocessed photos are gone from the cache)."""
    from mlflow.exceptions import MlflowException

    from gap_models.data import default_cache_dir
    from tracking import runs

    if not (default_cache_dir() / state.data).is_dir():
        return ""
    found = client.search_runs(
        [runs.ensure_experiment(client)],
        filter_string=f"tags.`{records.RUN_KEY_TAG}` = '{state.key}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in found:
        if {records.TEST_ACCURACY, records.SELECTION_METRIC} <= set(run.data.metrics):
            try:
                runs.fetch_predictions(client, run.info.run_id)
            except (MlflowException, OSError, KeyError, ValueError):  # none logged: train it
                continue
            return run.info.run_id
    return ""


FIRST_EPOCH_MARGIN = 1.5
"""A cell that cannot end within the budget is only started (or resumed) when the budget
left holds this many of its epochs: loading and the first epoch's graph building cost extra."""


@contextlib.contextmanager
def _training_until(deadline: float | None) -> Iterator[None]:
    """Pause training at ``deadline`` (seconds since 1970) in this process's flow runs."""
    before = os.environ.get(TRAIN_UNTIL_ENV)
    if deadline is not None:
        os.environ[TRAIN_UNTIL_ENV] = f"{deadline:.0f}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRAIN_UNTIL_ENV, None)
        else:
            os.environ[TRAIN_UNTIL_ENV] = before


def next_cell(needed_seconds: list[float], left_seconds: float) -> int:
    """Which pending cell (in priority order, with the seconds each needs on this CPU) to
    train next: the first that ends within the budget left, else the first. A cell that
    cannot end pauses with its checkpoint on this machine, and a session on another machine
    starts it again: a shorter cell that fits is worth more first."""
    for index, needed in enumerate(needed_seconds):
        if needed <= left_seconds:
            return index
    return 0


def _needed_seconds(
    root: Path, study: Study, state: CellState, trained_before=frozenset()
) -> float:
    """A cell's seconds on this CPU, at the rate of its precision and backbone here
    (``trained_before``: see ``gap_models.study_state.chain_steps_to_train``)."""
    precision, backbone = state.cell.settings.get("precision"), state.cell.config().backbone
    own = seconds_per_flop(root, precision, backbone)
    if own is not None:
        own *= head_factor(root, state.cell.head, precision, backbone)
    return estimate_seconds(root, study, state, own, trained_before)


def check_studies(names: list[str], root: Path | None = None) -> None:
    """Raise (FileNotFoundError, ValueError, with the cause) for a study name, study file or
    source that a run could not start from."""
    root = root or repo_root()
    for name in names:
        cell_states(root, load_study(root, name))


def run_study(name: str, budget_minutes: float | None = None, root: Path | None = None,
              say: Say = print) -> list[CellState]:  # fmt: skip
    """Train the cells of study ``name`` that have no current record (``run_studies`` of
    one study). Returns the cells still missing or stale when it stops."""
    return run_studies([name], budget_minutes, root, say)[name]


def run_studies(names: list[str], budget_minutes: float | None = None, root: Path | None = None,
                say: Say = print) -> dict[str, list[CellState]]:  # fmt: skip
    """Train the cells of studies ``names`` that have no current record, study by study in
    the order given and each in its priority order, within one budget: the first cell that
    this CPU's estimate says ends within it goes first (``next_cell``), so a later study's
    short cells fill what an earlier study's long cell leaves; when none does, the first
    trains until the budget ends and pauses there with its checkpoint kept, if one and a
    half of its epochs fit; the next run resumes it. Returns, per study, the cells still
    missing or stale when it stops."""
    root = root or repo_root()
    studies = [load_study(root, name) for name in names]
    patient_temporary_server()
    deadline = None if budget_minutes is None else time.monotonic() + budget_minutes * 60
    until = None if budget_minutes is None else time.time() + budget_minutes * 60
    several = len(studies) > 1

    def label(study: Study, state: CellState) -> str:
        cell = f"{state.cell.arm} seed {state.cell.seed}"
        return f"{study.name}: {cell}" if several else cell

    def reused(study: Study, state: CellState) -> bool:
        """Whether the same model (same key) is recorded by any study: copied, not trained."""
        existing = find_record_by_key(root, state.key)
        if existing is not None:
            target = record_path(root, study.name, state.cell.file_stem)
            _adopt_record(root, study, state, existing, target)
            say(f"reused {label(study, state)} from {existing}")
        return existing is not None

    with _one_run_at_a_time(root), _training_until(until):
        pending = [
            (study, state)
            for study in studies
            for state in cell_states(root, study)
            if state.state != "done" and not reused(study, state)
        ]
        while pending:
            chosen, needed, left = 0, 0.0, 0.0
            if deadline is not None:
                left = deadline - time.monotonic()
                needs = [_needed_seconds(root, study, state) for study, state in pending]
                chosen = next_cell(needs, left)
                needed = needs[chosen]
                if chosen:
                    say(
                        f"passing over {label(*pending[0])} for now: it needs about "
                        f"{needs[0] / 60:.0f} min, {left / 60:.0f} are left, and a later cell "
                        "ends within the budget"
                    )
            study, state = pending.pop(chosen)
            if reused(study, state):  # recorded meanwhile (by a study before it)
                continue
            name = label(study, state)
            resumes = f", resuming after epoch {state.epochs_done}" if state.epochs_done else ""
            per_epoch = needed / max(1, state.epochs - state.epochs_done)
            if deadline is not None and needed > left and left < FIRST_EPOCH_MARGIN * per_epoch:
                say(
                    f"stopping: {name} needs about {needed / 60:.0f} min on this CPU "
                    f"({per_epoch / 60:.0f} min an epoch), {max(left, 0) / 60:.0f} min "
                    "of the budget are left"
                )
                break
            if deadline is not None and needed > left:
                say(
                    f"training {name} ({state.state}{resumes}) until the budget ends: it "
                    f"needs about {needed / 60:.0f} min, {left / 60:.0f} are left; it "
                    "pauses there with its checkpoint kept"
                )
            else:
                say(f"training {name} ({state.state}{resumes})")
            try:
                _train_cell(root, study, state, say)
            except TrainingPaused as paused:
                step = Path(paused.directory).name.startswith(step_checkpoint_key(""))
                what = f"{name} in the step of its chain it trains first" if step else name
                stopped = isinstance(paused, StopPaused)
                why = "on a stop request" if stopped else "at the end of the budget"
                say(
                    f"paused {what} after epoch {paused.epochs_done} of {paused.epochs} "
                    f"{why}; `compare-heads study run {study.name}` resumes it"
                )
                break
    return {
        study.name: [s for s in cell_states(root, study) if s.state != "done"] for study in studies
    }


def _earlier_seconds(metrics: dict[str, float]) -> float:
    """A resumed cell's training in earlier sessions (its epochs before the checkpoint), so
    its record's time, and the CPU's rate measured from records, cover the whole cell."""
    done = metrics.get(records.RESUMED_AT_EPOCH, 0.0)
    epochs = metrics.get(records.EPOCHS_RUN, 0.0)
    return metrics[records.TRAIN_SECONDS] * done / epochs if done and epochs else 0.0


def _adopt_record(root: Path, study: Study, state: CellState, existing: Path, target: Path) -> None:
    """Copy another study's record of the same cell (same key), its data file first (both
    atomically: a run killed in between leaves the cell missing, never a record without
    its data)."""
    data = data_path(root, study.name, state.data)
    if not data.is_file():
        source = existing.parent / f"data-{state.data}.json"
        write_json_atomically(data, json.loads(source.read_text()))
    record = read_record(existing)
    record.study, record.arm, record.settings = study.name, state.cell.arm, state.cell.settings
    write_json_atomically(target, record.to_json())


class StudyRunBusy(RuntimeError):
    """Another ``study run`` is training this repository's studies."""


@contextlib.contextmanager
def _one_run_at_a_time(root: Path) -> Iterator[None]:
    """Hold this repository's study-run lock while the block runs (released by the system
    if the process dies): two runs at once would train the same cells twice, and the second
    could not checkpoint, so its budget could not pause it."""
    import fcntl
    import hashlib

    from gap_models.data import default_cache_dir

    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    path = default_cache_dir() / "locks" / f"study-run-{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise StudyRunBusy(
                f"another `compare-heads study run` (process {holder}) is training the studies "
                f"of {root}: wait for it, or stop it (SIGTERM pauses it at the end of an epoch)"
            ) from None
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(str(os.getpid()))
            lock.flush()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def report_study(name: str | None = None, root: Path | None = None) -> Path:
    """Render study ``name`` (every study when None) from its records: figures and
    README.md under docs/studies/<name>/ and its section of docs/RESULTS.md; then the
    verdict across studies at the top of docs/RESULTS.md. Returns the folder of the last
    study rendered."""
    from gap_models.study_report import RESULTS, analyse_study, render, replace_section
    from gap_models.study_verdict import render_verdict, replace_verdict

    root = root or repo_root()
    results = root / RESULTS
    document = results.read_text() if results.is_file() else "# Results\n"
    folder = root / "docs" / "studies"
    for each in [name] if name is not None else study_names(root):
        studied = analyse_study(root, each)
        folder = root / "docs" / "studies" / each
        folder.mkdir(parents=True, exist_ok=True)
        section, figures = render(root, each, f"studies/{each}", studied=studied)
        for file, figure in figures.items():
            figure.savefig(folder / file, dpi=100)
        page, _ = render(root, each, ".", draw=False, studied=studied)
        (folder / "README.md").write_text(page)
        document = replace_section(document, each, section)
    verdict, figures = render_verdict(root, "studies")
    for file, figure in figures.items():
        figure.savefig(root / "docs" / "studies" / file, dpi=100)
    results.write_text(replace_verdict(document, verdict))
    return folder


def chosen_cell(root: Path, name: str):
    """Study ``name``'s one model chosen on validation, among its own arms' records, and
    that cell's record and declaration, with the settings the record was trained with (the
    study file may have changed since: its run line and --train must make that model, not
    today's). ValueError when nothing is recorded yet."""
    from gap_models.study_report import analyse_study
    from gap_models.verdicts import chosen_model

    studied = analyse_study(root, name)
    model = (
        chosen_model(studied.analysis.evidence, studied.study.candidates())
        if studied.analysis is not None
        else None
    )
    if model is None:
        raise ValueError(f"study {name} has no recorded cell yet: `compare-heads study run {name}`")
    record = next(r for r in studied.present if (r.arm, r.seed) == (model.arm, model.seed))
    cell = next(c for c in studied.study.cells(root) if (c.arm, c.seed) == (model.arm, model.seed))
    return model, record, dataclasses.replace(cell, settings=dict(record.settings))


def logged_model_uri(run_id: str) -> tuple[str, str]:
    """The model MLflow logged for run ``run_id`` in the configured tracking store, and that
    store's URI; "" when the store does not hold the run (trained on another machine)."""
    import mlflow

    from tracking import runs

    client = runs.client()
    try:
        tracked = runs.tracked_run(client, run_id)
    except mlflow.exceptions.MlflowException:
        return "", client.tracking_uri
    return records.RunResult.from_tracked(tracked).model_uri, client.tracking_uri


def chosen_lines(root: Path, name: str) -> tuple[list[str], str, float]:
    """``compare-heads study best``: the chosen model, its test figure (exact interval),
    where it was trained, and where its model is; with its model URI ("" when this machine
    does not hold it) and its test accuracy."""
    from gap_models.findings import interval
    from gap_models.study_report import analyse_study, stale_reason
    from gap_models.verdicts import target_call

    model, record, cell = chosen_cell(root, name)
    study = load_study(root, name)
    chosen_from = study.analysis.choose_from
    arms_said = "the arms " + ", ".join(study.candidates()) if chosen_from else "its own arms"
    stale = ""
    if (model.arm, model.seed) in analyse_study(root, name).stale_cells:
        stale = f" (stale: {stale_reason([record])})"
    uri, store = logged_model_uri(model.run_id)
    lines = [
        f"study {name}: the one model chosen on validation (highest validation accuracy of "
        f"every recorded cell of {arms_said})",
        f"  {model.arm} seed {model.seed}: validation {100 * model.validation:.2f} % "
        f"({model.validation_photos:,} photos)",
        f"  test accuracy {interval(model.test)} % on {model.test_photos:,} photos "
        "(95% interval, exact binomial): the figure photos no run saw should reproduce",
        f"  trained on {record.machine.get(records.CPU_MODEL, '?')}, recorded "
        f"{record.recorded_at}, code version {record.code_version}{stale}, MLflow run "
        f"{model.run_id}",
    ]
    target = study.analysis.target_test_accuracy
    if target is not None:
        lines.append(f"  {target_call(model, target).replace('**', '')}")
    figure = model.test[0]
    if uri:
        lines.append(f"  model: {uri} (in {store})")
    elif trained_here := same_cell_run(cell.key(record.data, code_version())):
        run_id, figure, uri = trained_here
        lines += [
            f"  model: {uri} (in {store}), another model of this cell trained on this machine "
            f"(MLflow run {run_id}; the recorded one is not in this store): not bit for bit the "
            f"recorded weights, so its own test accuracy, {100 * figure:.2f} %, is the figure "
            "photos no run saw should reproduce",
        ]
    else:
        lines += [
            f"  model: not in this machine's MLflow store ({store}); a model of this cell "
            "(same settings and seed, not bit for bit the same weights on another CPU) "
            f"trains with (or `compare-heads study best {name} --train`):",
            f"    {cell.run_command()}",
        ]
    return lines, uri, figure


def same_cell_run(key: str) -> tuple[str, float, str] | None:
    """The newest finished, scored run in the configured store of the model with this key
    (the chosen cell trained on this machine, today's code): its id, test accuracy and
    model URI. None when there is none."""
    from tracking import runs

    client = runs.client()
    experiment = client.get_experiment_by_name(runs.EXPERIMENT_NAME)  # read only: none, none
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{records.RUN_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in found:
        if records.TEST_ACCURACY in run.data.metrics:
            result = records.RunResult.from_tracked(runs.tracked_run(client, run.info.run_id))
            if result.model_uri:
                return run.info.run_id, run.data.metrics[records.TEST_ACCURACY], result.model_uri
    return None
