"""The one validated configuration of a compare-heads run.

The flow's parameters are exactly the fields of ``RunConfig``; bad values fail here, before
any download or training starts, with a message naming the parameter and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gap_models import HEAD_NAMES

TFDS_PREFIX = "tfds:"
DEFAULT_SOURCE = "tfds:cats_vs_dogs"
MIN_FEATURE_SIDE = {"fc": 1, "fc_dropout": 1, "gap": 1, "avgpool": 2}
"""Smallest side of the head's output map each back-end can take (avgpool pools 2x2)."""


def feature_map_side(image_size: int) -> int:
    """Side of the shared head's output: three valid 3x3 convolutions, each then 2x2 pooled."""
    side = image_size
    for _ in range(3):
        side = (side - 2) // 2
    return side


def min_image_size(head: str) -> int:
    """The smallest ``image_size`` the given head can process (22 for most, 30 for avgpool)."""
    size = 1
    while feature_map_side(size) < MIN_FEATURE_SIDE[head]:
        size += 1
    return size


class RunConfig(BaseModel):
    """Parameters of one compare-heads run (SPEC §3), validated before any work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # tfds:cats_vs_dogs (downloads the real data), or a zip / folder in PetImages/{Cat,Dog} layout.
    source: str = DEFAULT_SOURCE
    # Side of the square the photos are resized to once, before caching (the article: 100).
    image_size: int = Field(100, ge=1, le=512)
    batch_size: int = Field(64, ge=1, le=4096)
    epochs: int = Field(7, ge=1, le=1000)
    heads: list[str] = Field(default_factory=lambda: ["fc", "fc_dropout", "gap"], min_length=1)
    # Each seed repeats every head; for one seed all heads start from identical head weights.
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    learning_rate: float = Field(0.001, gt=0, le=1)
    # Percentages of train / validation / test; assignment is by a hash of each image's bytes.
    split: list[int] = Field(default_factory=lambda: [80, 10, 10])
    # A deterministic, class-balanced subset for quick runs; None uses every image.
    max_images: int | None = Field(None, ge=6)
    # Register the best model and move the champion alias if it beats the current champion.
    promote: bool = True
    # "faithful" trains as the article did; "improved" adds augmentation, a learning-rate
    # schedule and early stopping (off by default so the comparison stays faithful).
    recipe: Literal["faithful", "improved"] = "faithful"
    # Keras dtype policy: "mixed_bfloat16" (bfloat16 compute, float32 weights and output;
    # this CPU has AVX512_BF16) or "float32". With batch_norm "keras" and precision
    # "float32" the models are the article's bit for bit (docs/RESULTS.md, performance).
    precision: Literal["mixed_bfloat16", "float32"] = "mixed_bfloat16"
    # "fused": the head's BatchNorm trains through TensorFlow's fused kernel (same maths);
    # "keras": Keras' own layer.
    batch_norm: Literal["fused", "keras"] = "fused"

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

    @field_validator("heads")
    @classmethod
    def _check_heads(cls, value: list[str]) -> list[str]:
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
        too_small = {
            h: min_image_size(h) for h in self.heads if self.image_size < min_image_size(h)
        }
        if too_small:
            raise ValueError(
                f"image_size {self.image_size} is too small for heads {list(too_small)}: "
                f"the smallest each can process is {too_small}"
            )
        return self

    @model_validator(mode="after")
    def _check_paths(self) -> RunConfig:
        if not self.is_tfds and not Path(self.source).expanduser().exists():
            raise ValueError(
                f"source {self.source!r} does not exist: pass an existing .zip archive or "
                f"folder in PetImages/{{Cat,Dog}}/*.jpg layout, or {DEFAULT_SOURCE!r}"
            )
        return self

    @property
    def is_tfds(self) -> bool:
        return self.source.startswith(TFDS_PREFIX)

    def tracking_params(self) -> dict[str, str]:
        """The run's parameters as MLflow logs them on the parent run (strings, once)."""
        return {key: str(value) for key, value in self.model_dump().items()}
