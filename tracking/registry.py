"""The model registry: which registered model a run's champion lives in, and the champion /
challenger decision, made on the current validation split (the test split only reports).

The best cell of the best head becomes a new version with alias ``challenger``; it becomes
``champion`` when there is none yet, or when it passes the gate against the current champion
(``gap_models.gate``: better by a paired test on the *same* current validation photos, no
class losing much recall), and in both cases loads and predicts in a fresh process. Version and alias changes are undone together if
any step fails. Callers serialise decisions (the promote task holds a Prefect concurrency
slot), so the champion always ends on the better model, never on whoever wrote last.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException

from gap_models import records
from gap_models.config import RunConfig
from gap_models.data import cached_class_names
from gap_models.gate import judge, validation_inputs
from gap_models.records import RunResult
from tracking.logged_model import (
    ServingCheck,
    load_logged_model,
    logged_class_names,
)
from tracking.runs import log_metrics

CHAMPION, CHALLENGER = "champion", "challenger"
CATS_VS_DOGS_MODEL = "cats-vs-dogs"
"""The registered model of Cats vs Dogs data (SPEC: its champion is models:/cats-vs-dogs@champion)."""


def registered_model_name(config: RunConfig, class_names: tuple[str, ...]) -> str:
    """``model_name``, or by default ``cats-vs-dogs`` for Cats vs Dogs data (whatever the
    source) and the source's file or folder name, made safe, for any other data."""
    if config.model_name:
        return config.model_name
    if tuple(name.casefold() for name in class_names) == ("cat", "dog"):
        return CATS_VS_DOGS_MODEL
    stem = Path(config.source).expanduser().resolve().stem
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", stem).strip("-.") or "compare-heads"


@dataclass(frozen=True)
class Promotion:
    """What the registry step decided, and on which scores."""

    decision: str  # "promoted" (no champion yet or challenger better) or "kept"
    version: str
    challenger_val_accuracy: float  # decides, with the champion's on the same split
    champion_val_accuracy: float | None
    challenger_test_accuracy: float  # reports only
    champion_version: str | None
    head: str
    run_id: str
    name: str = CATS_VS_DOGS_MODEL
    reason: str = ""  # the gate's sentence (gap_models.gate)
    p_value: float | None = None  # McNemar's, when there was a champion to test against
    recall_change: dict[str, float] = field(default_factory=dict)  # points, per class


