"""Training guards and the test metrics."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from gap_models.data import make_dataset
from gap_models.evaluation import classification_metrics, roc_auc
from gap_models.models import build_model, compile_model
from gap_models.plots import plot_curves
from gap_models.probabilities import class_probabilities
from gap_models.records import RunResult
from gap_models.results import summarize, summary_markdown
from gap_models.training import train_model
from tests.fixtures import make_pet_image


def _tiny_set(count: int, size: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = np.stack([np.asarray(make_pet_image(int(y), size, rng)) for y in labels])
    return images.astype(np.uint8), labels.astype(np.uint8)


def test_loss_goes_down_on_a_tiny_run():
    images, labels = _tiny_set(96)
    model = compile_model(build_model("gap", image_size=40, seed=0), learning_rate=0.01)
    seen: list[int] = []
    result = train_model(
        model,
        make_dataset(images, labels, 16, shuffle_seed=0),
        make_dataset(images[:32], labels[:32], 16),
        epochs=4,
        train_images=len(labels),
        on_epoch=lambda epoch, metrics: seen.append(epoch),
    )
    assert seen == [1, 2, 3, 4]
    assert result.history["loss"][-1] < result.history["loss"][0] * 0.9
    assert result.images_per_second > 0 and len(result.epoch_seconds) == 4


def test_binary_metrics_known_values():
    labels = np.array([0, 0, 1, 1])
    metrics = classification_metrics(labels, class_probabilities(np.array([0.1, 0.6, 0.4, 0.9])))
    assert metrics["test_accuracy"] == 0.5
    assert metrics["test_auc"] == pytest.approx(0.75)
    expected_loss = -np.mean(np.log([0.9, 0.4, 0.4, 0.9]))
    assert metrics["test_loss"] == pytest.approx(expected_loss)
    assert roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    with pytest.raises(ValueError):
        classification_metrics(labels, class_probabilities(np.array([0.1])))


def _result(head: str, seed: int, accuracy: float) -> RunResult:
    history = {
        "loss": [0.7, 0.5],
        "accuracy": [0.6, 0.8],
        "val_loss": [0.7, 0.6],
        "val_accuracy": [0.55, 0.7],
    }
    return RunResult(
        head,
        seed,
        f"{head}{seed}",
        100,
        history,
        {"test_accuracy": accuracy, "test_loss": 0.5, "test_auc": 0.8},
        10.0,
        500.0,
    )


def test_summary_rows_average_seeds_and_figures_draw():
    results = [_result("gap", 0, 0.8), _result("gap", 1, 0.9), _result("fc", 0, 0.7)]
    rows = summarize(results)
    assert [row["head"] for row in rows] == ["fc", "gap"]
    gap = rows[1]
    assert gap["test_accuracy"] == pytest.approx(0.85) and gap["seeds"] == 2
    assert gap["test_accuracy_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert gap["final_train_minus_val_accuracy"] == pytest.approx(0.1)
    assert "0.8500 ± 0.0707" in summary_markdown(rows)
    figure = plot_curves(results, "accuracy")
    lines = figure.axes[0].get_lines()
    assert {line.get_linestyle() for line in lines} == {"--", "-"} and len(lines) == 4


def test_improved_recipe_augments_and_stops_early():
    from gap_models.recipes import augmenter, recipe_callbacks

    assert recipe_callbacks("faithful") == []
    names = {type(c).__name__ for c in recipe_callbacks("improved")}
    assert names == {"ReduceLROnPlateau", "EarlyStopping"}
    names = {type(c).__name__ for c in recipe_callbacks("improved", calibration_data=[])}
    assert names == {"PreciseBatchNormValidation", "ReduceLROnPlateau", "EarlyStopping"}
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_callbacks("fast")
    images, labels = _tiny_set(32)
    batch = next(iter(make_dataset(images, labels, 32, shuffle_seed=0, augment=augmenter(0))))
    assert batch[0].shape == (32, 40, 40, 3)
    assert not np.array_equal(np.asarray(batch[0]).astype(np.uint8).sum(), images.sum())


def test_early_stopping_ends_the_run_before_the_epoch_limit():
    """Validation labels are the training labels inverted: the better the model fits, the
    worse validation gets, so validation loss stops improving at once and the improved
    recipe's early stopping (patience 3) ends the fit long before the limit."""
    from gap_models.recipes import recipe_callbacks

    images, labels = _tiny_set(48, size=32)
    epoch_limit = 20
    model = compile_model(build_model("gap", image_size=32, seed=0), learning_rate=0.01)
    seen: list[int] = []
    result = train_model(
        model,
        make_dataset(images, labels, 16, shuffle_seed=0),
        make_dataset(images, 1 - labels, 16),
        epochs=epoch_limit,
        train_images=len(labels),
        on_epoch=lambda epoch, metrics: seen.append(epoch),
        recipe="improved",
        calibration_data=make_dataset(images, labels, 16),
    )
    assert result.epochs < epoch_limit
    val_loss = result.history["val_loss"]
    # Keras' rule: stop once `patience` epochs in a row fail to beat the best val_loss.
    [stopping] = [
        c for c in recipe_callbacks("improved") if isinstance(c, keras.callbacks.EarlyStopping)
    ]
    assert result.epochs == int(np.argmin(val_loss)) + 1 + stopping.patience, val_loss
    assert len(val_loss) == len(result.epoch_seconds) == result.epochs
    assert seen == list(range(1, result.epochs + 1))
    assert result.history["loss"][-1] < result.history["loss"][0]  # training did learn


