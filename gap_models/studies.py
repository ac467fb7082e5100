"""A study declared as a file: its grid of cells (one cell = one trained model), its data,
and its pre-registered analysis. ``studies/<name>.toml`` in the repository.

A cell's identity is its configuration, the data's cache key (source fingerprint and
preprocessing settings) and the code version (``gap_models.provenance``): a record whose key
no longer matches is stale, never reused silently. Cells are trained in a stated priority
order: the first seed of every arm before the second seed of any.
"""

from __future__ import annotations

import itertools
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gap_models import identity
from gap_models.config import CHECK_PATHS, RunConfig

STUDIES_DIR = "studies"
GRID_FIELDS = (
    "heads",
    "seeds",
    "image_size",
    "batch_size",
    "epochs",
    "learning_rate",
    "split",
    "max_images",
    "recipe",
    "precision",
    "batch_norm",
    "backbone",
    "train_fraction",
    "protocol",
)
"""``RunConfig`` fields a study may vary or fix (``heads`` and ``seeds`` always vary)."""
Figure = Literal[
    "forest",
    "accuracies",
    "curves",
    "overfitting",
    "translation",
    "speed",
    "learning_curve",
    "capacity",
]


class Analysis(BaseModel):
    """The pre-registered analysis: declared before any cell ran, never chosen after."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One Holm family: every difference tested here, adjusted together.
    family: list[tuple[str, str]] = Field(default_factory=list)
    # "Same accuracy" claims, tested as equivalence (TOST) within +-margin.
    equivalence: list[tuple[str, str]] = Field(default_factory=list)
    margin: float = Field(0.01, gt=0, lt=0.5, description="Equivalence margin (accuracy)")
    level: float = Field(0.95, gt=0.5, lt=1)
    bootstrap_draws: int = Field(4000, ge=200, le=100_000)
    # Epochs to reach this validation accuracy (speed of learning, not of the CPU).
    target_val_accuracy: float = Field(0.8, gt=0, lt=1)
    # A bar the chosen model's test accuracy must clear (none: no bar): reached only when
    # the lower end of its exact 95% interval clears it.
    target_test_accuracy: float | None = Field(None, gt=0, lt=1)
    figures: list[Figure] = Field(default_factory=lambda: ["forest", "accuracies", "curves"])
    # The arms the study hands a user its chosen arm and model from (empty: every arm of its
    # own grid): a learning curve's smaller training fractions are handicaps no one picks.
    choose_from: list[str] = Field(default_factory=list)
    # Validation accuracies a source published for these arms (the article's, one run each,
    # on its own data and split): shown beside ours, never tested (no interval to test).
    published: dict[str, float] = Field(default_factory=dict)
    # Another study whose records of the same arms and seeds join this analysis, labelled
    # "<arm>@<baseline>" (paired by seed and photo: both must use the same data), so that
    # the family can test this study's cells against that study's.
    baseline: str | None = None
    # Differences of differences, (A - B) - (C - D) on the seeds all four arms have: each
    # one test outside the family, unadjusted, and always called exploratory. For what the
    # family does not test (whether a ranking changes with a setting); one declared after
    # the cells ran says so in its study file.
    exploratory: list[tuple[str, str, str, str]] = Field(default_factory=list)


class Study(BaseModel):
    """A study file: its grid, data and analysis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    # The question this study answers, as the verdict of docs/RESULTS.md asks it (none: the
    # study is evidence for its own section only), and its place among the questions.
    question: str | None = None
    rank: int = Field(100, ge=0)
    # A path relative to the repository root, or tfds:cats_vs_dogs.
    source: str
    grid: dict[str, list]
    analysis: Analysis = Field(default_factory=Analysis)

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, list]) -> dict[str, list]:
        unknown = sorted(set(grid) - set(GRID_FIELDS))
        if unknown:
            raise ValueError(f"grid: unknown fields {unknown}; allowed are {list(GRID_FIELDS)}")
        for required in ("heads", "seeds"):
            if not grid.get(required):
                raise ValueError(f"grid: {required} must list at least one value")
        if "auto" in grid.get("precision", ["auto"]):
            raise ValueError(
                "grid: precision must be explicit (float32 or mixed_bfloat16): a study's cells "
                "must mean the same arithmetic on every machine that trains them"
            )
        return grid

    @model_validator(mode="after")
    def _check_analysis(self) -> Study:
        labels = {cell.arm for cell in self.cells(Path("."))}
        if self.analysis.baseline:
            labels |= {f"{label}@{self.analysis.baseline}" for label in labels}
        declared = self.analysis.family + self.analysis.equivalence + self.analysis.exploratory
        named = [label for arms in declared for label in arms]
        unknown = sorted(set(named) - labels)
        if unknown:
            raise ValueError(f"analysis names arms {unknown}; this grid has {sorted(labels)}")
        for a, b, c, d in self.analysis.exploratory:
            if a == b or c == d or (a, b) == (c, d):
                raise ValueError(
                    f"analysis.exploratory [{a}, {b}, {c}, {d}]: (A - B) - (C - D) needs two "
                    "different pairs of different arms"
                )
        own = self.arms()
        for field_name in ("choose_from", "published"):
            unknown = sorted(set(getattr(self.analysis, field_name)) - set(own))
            if unknown:
                raise ValueError(
                    f"analysis.{field_name} names {unknown}; this grid's arms are {own}"
                )
        bad = {arm: v for arm, v in self.analysis.published.items() if not 0 < v < 1}
        if bad:
            raise ValueError(f"analysis.published: accuracies are fractions in (0, 1), not {bad}")
        return self

    def varying(self) -> list[str]:
        """Grid fields other than heads and seeds with more than one value (part of an arm's
        label)."""
        return [
            k for k in GRID_FIELDS if k not in ("heads", "seeds") and len(self.grid.get(k, [])) > 1
        ]

    def cells(self, root: Path) -> list[Cell]:
        """Every cell, in priority order: seed by seed, every arm of a seed before the next."""
        fixed = {
            k: v[0] for k, v in self.grid.items() if len(v) == 1 and k not in ("heads", "seeds")
        }
        axes = self.varying()
        source = self.source if self.source.startswith("tfds:") else str(root / self.source)
        cells = []
        for seed in self.grid["seeds"]:
            for head in self.grid["heads"]:
                for values in itertools.product(*(self.grid[k] for k in axes)):
                    settings = {**fixed, **dict(zip(axes, values, strict=True))}
                    arm = "/".join([head, *(str(v) for v in values)])
                    cells.append(Cell(self.name, arm, head, seed, source, settings))
        return cells

    def arms(self) -> list[str]:
        """Arm labels in grid order."""
        return list(dict.fromkeys(cell.arm for cell in self.cells(Path("."))))

    def candidates(self) -> list[str]:
        """The arms its chosen arm and model are picked from, in grid order: those of
        ``analysis.choose_from``, or every arm of its own grid (never a baseline's)."""
        chosen = self.analysis.choose_from
        return [arm for arm in self.arms() if not chosen or arm in chosen]


