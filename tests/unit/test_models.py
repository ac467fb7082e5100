"""Model builders: exact layers, parameter counts, fresh heads with identical start weights."""

from __future__ import annotations

import numpy as np
import pytest

from gap_models import HEAD_NAMES
from gap_models.models import build_model, head_layer_names, trainable_params

HEAD_LAYERS = [
    "rescale",
    "head_conv1", "head_bn1", "head_relu1", "head_pool1",
    "head_conv2", "head_bn2", "head_relu2", "head_pool2",
    "head_conv3", "head_bn3", "head_relu3", "head_pool3",
]  # fmt: skip
BACKEND_LAYERS = {
    "fc": ["flatten", "fc_bn1", "fc_dense1", "fc_relu1", "fc_bn2", "fc_dense2", "fc_relu2", "output"],
    "fc_dropout": [
        "flatten", "fc_bn1", "fc_dense1", "fc_relu1", "fc_dropout",
        "fc_bn2", "fc_dense2", "fc_relu2", "output",
    ],
    "gap": ["global_average_pool", "output"],
    "avgpool": ["average_pool_2x2", "flatten", "output"],
}  # fmt: skip
WHOLE_MODEL_PARAMS = {"fc": 705_453, "fc_dropout": 705_453, "gap": 29_217, "avgpool": 30_753}


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_layer_sequence(head):
    model = build_model(head, image_size=100)
    names = [layer.name for layer in model.layers[1:]]  # after the Input layer
    assert names == HEAD_LAYERS + BACKEND_LAYERS[head]


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_whole_model_parameter_counts(head):
    assert build_model(head, image_size=100).count_params() == WHOLE_MODEL_PARAMS[head]


def test_head_output_is_10x10x64_and_output_is_one_sigmoid():
    model = build_model("gap", image_size=100)
    assert tuple(model.get_layer("head_pool3").output.shape) == (None, 10, 10, 64)
    assert model.get_layer("output").get_config()["activation"] == "sigmoid"
    assert tuple(model.output.shape) == (None, 1)
    assert model.get_layer("head_conv1").get_config()["padding"] == "valid"


def test_dropout_rate_and_trainable_counts():
    assert build_model("fc_dropout").get_layer("fc_dropout").rate == 0.5
    assert trainable_params(build_model("gap")) == 28_961  # BN moving stats are not trained


def test_same_seed_same_head_weights_across_heads():
    """The article shared one trained head object; we start every model from equal weights."""
    models = {head: build_model(head, image_size=100, seed=3) for head in HEAD_NAMES}
    reference = models["gap"]
    for head, model in models.items():
        assert model is not reference or head == "gap"
        for name in head_layer_names(reference):
            for ours, theirs in zip(
                model.get_layer(name).get_weights(),
                reference.get_layer(name).get_weights(),
                strict=True,
            ):
                np.testing.assert_array_equal(ours, theirs, err_msg=f"{head}/{name}")


def test_fresh_objects_and_different_seeds_differ():
    first, second = build_model("gap", seed=0), build_model("gap", seed=0)
    assert first.get_layer("head_conv1") is not second.get_layer("head_conv1")
    other = build_model("gap", seed=1)
    assert not np.array_equal(
        first.get_layer("head_conv1").get_weights()[0],
        other.get_layer("head_conv1").get_weights()[0],
    )


def test_model_takes_raw_pixels():
    """Rescaling lives in the model: 0..255 inputs give probabilities."""
    model = build_model("gap", image_size=40)
    output = model.predict(np.full((2, 40, 40, 3), 255, np.uint8), verbose=0)
    assert output.shape == (2, 1) and np.all((output > 0) & (output < 1))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        build_model("mlp")
    with pytest.raises(ValueError, match="smallest it can process is 30"):
        build_model("avgpool", image_size=29)
    build_model("avgpool", image_size=30)
    build_model("gap", image_size=22)
