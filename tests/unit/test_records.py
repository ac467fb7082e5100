"""gap_models.records is the one home of every name a run writes."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from gap_models import identity, records
from gap_models.architecture import HEAD_NAMES, HEADS
from gap_models.records import RunResult

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("gap_models", "tasks", "flows", "tracking", "scripts")
# Loaded by MLflow where this project is not installed: it mirrors its few names (checked
# below). The data cache's manifest has its own keys (not tracking names).
EXEMPT = {
    "gap_models/records.py",
    "tracking/image_classifier.py",
}
EXEMPT_FOLDERS = ("gap_models/data/",)


def _record_names() -> set[str]:
    tree = ast.parse((ROOT / "gap_models" / "records.py").read_text())
    names = set()
    for node in tree.body:
        constant = isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        if (
            constant
            and isinstance(node.value.value, str)
            and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)
        ):
            names.add(node.value.value)
    return names


def _literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(getattr(node, "body", None), list)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_tracking_name_is_spelled_outside_the_records_module():
    from gap_models.config import RunConfig

    # The flow's parameters are RunConfig's fields: that class is their one home.
    names = _record_names() - set(RunConfig.model_fields)
    assert {"test_accuracy", "final_val_accuracy", "mlflow.parentRunId"} <= names
    offenders = []
    for folder in PRODUCTION:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in EXEMPT or relative.startswith(EXEMPT_FOLDERS):
                continue
            offenders += [
                f"{relative}:{line} {value!r}" for line, value in _literals(path) if value in names
            ]
    assert not offenders, "import these names from gap_models.records:\n" + "\n".join(offenders)


def test_the_served_model_mirrors_the_records_names():
    tree = ast.parse((ROOT / "tracking" / "image_classifier.py").read_text())
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    constants.update(
        {
            target.id: value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)
            for target, value in zip(node.targets[0].elts, node.value.elts, strict=True)
        }
    )
    assert constants["CLASS_NAMES"] == records.MODEL_CLASS_NAMES
    assert constants["IMAGE_SIZE"] == records.MODEL_IMAGE_SIZE
    assert constants["KERAS_ARTIFACT"] == records.MODEL_KERAS_ARTIFACT


def test_every_per_head_table_has_every_head():
    from gap_models.models import HEAD_BUILDERS
    from gap_models.plots import HEAD_COLOURS

    for table in (HEADS, HEAD_BUILDERS, HEAD_COLOURS):
        assert tuple(table) == HEAD_NAMES


def _result(**changes) -> RunResult:
    result = RunResult(
        head="gap",
        seed=3,
        run_id="abc",
        trainable_params=29_000,
        history={
            records.LOSS: [0.7, 0.6],
            records.ACCURACY: [0.5, 0.6],
            records.VAL_LOSS: [0.69, 0.65],
            records.VAL_ACCURACY: [0.55, 0.61],
        },
        test_metrics={records.TEST_ACCURACY: 0.6, records.TEST_LOSS: 0.66, records.TEST_AUC: 0.7},
        train_seconds=12.5,
        train_images_per_second=80.0,
        shift_accuracy={0: 0.6, 10: 0.58},
        epoch_seconds=[7.0, 5.5],
        model_uri="models:/m-1",
        final_val_accuracy=0.62,
    )
    for key, value in changes.items():
        setattr(result, key, value)
    return result


def test_a_result_round_trips_through_what_the_tracker_stores():
    result = _result()
    assert RunResult.from_tracked(result.to_tracked()) == result


def test_reading_back_fails_loudly_on_a_missing_score():
    tracked = _result().to_tracked()
    del tracked.metrics[records.SELECTION_METRIC]
    with pytest.raises(KeyError, match=records.SELECTION_METRIC):
        RunResult.from_tracked(tracked)


def test_a_cell_key_changes_with_the_code_version_and_nothing_else_alike():
    from gap_models.config import RunConfig

    config = RunConfig(source="tfds:cats_vs_dogs", precision="float32")
    key = lambda code, seed=0: identity.cell_key(  # noqa: E731
        identity.cell_identity(config, "gap", seed, "cache-1", code)
    )
    assert key("aaaa") == key("aaaa")
    assert key("aaaa") != key("bbbb")
    assert key("aaaa") != key("aaaa", seed=1)


def test_the_code_version_ignores_docstrings_and_follows_code(tmp_path):
    from gap_models.provenance import source_digest

    package = tmp_path / "pkg"
    package.mkdir()
    module = package / "m.py"
    module.write_text('"""Doc."""\n\ndef f():\n    """Say."""\n    return 1  # one\n')
    first = source_digest(package)
    module.write_text('"""Other doc."""\n\ndef f():\n    """Other."""\n    return 1  # two\n')
    assert source_digest(package) == first
    module.write_text('"""Doc."""\n\ndef f():\n    return 2\n')
    assert source_digest(package) != first


def test_stored_probabilities_keep_every_photo_on_its_side_of_one_half():
    from gap_models.study_records import decode_array, encode_array, probabilities_float16

    rng = np.random.default_rng(0)
    near = 0.5 + rng.uniform(-2e-4, 2e-4, 10_000).astype(np.float32)
    values = np.concatenate([near, rng.random(10_000, dtype=np.float32), [0.0, 0.5, 1.0]])
    assert np.any((values < 0.5) & (values.astype(np.float16) >= 0.5))  # plain rounding moves some
    stored = decode_array(encode_array(probabilities_float16(values), "float16"))
    assert stored.dtype == np.float16
    assert np.array_equal(stored >= 0.5, values >= 0.5)
    assert np.max(np.abs(stored.astype(np.float32) - values)) < 5e-4  # still float16 precision
