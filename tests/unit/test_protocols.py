"""The article's protocol: the chain, its cache, and the keys of every other cell unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from gap_models import identity, protocols
from gap_models.config import RunConfig


def _weights(value: float) -> protocols.BackboneWeights:
    return {"backbone_conv1": [np.full((3, 3, 3, 2), value), np.zeros(2)]}


def test_each_head_starts_from_the_backbone_its_predecessors_trained_once(tmp_path):
    trained: list[tuple[str, float | None]] = []

    def train(head, start):
        trained.append(
            (head, None if start is None else float(start["backbone_conv1"][0][0, 0, 0, 0]))
        )
        return _weights(len(trained))

    cell = {"data": "d", "head": "avgpool", "seed": 0, "epochs": 7}
    assert protocols.chain_backbone("fc", cell, tmp_path, train) is None  # first of the chain
    start = protocols.chain_backbone("avgpool", cell, tmp_path, train)
    assert trained == [("fc", None), ("fc_dropout", 1.0)]  # in the article's order
    assert start["backbone_conv1"][0][0, 0, 0, 0] == 2.0
    again = protocols.chain_backbone("avgpool", cell, tmp_path, train)
    assert len(trained) == 2 and np.array_equal(
        again["backbone_conv1"][0], start["backbone_conv1"][0]
    )
    other_seed = protocols.chain_backbone("fc_dropout", {**cell, "seed": 1}, tmp_path, train)
    assert len(trained) == 3 and other_seed["backbone_conv1"][0][0, 0, 0, 0] == 3.0
    with pytest.raises(ValueError, match="not in it"):
        protocols.predecessors("gap")


def test_only_the_replays_cells_name_the_protocol_and_its_code(tmp_path):
    fair = RunConfig(source=str(tmp_path), heads=["fc"])
    replay = RunConfig(source=str(tmp_path), heads=["fc", "fc_dropout"], protocol="article")
    assert "protocol" not in identity.training_settings(fair)  # earlier cells' keys unchanged
    settings = identity.training_settings(replay)
    assert settings["protocol"] == "article"
    assert settings["protocol_code"] == protocols.chain_code_version()
    with pytest.raises(ValueError, match="not in it"):
        RunConfig(source=str(tmp_path), heads=["gap"], protocol="article")