def current_champion(client, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _register(client, name: str, candidate: RunResult):
    with contextlib.suppress(MlflowException):  # exists already
        client.create_registered_model(name)
    # MLflow 3 logged models live at models:/<model id>; a tracking server insists that the
    # version names that id as well as the source.
    model_id = candidate.model_uri.removeprefix("models:/")
    return client.create_model_version(
        name, source=candidate.model_uri, run_id=candidate.run_id, model_id=model_id
    )


def champion_validation_accuracy(client, name: str, cache_dir: str) -> float:
    """The current champion's accuracy on this run's validation photos (decoded at the
    champion's own image size)."""
    from gap_models.evaluation import evaluate_model  # TensorFlow: see _gate

    check_classes(client, name, cached_class_names(cache_dir))
    model = load_logged_model(f"models:/{name}@{CHAMPION}")
    [images], labels = validation_inputs(cache_dir, [int(model.input_shape[1])])
    return records.as_validation(evaluate_model(model, images, labels))[records.SELECTION_METRIC]


def same_classes(first: tuple[str, ...], second: tuple[str, ...]) -> bool:
    """The same classes in the same label order, whatever their case: tensorflow-datasets
    names Cats vs Dogs ``cat``/``dog``, the PetImages folders ``Cat``/``Dog``."""
    return [c.casefold() for c in first] == [c.casefold() for c in second]


def check_classes(client, name: str, classes: tuple[str, ...]) -> None:
    """Refuse data whose classes differ from the registered model's champion's: called
    before any training, so a run that could not be promoted fails in seconds."""
    if current_champion(client, name) is None:
        return
    champion_classes = logged_class_names(f"models:/{name}@{CHAMPION}")
    if not same_classes(champion_classes, classes):
        raise ValueError(
            f"registered model {name!r} holds a champion for classes "
            f"{list(champion_classes)}, not this data's {list(classes)}: pass model_name "
            "to register these models elsewhere, or promote=false"
        )


def _gate(client, name: str, candidate: RunResult, cache_dir: str, champion, serving):
    """(promote?, why, the gate's decision or None without a champion): the gate of
    ``gap_models.gate`` on this run's validation photos, then the fresh-process load check
    (``serving``, when one was started early for this candidate)."""
    # Imported here: it imports Keras (TensorFlow, ~6 s), which the light deployment that
    # reads the champion through this module (flows/watch.py) never needs.
    from gap_models.evaluation import predict_probabilities

    decision = None
    if champion is not None:
        classes = cached_class_names(cache_dir)
        check_classes(client, name, classes)
        challenger_model = load_logged_model(candidate.model_uri)
        champion_model = load_logged_model(f"models:/{name}@{CHAMPION}")
        sizes = [int(challenger_model.input_shape[1]), int(champion_model.input_shape[1])]
        (challenger_images, champion_images), labels = validation_inputs(cache_dir, sizes)
        decision = judge(
            labels,
            predict_probabilities(challenger_model, challenger_images),
            predict_probabilities(champion_model, champion_images),
            classes,
        )
        if not decision.promote:
            return False, decision.reason, decision
    if not math.isfinite(candidate.test_metrics.get(records.TEST_LOSS, 0.0)):
        return False, "its test loss is not a finite number (a diverged model)", decision
    if serving is None or serving.model_uri != candidate.model_uri:
        serving = ServingCheck(candidate.model_uri)
    problem = serving.problem()
    if problem is not None:
        return False, problem, decision
    reason = decision.reason if decision else "no champion yet"
    return True, f"{reason}; {serving.verdict}", decision


def decide(
    client,
    name: str,
    candidate: RunResult,
    cache_dir: str,
    reasons: tuple[str, ...] = (),
    serving: ServingCheck | None = None,
    compared_in: str | None = None,
) -> Promotion:
    """Register the candidate as challenger and promote it if it passes the gate against the
    current champion (``gap_models.gate``: both scored on this run's validation photos). The
    version records its validation and test accuracy, why it was trained (the retraining
    plan's reasons), the flow run that compared it (``compared_in``: its parent run, or the
    run that reused it) and why it was promoted or kept (with the paired test's p-value)."""
    champion = current_champion(client, name)
    promote, reason, gate = _gate(client, name, candidate, cache_dir, champion, serving)
    p_value = gate.p_value if gate else None
    version = _register(client, name, candidate)
    tags = {
        records.SELECTION_METRIC: f"{candidate.final_val_accuracy:.6f}",
        records.TEST_ACCURACY: f"{candidate.test_accuracy:.6f}",
        records.PROMOTION_REASON_TAG: reason,
        **({records.MCNEMAR_P_VALUE: f"{p_value:.6g}"} if p_value is not None else {}),
        **({records.TRAINED_BECAUSE_TAG: ",".join(reasons)} if reasons else {}),
        **({records.COMPARED_IN_RUN_TAG: compared_in} if compared_in else {}),
    }
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    except BaseException:
        _roll_back(client, name, version.version, champion)
        raise

    return Promotion(
        decision="promoted" if promote else "kept",
        version=str(version.version),
        challenger_val_accuracy=candidate.final_val_accuracy,
        champion_val_accuracy=gate.champion_accuracy if gate else None,
        challenger_test_accuracy=candidate.test_accuracy,
        champion_version=str(champion.version) if champion is not None else None,
        head=candidate.head,
        run_id=candidate.run_id,
        name=name,
        reason=reason,
        p_value=p_value,
        recall_change=gate.recall_change if gate else {},
    )


def _roll_back(client, name: str, version: str, champion) -> None:
    """Undo a half-done registration: the new version goes, the old champion stays. What
    could not be undone is logged (the original error is re-raised by the caller)."""
    steps = []
    if champion is not None:
        steps.append(
            (
                f"point {CHAMPION} back at version {champion.version}",
                lambda: client.set_registered_model_alias(name, CHAMPION, champion.version),
            )
        )
    steps.append((f"delete version {version}", lambda: client.delete_model_version(name, version)))
    for description, step in steps:
        try:
            step()
        except MlflowException as error:
            logging.getLogger(__name__).error(
                "Registry roll-back of %s could not %s: %s; fix it by hand in the MLflow UI",
                name,
                description,
                error,
            )


def record(client, parent_run_id: str, promotion: Promotion) -> None:
    """The decision on the parent run: the scores it was made on, and tags."""
    metrics = {
        records.CHALLENGER_VAL_ACCURACY: promotion.challenger_val_accuracy,
        records.CHALLENGER_TEST_ACCURACY: promotion.challenger_test_accuracy,
    }
    if promotion.champion_val_accuracy is not None:
        metrics[records.CHAMPION_VAL_ACCURACY] = promotion.champion_val_accuracy
    if promotion.p_value is not None:
        metrics[records.MCNEMAR_P_VALUE] = promotion.p_value
    log_metrics(client, parent_run_id, metrics)
    client.set_tag(parent_run_id, records.REGISTERED_MODEL_TAG, promotion.name)
    client.set_tag(parent_run_id, records.PROMOTION_DECISION_TAG, promotion.decision)
    client.set_tag(parent_run_id, records.REGISTERED_VERSION_TAG, promotion.version)
    client.set_tag(parent_run_id, records.PROMOTION_REASON_TAG, promotion.reason)


def promotion_markdown(promotion: Promotion) -> str:
    """The decision in words, for the flow run's Prefect artifact."""
    before = (
        f"version {promotion.champion_version} scored {promotion.champion_val_accuracy:.4f}"
        if promotion.champion_version
        else "there was no champion"
    )
    return (
        f"# Model registry: `{promotion.name}`\n\n"
        f"Challenger: version {promotion.version} ({promotion.head}, run "
        f"`{promotion.run_id}`), validation accuracy {promotion.challenger_val_accuracy:.4f} "
        f"(test accuracy {promotion.challenger_test_accuracy:.4f}, reported only). "
        f"Champion before: {before} on the same validation split.\n\n"
        f"Decision: **{promotion.decision}**: {promotion.reason}."
        + "".join(
            f"\n- recall of {name}: {change:+.2f} points against the champion"
            for name, change in promotion.recall_change.items()
        )
    )
