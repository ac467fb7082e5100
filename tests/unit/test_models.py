"""Model builders: exact layers, parameter counts, fresh heads with identical start weights."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from gap_models import HEAD_NAMES
from gap_models.hardware import ONEDNN_ISAS_WITHOUT_BF16, resolve_precision
from gap_models.models import BACKBONE_PREFIX, build_model, trainable_params

HEAD_LAYERS = [
    "rescale",
    "backbone_conv1", "backbone_bn1", "backbone_relu1", "backbone_pool1",
    "backbone_conv2", "backbone_bn2", "backbone_relu2", "backbone_pool2",
    "backbone_conv3", "backbone_bn3", "backbone_relu3", "backbone_pool3",
]  # fmt: skip
BACKEND_LAYERS = {
    "fc": ["flatten", "fc_bn1", "fc_dense1", "fc_relu1", "fc_bn2", "fc_dense2", "fc_relu2", "output"],
    "fc_dropout": [
        "flatten", "fc_bn1", "fc_dense1", "fc_relu1", "fc_dropout",
        "fc_bn2", "fc_dense2", "fc_relu2", "output",
    ],
    "gap": ["global_average_pool", "output"],
    "avgpool": ["average_pool_2x2", "flatten", "output"],
    "fc_matched": ["fc_matched_mix", "flatten", "output"],
    "gap_matched": ["gap_matched_conv", "gap_matched_bn", "gap_matched_relu", "global_average_pool", "output"],
}  # fmt: skip
# Parameter counts at image_size 100, by hand from the article's architecture. Map side:
# 100 -conv-> 98 -pool-> 49 -conv-> 47 -pool-> 23 -conv-> 21 -pool-> 10: the backbone ends
# 10x10x64.
# A BatchNormalization of n channels holds 4n weights: gamma and beta are trained, the
# moving mean and variance are not.
#   Shared head                        whole    trainable
#     conv1  3*3*3*32 + 32                896          896
#     bn1    4*32                         128           64
#     conv2  3*3*32*32 + 32             9,248        9,248
#     bn2    4*32                         128           64
#     conv3  3*3*32*64 + 64            18,496       18,496
#     bn3    4*64                         256          128
#     head total                       29,152       28,896
#   fc (fc_dropout the same: Dropout has no weights), Flatten 10*10*64 = 6,400
#     bn     4*6,400                   25,600       12,800
#     dense1 6,400*100 + 100          640,100      640,100
#     bn     4*100                        400          200
#     dense2 100*100 + 100             10,100       10,100
#     output 100*1 + 1                    101          101
#     model  29,152 + 676,301 = 705,453;  28,896 + 663,301 = 692,197
#   gap: GlobalAveragePooling2D -> 64 values; output 64 + 1 = 65
#     model  29,152 + 65 = 29,217;  28,896 + 65 = 28,961
#   avgpool: AveragePooling2D(2x2) -> 5x5x64, Flatten 1,600; output 1,600 + 1 = 1,601
#     model  29,152 + 1,601 = 30,753;  28,896 + 1,601 = 30,497
#   fc_matched: Conv 1x1 64 -> 1 (64 + 1 = 65), Flatten 100, output 100 + 1 = 101
#     model  29,152 + 166 = 29,318;  28,896 + 166 = 29,062 (gap: 28,961)
#   gap_matched: width round((102 * 6,400 + 10,500) / (9 * 64 + 4)) = 1,144 maps
#     conv   3*3*64*1,144 + 1,144     660,088      660,088
#     bn     4*1,144                    4,576        2,288
#     output 1,144 + 1                  1,145        1,145
#     model  29,152 + 665,809 = 694,961;  28,896 + 663,521 = 692,417 (fc: 692,197)
WHOLE_MODEL_PARAMS = {"fc": 705_453, "fc_dropout": 705_453, "gap": 29_217, "avgpool": 30_753,
                      "fc_matched": 29_318, "gap_matched": 694_961}  # fmt: skip
TRAINABLE_PARAMS = {"fc": 692_197, "fc_dropout": 692_197, "gap": 28_961, "avgpool": 30_497,
                    "fc_matched": 29_062, "gap_matched": 692_417}  # fmt: skip


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_layer_sequence(head):
    model = build_model(head, image_size=100)
    names = [layer.name for layer in model.layers[1:]]  # after the Input layer
    assert names == HEAD_LAYERS + BACKEND_LAYERS[head]


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_parameter_counts_at_100_px(head):
    model = build_model(head, image_size=100)
    assert model.count_params() == WHOLE_MODEL_PARAMS[head]
    assert trainable_params(model) == TRAINABLE_PARAMS[head]
    # What is not trained is exactly the BatchNorm moving statistics (2 per channel).
    moving = sum(
        2 * layer.moving_mean.shape[0]
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert model.count_params() - trainable_params(model) == moving


def test_head_output_is_10x10x64_and_output_is_one_sigmoid():
    model = build_model("gap", image_size=100)
    assert tuple(model.get_layer("backbone_pool3").output.shape) == (None, 10, 10, 64)
    assert model.get_layer("output").get_config()["activation"] == "sigmoid"
    assert tuple(model.output.shape) == (None, 1)
    assert model.get_layer("backbone_conv1").get_config()["padding"] == "valid"


@pytest.mark.parametrize("backbone", ["article", "deep"])
def test_matched_heads_have_the_other_designs_size_on_every_backbone(backbone):
    """fc_matched has gap's trainable parameters and gap_matched fc's, within 1 %, whatever
    the trunk's output map (10x10x64 for the article's, 3x3x256 for the deep one)."""
    size = {
        head: trainable_params(build_model(head, 100, backbone=backbone)) for head in HEAD_NAMES
    }
    assert size["fc_matched"] == pytest.approx(size["gap"], rel=0.01)
    assert size["gap_matched"] == pytest.approx(size["fc"], rel=0.01)
    assert size["gap"] < size["fc"] / 1.2  # the pairs are far apart: matching matters


def test_deep_backbone_is_five_same_padded_blocks_ending_3x3x256():
    model = build_model("gap", image_size=100, backbone="deep")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 256, 256]
    assert {c.get_config()["padding"] for c in convs} == {"same"}
    assert tuple(model.get_layer("backbone_pool5").output.shape) == (None, 3, 3, 256)
    with pytest.raises(ValueError, match="too small for head 'avgpool' on backbone 'deep'"):
        build_model("avgpool", image_size=60, backbone="deep")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("gap", backbone="resnet")


def test_dropout_rate():
    assert build_model("fc_dropout").get_layer("fc_dropout").rate == 0.5


def test_same_seed_same_head_weights_across_heads():
    """The article shared one trained head object; we start every model from equal weights."""
    models = {head: build_model(head, image_size=100, seed=3) for head in HEAD_NAMES}
    reference = models["gap"]
    for head, model in models.items():
        assert model is not reference or head == "gap"
        for name in [
            layer.name for layer in reference.layers if layer.name.startswith(BACKBONE_PREFIX)
        ]:
            for ours, theirs in zip(
                model.get_layer(name).get_weights(),
                reference.get_layer(name).get_weights(),
                strict=True,
            ):
                np.testing.assert_array_equal(ours, theirs, err_msg=f"{head}/{name}")


def test_fresh_objects_and_different_seeds_differ():
    first, second = build_model("gap", seed=0), build_model("gap", seed=0)
    assert first.get_layer("backbone_conv1") is not second.get_layer("backbone_conv1")
    other = build_model("gap", seed=1)
    assert not np.array_equal(
        first.get_layer("backbone_conv1").get_weights()[0],
        other.get_layer("backbone_conv1").get_weights()[0],
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
    from gap_models.models import FusedBatchNormalization

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 40, 40, 3), dtype=np.uint8)
    stock = build_model("gap", image_size=40, seed=0, batch_norm="keras")
    fused = build_model("gap", image_size=40, seed=0, batch_norm="fused")
    assert isinstance(fused.get_layer("backbone_bn1"), FusedBatchNormalization)
    assert type(stock.get_layer("backbone_bn1")) is keras.layers.BatchNormalization
    np.testing.assert_allclose(
        fused(images, training=True).numpy(), stock(images, training=True).numpy(), atol=1e-5
    )
    for name in ("backbone_bn1", "backbone_bn2", "backbone_bn3"):
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


BF16_REFUSED = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISAS_WITHOUT_BF16


@pytest.mark.skipif(
    BF16_REFUSED, reason="ONEDNN_MAX_CPU_ISA caps oneDNN below bfloat16: it refuses bf16 ops"
)
def test_fused_model_saves_and_loads_in_safe_mode(tmp_path):
    model = build_model("gap", image_size=40, seed=0, precision="mixed_bfloat16")
    images = np.random.default_rng(1).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert type(loaded.get_layer("backbone_bn2")).__name__ == "FusedBatchNormalization"
    assert loaded.get_layer("backbone_conv1").compute_dtype == "bfloat16"
    assert loaded.output.dtype == "float32"
    np.testing.assert_array_equal(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_bad_precision_or_batch_norm_is_refused():
    with pytest.raises(ValueError, match="precision 'float16'.*allowed"):
        build_model("gap", precision="float16")
    with pytest.raises(ValueError, match="batch_norm 'sync'.*allowed"):
        build_model("gap", batch_norm="sync")


def test_stock_layer_copy_loads_without_this_package_and_predicts_the_same(tmp_path):
    """What gets logged: no FusedBatchNormalization, identical outputs, and a Python that
    never imports gap_models loads it with plain Keras in safe mode."""
    import subprocess
    import sys

    from gap_models.models import FusedBatchNormalization, with_stock_layers

    # bfloat16 where this machine computes it natively: the dtype policy must survive too
    model = build_model(
        "fc_dropout", image_size=40, seed=0, precision=resolve_precision("auto").value
    )
    images = np.random.default_rng(0).integers(0, 255, (6, 40, 40, 3)).astype(np.uint8)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(images, np.array([0, 1] * 3, dtype=np.float32), epochs=1, verbose=0)
    stock = with_stock_layers(model)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in stock.layers)
    expected = model.predict(images, verbose=0)
    np.testing.assert_array_equal(stock.predict(images, verbose=0), expected)
    stock.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, keras\n"
        "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "assert 'gap_models' not in sys.modules\n"
        "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))\n"
    )
    paths = [str(tmp_path / name) for name in ("model.keras", "images.npy", "out.npy")]
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(paths[2]), expected, atol=1e-6)


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_more_than_two_classes_end_in_a_softmax_of_that_many_units(head):
    binary = build_model(head, image_size=100, seed=0)
    five = build_model(head, image_size=100, seed=0, num_classes=5)
    assert five.output_shape == (None, 5)
    assert five.get_layer("output").get_config()["activation"] == "softmax"
    features = binary.get_layer("output").input.shape[-1]
    # Only the output layer grows: (features + 1) x 5 instead of (features + 1) x 1.
    assert five.count_params() - binary.count_params() == (features + 1) * 4
    outputs = five.predict(np.zeros((2, 100, 100, 3), np.uint8), verbose=0)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        build_model(head, image_size=100, num_classes=1)


def test_loss_follows_the_output():
    from gap_models.models import compile_model

    assert compile_model(build_model("gap", 40), 1e-3).loss == "binary_crossentropy"
    multi = compile_model(build_model("gap", 40, num_classes=3), 1e-3)
    assert multi.loss == "sparse_categorical_crossentropy"
