"""The documented contract (README: names, parameters, records) through real services: deployments, MLflow records, registry, CLI.

Tests run in file order: the ones reading the shared first run come before the one that
adds a second (challenger) run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import numpy as np
import pytest

from gap_models.config import DEEP_RECIPE, RunConfig
from tests.e2e.harness import (
    DEEP,
    FIRST_RUN_PARAMS,
    FLOW_RUN_SECONDS,
    ON_DEMAND,
    REPO_ROOT,
    SCHEDULED,
    SERVICES_SCRIPT,
    VENV_BIN,
    WATCH,
    FlowRunResult,
    Services,
    artifact_paths,
    child_runs_of,
    flow_run_state,
    flow_runs_of_deployment,
    mlflow_client,
    parent_run_of,
    prefect_api,
    wait_for,
    wait_for_final_state,
)
from tests.fixtures import REGISTERED_MODEL, make_pet_image

pytestmark = pytest.mark.e2e

# Flow parameters and their defaults as the README names them (the contract users rely on).
DOCUMENTED_DEFAULTS = {
    "source": "tfds:cats_vs_dogs",
    "image_size": 100,
    "batch_size": 64,
    "epochs": 7,
    "heads": ["fc", "fc_dropout", "gap"],
    "seeds": [0],
    "learning_rate": 0.001,
    "split": [80, 10, 10],
    "max_images": None,
    "promote": True,
}
CHILD_PARAMS = {
    "head",
    "seed",
    "epochs",
    "batch_size",
    "learning_rate",
    "image_size",
    "trainable_params",
}
CHILD_METRICS = {
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "test_accuracy",
    "test_loss",
    "test_auc",
    "train_seconds",
    "train_images_per_second",
}


def inspect_deployment(services: Services, name: str) -> dict:
    """The deployment as the Prefect API holds it. (`prefect deployment inspect --output
    json` fails on a deployment with triggers in Prefect 3.9: "Type is not JSON
    serializable: set".)"""
    return prefect_api(services, "GET", f"/deployments/name/{name}")


def test_deployments_mirror_prefect_yaml(services: Services):
    on_demand = inspect_deployment(services, ON_DEMAND)
    assert on_demand["entrypoint"] == "flows/compare_heads.py:compare_heads"
    assert on_demand["work_pool_name"] == "compare-heads-pool"
    # prefect.yaml mirrors the defaults of the one validated config, and the documented ones.
    parameters = on_demand["parameters"]
    assert parameters == RunConfig().model_dump()
    assert {name: parameters.get(name) for name in DOCUMENTED_DEFAULTS} == DOCUMENTED_DEFAULTS
    assert not on_demand["schedules"]
    deep = inspect_deployment(services, DEEP)
    assert deep["parameters"] == {**RunConfig().model_dump(), **DEEP_RECIPE}
    assert not deep["schedules"]
    # The worker runs the code of this checkout, in place.
    [pull_step] = on_demand["pull_steps"]
    step = pull_step["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == str(REPO_ROOT)


def test_scheduled_deployment_retrains_weekly(services: Services):
    scheduled = inspect_deployment(services, SCHEDULED)
    assert scheduled["entrypoint"] == "flows/compare_heads.py:compare_heads"
    assert scheduled["work_pool_name"] == "compare-heads-pool"
    assert scheduled["parameters"]["promote"] is True
    [schedule] = scheduled["schedules"]
    assert schedule["active"] is True
    assert schedule["schedule"]["cron"] == "0 3 * * 1"
    assert schedule["schedule"]["timezone"] == "UTC"


def test_deploy_is_idempotent(services: Services):
    before = {name: inspect_deployment(services, name)["id"] for name in (ON_DEMAND, SCHEDULED)}
    completed = services.run(SERVICES_SCRIPT, "deploy", timeout=180)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    after = {name: inspect_deployment(services, name)["id"] for name in (ON_DEMAND, SCHEDULED)}
    assert after == before
    assert len(inspect_deployment(services, SCHEDULED)["schedules"]) == 1


def test_on_demand_run_completes(services: Services, first_run: FlowRunResult):
    assert first_run.returncode == 0, f"{first_run.output[-6000:]}\n{services.logs()}"
    assert first_run.flow_run_id is not None
    assert "Completed" in first_run.output


def test_parent_run_has_comparison_artifacts(services: Services, completed_first_run):
    parent = parent_run_of(services, completed_first_run)
    assert parent.info.status == "FINISHED"
    assert {"images_used", "skipped_images"} <= set(parent.data.metrics)
    assert parent.data.metrics["images_used"] > 0
    files = artifact_paths(mlflow_client(services), parent.info.run_id)
    assert any(path.endswith(".png") for path in files), files


def test_child_run_per_head_and_seed(services: Services, completed_first_run):
    parent = parent_run_of(services, completed_first_run)
    children = child_runs_of(services, parent)
    assert list(children) == [("gap", 0)]
    [child] = children.values()
    assert child.info.status == "FINISHED"
    assert set(child.data.params) >= CHILD_PARAMS
    assert set(child.data.metrics) >= CHILD_METRICS
    assert 0.0 <= child.data.metrics["test_accuracy"] <= 1.0
    # Per-epoch metrics: one point per epoch, the 1-based epoch as the step (EpochReporter
    # reports epoch 1 first; tasks/train.py logs it as the step).
    history = mlflow_client(services).get_metric_history(child.info.run_id, "val_accuracy")
    steps = sorted(point.step for point in history)
    assert steps == list(range(1, FIRST_RUN_PARAMS["epochs"] + 1)), steps


def test_first_run_crowns_a_champion(services: Services, completed_first_run):
    client = mlflow_client(services)
    parent = parent_run_of(services, completed_first_run)
    children = {run.info.run_id for run in child_runs_of(services, parent).values()}
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert champion.run_id in children
    assert parent.data.tags.get("promotion_decision") == "promoted"


def test_predict_cli_labels_a_photo(services: Services, completed_first_run, pet_images):
    """As a user right after `make up`: nothing exported, the CLI finds the server."""
    photo = pet_images / "PetImages" / "Cat" / "0.jpg"
    environment = {k: v for k, v in services.env.items() if k != "MLFLOW_TRACKING_URI"}
    completed = subprocess.run(
        [str(VENV_BIN / "compare-heads"), "predict", str(photo)], cwd=REPO_ROOT,
        env=environment, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    line = next(
        (text for text in completed.stdout.splitlines() if photo.name in text),
        None,
    )
    assert line is not None, completed.stdout
    path, label, probability = line.split("\t")
    assert label in ("Cat", "Dog"), line  # the class folders' names, as trained
    assert 0.5 <= float(probability) <= 1, line


def test_weaker_challenger_keeps_the_champion(services: Services, completed_first_run, pet_images):
    client = mlflow_client(services)
    champion_before = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    # A learning rate this small leaves the model at its initial weights: it cannot beat a
    # champion trained on the same data, scored on the same validation photos. It comes from
    # the deep deployment (the studies' strongest recipe), shrunk to seconds: that
    # deployment's own parameters reach the flow through the worker.
    weaker = services.run_deployment(
        DEEP,
        {
            "source": str(pet_images),
            "image_size": 40,
            "batch_size": 16,
            "epochs": 1,
            "heads": ["gap"],
            "learning_rate": 1e-9,
        },
    )
    assert weaker.returncode == 0, f"{weaker.output[-6000:]}\n{services.logs()}"
    parent = parent_run_of(services, weaker)
    assert parent.data.tags.get("promotion_decision") == "kept", parent.data.tags
    assert {k: parent.data.params[k] for k in ("backbone", "recipe", "precision")} == {
        "backbone": "deep",
        "recipe": "converge",
        "precision": "float32",
    }, parent.data.params
    champion_after = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert champion_after.version == champion_before.version
    challenger = client.get_model_version_by_alias(REGISTERED_MODEL, "challenger")
    assert challenger.version != champion_before.version


def test_scheduled_run_on_the_champions_photos_skips_and_says_why(
    services: Services, completed_first_run, pet_images
):
    """The weekly deployment, run by the worker on the photos, code and settings the champion
    was trained with: nothing is preprocessed or trained; the reasons are on the parent run
    (tags, what_changed.md) and in the flow run's Prefect artifact."""
    skipped = services.run_deployment(SCHEDULED, {"source": str(pet_images), **FIRST_RUN_PARAMS})
    assert skipped.returncode == 0, f"{skipped.output[-6000:]}\n{services.logs()}"
    parent = parent_run_of(services, skipped)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert (tags["retrain_decision"], tags["retrain_reasons"]) == ("skip", "unchanged"), tags
    assert tags["data_digest"] == tags["champion_data_digest"] and tags["code_digest"]
    assert not child_runs_of(services, parent)
    assert "phase_seconds_preprocess" not in metrics and "phase_seconds_plan" in metrics
    print(f"skipped in {metrics['flow_seconds']:.1f} s of flow time")
    paths = artifact_paths(mlflow_client(services), parent.info.run_id)
    assert {"what_changed.md", "data_manifest.tsv"} <= set(paths)
    listed = services.prefect(
        "artifact", "inspect", "compare-heads-what-changed", "--output", "json"
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    artifacts = json.loads(listed.stdout)
    mine = [a for a in artifacts if a.get("flow_run_id") == skipped.flow_run_id]
    assert mine and "# What changed: skip" in mine[0]["data"], artifacts[:1]


def test_the_watch_starts_one_retraining_when_photos_change_and_none_when_not(
    services: Services, completed_first_run, pet_images, tmp_path
):
    """compare-heads-watch, fired on the champion's photos, emits nothing and starts nothing;
    after one photo is added it starts exactly one compare-heads-scheduled run, on the
    watched photos, through the deployment's event trigger."""
    photos = tmp_path / "watched"
    shutil.copytree(pet_images, photos)  # the same content: the same data digest
    scheduled = SCHEDULED.split("/")[1]
    before = {run["id"] for run in flow_runs_of_deployment(services, scheduled)}
    watched = services.run_deployment(WATCH, {"source": str(photos)})
    assert watched.returncode == 0, f"{watched.output[-4000:]}\n{services.logs()}"
    # No wait here: a run started by a (wrong) event of this first watch would be there by
    # the time the second watch's run is, and `[retraining] = started()` below would fail.
    assert {run["id"] for run in flow_runs_of_deployment(services, scheduled)} == before
    make_pet_image(0, 64, np.random.default_rng(123)).save(photos / "PetImages/Cat/added.jpg")
    watched = services.run_deployment(WATCH, {"source": str(photos)})
    assert watched.returncode == 0, f"{watched.output[-4000:]}\n{services.logs()}"

    def started():
        runs = flow_runs_of_deployment(services, scheduled)
        return [run for run in runs if run["id"] not in before]

    wait_for(started, 180, "the retraining the event should start")
    time.sleep(10)  # a second (wrong) run, of either watch, would have been created by now
    [retraining] = started()
    assert retraining["parameters"]["source"] == str(photos)
    # The worker picks it up. (It would train the deployment's defaults, 3 heads at 100 px
    # for 7 epochs; the scheduled deployment's own run is tested above: cancel it here.)
    running = wait_for(
        lambda: flow_run_state(services, retraining["id"]).get("type") in ("RUNNING", "COMPLETED"),
        FLOW_RUN_SECONDS,
        "the worker to start the retraining",
    )
    assert running
    prefect_api(services, "POST", f"/flow_runs/{retraining['id']}/set_state",
                {"state": {"type": "CANCELLING"}, "force": True})  # fmt: skip
    state = wait_for_final_state(services, retraining["id"])
    assert state["type"] in ("CANCELLED", "COMPLETED"), f"{state}\n{services.logs()}"


REFUSED_BY_THE_SERVER = [  # the flow's parameter schema, RunConfig's types and limits
    (
        {"heads": ["gap", "mlp"]},
        "heads[1]",
        "'mlp' is not one of ['fc', 'fc_dropout', 'gap', 'avgpool', 'fc_matched', 'gap_matched']",
    ),
    ({"epochs": 0}, "epochs", "0 is less than the minimum of 1"),
    ({"recipe": "fast"}, "recipe", "'fast' is not one of ['faithful', 'improved', 'converge']"),
]
# What a schema cannot say: RunConfig refuses it as the run starts, every bad value of the
# call at once. One flow run through the worker shows the path; tests/unit/test_config.py
# checks every rule (the cross-field image-size rule included) without a worker.
BAD_PARAMETERS = {"split": [50, 50, 0], "source": "s3://bucket/pets.zip"}
BAD_PARAMETER_HINTS = {"split": "three positive percentages", "source": "unknown scheme 's3'"}


def test_the_server_refuses_parameters_outside_the_schema(services: Services, pet_images):
    """No flow run is even created: the deployment's schema (RunConfig's types, choices and
    limits) is enforced by the Prefect server, and the answer names field and rule."""
    for bad, field, reason in REFUSED_BY_THE_SERVER:
        completed = services.prefect(
            "deployment", "run", ON_DEMAND, "--params",
            json.dumps({"source": str(pet_images), **bad}),
        )  # fmt: skip
        output = " ".join((completed.stdout + completed.stderr).split())
        assert completed.returncode != 0, output
        assert f"Validation failed for field '{field}'" in output and reason in output, output


def test_bad_parameters_fail_the_deployment_run_before_any_work(services: Services):
    """Through the deployment, as a user would: the flow run fails at once, its state message
    names every bad parameter and what is allowed, and nothing reaches MLflow."""
    from tests.e2e.harness import flow_run_state, start_deployment, wait_for_final_state

    flow_run_id = start_deployment(services, ON_DEMAND, BAD_PARAMETERS)
    state = wait_for_final_state(services, flow_run_id, timeout=300)
    assert state["type"] == "FAILED", state
    message = flow_run_state(services, flow_run_id).get("message") or ""
    for name, hint in BAD_PARAMETER_HINTS.items():
        assert name in message and hint in message, (name, message)
    client = mlflow_client(services)
    experiment = client.get_experiment_by_name("compare-heads")
    if experiment is not None:
        assert not client.search_runs(
            [experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
        ), "an MLflow run was created before the parameters were checked"


def test_make_up_keeps_a_running_service_only_with_the_same_settings(services: Services):
    """`up` again: everything already up. `up` with authentication turned on: refused,
    naming the difference, and the running servers are left as they were."""
    again = services.run(SERVICES_SCRIPT, "up", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already up") == 3, again.stdout
    with_auth = subprocess.run(
        [str(SERVICES_SCRIPT), "up"], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**services.env, "COMPARE_HEADS_PREFECT_AUTH": "1",
             "PREFECT_API_AUTH_STRING": "user:secret"},
        timeout=300, check=False,
    )  # fmt: skip
    assert with_auth.returncode != 0
    assert "prefect is running" in with_auth.stderr and "auth 1" in with_auth.stderr
    assert "make down" in with_auth.stderr
    assert services.prefect("work-pool", "ls").returncode == 0  # still up, still open
