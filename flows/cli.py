"""The ``compare-heads`` command: run the flow in-process, or classify photos."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

import typer
from pydantic import ValidationError

from gap_models.config import RunConfig, parameter_errors

app = typer.Typer(
    help="Train and compare CNN classifier heads on Cats vs Dogs, or your own photos.",
    no_args_is_help=True,
)

DEFAULT_MODEL_URI = "models:/cats-vs-dogs@champion"


@app.callback()
def _quiet_and_offline() -> None:
    """The commands' answers are lines a script reads: no progress bars of MLflow's model
    downloads between them; and the Prefect server that an in-process run starts for itself
    (no ``make up``: ``run``, ``study run``) sends no telemetry (it logged "Failed to send
    telemetry" on these offline machines). A user's own setting of either wins."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While a flow runs in this process, SIGTERM ends it as an exit (status 143), not as a
    kill, so the process's clean-up runs.

    A flow run replaces SIGTERM's handler to pause the model in training, then restores the
    one it found and sends the signal again. Python's default handler would then end the
    process at once, skipping ``atexit``: the temporary Prefect server that an in-process
    run starts for itself (a uvicorn child, stopped only there) outlived every paused
    ``run`` and ``study run``. Scoped, so a process that calls the command in-process (a
    test runner) gets its own handler back."""
    try:
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:  # a handler set outside Python reads as None: the default is the closest
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_flow(config: RunConfig):
    """The compare-heads flow in this process; its summary."""
    from flows.compare_heads import compare_heads
    from flows.runners import patient_temporary_server

    patient_temporary_server()

    with _sigterm_exits():
        return compare_heads(**config.model_dump())


FIELDS = RunConfig.model_fields


def _option(name: str, *flags: str) -> typer.models.OptionInfo:
    """A ``run`` option whose help and shown default come from ``RunConfig``."""
    field = FIELDS[name]
    default = field.get_default(call_default_factory=True)
    shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
    # Choices shown in --help; checked with every other value by RunConfig, so one call
    # reports all its bad values at once.
    choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
    metavar = "[" + "|".join(choices) + "]" if choices else None
    return typer.Option(*flags, help=field.description, show_default=shown, metavar=metavar)


@app.command()
def run(
    source: Annotated[str | None, _option("source")] = None,
    image_size: Annotated[int | None, _option("image_size")] = None,
    batch_size: Annotated[int | None, _option("batch_size")] = None,
    epochs: Annotated[int | None, _option("epochs")] = None,
    heads: Annotated[list[str] | None, _option("heads", "--head")] = None,
    seeds: Annotated[list[int] | None, _option("seeds", "--seed")] = None,
    learning_rate: Annotated[float | None, _option("learning_rate")] = None,
    split: Annotated[str | None, _option("split")] = None,
    max_images: Annotated[int | None, _option("max_images")] = None,
    promote: Annotated[bool | None, _option("promote", "--promote/--no-promote")] = None,
    recipe: Annotated[str | None, _option("recipe")] = None,
    precision: Annotated[str | None, _option("precision")] = None,
    batch_norm: Annotated[str | None, _option("batch_norm")] = None,
    backbone: Annotated[str | None, _option("backbone")] = None,
    train_fraction: Annotated[float | None, _option("train_fraction")] = None,
    protocol: Annotated[str | None, _option("protocol")] = None,
    model_name: Annotated[str | None, _option("model_name")] = None,
    force: Annotated[bool | None, _option("force", "--force/--no-force")] = None,
    max_age_days: Annotated[float | None, _option("max_age_days")] = None,
    workers: Annotated[int | None, _option("workers")] = None,
    threads_per_worker: Annotated[int | None, _option("threads_per_worker")] = None,
) -> None:
    """Run the compare-heads flow in this process (same parameters as the deployment).
    Parameters are validated before anything starts: a bad one exits 2 within seconds."""
    parameters = dict(locals())
    if split is not None:  # "80,10,10"; RunConfig says what is wrong with any part
        parameters["split"] = [part.strip() for part in split.split(",")]
    try:
        config = RunConfig.from_parameters(**parameters)
    except ValidationError as error:
        typer.echo("Invalid parameters:\n" + "\n".join(parameter_errors(error)), err=True)
        raise typer.Exit(2) from None
    result = _run_flow(config)
    typer.echo(result.markdown)
    if not result.trained:
        typer.echo(f"\nNothing trained: the plan decided {result.decision!r} (--force trains).")
    if result.promotion is not None:
        typer.echo(f"\nRegistry: {json.dumps(asdict(result.promotion))}")
    typer.echo(f"\nPlots and tables: {result.output_dir}")
    typer.echo(f"MLflow: {result.tracking_uri} (parent run {result.parent_run_id})")


@app.command()
def plan(
    params: Annotated[
        str, typer.Option(help="The run's parameters as JSON, as a deployment takes them")
    ] = "{}",
    source: Annotated[str | None, _option("source")] = None,
    against: Annotated[Literal["champion"], typer.Option(help="What to plan against")] = "champion",
) -> None:
    """Say what a run with these parameters would train against the champion, and why,
    without training: data, code and configuration compared, drift measured. Exit status:
    0 skip, 10 evaluate (only the champion is scored again), 11 partial, 12 full."""
    try:
        given = json.loads(params)
        config = RunConfig.from_parameters(**{**given, **({"source": source} if source else {})})
    except (ValueError, ValidationError) as error:
        lines = parameter_errors(error) if isinstance(error, ValidationError) else [str(error)]
        typer.echo("Invalid parameters:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from None
    from gap_models.data import download
    from tracking import champion, runs

    runs.check_tracking_server(runs.tracking_uri())
    local = download(config.source, progress=lambda message: typer.echo(message, err=True))
    decided, _ = champion.plan_against_champion(
        config.resolved(), local, runs.client(), lambda message: typer.echo(message, err=True)
    )
    from gap_models.planning import render_what_changed

    typer.echo(render_what_changed(decided))
    raise typer.Exit(decided.exit_code)


@app.command()
def cams(
    model_uri: Annotated[str, typer.Argument(help="MLflow URI of a gap model")],
    source: Annotated[str, typer.Option(help="The photos the model's run used")],
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("cam_grid.png"),
    split: Annotated[
        str | None,
        typer.Option(help="train,validation,test percentages (default: the model's run's)"),
    ] = None,
    per_class: Annotated[int | None, typer.Option(help="Test photos per class")] = None,
) -> None:
    """Draw a gap model's class activation maps (of the predicted class) on the first test
    photos of each class. The image size is the model's; the split, its flow run's."""
    from gap_models.data import cached_class_names, preprocess
    from gap_models.report import cam_figure
    from tracking.logged_model import load_logged_model as load_model
    from tracking.logged_model import logged_split

    model = load_model(model_uri)
    image_size = int(model.input_shape[1])
    percentages = [int(part) for part in split.split(",")] if split else logged_split(model_uri)
    prepared = preprocess(source, image_size, percentages, None)
    classes = cached_class_names(prepared.cache_dir)
    per_class = per_class or max(1, 8 // len(classes))
    cam_figure(model, str(prepared.cache_dir), per_class).savefig(out, dpi=110)
    typer.echo(f"{out} (the first test photos, {per_class} of each class: {', '.join(classes)})")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files to classify")],
    model_uri: Annotated[str, typer.Option(help="MLflow model URI")] = DEFAULT_MODEL_URI,
) -> None:
    """Classify image files: one line per file, 'PATH<TAB>class<TAB>probability' (the
    predicted class's name and its probability), or 'PATH<TAB>error<TAB>reason'."""
    from gap_models.predict import classify_files
    from tracking.logged_model import load_logged_model as load_model
    from tracking.logged_model import logged_class_names as model_class_names

    try:
        model = load_model(model_uri)
        class_names = model_class_names(model_uri)
    except Exception as error:  # MLflow raises many kinds; the user needs the URI and the cause
        typer.echo(f"cannot load model {model_uri}: {error}", err=True)
        raise typer.Exit(2) from None
    image_size = int(model.input_shape[1])
    results = classify_files(model, list(images), image_size, class_names)
    for result in results:
        typer.echo(result.line())
    failed = sum(1 for result in results if result.error)
    if failed:
        typer.echo(f"{failed} of {len(results)} files could not be classified", err=True)
        sys.exit(1)


@app.command()
def score(
    source: Annotated[str, typer.Argument(help="A .zip or folder of class folders")],
    model_uri: Annotated[str, typer.Option(help="MLflow model URI")] = DEFAULT_MODEL_URI,
    include_seen: Annotated[
        bool, typer.Option(help="Also score photos the model's own run had (same bytes)")
    ] = False,
) -> None:
    """Score a model on labelled photos it never saw: every photo of SOURCE (a .zip or a
    folder of class folders), less those its own flow run had in any split (by content),
    with an exact 95% interval and each class's recall. What checks that a study's figure
    holds up on photos of the same kind beyond its test split."""
    _score(model_uri, source, include_seen)


def _score(model_uri: str, source: str, include_seen: bool = False):
    """Score the model at ``model_uri`` on ``source`` and print the result (exit 2, with the
    cause, when the model or the source cannot be read)."""
    from gap_models.data import default_cache_dir
    from gap_models.data.manifest import build_manifest
    from gap_models.scoring import score_photos, unseen_photos
    from tracking.champion import model_run_manifest
    from tracking.logged_model import load_logged_model, logged_class_names, logged_split
    from tracking.runs import client

    try:
        model = load_logged_model(model_uri)
        class_names = logged_class_names(model_uri)
        seen = model_run_manifest(client(), model_uri)
    except Exception as error:  # MLflow raises many kinds; the user needs the URI and the cause
        typer.echo(f"cannot load model {model_uri}: {error}", err=True)
        raise typer.Exit(2) from None
    if not Path(source).expanduser().exists():
        typer.echo(f"source {source!r} does not exist", err=True)
        raise typer.Exit(2)
    manifest = build_manifest(source, logged_split(model_uri), default_cache_dir())
    photos, overlap = unseen_photos(manifest, None if include_seen else seen)
    if seen is None and not include_seen:
        typer.echo("note: the model's run recorded no data manifest: nothing left out", err=True)
    if not photos:
        typer.echo(
            f"every photo of {source} ({overlap:,}) was in the model's run: none is unseen "
            "(--include-seen scores them anyway)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        result = score_photos(
            model, source, photos, int(model.input_shape[1]), class_names, overlap
        )
    except ValueError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{model_uri} on {source}:")
    for line in result.lines():
        typer.echo(f"  {line}")
    return result


study_app = typer.Typer(help="Studies: declared grids of cells, records, rendered results.")
app.add_typer(study_app, name="study")


@study_app.command("status")
def study_status(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="studies/NAME.toml, one or more (none: every study, one line each)"),
    ] = None,
) -> None:
    """Done, missing and stale cells, and the time the rest takes on this CPU: cell by cell
    for the studies named, one line per study without a name. Exit status 3 when any cell
    is missing or stale."""
    from flows.study import overview_lines, status_lines
    from tracking.runs import repo_root

    try:
        if names:
            states = []
            for number, name in enumerate(names):
                lines, found = status_lines(repo_root(), name)
                typer.echo(("\n" if number else "") + "\n".join(lines))
                states += found
        else:
            lines, states = overview_lines(repo_root())
            typer.echo("\n".join(lines))
    except (FileNotFoundError, ValueError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if any(state.state != "done" for state in states):
        raise typer.Exit(3)


@study_app.command("run")
def study_run(
    names: Annotated[
        list[str],
        typer.Argument(
            help="studies/NAME.toml, one or more: the budget is shared, in the order given"
        ),
    ],
    budget_minutes: Annotated[
        float | None,
        typer.Option(help="Start no cell that this CPU's estimate says would end later"),
    ] = None,
) -> None:
    """Train the cells that have no current record, first seed of every arm first, and
    write each record as it finishes (commit them). With several studies, one budget: a
    later study's short cells fill what an earlier study's long cell leaves. Exit status 3
    when cells are left."""
    from flows.study import StudyRunBusy, check_studies, run_studies

    try:  # a bad name, study file or source: a clear line now, before any training
        check_studies(names)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    try:  # from here on, a failure is a bug to read in full: its traceback is kept
        with _sigterm_exits():
            left = run_studies(names, budget_minutes, say=typer.echo)
    except StudyRunBusy as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    for name, cells in left.items():
        prefix = f"{name}: " if len(left) > 1 else ""
        typer.echo(
            f"{prefix}{len(cells)} cell{'s' if len(cells) != 1 else ''} left"
            if cells
            else f"{prefix}every cell has a current record"
        )
    if any(left.values()):
        raise typer.Exit(3)


@study_app.command("report")
def study_report(
    name: Annotated[
        str | None, typer.Argument(help="studies/NAME.toml (omitted: every study)")
    ] = None,
) -> None:
    """Render the study (every study without NAME) from its committed records:
    docs/studies/NAME/ (figures, README.md), its section of docs/RESULTS.md, and the verdict
    across studies at the top of that page. No figure is typed by hand."""
    from flows.study import report_study

    try:
        folder = report_study(name)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"rendered {folder}, its section of docs/RESULTS.md and the verdict")