def test_precise_batch_norm_replaces_lagging_moving_statistics():
    """A fresh layer's moving averages sit at their start (0, 1); after recalibration they
    equal the mean of the batch statistics."""
    from gap_models.recipes import recalibrate_batch_norm

    images, labels = _tiny_set(64)
    model = build_model("gap", image_size=40, seed=0)
    layer = model.get_layer("backbone_bn1")
    assert np.allclose(layer.moving_mean.numpy(), 0)
    used = recalibrate_batch_norm(model, make_dataset(images, labels, 16), max_batches=3)
    assert used == 3 and layer.momentum == 0.99
    conv = keras.Model(model.inputs, model.get_layer("backbone_conv1").output)
    batch_means = [conv(images[i : i + 16]).numpy().mean(axis=(0, 1, 2)) for i in (0, 16, 32)]
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), np.mean(batch_means, axis=0), rtol=1e-4, atol=1e-5
    )


def test_precise_batch_norm_measures_the_network_with_dropout_off():
    """The statistics of the BatchNorm after fc_dropout's dropout are those of the full
    signal that inference sees (BatchNorm measuring the batch, dropout keeping every unit),
    not of a randomly thinned one: their variance would be about twice as large."""
    from gap_models.recipes import recalibrate_batch_norm

    images, labels = _tiny_set(48)
    model = build_model("fc_dropout", image_size=40, seed=0)
    used = recalibrate_batch_norm(model, make_dataset(images, labels, 16), max_batches=3)
    assert used == 3 and model.get_layer("fc_dropout").rate == 0.5  # restored
    before_dropout = keras.Model(model.inputs, model.get_layer("fc_relu1").output)
    batches = [before_dropout(images[i : i + 16], training=True).numpy() for i in (0, 16, 32)]
    layer = model.get_layer("fc_bn2")
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), np.mean([b.mean(axis=0) for b in batches], axis=0),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    # Keras' BatchNormalization keeps the biased (population) variance.
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), np.mean([b.var(axis=0) for b in batches], axis=0),
        rtol=1e-3, atol=1e-5,
    )  # fmt: skip


def test_improved_recipe_validates_with_recalibrated_batch_norm():
    """Inside fit, validation sees BatchNorm statistics recomputed from training batches;
    without the callback they are still near their start after two steps."""
    from gap_models.recipes import PreciseBatchNormValidation

    images, labels = _tiny_set(64)

    def fitted(callbacks):
        model = compile_model(build_model("gap", image_size=40, seed=0), learning_rate=0.01)
        model.fit(
            make_dataset(images[:32], labels[:32], 16, shuffle_seed=0),
            validation_data=make_dataset(images[32:], labels[32:], 16),
            epochs=1,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles
            verbose=0,
        )
        return model

    calibration = make_dataset(images[:32], labels[:32], 16)
    plain = fitted([])
    precise = fitted([PreciseBatchNormValidation(calibration, batches=2)])
    lagging = np.abs(plain.get_layer("backbone_bn1").moving_mean.numpy()).mean()
    recalibrated = np.abs(precise.get_layer("backbone_bn1").moving_mean.numpy()).mean()
    assert recalibrated > 10 * lagging
    # Outside fit (a plain evaluate) the callback leaves the statistics alone.
    before = precise.get_layer("backbone_bn1").moving_mean.numpy().copy()
    precise.evaluate(make_dataset(images, labels, 16), verbose=0,
                     callbacks=[PreciseBatchNormValidation(make_dataset(images, labels, 16))])  # fmt: skip
    np.testing.assert_array_equal(precise.get_layer("backbone_bn1").moving_mean.numpy(), before)


def test_multi_class_metrics_known_values():
    from gap_models.evaluation import classification_metrics, confusion_matrix

    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.45, 0.5, 0.05], [0.1, 0.1, 0.8]])
    metrics = classification_metrics(labels, probabilities, ("a", "b", "c"))
    assert metrics["test_accuracy"] == 0.75
    expected_loss = -np.mean(np.log([0.7, 0.8, 0.05, 0.8]))
    assert metrics["test_loss"] == pytest.approx(expected_loss)
    # One-vs-rest AUC per class: a 1.0, b 1.0 (0.8 above 0.2, 0.5, 0.1), c 0.5 (0.8 above
    # both negatives' 0.1, 0.05 below both); their mean.
    assert metrics["test_auc"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert metrics["test_recall_c"] == 0.5 and metrics["test_precision_b"] == 0.5
    np.testing.assert_array_equal(
        confusion_matrix(labels, probabilities), [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    )


def test_roc_points_match_the_rank_auc_and_end_at_the_corners():
    from gap_models.run_plots import roc_points

    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9])
    fpr, tpr, auc = roc_points(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc) == pytest.approx(roc_auc(labels, scores))
