"""The ``compare-heads`` command: run the flow in-process, or classify photos."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gap_models.config import DEFAULT_SOURCE

app = typer.Typer(
    help="Train and compare CNN classifier heads on Cats vs Dogs.", no_args_is_help=True
)

DEFAULT_MODEL_URI = "models:/cats-vs-dogs@champion"


@app.command()
def run(
    source: Annotated[
        str,
        typer.Option(help="tfds:cats_vs_dogs, or a .zip / folder in PetImages/{Cat,Dog} layout"),
    ] = DEFAULT_SOURCE,
    image_size: Annotated[int, typer.Option(help="Side the photos are resized to")] = 100,
    batch_size: int = 64,
    epochs: int = 7,
    heads: Annotated[
        list[str] | None,
        typer.Option("--head", help="Repeat for several (default fc, fc_dropout, gap)"),
    ] = None,
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="Repeat for several (default 0)")
    ] = None,
    learning_rate: float = 0.001,
    split: Annotated[str, typer.Option(help="train,validation,test percentages")] = "80,10,10",
    max_images: Annotated[
        int | None, typer.Option(help="Class-balanced subset size (default: all)")
    ] = None,
    promote: Annotated[
        bool, typer.Option(help="Register the best model; move champion if better")
    ] = True,
    recipe: Annotated[
        str, typer.Option(help="faithful (the article's training) or improved")
    ] = "faithful",
    precision: Annotated[
        str, typer.Option(help="mixed_bfloat16 (fast) or float32 (the article's arithmetic)")
    ] = "mixed_bfloat16",
    batch_norm: Annotated[
        str, typer.Option(help="fused (fast) or keras (Keras' own BatchNormalization)")
    ] = "fused",
) -> None:
    """Run the compare-heads flow in this process (same parameters as the deployment)."""
    from pydantic import ValidationError

    from flows.compare_heads import compare_heads

    try:
        split_parts = [int(part) for part in split.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"split {split!r}: expected three integers like 80,10,10"
        ) from None
    try:
        summary = compare_heads(
            source=source,
            image_size=image_size,
            batch_size=batch_size,
            epochs=epochs,
            heads=heads or None,
            seeds=seeds or None,
            learning_rate=learning_rate,
            split=split_parts,
            max_images=max_images,
            promote=promote,
            recipe=recipe,
            precision=precision,
            batch_norm=batch_norm,
        )
    except ValidationError as error:
        typer.echo(f"Invalid parameters:\n{error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary["markdown"])
    if "promotion" in summary:
        typer.echo(f"\nRegistry: {json.dumps(summary['promotion'])}")
    typer.echo(f"\nPlots and tables: {summary['output_dir']}")
    typer.echo(f"MLflow: {summary['tracking_uri']} (parent run {summary['parent_run_id']})")


@app.command()
def cams(
    model_uri: Annotated[str, typer.Argument(help="MLflow URI of a gap model")],
    source: Annotated[str, typer.Option(help="The photos the model's run used")],
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("cam_grid.png"),
    image_size: int = 100,
    split: Annotated[str, typer.Option(help="train,validation,test percentages")] = "80,10,10",
    per_class: Annotated[int, typer.Option(help="Test photos per class")] = 4,
) -> None:
    """Draw a gap model's class activation maps on the first test photos of each class."""
    from gap_models.data import preprocess
    from tasks.compare import cam_figure

    prepared = preprocess(source, image_size, [int(part) for part in split.split(",")], None)
    cam_figure(model_uri, str(prepared.cache_dir), per_class).savefig(out, dpi=110)
    typer.echo(f"{out} ({per_class} cats and {per_class} dogs of the test split)")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files to classify")],
    model_uri: Annotated[str, typer.Option(help="MLflow model URI")] = DEFAULT_MODEL_URI,
) -> None:
    """Classify image files: one line per file, 'PATH<TAB>label<TAB>probability'."""
    from gap_models.predict import classify_files
    from tasks.evaluate import load_logged_model

    try:
        model = load_logged_model(model_uri)
    except Exception as error:  # MLflow raises many kinds; the user needs the URI and the cause
        typer.echo(f"cannot load model {model_uri}: {error}", err=True)
        raise typer.Exit(2) from None
    image_size = int(model.input_shape[1])
    results = classify_files(model, list(images), image_size)
    for result in results:
        typer.echo(result.line())
    failed = sum(1 for result in results if result.error)
    if failed:
        typer.echo(f"{failed} of {len(results)} files could not be classified", err=True)
        sys.exit(1)


if __name__ == "__main__":
    app()
