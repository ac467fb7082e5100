"""The convergence recipe, the training fraction and epochs-to-target: the parts of issue
22's training that change what a model learns."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from gap_models import records
from gap_models.config import RunConfig
from gap_models.data import load_ids, load_split, load_train, preprocess
from gap_models.data.selection import train_indices
from gap_models.models import build_model
from gap_models.recipes import (
    CONVERGE_LABEL_SMOOTHING,
    CONVERGE_PATIENCE,
    CONVERGE_WEIGHT_DECAY,
    augmenter,
    compile_for_recipe,
    converge_schedule,
    recipe_callbacks,
)
from gap_models.training import epochs_to, fit_head
from tests.fixtures import make_pet_images


def test_converge_schedule_warms_up_then_decays_by_cosine_to_one_percent():
    schedule = converge_schedule(1e-3, steps_per_epoch=10, epochs=20)  # warm-up: 2 epochs
    rates = np.array([float(schedule(step)) for step in range(0, 201, 5)])
    assert rates[0] == pytest.approx(1e-5)
    assert rates[4] == pytest.approx(1e-3)  # step 20: the end of the warm-up, the peak
    assert np.all(np.diff(rates[:5]) > 0) and np.all(np.diff(rates[4:]) < 0)
    assert rates[-1] == pytest.approx(1e-5, rel=1e-3)
    # A short run warms up for at most a quarter of it.
    short = converge_schedule(1e-3, steps_per_epoch=10, epochs=2)
    assert float(short(5)) == pytest.approx(1e-3)


def test_converge_compiles_adamw_without_decay_on_biases_and_batch_norm():
    model = compile_for_recipe(build_model("gap", 40), "converge", 1e-3, 10, 20)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == CONVERGE_WEIGHT_DECAY
    optimizer.build(model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert decayed and all(path.endswith("kernel") for path in decayed)
    assert model.loss.get_config()["label_smoothing"] == CONVERGE_LABEL_SMOOTHING
    # The other recipes keep the article's optimiser.
    article = compile_for_recipe(build_model("gap", 40), "faithful", 1e-3, 10, 20)
    assert type(article.optimizer) is keras.optimizers.Adam


def test_converge_stops_on_validation_accuracy_and_validates_with_precise_batch_norm():
    callbacks = recipe_callbacks("converge", calibration_data=[])
    names = [type(callback).__name__ for callback in callbacks]
    assert names == ["PreciseBatchNormValidation", "EarlyStopping"]
    stopping = callbacks[1]
    assert stopping.monitor == records.VAL_ACCURACY and stopping.restore_best_weights
    assert stopping.patience == CONVERGE_PATIENCE and stopping.mode == "max"


def test_converge_augmentation_crops_flips_and_recolours_within_range():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 40, 40, 3), dtype=np.uint8)
    augmented = np.asarray(augmenter(0, "converge")(images, training=True))
    assert augmented.shape == images.shape
    assert augmented.min() >= 0 and augmented.max() <= 255
    assert np.abs(augmented - images).mean() > 10  # every batch is changed, a lot
    assert augmenter(0, "faithful") is None


def test_epochs_to_best_and_to_each_target_reached():
    reached = epochs_to([0.70, 0.82, 0.86, 0.84])
    assert reached == {
        records.EPOCHS_TO_BEST: 3.0,
        records.epochs_to_target(0.80): 2.0,
        records.epochs_to_target(0.85): 3.0,
    }  # 90 % never reached: left out
    assert records.epochs_to_target(0.85) == "epochs_to_val_accuracy_85"


def test_train_fraction_keeps_a_nested_subset_and_refuses_nonsense():
    ids = np.random.default_rng(1).integers(0, 2**63, 1000, dtype=np.uint64)
    halves = train_indices(ids, 0.5)
    quarter = train_indices(ids, 0.25)
    assert len(halves) == 500 and len(quarter) == 250
    assert set(quarter) <= set(halves) and np.all(np.diff(halves) > 0)
    np.testing.assert_array_equal(train_indices(ids, 1.0), np.arange(1000))
    with pytest.raises(ValueError, match="train_fraction"):
        train_indices(ids, 0)
    with pytest.raises(ValueError, match="train_fraction"):
        RunConfig(train_fraction=1.5)


def test_a_run_with_a_train_fraction_trains_on_that_part_only(tmp_path):
    """Validation stays whole; the training set and its BatchNorm calibration shrink."""
    source = make_pet_images(tmp_path / "photos", per_class=40, size=48)
    prepared = preprocess(str(source), image_size=32, cache_root=tmp_path / "cache")
    cache = str(prepared.cache_dir)
    whole = len(load_split(cache, "train")[1])
    images, labels = load_train(cache, 0.25)
    assert len(labels) == round(whole * 0.25) and images.shape[1:] == (32, 32, 3)
    kept = train_indices(load_ids(cache, "train"), 0.25)
    np.testing.assert_array_equal(images, load_split(cache, "train")[0][kept])
    config = RunConfig(
        source=str(source), image_size=32, epochs=1, batch_size=8, heads=["gap"],
        train_fraction=0.25, recipe="converge", precision="float32",
    )  # fmt: skip
    model = build_model("gap", 32, 0)
    result = fit_head(model, 0, config, cache)
    assert result.train_images == len(labels)
    assert result.callbacks == ["PreciseBatchNormValidation", "EarlyStopping", "EpochReporter"]
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert result.augmentation_change > 0
    assert records.EPOCHS_TO_BEST in result.final_metrics()
