"""The whole flow in-process under prefect_test_harness, on generated photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from flows.compare_heads import compare_heads
from gap_models.architecture import ARTICLE_HEADS
from gap_models.data import load_split
from gap_models.hardware import detect, resolve_precision
from gap_models.predict import classify_files
from gap_models.provenance import code_version
from tests.fixtures import REGISTERED_MODEL, child_runs, make_pet_image, make_pet_images, zip_folder
from tracking.logged_model import load_logged_model

pytestmark = pytest.mark.integration

EPOCHS = 2
SEEDS = [0, 1]
PLOTS = (
    "accuracy_curves.png",
    "loss_curves.png",
    "test_accuracy_vs_params.png",
    "generalization_gap.png",
    "translation_robustness.png",
    "cam_grid.png",
    "confusion_matrix.png",
    "training_time.png",
    "roc_curves.png",
    "misclassified.png",
)
PARAMS = dict(image_size=40, batch_size=16, epochs=EPOCHS, heads=list(ARTICLE_HEADS), seeds=SEEDS)


@pytest.fixture(scope="module")
def flow_result(tmp_path_factory, prefect_harness):
    """Run the flow once on 120 generated images (zipped) and share the result."""
    home = tmp_path_factory.mktemp("flow")
    archive = zip_folder(make_pet_images(home / "photos", per_class=60), home / "pets.zip")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "COMPARE_HEADS_CACHE_DIR": str(home / "cache"),
        "COMPARE_HEADS_OUTPUT_DIR": str(home / "outputs"),
        # its own: the check of the champion's kind runs here (test_a_model_of_a_kind_...)
        "COMPARE_HEADS_SERVING_CHECKS_DIR": str(home / "serving-checks"),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        summary = compare_heads(source=str(archive), **PARAMS)
        yield summary, MlflowClient(env["MLFLOW_TRACKING_URI"]), archive


def test_parent_run_has_params_counts_and_plots(flow_result):
    summary, client, _ = flow_result
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["epochs"] == str(EPOCHS)
    assert parent.data.params["precision"] == resolve_precision("auto").value
    assert parent.data.params["precision_requested"] == "auto"
    assert parent.data.params["precision_reason"].startswith("auto:")
    assert parent.data.tags["mlflow.source.name"] == "flows/compare_heads.py"
    assert "Best head by mean final validation accuracy" in parent.data.tags["mlflow.note.content"]
    assert parent.data.metrics["images_used"] == 120
    assert parent.data.metrics["skipped_images"] == 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert artifacts == {f"plots/{name}" for name in PLOTS}
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.md", "report.md"} <= top


def test_parent_run_has_the_time_breakdown(flow_result):
    summary, client, _ = flow_result
    metrics = client.get_run(summary.parent_run_id).data.metrics
    phases = {name: metrics[f"phase_seconds_{name}"] for name in
              ("download", "plan", "preprocess", "train_evaluate", "compare", "promote")}  # fmt: skip
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["train_evaluate"] > 0
    # The phases are parts of the flow, and the tasks' own compute is part of the phases.
    assert sum(phases.values()) <= metrics["flow_seconds"]
    assert 0 < metrics["compute_seconds"] < sum(phases.values())
    overhead = (metrics["flow_seconds"] - metrics["compute_seconds"]) / metrics["flow_seconds"]
    assert metrics["overhead_fraction"] == pytest.approx(overhead)
    assert metrics["preprocess_cache_hit"] == 0.0  # the first run decoded the photos
    assert 200 < metrics["peak_memory_mb"] < 24 * 1024


def test_one_child_per_head_with_spec_params_and_metrics(flow_result):
    summary, client, _ = flow_result
    runs = child_runs(client, summary.experiment_id, summary.parent_run_id)
    assert sorted(runs) == sorted((head, seed) for head in ARTICLE_HEADS for seed in SEEDS)
    expected_params = {"fc": 692197, "fc_dropout": 692197, "gap": 28961, "avgpool": 30497}
    for (head, seed), run in runs.items():
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["seed"] == str(seed) and params["epochs"] == str(EPOCHS)
        assert params["batch_size"] == "16" and params["image_size"] == "40"
        assert float(params["learning_rate"]) == 0.001
        # at 40 px the backbone's map is 3x3, so only the heads without Flatten match 100 px
        if head in ("gap",):
            assert int(params["trainable_params"]) == expected_params[head]
        metrics = run.data.metrics
        for key in ("test_accuracy", "test_loss", "test_auc", "train_seconds", "skipped_images"):
            assert key in metrics, (head, key)
        for pixels in (0, 10, 20, 30):
            assert 0 <= metrics[f"test_accuracy_shift_{pixels}"] <= 1
        assert metrics["test_accuracy_shift_0"] == pytest.approx(metrics["test_accuracy"])
        assert metrics["train_images_per_second"] > 0
        # Per-epoch tracking is timed; it is a small part of the fit it reports on.
        assert 0 < metrics["epoch_logging_seconds"] < metrics["train_seconds"]
        # precision "auto" resolved once for the run (the reason is on the parent run), the
        # CPU each model trained on, and the code version (part of the key that resumes)
        assert params["precision"] == resolve_precision("auto").value
        assert params["batch_norm"] == "fused"
        assert params["cpu_flags"] == detect().reported_flags()
        assert params["code_version"] == code_version()
        # The faithful recipe: nothing but the epoch reporter inside fit, no augmentation.
        assert params["callbacks"] == "EpochReporter,EpochCheckpoint"
        assert metrics["augmentation_mean_abs_change"] == 0 and metrics["epochs_run"] == EPOCHS
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (head, key)


def test_logged_model_loads_and_reproduces_its_test_score(flow_result):
    """The MLflow model loads back and scores the cached test split as the run logged."""
    summary, client, _ = flow_result
    run = child_runs(client, summary.experiment_id, summary.parent_run_id)[("gap", 0)]
    model = load_logged_model(run.data.tags["model_uri"])
    images, labels = load_split(summary.cache_dir, "test")
    probabilities = model.predict(images, verbose=0).reshape(-1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    accuracy = float(np.mean((probabilities >= 0.5) == (labels == 1)))
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy"])


def test_logged_model_serves_image_files_in_a_python_that_never_imported_this_project(
    flow_result, tmp_path
):
    """mlflow.pyfunc, in a fresh process without gap_models: the logged model takes encoded
    image files and answers what `compare-heads predict` answers for the same files."""
    summary, client, _ = flow_result
    model_uri = child_runs(client, summary.experiment_id, summary.parent_run_id)[
        ("fc", 0)
    ].data.tags["model_uri"]
    files = []
    for index in range(6):
        files.append(tmp_path / f"photo-{index}.jpg")
        make_pet_image(index % 2, 64, np.random.default_rng(100 + index)).save(files[-1])
    script = (
        "import sys, json, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "table = model.predict(pd.DataFrame({'image': [open(f, 'rb').read() for f in sys.argv[2:]]}))\n"
        "assert 'gap_models' not in sys.modules and 'tasks' not in sys.modules\n"
        "print(json.dumps(table.to_dict(orient='records')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, model_uri, *map(str, files)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": summary.tracking_uri},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Add type hints" not in done.stderr, "MLflow warned on loading the model"
    served = json.loads(done.stdout.strip().splitlines()[-1])
    model = load_logged_model(model_uri)
    expected = classify_files(model, files, 40, ("Cat", "Dog"))
    assert [row["label"] for row in served] == [result.label for result in expected]
    for row, result in zip(served, expected, strict=True):
        assert row["probability"] == pytest.approx(result.probability, abs=1e-6)
        assert row["Cat"] + row["Dog"] == pytest.approx(1.0)


def test_plots_and_tables_written_locally(flow_result):
    summary, _, _ = flow_result
    out = Path(summary.output_dir)
    for name in PLOTS:
        assert (out / "plots" / name).stat().st_size > 5_000, name
    table = (out / "summary.csv").read_text().splitlines()
    assert table[0].startswith("head,seeds,trainable_params,final_val_accuracy,test_accuracy")
    assert [line.split(",")[0] for line in table[1:]] == list(ARTICLE_HEADS)
    report = (out / "report.md").read_text()
    assert "two-level bootstrap (seeds, then photos" in report
    assert "| fc - gap | 2 x " in report and "Holm" in report
    for claim in ("removes most trainable parameters", "overfits less", "robust to translation"):
        assert claim in report


def test_champion_registered(flow_result):
    summary, client, _ = flow_result
    assert summary.promotion.decision == "promoted"
    version = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert str(version.version) == summary.promotion.version
    # Chosen on validation: the best head by mean final validation accuracy, and of its
    # seeds the best on validation; the version records both that and its test accuracy.
    children = child_runs(client, summary.experiment_id, summary.parent_run_id)
    val = {key: run.data.metrics["final_val_accuracy"] for key, run in children.items()}
    means = {head: np.mean([val[(head, seed)] for seed in SEEDS]) for head in {h for h, _ in val}}
    assert means[summary.best_head] == max(means.values())
    best_val = max(val[key] for key in val if key[0] == summary.best_head)
    tied = {children[key].info.run_id: key for key in val if key[0] == summary.best_head
            and val[key] == best_val}  # fmt: skip
    assert version.run_id in tied  # the validation decides (ties: any of the best)
    winner = tied[version.run_id]
    assert float(version.tags["final_val_accuracy"]) == pytest.approx(val[winner], abs=1e-6)
    test_accuracy = children[winner].data.metrics["test_accuracy"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(test_accuracy, abs=1e-6)
    metrics = client.get_run(summary.parent_run_id).data.metrics
    assert metrics["challenger_val_accuracy"] == pytest.approx(val[winner])


def test_a_model_of_a_kind_already_served_is_not_loaded_in_a_fresh_process_again(flow_result):
    """The champion's fresh-process check ran (the first model of its kind); a model logged
    by the same code that differs from it only in weights (another seed) is taken as
    shown, another head is not."""
    from tracking.logged_model import ServingCheck, serving_kind

    summary, _client, _ = flow_result
    assert summary.promotion.reason.endswith("; loads and predicts in a fresh process")
    promoted = next(run for run in summary.trained if run.run_id == summary.promotion.run_id)
    sibling = next(r for r in summary.trained if r.head == promoted.head and r is not promoted)
    other = next(run for run in summary.trained if run.head != promoted.head)
    assert serving_kind(sibling.model_uri) == serving_kind(promoted.model_uri)
    assert serving_kind(other.model_uri) != serving_kind(promoted.model_uri)
    check = ServingCheck(sibling.model_uri, by_kind=True)
    assert check.problem() is None and check.shown_by == promoted.model_uri
    assert promoted.model_uri in check.verdict and "a model of its kind" in check.verdict
    # A model not logged just now (a reused run, maybe by older code) is always loaded.
    reused = ServingCheck(sibling.model_uri)
    assert reused.problem() is None and reused.shown_by is None
    assert reused.verdict == "loads and predicts in a fresh process"


def test_second_run_reuses_cache(flow_result, monkeypatch):
    """Same data and settings: preprocessing is a cache hit (decoding never called)."""
    _, _, archive = flow_result
    import gap_models.data.cache
    from tasks.data import preprocess

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(gap_models.data.cache, "decode_selected", fail)
    ref = preprocess.fn(str(archive), 40, [80, 10, 10], None)
    assert ref.cache_hit and ref.images_used == 120
    images, labels = load_split(ref.cache_dir, "test")
    assert images.dtype == np.uint8 and images.shape[1:] == (40, 40, 3)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("compare-heads")
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_cli_predict_classifies_with_the_champion_and_reports_bad_files(flow_result, tmp_path):
    summary, _, _ = flow_result
    photos = make_pet_images(tmp_path / "unseen", per_class=3, seed=99) / "PetImages"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    files = sorted(photos.rglob("*.jpg")) + [broken]
    result = _cli("predict", *map(str, files), env={"MLFLOW_TRACKING_URI": summary.tracking_uri})
    assert result.returncode == 1, result.stderr  # one file failed, the others were classified
    lines = dict(line.split("\t", 1) for line in result.stdout.strip().splitlines())
    assert lines[str(broken)].startswith("error\tnot_an_image")
    for path in files[:-1]:
        label, probability = lines[str(path)].split("\t")
        assert label == path.parent.name, path  # the class folders the model learned
        assert 0.5 <= float(probability) <= 1
    assert "1 of 7 files could not be classified" in result.stderr


def test_cli_score_leaves_out_the_photos_the_models_run_had(flow_result, tmp_path, monkeypatch):
    """`compare-heads score`: held-out photos scored with an exact interval; photos whose
    bytes the model's own run had (here two copied from its archive) are left out."""
    import zipfile

    from typer.testing import CliRunner

    from flows.cli import app

    summary, _, archive = flow_result
    held = make_pet_images(tmp_path / "held", per_class=5, seed=7)
    with zipfile.ZipFile(archive) as opened:
        seen = [name for name in opened.namelist() if name.endswith(".jpg")][:2]
        for name in seen:
            (held / "PetImages" / Path(name).parent.name / f"seen-{Path(name).name}").write_bytes(
                opened.read(name)
            )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary.tracking_uri)
    result = CliRunner().invoke(app, ["score", str(held / "PetImages")])
    assert result.exit_code == 0, result.output
    assert "on 10 photos (95% interval" in result.output
    assert "left out: 2 photos the model's run had" in result.output
    assert "recall by class: Cat" in result.output


