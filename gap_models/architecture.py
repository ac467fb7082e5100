"""The architectures as facts, without Keras: the one table of classifier heads (from which
every per-head table is built: builders, colours, size limits) and the backbone's geometry.

Light on purpose: configuration validates image sizes from it before TensorFlow loads;
``gap_models.models`` builds the layers from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

HeadName = Literal["fc", "fc_dropout", "gap", "avgpool"]
HEAD_NAMES: tuple[str, ...] = get_args(HeadName)
"""Classifier heads that ``gap_models.models.build_model`` knows, in display order."""


@dataclass(frozen=True)
class HeadSpec:
    """What is known of a head before it is built."""

    description: str
    colour: str  # in every plot
    min_feature_side: int  # smallest side of the backbone's output map it can take


HEADS: dict[str, HeadSpec] = {
    "fc": HeadSpec("Flatten, BN, Dense 100, ReLU, BN, Dense 100, ReLU, output", "tab:blue", 1),
    "fc_dropout": HeadSpec("as fc, with Dropout(0.5) after the first ReLU", "tab:orange", 1),
    "gap": HeadSpec("global average pooling, output", "tab:green", 1),
    "avgpool": HeadSpec("2x2 average pool, Flatten, output (the notebook's 'GAP')", "tab:red", 2),
}
assert tuple(HEADS) == HEAD_NAMES

BACKBONE_FILTERS: tuple[int, ...] = (32, 32, 64)
"""The article's backbone: per block a valid 3x3 convolution, BatchNorm, ReLU, 2x2 max pool."""


def feature_map_side(image_size: int) -> int:
    """Side of the backbone's output: each block's valid 3x3 convolution, then 2x2 pooling."""
    side = image_size
    for _ in BACKBONE_FILTERS:
        side = (side - 2) // 2
    return side


def min_image_size(head: str) -> int:
    """The smallest ``image_size`` the given head can process (22 for most, 30 for avgpool)."""
    size = 1
    while feature_map_side(size) < HEADS[head].min_feature_side:
        size += 1
    return size
