"""A study's budget: which cell trains next when the first would not end within it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import flows.study
from flows.study import next_cell, run_study
from gap_models import study_state
from gap_models.checkpoints import TrainingPaused
from gap_models.study_records import read_record, records_dir, write_json_atomically
from tests.fixtures import make_pet_images
from tests.unit.test_study_report import STUDY as STUDY_REPORT
from tests.unit.test_study_report import _write_study

STUDY = """
description = "tiny"
source = "photos"

[grid]
heads = ["gap", "fc"]
seeds = [0, 1]
precision = ["float32"]
image_size = [32]
epochs = [40]  # 1 min an epoch for fc below: one and a half fit in what is left

[analysis]
family = [["gap", "fc"]]
"""


def test_the_first_cell_that_ends_within_the_budget_goes_first():
    assert next_cell([50.0, 10.0, 5.0], left_seconds=60.0) == 0  # priority order kept
    assert next_cell([90.0, 70.0, 40.0, 5.0], left_seconds=60.0) == 2
    assert next_cell([90.0, 70.0], left_seconds=60.0) == 0  # none fits: the first pauses


@pytest.fixture
def tiny_root(tmp_path):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.toml").write_text(STUDY)
    make_pet_images(tmp_path / "photos", per_class=4, size=32)
    return tmp_path


def test_a_study_run_trains_cells_that_fit_before_one_that_would_pause(tiny_root, monkeypatch):
    # fc takes 40 min here, gap 10: with 25 min left, both gaps fit and train first; then
    # the first fc, which fits in none of what is left, is the one started (and would pause).
    minutes = {"gap": 10, "fc": 40}
    trained: list[tuple[str, int]] = []
    clock = [0.0]
    monkeypatch.setattr(flows.study.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(
        flows.study, "_needed_seconds", lambda root, study, state, *_: minutes[state.cell.arm] * 60
    )

    def train(root, study, state, say):
        trained.append((state.cell.arm, state.cell.seed))
        if state.cell.arm == "fc":  # 7 of its 40 one-minute epochs fit: it pauses there
            raise TrainingPaused(7, 40, tiny_root / "checkpoint")
        clock[0] += minutes[state.cell.arm] * 60 * 0.9

    monkeypatch.setattr(flows.study, "_train_cell", train)
    said: list[str] = []
    run_study("tiny", budget_minutes=25, root=tiny_root, say=said.append)
    assert trained == [("gap", 0), ("gap", 1), ("fc", 0)]
    assert said[1].startswith("passing over fc seed 0 for now: it needs about 40 min")
    assert said[-2].startswith("training fc seed 0 (missing) until the budget ends")
    assert said[-1].startswith("paused fc seed 0 after epoch 7 of 40 at the end of the budget")

    # Paused by a stop request instead (SIGTERM, Ctrl-C): said so, not blamed on the budget.
    from tracking.cells import StopPaused

    def stopped(root, study, state, say):
        raise StopPaused(3, 40, tiny_root / "checkpoint")

    monkeypatch.setattr(flows.study, "_train_cell", stopped)
    said.clear()
    run_study("tiny", budget_minutes=25, root=tiny_root, say=said.append)
    assert said[-1].startswith("paused gap seed 0 after epoch 3 of 40 on a stop request;")


def test_a_cell_is_sized_at_the_rate_of_its_own_trunk_on_this_cpu(tmp_path, monkeypatch):
    # Records on this CPU: the deep trunk's FLOPs run twice as fast as the article's; a
    # float32 record of the article trunk sizes a bfloat16 cell only when nothing closer is.
    monkeypatch.setattr(study_state, "_same_cpu", lambda machine: True)
    grid = 'backbone = ["article", "deep"]\nprecision = ["float32"]'
    text = STUDY_REPORT.replace('precision = ["float32"]', grid).replace(
        '[["gap", "fc"]]', '[["gap/deep", "fc/deep"]]'
    )
    _write_study(tmp_path, text=text)
    for path in records_dir(tmp_path, "synthetic").glob("[!d]*.json"):
        record = read_record(path)
        seconds = 30.0 if record.settings["backbone"] == "article" else 15.0
        write_json_atomically(path, dataclasses.replace(record, cell_seconds=seconds).to_json())
    article = study_state.seconds_per_flop(tmp_path, "float32", "article")
    deep = study_state.seconds_per_flop(tmp_path, "float32", "deep")
    assert article == pytest.approx(2 * deep)
    assert study_state.seconds_per_flop(tmp_path, "float32", "other") == pytest.approx(
        (article + deep) / 2  # the median of all float32 records, half of each trunk
    )
    assert study_state.seconds_per_flop(tmp_path, "mixed_bfloat16", "deep") is not None


def test_several_studies_share_one_budget_from_the_cli(tiny_root, monkeypatch):
    # `study run long tiny --budget-minutes 25`: long's one cell (40 min) fits in none of it,
    # so tiny's 10-min gap cells fill the budget first; long's cell then starts and pauses.
    from typer.testing import CliRunner

    from flows.cli import app

    long = STUDY.replace('heads = ["gap", "fc"]', 'heads = ["fc"]').replace("[0, 1]", "[0]")
    (tiny_root / "studies" / "long.toml").write_text(long.replace('[["gap", "fc"]]', "[]"))
    minutes = {("tiny", "gap"): 10, ("tiny", "fc"): 40, ("long", "fc"): 40}
    trained: list[tuple[str, str, int]] = []
    clock = [0.0]
    monkeypatch.setattr(flows.study, "repo_root", lambda: tiny_root)
    monkeypatch.setattr(flows.study.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(
        flows.study,
        "_needed_seconds",
        lambda root, study, state, *_: minutes[study.name, state.cell.arm] * 60,
    )

    def train(root, study, state, say):
        trained.append((study.name, state.cell.arm, state.cell.seed))
        if state.cell.arm == "fc":
            raise TrainingPaused(7, 40, tiny_root / "checkpoint")
        clock[0] += minutes[study.name, state.cell.arm] * 60 * 0.9

    monkeypatch.setattr(flows.study, "_train_cell", train)
    result = CliRunner().invoke(app, ["study", "run", "long", "tiny", "--budget-minutes", "25"])
    assert result.exit_code == 3, result.output
    assert trained == [("tiny", "gap", 0), ("tiny", "gap", 1), ("long", "fc", 0)]
    lines = result.output.splitlines()
    assert lines[0].startswith("passing over long: fc seed 0 for now: it needs about 40 min")
    assert "paused long: fc seed 0 after epoch 7 of 40" in result.output
    assert lines[-2:] == ["long: 1 cell left", "tiny: 4 cells left"]


def test_study_status_without_a_name_gives_every_study_on_one_line(tiny_root, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    one = STUDY.replace('heads = ["gap", "fc"]', 'heads = ["fc"]').replace("[0, 1]", "[0]")
    (tiny_root / "studies" / "one.toml").write_text(one.replace('[["gap", "fc"]]', "[]"))
    minutes = {"gap": 10, "fc": 40}
    monkeypatch.setattr("tracking.runs.repo_root", lambda: tiny_root)
    monkeypatch.setattr(
        flows.study, "_needed_seconds", lambda root, study, state, *_: minutes[state.cell.arm] * 60
    )
    result = CliRunner().invoke(app, ["study", "status"])
    assert result.exit_code == 3, result.output  # cells are missing
    lines = result.output.splitlines()
    assert lines[0] == "one   0 done, 1 missing, 0 stale; about 40 min left"
    assert lines[1] == "tiny  0 done, 4 missing, 0 stale; about 100 min left"
    assert lines[2].startswith("2 studies: 0 done, 5 missing, 0 stale; about 2.3 h left on this")
    # Named: cell by cell, each study in turn.
    result = CliRunner().invoke(app, ["study", "status", "one", "tiny"])
    assert result.exit_code == 3, result.output
    assert "study one: tiny\n  missing  fc seed 0  ~40 min\n" in result.output
    assert "\n\nstudy tiny: tiny\n  missing  gap seed 0  ~10 min\n" in result.output
    result = CliRunner().invoke(app, ["study", "status", "nothere"])
    assert result.exit_code == 2 and "no study 'nothere'" in result.output


def test_a_second_study_run_of_the_same_repository_is_refused_with_the_holder(tiny_root):
    from typer.testing import CliRunner

    import flows.cli
    from flows.study import _one_run_at_a_time

    runner = CliRunner()
    with _one_run_at_a_time(tiny_root), pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows.study, "repo_root", lambda: tiny_root)
        result = runner.invoke(flows.cli.app, ["study", "run", "tiny"])
    assert result.exit_code == 2, result.output
    assert "another `compare-heads study run` (process " in result.output
    with _one_run_at_a_time(tiny_root):  # released: taken again at once
        pass


def test_study_run_names_what_it_cannot_start_from(tiny_root, monkeypatch):
    from typer.testing import CliRunner

    import flows.cli

    monkeypatch.setattr(flows.study, "repo_root", lambda: tiny_root)
    runner = CliRunner()
    (tiny_root / "studies" / "broken.toml").write_text("description = \n")
    result = runner.invoke(flows.cli.app, ["study", "run", "broken"])
    assert result.exit_code == 2 and "broken.toml: " in result.output, result.output
    (tiny_root / "studies" / "named.toml").write_text(f'name = "x"\n{STUDY}')
    result = runner.invoke(flows.cli.app, ["study", "run", "named"])
    assert result.exit_code == 2 and "remove the key `name`" in result.output, result.output
    (tiny_root / "studies" / "gone.toml").write_text(STUDY.replace('"photos"', '"nowhere"'))
    result = runner.invoke(flows.cli.app, ["study", "run", "gone"])
    assert result.exit_code == 2 and "its source" in result.output, result.output
    assert "nowhere does not exist" in result.output


def test_a_record_adopted_from_another_study_comes_with_its_data_file(tiny_root):
    from flows.study import _adopt_record
    from gap_models.studies import load_study
    from gap_models.study_records import data_path, record_path
    from tests.unit.test_study_report import _write_study

    _write_study(tiny_root / "other")
    other = tiny_root / "other"
    (other / "studies" / "copy.toml").write_text((other / "studies" / "synthetic.toml").read_text())
    study = load_study(other, "copy")
    (state,) = [s for s in study_state.cell_states(other, study) if s.cell.file_stem == "gap-seed0"]
    state = dataclasses.replace(state, data="d1")
    existing = record_path(other, "synthetic", "gap-seed0")
    target = record_path(other, "copy", "gap-seed0")
    target.parent.mkdir(parents=True, exist_ok=True)
    _adopt_record(other, study, state, existing, target)
    copied_data, original = (data_path(other, name, "d1") for name in ("copy", "synthetic"))
    assert json.loads(copied_data.read_text()) == json.loads(original.read_text())
    copied = read_record(target)
    assert copied.study == "copy" and copied.settings == state.cell.settings
    assert copied.key == read_record(existing).key


def test_a_chain_cell_is_sized_with_the_earlier_heads_this_cache_lacks(tiny_root, monkeypatch):
    # Under the article's protocol fc_dropout starts from the backbone fc trained: on a
    # machine whose cache lacks that step, the cell trains fc first, and its estimate says so.
    from gap_models import identity, protocols
    from gap_models.provenance import code_version
    from gap_models.studies import load_study

    monkeypatch.setenv("COMPARE_HEADS_CACHE_DIR", str(tiny_root / "cache"))
    chain = STUDY.replace('heads = ["gap", "fc"]', 'heads = ["fc", "fc_dropout"]').replace(
        'precision = ["float32"]', 'precision = ["float32"]\nprotocol = ["article"]'
    )
    (tiny_root / "studies" / "chain.toml").write_text(chain.replace('[["gap", "fc"]]', "[]"))
    study = load_study(tiny_root, "chain")
    states = {(s.cell.head, s.cell.seed): s for s in study_state.cell_states(tiny_root, study)}
    first, second = states["fc", 0], states["fc_dropout", 0]
    assert study_state.chain_steps_to_train(first) == []
    assert study_state.chain_steps_to_train(second) == ["fc"]
    assert study_state.chain_steps_to_train(second, frozenset({"fc"})) == []  # fc's cell first
    rate = 1e-9
    alone = study_state.estimate_seconds(tiny_root, study, first, rate)
    with_fc = study_state.estimate_seconds(tiny_root, study, second, rate)
    assert with_fc > 1.9 * alone  # fc's fit, then its own (fc_dropout: the same FLOPs)
    cell = identity.cell_identity(
        second.cell.config(), "fc_dropout", 0, second.data, code_version()
    )
    key = protocols.step_key(cell, ("fc",))
    protocols.save_step(tiny_root / "cache", key, {"w": [np.zeros(2)]})
    assert study_state.chain_steps_to_train(second) == []
    assert study_state.estimate_seconds(tiny_root, study, second, rate) == pytest.approx(alone)


def test_a_head_whose_flops_run_faster_is_sized_by_its_records_ratio(tmp_path):
    # gap's records ran 30 s where fc's ran 60 s for the same FLOPs: gap's FLOPs are cheap
    # here. Its factor is its rate over the median of its CPU and kind: 2/3 (median 45 s).
    _write_study(tmp_path)
    for path in records_dir(tmp_path, "synthetic").glob("[!d]*.json"):
        record = read_record(path)
        seconds = 30.0 if record.head == "gap" else 60.0
        write_json_atomically(path, dataclasses.replace(record, cell_seconds=seconds).to_json())
    assert study_state.head_factor(tmp_path, "gap", "float32", None) == pytest.approx(30 / 45)
    assert study_state.head_factor(tmp_path, "fc", "float32", None) == pytest.approx(60 / 45)
    assert study_state.head_factor(tmp_path, "avgpool", "float32", None) == 1.0  # no record


def test_a_heads_factor_comes_from_this_cpus_records_when_it_has_some(tmp_path, monkeypatch):
    # Another CPU ran gap's FLOPs fast (30 s against fc's 60 s); this one, on seed 0, slow
    # (60 s against 30 s): this CPU's own ratio sizes its cells, 60 / 45, not 30 / 45.
    from gap_models import records

    _write_study(tmp_path)
    for path in records_dir(tmp_path, "synthetic").glob("[!d]*.json"):
        record = read_record(path)
        here = record.seed == 0
        seconds = (30.0 if record.head == "gap" else 60.0) * (2 if here else 1)
        if here and record.head == "fc":
            seconds = 30.0
        machine = {**record.machine, records.CPU_MODEL: "Here" if here else "Other"}
        changed = dataclasses.replace(record, cell_seconds=seconds, machine=machine)
        write_json_atomically(path, changed.to_json())
    monkeypatch.setattr(study_state, "_same_cpu", lambda m: m[records.CPU_MODEL] == "Here")
    assert study_state.head_factor(tmp_path, "gap", "float32", None) == pytest.approx(60 / 45)
    monkeypatch.setattr(study_state, "_same_cpu", lambda m: False)  # a CPU without records
    # The median of every CPU's ratios: 2/3 (seeds 1, 2 elsewhere) and 4/3 (seed 0 here).
    assert study_state.head_factor(tmp_path, "gap", "float32", None) == pytest.approx(30 / 45)