def test_cli_run_refuses_bad_parameters_before_any_work(tmp_path):
    result = _cli("run", "--source", str(tmp_path), "--epochs", "0", "--head", "mlp", env={})
    assert result.returncode == 2
    assert "epochs" in result.stderr and "heads: unknown ['mlp']" in result.stderr
    # Refused by RunConfig before the flow is called: no temporary Prefect server started.
    assert "temporary server" not in (result.stdout + result.stderr).lower()


def test_cli_cams_draws_the_maps_of_a_logged_gap_model(flow_result, tmp_path):
    summary, client, archive = flow_result
    run = child_runs(client, summary.experiment_id, summary.parent_run_id)[("gap", 1)]
    out = tmp_path / "cams.png"
    result = _cli(
        "cams", run.data.tags["model_uri"], "--source", str(archive),
        "--per-class", "2", "--out", str(out), env={"MLFLOW_TRACKING_URI": summary.tracking_uri},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.stat().st_size > 10_000 and "2 of each class: Cat, Dog" in result.stdout


def test_parent_run_names_its_output_folder_for_make_run(flow_result):
    """scripts/run.py (make run) finds the plots through the parent run's tag, not a log line."""
    import importlib.util

    summary, client, _ = flow_result
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.tags["compare_heads.output_dir"] == summary.output_dir
    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    path = Path(__file__).resolve().parents[2] / "scripts" / "run.py"
    spec = importlib.util.spec_from_file_location("run_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    found = script.parent_run(client, flow_run_id)
    assert found.info.run_id == summary.parent_run_id
    assert found.data.tags["compare_heads.output_dir"] == summary.output_dir
    assert found.data.tags["retrain_decision"] not in script.NOTHING_TRAINED
