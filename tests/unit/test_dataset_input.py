"""The photos a run used, as its MLflow dataset input: logged once per run, also when another
run logs the same photos at the same moment (MLflow's SQL store then refuses the second
insert of the dataset; the scale-out drill met it on PostgreSQL)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tracking import runs

MANIFEST = {
    "source": "/data/pets",
    "fingerprint": "f" * 64,
    "class_names": ["Cat", "Dog"],
    "split_counts": {"train": {"Cat": 5, "Dog": 5}},
    "images_used": 10,
    "image_size": 40,
}
# What the MLflow server answered the flow run that lost the race (2026-12-03, PostgreSQL).
LOST_RACE = (
    "BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique "
    'constraint "dataset_pk"\nDETAIL:  Key (experiment_id, name, digest)=(1, pets, '
    "854437001996f7a06dd29faf) already exists."
)


class RacingClient:
    """A real client whose first ``log_inputs`` loses the race: another run logs the same
    photos just before, and the store's refusal comes back as the server sent it."""

    def __init__(self, real: MlflowClient, other_run_id: str, error: str = LOST_RACE):
        self.real, self.other_run_id, self.error, self.calls = real, other_run_id, error, 0

    def log_inputs(self, run_id, datasets):
        self.calls += 1
        if self.calls == 1:
            self.real.log_inputs(self.other_run_id, datasets=datasets)
            raise mlflow.exceptions.MlflowException(self.error)
        return self.real.log_inputs(run_id, datasets=datasets)


@pytest.fixture
def two_runs(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("photos")
    return client, [client.create_run(experiment).info.run_id for _ in range(2)]


def dataset_of(client: MlflowClient, run_id: str):
    [dataset_input] = client.get_run(run_id).inputs.dataset_inputs
    return dataset_input.dataset


def test_a_run_that_loses_the_race_for_the_same_photos_still_gets_its_input(two_runs):
    client, (first, second) = two_runs
    racing = RacingClient(client, other_run_id=first)
    runs.log_dataset(racing, second, MANIFEST, digest="854437001996f7a06dd29faf")
    assert racing.calls == 2
    assert dataset_of(client, second).digest == "854437001996f7a06dd29faf"
    assert dataset_of(client, second) == dataset_of(client, first)  # one dataset, two runs
    for run_id in (first, second):
        client.set_terminated(run_id)


def test_any_other_refusal_is_not_retried(two_runs):
    client, (first, second) = two_runs
    racing = RacingClient(client, other_run_id=first, error="RESOURCE_DOES_NOT_EXIST: no run")
    with pytest.raises(mlflow.exceptions.MlflowException, match="no run"):
        runs.log_dataset(racing, second, MANIFEST)
    assert racing.calls == 1
    for run_id in (first, second):
        client.set_terminated(run_id)
