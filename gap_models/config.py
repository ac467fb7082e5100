"""The one validated configuration of a compare-heads run.

The flow's parameters are exactly the fields of ``RunConfig``; bad values fail here, before
any download or training starts, with a message naming the parameter and what is allowed.
Allowed values are the ``Literal`` types below; the modules that use them import the tuples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gap_models.architecture import (
    HEAD_NAMES,
    BackboneName,
    HeadName,
    min_image_size,
)
from gap_models.hardware import resolve_precision

TFDS_PREFIX = "tfds:"
CHECK_PATHS = "check_paths"
"""Validation context key: False validates a configuration whose source is elsewhere."""
DEFAULT_SOURCE = "tfds:cats_vs_dogs"

Precision = Literal["auto", "mixed_bfloat16", "float32"]
BatchNorm = Literal["fused", "keras"]
Recipe = Literal["faithful", "improved", "converge"]
Protocol = Literal["fair", "article"]
ARTICLE_CHAIN: tuple[str, ...] = ("fc", "fc_dropout", "avgpool")
"""The article's protocol: one backbone trained by these heads in this order, each starting
where the one before left it (``gap_models.protocols``)."""
PRECISIONS: tuple[str, ...] = get_args(Precision)
BATCH_NORMS: tuple[str, ...] = get_args(BatchNorm)
RECIPES: tuple[str, ...] = get_args(Recipe)
RESOLVED_PRECISIONS: tuple[str, ...] = tuple(p for p in PRECISIONS if p != "auto")


DEEP_RECIPE: dict[str, object] = {
    "backbone": "deep",
    "recipe": "converge",
    "epochs": 30,
    "heads": ["gap"],
    "precision": "float32",
}
"""The strongest model the studies found, as flow parameters over the defaults: the deep
trunk trained to convergence (docs/RESULTS.md, study deep_trunk), in the precision those
records were trained in. The deployment compare-heads-deep runs it (prefect.yaml repeats it:
a test checks); ``make run DEPLOYMENT=compare-heads-deep`` or ``compare-heads run`` with the
same options. About an hour a model on a 2-core CPU (README)."""


class RunConfig(BaseModel):
    """Parameters of one compare-heads run: the one home of every name, default and allowed
    value. The flow, the CLI and prefect.yaml take theirs from here (a test checks), and bad
    values fail here, before any download or training, naming the parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        DEFAULT_SOURCE,
        description="tfds:cats_vs_dogs (downloads the real photos), or a .zip / folder of "
        "class folders (<root>/<class>/<image>, e.g. PetImages/{Cat,Dog}/*.jpg)",
    )
    # The article resized to 100 px; the cache holds the photos at this size, decoded once.
    image_size: int = Field(100, ge=1, le=512, description="Side the photos are resized to")
    batch_size: int = Field(64, ge=1, le=4096, description="Training batch size")
    epochs: int = Field(7, ge=1, le=1000, description="Training epochs (the article: 7)")
    heads: list[HeadName] = Field(
        default_factory=lambda: ["fc", "fc_dropout", "gap"],
        min_length=1,
        description=f"Classifier heads to train, of {list(HEAD_NAMES)}",
    )
    # For one seed every head starts from identical backbone weights (a fair comparison).
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="Each seed repeats every head"
    )
    learning_rate: float = Field(0.001, gt=0, le=1, description="Adam's learning rate")
    # Assignment is by a hash of each image's bytes: adding photos never moves old ones.
    split: list[int] = Field(
        default_factory=lambda: [80, 10, 10],
        description="Train / validation / test percentages",
    )
    # Deterministic and class-balanced, for quick runs.
    max_images: int | None = Field(
        None, ge=6, description="Use a class-balanced subset of this many photos (None: all)"
    )
    promote: bool = Field(
        True, description="Register the best model; move the champion alias if it is better"
    )
    # Off by default so the comparison stays the article's.
    recipe: Recipe = Field(
        "faithful",
        description="faithful (the article's training), improved (augmentation, "
        "learning-rate schedule, early stopping) or converge (AdamW, warm-up then cosine "
        "decay, label smoothing, crop/flip/colour augmentation, early stopping on "
        "validation accuracy: trains to convergence, give it 20-30 epochs)",
    )
    # Emulated bfloat16 is 3.5x slower than float32 on an AVX2-only CPU, native bfloat16
    # much faster (docs/RESULTS.md, 2.1): "auto" decides per machine (gap_models/hardware.py).
    precision: Precision = Field(
        "auto",
        description="auto (bfloat16 where the hardware computes it natively, else float32), "
        "mixed_bfloat16, or float32 (the article's arithmetic)",
    )
    # Same maths as Keras' layer, one kernel while training; "keras" with precision
    # "float32" is the article's model bit for bit.
    batch_norm: BatchNorm = Field(
        "fused", description="fused (TensorFlow's fused kernel) or keras (Keras' own layer)"
    )

    # The article's trunk starves a pooling head of maps (64 channels); the deeper one asks
    # whether the heads' ranking survives a trunk that is not the bottleneck.
    backbone: BackboneName = Field(
        "article",
        description="article (3 conv blocks 32-32-64, the article's) or deep (5 blocks "
        "32-64-128-256-256, same padding)",
    )
    # Validation and test stay fixed, so a learning curve's points are scored alike
    # (max_images shrinks all three splits).
    train_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Train on this fraction of the training split (a fixed, nested subset "
        "by content hash); validation and test stay whole",
    )

    # Only to replay the article's (unfair) comparison and see what it did to the ranking.
    protocol: Protocol = Field(
        "fair",
        description="fair (every model a fresh backbone from the same initial weights) or "
        f"article (one backbone trained by {', '.join(ARTICLE_CHAIN)} in turn, as the "
        "article did; heads must come from that chain)",
    )

    # Two data sets must never fight over one champion: each has its own registered model.
    model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$",
        description="Registered model of the champion (None: cats-vs-dogs for Cats vs Dogs "
        "data, else the source's file or folder name)",
    )
    # The retraining plan (gap_models/planning.py): a run trains only what changed since
    # the champion was trained, unless forced; a champion older than max_age_days is stale.
    force: bool = Field(
        False, description="Train every model even when the plan finds nothing changed"
    )
    max_age_days: float | None = Field(
        None,
        gt=0,
        description="Retrain when the champion is older than this many days (None: never "
        "for age alone)",
    )
    # Execution only: where models train changes how fast, never what they learn.
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="0: train the models one after another in the flow's process; N: on a "
        "local Dask cluster of N worker processes, one model each at a time (ignored when "
        "COMPARE_HEADS_DASK_ADDRESS names a running Dask scheduler)",
    )
    threads_per_worker: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Compute threads of each Dask worker's TensorFlow (None: the machine's "
        "cores shared out among the workers)",
    )

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("source must not be empty: use 'tfds:cats_vs_dogs' or a path")
        if value.startswith(TFDS_PREFIX):
            if value != DEFAULT_SOURCE:
                raise ValueError(
                    f"source {value!r}: the only tensorflow-datasets source is {DEFAULT_SOURCE!r}"
                )
            return value
        if "://" in value:
            scheme = value.split("://", 1)[0]
            raise ValueError(
                f"source {value!r}: unknown scheme {scheme!r}; allowed are "
                f"{DEFAULT_SOURCE!r}, a .zip archive path or a folder path"
            )
        return value

    @field_validator("heads", mode="before")
    @classmethod
    def _check_heads(cls, value: list[str]) -> list[str]:
        if not isinstance(value, list):
            return value  # pydantic says what type it wants
        unknown = [head for head in value if head not in HEAD_NAMES]
        if unknown:
            raise ValueError(f"heads: unknown {unknown}; allowed are {list(HEAD_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"heads: {value} names a head twice")
        return value

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds: {value} names a seed twice")
        if any(seed < 0 for seed in value):
            raise ValueError(f"seeds: {value} must be non-negative integers")
        return value

    @field_validator("split")
    @classmethod
    def _check_split(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or sum(value) != 100 or min(value) <= 0:
            raise ValueError(
                f"split: {value} must be three positive percentages "
                "(train, validation, test) that add up to 100, e.g. [80, 10, 10]"
            )
        return value

    @model_validator(mode="after")
    def _check_image_size(self) -> RunConfig:
        smallest = {h: min_image_size(h, self.backbone) for h in self.heads}
        too_small = {h: size for h, size in smallest.items() if self.image_size < size}
        if too_small:
            raise ValueError(
                f"image_size {self.image_size} is too small for heads {list(too_small)} on "
                f"the {self.backbone} backbone: the smallest each can process is {too_small}"
            )
        return self

    @model_validator(mode="after")
    def _check_protocol(self) -> RunConfig:
        outside = [head for head in self.heads if head not in ARTICLE_CHAIN]
        if self.protocol == "article" and outside:
            raise ValueError(
                f"protocol 'article' trains the article's chain {list(ARTICLE_CHAIN)}; heads "
                f"{outside} are not in it"
            )
        return self

    @model_validator(mode="after")
    def _check_paths(self, info: ValidationInfo) -> RunConfig:
        # A cell's identity (a study's records, read on a machine without its photos) needs
        # the settings, not the photos: validated with context {"check_paths": False}.
        wanted = (info.context or {}).get(CHECK_PATHS, True)
        if wanted and not self.is_tfds and not Path(self.source).expanduser().exists():
            raise ValueError(
                f"source {self.source!r} does not exist: pass an existing .zip archive or "
                f"folder of class folders (PetImages/{{Cat,Dog}}/*.jpg), or {DEFAULT_SOURCE!r}"
            )
        return self

    @property
    def is_tfds(self) -> bool:
        return self.source.startswith(TFDS_PREFIX)

    @classmethod
    def from_parameters(cls, **parameters: object) -> RunConfig:
        """A config from flow or CLI parameters, where None means "the default"."""
        return cls(**{name: value for name, value in parameters.items() if value is not None})

    def resolved(self) -> RunConfig:
        """This config with ``precision`` resolved on this machine (``auto`` becomes what
        the hardware computes fast): resolved once per run, then passed down and logged, so
        every model of a run trains with the same arithmetic wherever it is placed."""
        return self.model_copy(update={"precision": resolve_precision(self.precision).value})


def flow_parameter_types() -> dict[str, object]:
    """Each field as the flow declares its parameter: the field's type or None (None = the
    default), with its constraints, so Prefect's parameter schema (the run form's choices and
    limits, the server's check of a deployment run's parameters) is RunConfig's own."""
    types = {}
    for name, field in RunConfig.model_fields.items():
        optional = field.annotation | None
        types[name] = Annotated[optional, *field.metadata] if field.metadata else optional
    return types


def parameters_docstring() -> str:
    """An ``Args:`` section of every field's description: what Prefect shows beside each
    parameter in the UI's run form."""
    lines = ["Args:"]
    for name, field in RunConfig.model_fields.items():
        lines.append(f"    {name}: {field.description}")
    return "\n".join(lines)


def parameter_errors(error: ValidationError) -> list[str]:
    """Each bad value of a ``RunConfig`` as one line, ``parameter: what is wrong`` (what is
    allowed is in the message), without pydantic's links."""
    lines = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        named = not where or message.startswith(where.split(".")[0])
        lines.append(message if named else f"{where}: {message}")
    return lines
