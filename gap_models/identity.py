"""What makes one trained model what it is (a cell's identity) and the key that names it.

Two cells with equal identities train the same model, so a finished model is adopted or a
study record reused only under an equal key. The identity holds the data (the preprocessed
cache's name), head, seed, the training settings and the code version
(``gap_models.provenance``).
"""

from __future__ import annotations

import hashlib
import json

from gap_models.records import CODE_VERSION, HEAD, SEED, TRAINABLE_PARAMS

TRAINING_FIELDS: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "learning_rate",
    "image_size",
    "recipe",
    "precision",
    "batch_norm",
    "backbone",
    "train_fraction",
)
"""The ``RunConfig`` fields that change what training one (head, seed) produces, beyond the
data (precision as resolved for the run)."""


LATER_FIELDS: dict[str, object] = {"protocol": "fair"}
"""Training fields added after records existed, left out of a cell's settings at the value
every earlier cell had (so their keys stay what they were) and named otherwise. The value is
stated here, not read from RunConfig: a later change of the default must not alias."""


def training_settings(config) -> dict[str, object]:
    """The ``TRAINING_FIELDS`` of a resolved ``RunConfig``, and each of ``LATER_FIELDS``
    away from its earlier value (with, for the article's protocol, its module's code
    version: ``gap_models.protocols`` is not among the code every cell is keyed by)."""
    settings = config.model_dump(include=set(TRAINING_FIELDS))
    for name, earlier in LATER_FIELDS.items():
        value = getattr(config, name)
        if value != earlier:
            settings[name] = value
    if config.protocol != "fair":
        from gap_models.protocols import chain_code_version

        settings["protocol_code"] = chain_code_version()
    return settings


def cell_identity(config, head: str, seed: int, data: str, code_version: str) -> dict[str, object]:
    """What makes one trained model what it is: the data (the preprocessed cache's name:
    source fingerprint and preprocessing settings), head, seed, training settings and the
    code version. Two cells with equal identities train the same model."""
    return {
        "data": data,
        HEAD: head,
        SEED: seed,
        **training_settings(config),
        CODE_VERSION: code_version,
    }


def cell_key(identity: dict[str, object]) -> str:
    """24 hex digits naming a cell's identity (the tag by which a finished model is found)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def cell_params(
    config, head: str, seed: int, trainable_params: int, code_version: str
) -> dict[str, object]:
    """A child run's parameters: head, seed, the training settings, the model's size and
    the code version."""
    return {
        HEAD: head,
        SEED: seed,
        **training_settings(config),
        TRAINABLE_PARAMS: trainable_params,
        CODE_VERSION: code_version,
    }


def config_digest(config, head: str, seed: int) -> str:
    """24 hex digits naming what a cell is asked to train, without the data and the code
    (the retraining plan compares those on their own): head, seed, training settings and
    the preprocessing settings that pick and shape its photos."""
    settings = {
        HEAD: head,
        SEED: seed,
        **training_settings(config),
        "split": list(config.split),
        "max_images": config.max_images,
    }
    return cell_key(settings)


PLANNED_FIELDS: tuple[str, ...] = (*TRAINING_FIELDS, "split", "max_images", "heads", "seeds")
"""The settings a retraining plan compares with the champion's flow run, to say which
changed (what_changed.md)."""


def planned_settings(params: dict[str, object]) -> dict[str, str]:
    """``PLANNED_FIELDS`` of a run's parameters (a RunConfig dump or an MLflow run's
    params), as the parent run logs them: strings."""
    return {name: str(params[name]) for name in PLANNED_FIELDS if name in params}
