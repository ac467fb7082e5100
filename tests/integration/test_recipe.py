"""Issue 22's training settings run through the whole flow and are recorded on every run:
the convergence recipe, the deep backbone, a capacity-matched head and a training fraction.
(The improved recipe's callbacks and early stopping: tests/unit/test_training.py.)"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from flows.compare_heads import compare_heads
from gap_models import records
from gap_models.data import TRAIN_SPLIT, load_split
from tests.fixtures import make_pet_images

pytestmark = pytest.mark.integration


def test_convergence_recipe_on_the_deep_backbone_is_logged(tmp_path, tracking_uri, prefect_harness):
    source = str(make_pet_images(tmp_path / "photos", per_class=60, size=40))
    settings = dict(recipe="converge", backbone="deep", train_fraction=0.5)
    summary = compare_heads(
        source=source, image_size=32, batch_size=16, epochs=2, heads=["gap_matched"],
        promote=False, **settings,
    )  # fmt: skip
    client = MlflowClient(tracking_uri)
    parent = client.get_run(summary.parent_run_id).data.params
    (child,) = client.search_runs(
        [summary.experiment_id], f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )
    for name, value in settings.items():
        assert parent[name] == child.data.params[name] == str(value), name
    # It really ran: the recipe's callbacks were inside fit, the training batches changed,
    # and it trained on half the training split (scored on photos it trained on).
    assert child.data.params["callbacks"] == (
        "PreciseBatchNormValidation,EarlyStopping,EpochReporter,EpochCheckpoint"
    )
    assert child.data.metrics[records.AUGMENTATION_CHANGE] > 1.0  # pixels of 0-255
    assert 1 <= child.data.metrics[records.EPOCHS_TO_BEST] <= 2
    deep_gap_matched = int(child.data.params[records.TRAINABLE_PARAMS])
    assert deep_gap_matched > 1_000_000  # the deep trunk's 1.2 M, not the article's 0.7 M
    cache = summary.cache_dir
    whole = len(load_split(cache, TRAIN_SPLIT)[1])
    per_epoch = (
        child.data.metrics[records.TRAIN_IMAGES_PER_SECOND]
        * child.data.metrics[records.TRAIN_SECONDS]
        / child.data.metrics[records.EPOCHS_RUN]
    )
    assert per_epoch == pytest.approx(round(whole * 0.5), rel=1e-6)
    assert summary.promotion is None
    with pytest.raises(Exception, match="recipe"):
        compare_heads(source=source, recipe="fast")


def test_the_articles_protocol_trains_the_chain_on_one_backbone(
    tmp_path, tracking_uri, prefect_harness
):
    """protocol=article: fc_dropout starts from the backbone fc trained (cached by the fc
    cell, not trained twice), and its run names the protocol and the chain code's version."""
    import numpy as np

    from gap_models import protocols
    from gap_models.data import default_cache_dir
    from tracking.logged_model import load_logged_model

    source = str(make_pet_images(tmp_path / "photos", per_class=20, size=40))
    summary = compare_heads(
        source=source, image_size=32, batch_size=16, epochs=1, heads=["fc", "fc_dropout"],
        protocol="article", promote=False,
    )  # fmt: skip
    client = MlflowClient(tracking_uri)
    runs = {r.data.tags["head"]: r for r in client.search_runs(
        [summary.experiment_id], f"tags.mlflow.parentRunId = '{summary.parent_run_id}'")}  # fmt: skip
    params = runs["fc_dropout"].data.params
    assert params["protocol"] == "article"
    assert params["protocol_code"] == protocols.chain_code_version()
    steps = sorted((default_cache_dir() / "chains").glob("*.npz"))
    assert len(steps) == 2  # the backbone after fc, and after fc -> fc_dropout
    fc = load_logged_model(runs["fc"].data.tags["model_uri"])
    after_fc = [protocols.load_step(default_cache_dir(), p.stem) for p in steps]
    cached = [w for w in after_fc if np.array_equal(
        w["backbone_conv1"][0], fc.get_layer("backbone_conv1").get_weights()[0])]  # fmt: skip
    assert len(cached) == 1  # the fc cell's trained backbone, which fc_dropout started from


def test_a_step_of_the_articles_chain_pauses_at_the_deadline_and_resumes(
    tmp_path, tracking_uri, prefect_harness, monkeypatch
):
    """A cell whose chain's earlier head is not cached trains that step first: checkpointed
    and paused at the training deadline like any fit (it used to run to its end, past a
    study's budget), resumed by the next run, its checkpoint removed once its backbone is
    cached."""
    from gap_models.checkpoints import checkpointed_epochs
    from gap_models.data import default_cache_dir

    source = str(make_pet_images(tmp_path / "photos", per_class=20, size=40))
    params = dict(source=source, image_size=32, batch_size=16, epochs=2, heads=["fc_dropout"],
                  protocol="article", promote=False)  # fmt: skip
    monkeypatch.setenv("COMPARE_HEADS_TRAIN_UNTIL", "1")  # long past: pause after an epoch
    with pytest.raises(Exception, match="paused after epoch 1 of 2"):
        compare_heads(**params)
    (step,) = (default_cache_dir() / "checkpoints").glob("chain-*[!k]")  # not its .lock
    assert checkpointed_epochs(step) == 1
    assert not list((default_cache_dir() / "chains").glob("*.npz"))  # no backbone cached yet

    monkeypatch.delenv("COMPARE_HEADS_TRAIN_UNTIL")
    import tracking.cells

    real_fit, started_at = tracking.cells.fit_head, []

    def fit_head(model, seed, config, cache_dir, on_epoch=None, checkpoint=None, until=None):
        started_at.append(checkpointed_epochs(checkpoint) if checkpoint else 0)
        return real_fit(model, seed, config, cache_dir, on_epoch, checkpoint, until)

    monkeypatch.setattr(tracking.cells, "fit_head", fit_head)
    summary = compare_heads(**params)
    assert started_at == [1, 0]  # the step resumed after its epoch, then the cell's own fit
    assert [row["head"] for row in summary.rows] == ["fc_dropout"]
    assert not step.exists()  # the step's backbone is cached instead
    assert len(list((default_cache_dir() / "chains").glob("*.npz"))) == 2