@dataclass(frozen=True)
class Cell:
    """One trained model of a study: an arm (head and the varying settings) and a seed."""

    study: str
    arm: str
    head: str
    seed: int
    source: str
    settings: dict

    @property
    def file_stem(self) -> str:
        return f"{self.arm.replace('/', '-')}-seed{self.seed}"

    def config(self, check_paths: bool = True) -> RunConfig:
        """The flow parameters that train exactly this cell (nothing promoted). Without
        ``check_paths``, also where its source is not (its identity needs only settings)."""
        values = dict(
            source=self.source, heads=[self.head], seeds=[self.seed], promote=False, **self.settings
        )
        return RunConfig.model_validate(values, context={CHECK_PATHS: check_paths})

    def run_command(self) -> str:
        """The ``compare-heads run`` line that trains exactly this cell (``config``'s values)."""
        options = [
            f"--source {shlex.quote(self.source)}", f"--head {self.head}", f"--seed {self.seed}",
            "--no-promote",
        ]  # fmt: skip
        for name, value in self.settings.items():
            shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            options.append(f"--{name.replace('_', '-')} {shlex.quote(shown)}")
        return "compare-heads run " + " ".join(options)

    def key(self, data: str, code_version: str) -> str:
        config = self.config(check_paths=False)
        cell = identity.cell_identity(config, self.head, self.seed, data, code_version)
        return identity.cell_key(cell)


def studies_dir(root: Path) -> Path:
    return root / STUDIES_DIR


def study_names(root: Path) -> list[str]:
    return sorted(p.stem for p in studies_dir(root).glob("*.toml"))


def load_study(root: Path, name: str) -> Study:
    """``studies/<name>.toml``, validated (a clear error naming the file otherwise)."""
    path = studies_dir(root) / f"{name}.toml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no study {name!r}: {path} does not exist (studies: {study_names(root)})"
        )
    try:
        with path.open("rb") as handle:
            content = tomllib.load(handle)
        if "name" in content:
            raise ValueError("a study's name is its file's name: remove the key `name`")
        return Study(name=name, **content)
    except ValueError as error:  # TOML syntax and pydantic validation errors alike
        raise ValueError(f"{path}: {error}") from None
