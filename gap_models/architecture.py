"""The architectures as facts, without Keras: the one table of classifier heads (from which
every per-head table is built: builders, colours, size limits) and the backbones' geometry.

Light on purpose: configuration validates image sizes from it before TensorFlow loads;
``gap_models.models`` builds the layers from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

HeadName = Literal["fc", "fc_dropout", "gap", "avgpool", "fc_matched", "gap_matched"]
HEAD_NAMES: tuple[str, ...] = get_args(HeadName)
"""Classifier heads that ``gap_models.models.build_model`` knows, in display order."""
ARTICLE_HEADS: tuple[str, ...] = HEAD_NAMES[:4]
"""The article's heads (``fc_dropout`` is its FC with dropout; ``avgpool`` its "GAP")."""


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
    # The capacity-matched pair: the same two ideas (a weight per position, or one average
    # per map) at the other one's size, so a difference is the design, not the capacity.
    "fc_matched": HeadSpec(
        "fc at gap's size: 1x1 conv to one map, Flatten, output (a weight per position)",
        "tab:purple",
        1,
    ),
    "gap_matched": HeadSpec(
        "gap at fc's size: 3x3 conv widening the maps (as many as give fc's parameter "
        "count), BN, ReLU, global average pooling, output",
        "tab:brown",
        1,
    ),
}
assert tuple(HEADS) == HEAD_NAMES

BackboneName = Literal["article", "deep"]
BACKBONE_NAMES: tuple[str, ...] = get_args(BackboneName)


@dataclass(frozen=True)
class BackboneSpec:
    """A trunk of blocks, each: 3x3 convolution, BatchNorm, ReLU, 2x2 max pool."""

    description: str
    filters: tuple[int, ...]  # per block
    padding: Literal["valid", "same"]


BACKBONES: dict[str, BackboneSpec] = {
    "article": BackboneSpec(
        "the article's: 3 blocks, 32-32-64, valid convolutions", (32, 32, 64), "valid"
    ),
    # Deeper and wider, still stock Keras layers (a served model loads anywhere); "same"
    # padding so five halvings of 100 px leave a 3x3 map.
    "deep": BackboneSpec(
        "5 blocks, 32-64-128-256-256, same-padded convolutions", (32, 64, 128, 256, 256), "same"
    ),
}
assert tuple(BACKBONES) == BACKBONE_NAMES


def feature_map_side(image_size: int, backbone: str = "article") -> int:
    """Side of the backbone's output: each block's 3x3 convolution (valid: 2 pixels fewer),
    then 2x2 pooling."""
    spec = BACKBONES[backbone]
    side = image_size
    for _ in spec.filters:
        side = (side - 2 if spec.padding == "valid" else side) // 2
    return side


def min_image_size(head: str, backbone: str = "article") -> int:
    """The smallest ``image_size`` the head can process on the backbone (22 for most on the
    article's, 30 for avgpool)."""
    size = 1
    while feature_map_side(size, backbone) < HEADS[head].min_feature_side:
        size += 1
    return size
