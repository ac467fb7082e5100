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


def test_fused_batch_norm_matches_keras_layer():
    """Same start weights, one training-mode call: outputs and moving statistics agree with
    Keras' own BatchNormalization to float32 rounding."""
    import keras

    from gap_models.models import FusedBatchNormalization

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 40, 40, 3), dtype=np.uint8)
    stock = build_model("gap", image_size=40, seed=0, batch_norm="keras")
    fused = build_model("gap", image_size=40, seed=0, batch_norm="fused")
    assert isinstance(fused.get_layer("head_bn1"), FusedBatchNormalization)
    assert type(stock.get_layer("head_bn1")) is keras.layers.BatchNormalization
    np.testing.assert_allclose(
        fused(images, training=True).numpy(), stock(images, training=True).numpy(), atol=1e-5
    )
    for name in ("head_bn1", "head_bn2", "head_bn3"):
        for stat in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(
                getattr(fused.get_layer(name), stat).numpy(),
                getattr(stock.get_layer(name), stat).numpy(),
                rtol=1e-4,
                atol=1e-6,
            )
    np.testing.assert_allclose(
        fused.predict(images, verbose=0), stock.predict(images, verbose=0), atol=1e-5
    )


def test_fused_model_saves_and_loads_in_safe_mode(tmp_path):
    import keras

    model = build_model("gap", image_size=40, seed=0, precision="mixed_bfloat16")
    images = np.random.default_rng(1).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert type(loaded.get_layer("head_bn2")).__name__ == "FusedBatchNormalization"
    assert loaded.get_layer("head_conv1").compute_dtype == "bfloat16"
    assert loaded.output.dtype == "float32"
    np.testing.assert_array_equal(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_bad_precision_or_batch_norm_is_refused():
    with pytest.raises(ValueError, match="precision 'float16'.*allowed"):
        build_model("gap", precision="float16")
    with pytest.raises(ValueError, match="batch_norm 'sync'.*allowed"):
        build_model("gap", batch_norm="sync")
