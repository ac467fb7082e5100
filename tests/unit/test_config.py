"""Parameters are validated before any work, with messages naming the parameter."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gap_models.architecture import feature_map_side, min_image_size
from gap_models.config import RunConfig


def test_defaults_match_the_spec():
    config = RunConfig()
    assert config.source == "tfds:cats_vs_dogs"
    assert (config.image_size, config.batch_size, config.epochs) == (100, 64, 7)
    assert config.heads == ["fc", "fc_dropout", "gap"] and config.seeds == [0]
    assert config.learning_rate == 0.001 and config.split == [80, 10, 10]
    assert config.max_images is None and config.promote is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"heads": ["gap", "mlp"]},
            "heads: unknown ['mlp']; allowed are ['fc', 'fc_dropout', 'gap', 'avgpool', 'fc_matched', 'gap_matched']",
        ),
        ({"heads": []}, "heads"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        (
            {"image_size": 29, "heads": ["avgpool"]},
            "image_size 29 is too small for heads ['avgpool']",
        ),
        ({"image_size": 21}, "too small for heads ['fc', 'fc_dropout', 'gap']"),
        ({"split": [80, 10, 5]}, "add up to 100"),
        ({"split": [90, 10, 0]}, "three positive percentages"),
        ({"source": "s3://bucket/cats.zip"}, "unknown scheme 's3'"),
        ({"source": "tfds:mnist"}, "the only tensorflow-datasets source"),
        ({"source": "/no/such/archive.zip"}, "does not exist"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"seeds": [1, 1]}, "names a seed twice"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_parameters_are_refused_with_a_useful_message(overrides, message):
    with pytest.raises(ValidationError) as raised:
        RunConfig(**overrides)
    assert message in str(raised.value)


def test_feature_map_arithmetic():
    assert feature_map_side(100) == 10
    assert min_image_size("gap") == 22 and min_image_size("avgpool") == 30