@study_app.command("best")
def study_best(
    name: Annotated[str, typer.Argument(help="studies/NAME.toml")],
    score: Annotated[
        str | None,
        typer.Option(
            "--score",
            help="A .zip or folder of class folders: score the model on its photos that "
            "its run never had",
        ),
    ] = None,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="Without its model in this store, train a model of that cell here first "
            "(its `compare-heads run` line, in-process)",
        ),
    ] = False,
) -> None:
    """The one model the study hands a user, chosen on validation: its test accuracy with an
    exact interval, where it was trained and where its model is (or another model of the
    same cell trained here, held to its own test figure). With --score SOURCE, its accuracy
    on SOURCE's photos that its run never had, against its test figure: exit 1 when it lands
    further from it than the study's figures may (2 points)."""
    from pydantic import ValidationError

    from flows.study import chosen_cell, chosen_lines
    from gap_models.config import parameter_errors
    from gap_models.scoring import HOLDS_UP_WITHIN
    from tracking.runs import repo_root

    try:
        lines, model_uri, test_accuracy = chosen_lines(repo_root(), name)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if not model_uri and train:  # a failure in training keeps its traceback
        _, _, cell = chosen_cell(repo_root(), name)
        try:
            config = cell.config()
        except ValidationError as error:  # the study's photos are not on this machine
            typer.echo("\n".join(lines))
            reasons = "; ".join(parameter_errors(error))
            typer.echo(f"cannot train {cell.arm} seed {cell.seed} here: {reasons}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"training a model of {cell.arm} seed {cell.seed} here: {cell.run_command()}")
        _run_flow(config)
        lines, model_uri, test_accuracy = chosen_lines(repo_root(), name)
    typer.echo("\n".join(lines))
    if score is None:
        return
    if not model_uri:
        typer.echo("cannot score: this machine does not hold the model (see above)", err=True)
        raise typer.Exit(2)
    result = _score(model_uri, score)
    gap = result.accuracy - test_accuracy
    holds = abs(gap) <= HOLDS_UP_WITHIN
    typer.echo(
        f"unseen photos minus test: {100 * gap:+.2f} points: "
        + (
            f"within {100 * HOLDS_UP_WITHIN:.0f} points, the figure holds up"
            if holds
            else f"more than {100 * HOLDS_UP_WITHIN:.0f} points: the figure does not hold up"
        )
    )
    if not holds:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
