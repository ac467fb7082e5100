"""Studies as data: study files validate, synthetic records render, and every committed
section of docs/RESULTS.md is exactly what its study's records render to."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gap_models import records
from gap_models.records import RunResult
from gap_models.studies import load_study, study_names
from gap_models.study_records import (
    CellRecord,
    DataFile,
    data_path,
    read_data_file,
    read_record,
    record_path,
    write_json_atomically,
)
from gap_models.study_report import RESULTS, committed_section, render, replace_section

ROOT = Path(__file__).resolve().parents[2]
STUDY = """
description = "synthetic"
source = "photos"

[grid]
heads = ["fc", "gap"]
seeds = [0, 1, 2]
precision = ["float32"]

[analysis]
family = [["gap", "fc"]]
equivalence = [["gap", "fc"]]
bootstrap_draws = 300
figures = ["forest", "accuracies", "curves", "overfitting", "translation", "speed"]
"""


def _write_study(root: Path, with_seed2: bool = True, text: str = STUDY) -> None:
    (root / "studies").mkdir(parents=True)
    (root / "studies" / "synthetic.toml").write_text(text)
    (root / "photos").mkdir()
    rng = np.random.default_rng(0)
    n = 300
    labels = {s: rng.integers(0, 2, n) for s in ("validation", "test", "train_subset")}
    ids = {s: rng.integers(0, 2**63, n, dtype=np.uint64) for s in labels}
    write_json_atomically(
        data_path(root, "synthetic", "d1"),
        DataFile("d1", ("cat", "dog"), 2400, ids, labels).to_json(),
    )
    study = load_study(root, "synthetic")
    for cell in study.cells(root):
        if cell.seed == 2 and not with_seed2:
            continue
        skill = (0.8 if cell.head == "gap" else 0.75) - 0.1 * (
            1 - cell.settings.get("train_fraction", 1)
        )
        predictions = {}
        for split, truth in labels.items():
            right = rng.random(n) < (skill + (0.15 if split == "train_subset" else 0))
            p = np.where(right, truth, 1 - truth) * 0.8 + 0.1
            predictions[split] = p.astype(np.float32)
        result = RunResult(
            head=cell.head, seed=cell.seed, run_id=f"r{cell.seed}", trainable_params=
            29_000 if cell.head == "gap" else 700_000, history={
                records.LOSS: [0.6, 0.5], records.ACCURACY: [0.7, 0.8],
                records.VAL_LOSS: [0.6, 0.55], records.VAL_ACCURACY: [0.7, 0.78]},
            test_metrics={records.TEST_ACCURACY: skill, records.TEST_LOSS: 0.5,
                          records.TEST_AUC: 0.8},
            train_seconds=20.0, train_images_per_second=240.0, epoch_seconds=[11.0, 9.0],
            final_val_accuracy=skill, flops_per_image=73_000_000,
        )  # fmt: skip
        shifts = {p: rng.integers(0, 5 if p else 2, n).astype(np.uint8) for p in (0, 10, 20, 30)}
        record = CellRecord(
            "synthetic", cell.arm, cell.head, cell.seed, "k", "d1", "v1", cell.settings,
            {records.CPU_MODEL: "CPU", records.CPU_FLAGS: "avx2"}, result, predictions, shifts,
            73_000_000, 2400, 30.0, {}, "2026-12-02T00:00:00Z",
        )  # fmt: skip
        write_json_atomically(record_path(root, "synthetic", cell.file_stem), record.to_json())


def test_records_round_trip_and_stay_small(tmp_path):
    _write_study(tmp_path)
    path = record_path(tmp_path, "synthetic", "gap-seed1")
    record = read_record(path)
    assert record.result.trainable_params == 29_000 and record.seed == 1
    assert record.predictions["test"].dtype == np.float32 and len(record.predictions["test"]) == 300
    assert set(record.shifts) == {0, 10, 20, 30}
    assert path.stat().st_size < 20_000


def test_a_record_of_part_of_the_training_split_keeps_its_own_training_photos(tmp_path):
    """A train_fraction < 1 cell was scored on training photos of its own part: its record
    carries their ids and labels, and the evidence pairs its predictions with those."""
    from gap_models.evidence import from_records
    from gap_models.study_records import read_data_file

    _write_study(tmp_path)
    path = record_path(tmp_path, "synthetic", "gap-seed1")
    record = read_record(path)
    data = read_data_file(data_path(tmp_path, "synthetic", "d1"))
    own = (1 - data.labels["train_subset"])[:120]
    record.own_ids = {"train_subset": data.ids["train_subset"][:120]}
    record.own_labels = {"train_subset": own}
    record.predictions["train_subset"] = own.astype(np.float32)  # right on every photo
    write_json_atomically(path, record.to_json())
    again = read_record(path)
    np.testing.assert_array_equal(again.labels(data)["train_subset"], own)
    np.testing.assert_array_equal(again.labels(data)["test"], data.labels["test"])
    evidence = from_records("t", [again], {"d1": data}, ["gap"])
    assert evidence.arms["gap"].correct["train_subset"][0].tolist() == [1] * 120


def test_a_study_renders_and_a_hand_edit_is_caught(tmp_path):
    _write_study(tmp_path)
    section, figures = render(tmp_path, "synthetic", "studies/synthetic")
    assert set(figures) == {f"{k}.png" for k in
                            ("forest", "accuracies", "curves", "overfitting", "translation", "speed")}  # fmt: skip
    assert "| gap - fc |" in section and "GAP removes most trainable parameters" in section
    document = replace_section("# Results\n\nIntro.\n", "synthetic", section)
    assert committed_section(document, "synthetic") == section.rstrip()
    again, _ = render(tmp_path, "synthetic", "studies/synthetic", draw=False)
    assert again == section  # deterministic
    edited = document.replace("| gap | 3 |", "| gap | 4 |")
    assert committed_section(edited, "synthetic") != again.rstrip()


def test_a_learning_curve_and_the_capacity_figure_draw_one_line_per_head(tmp_path):
    curve = STUDY.replace(
        'precision = ["float32"]', 'precision = ["float32"]\ntrain_fraction = [0.25, 0.5, 1.0]'
    )
    curve = curve.replace('family = [["gap", "fc"]]', 'family = [["gap/0.25", "fc/0.25"]]')
    curve = curve.replace('equivalence = [["gap", "fc"]]', "equivalence = []")
    curve = curve.replace(
        'figures = ["forest",', 'figures = ["learning_curve", "capacity", "forest",'
    )
    _write_study(tmp_path, text=curve)
    section, figures = render(tmp_path, "synthetic", "x")
    lines = figures["learning_curve.png"].axes[0].get_lines()
    shares = {tuple(line.get_xdata()) for line in lines if len(line.get_xdata()) == 3}
    assert shares == {(0.25, 0.5, 1.0)}  # a line of three points for each head
    assert "| gap/0.25 - fc/0.25 |" in section
    capacity = figures["capacity.png"].axes[0]
    assert capacity.get_xscale() == "log" and len(capacity.get_legend().get_texts()) == 6


def test_a_partial_study_says_what_is_missing_and_which_cells_were_resumed(tmp_path):
    _write_study(tmp_path, with_seed2=False)
    path = record_path(tmp_path, "synthetic", "gap-seed1")
    record = read_record(path)
    record.extra_metrics[records.RESUMED_AT_EPOCH] = 12.0  # paused after epoch 12, resumed
    write_json_atomically(path, record.to_json())
    section, _ = render(tmp_path, "synthetic", "x", draw=False)
    assert "Not yet recorded: fc seed 2, gap seed 2." in section
    assert (
        "1 of them paused at a session's end and resumed from a checkpoint (gap seed 1 "
        in (section)
        and "after epoch 12)" in section
    )


def test_a_study_file_names_its_arms_and_explicit_precision(tmp_path):
    (tmp_path / "studies").mkdir()
    bad = STUDY.replace('family = [["gap", "fc"]]', 'family = [["gap", "avgpool"]]')
    (tmp_path / "studies" / "bad.toml").write_text(bad)
    with pytest.raises(ValueError, match="avgpool"):
        load_study(tmp_path, "bad")
    (tmp_path / "studies" / "auto.toml").write_text(STUDY.replace('"float32"', '"auto"'))
    with pytest.raises(ValueError, match="explicit"):
        load_study(tmp_path, "auto")


@pytest.mark.parametrize("name", study_names(ROOT))
def test_every_committed_study_section_is_what_its_records_render(name):
    """No figure in docs/RESULTS.md is typed by hand or stale: each study's generated section
    is re-rendered from the committed records and must match to the character."""
    document = (ROOT / RESULTS).read_text()
    committed = committed_section(document, name)
    assert committed is not None, f"docs/RESULTS.md has no section for study {name}: run " \
        f"`compare-heads study report {name}`"  # fmt: skip
    rendered, _ = render(ROOT, name, f"studies/{name}", draw=False)
    assert committed == rendered.rstrip(), (
        f"the section of study {name} in docs/RESULTS.md differs from what its records render: "
        f"run `compare-heads study report {name}` (never edit it by hand)"
    )


def _make_current(root: Path, name: str = "synthetic") -> None:
    """The study's records, as if trained today: today's code version and each cell's key."""
    from gap_models.provenance import code_version
    from gap_models.study_state import cell_states

    for state in cell_states(root, load_study(root, name)):
        path = record_path(root, name, state.cell.file_stem)
        record = read_record(path)
        if record is not None:
            record.code_version, record.key = code_version(), state.key
            write_json_atomically(path, record.to_json())


def test_a_record_is_stale_when_the_study_file_changes_its_cell_not_only_the_code(tmp_path):
    """The report judges staleness as `study status` does, by the cell's key: a setting
    edited in the study file stales the records trained before it (same code version)."""
    from gap_models.study_verdict import render_verdict

    asked = STUDY.replace('source = "photos"', 'source = "photos"\nquestion = "Is gap better?"')
    _write_study(tmp_path, text=asked)
    _make_current(tmp_path)
    section, _ = render(tmp_path, "synthetic", "x", draw=False)
    assert "stale" not in section
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "6 of 6 cells recorded. Final:" in verdict
    study_file = tmp_path / "studies" / "synthetic.toml"
    study_file.write_text(
        asked.replace('precision = ["float32"]', 'precision = ["float32"]\nepochs = [9]')
    )
    section, _ = render(tmp_path, "synthetic", "x", draw=False)
    assert "**6 of these 6 records are stale**: the study file's settings or the data " in section
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "6 of 6 cells recorded, 6 stale (see its section). Provisional:" in verdict


def test_the_verdict_asks_each_question_and_says_provisional_until_every_cell_is_in(tmp_path):
    from gap_models.study_verdict import FIGURE, committed_verdict, render_verdict, replace_verdict

    asked = STUDY.replace('source = "photos"', 'source = "photos"\nquestion = "Is gap better?"')
    _write_study(tmp_path, with_seed2=False, text=asked)
    _make_current(tmp_path)
    partial, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "**1. Is gap better?** Study `synthetic`" in partial
    assert "4 of 6 cells recorded. Provisional:" in partial
    assert "- gap - fc: " in partial and "gap ~ fc within ±1.0 points" in partial
    for seed in (0, 1):  # the missing seed, recorded: the same test, now final
        record = read_record(record_path(tmp_path, "synthetic", f"gap-seed{seed}"))
        record.seed = 2
        write_json_atomically(record_path(tmp_path, "synthetic", "gap-seed2"), record.to_json())
        record = read_record(record_path(tmp_path, "synthetic", f"fc-seed{seed}"))
        record.seed = 2
        write_json_atomically(record_path(tmp_path, "synthetic", "fc-seed2"), record.to_json())
    _make_current(tmp_path)
    complete, figures = render_verdict(tmp_path, "studies")
    assert "6 of 6 cells recorded. Final:" in complete and complete != partial
    # No arm of the synthetic study is at 100 px: the figure across studies stays empty.
    assert figures[FIGURE].axes[0].get_lines() == []
    document = replace_verdict("# Results\n", complete)
    assert committed_verdict(document) == complete.rstrip()


def test_the_committed_verdict_is_what_every_studys_records_render():
    from gap_models.study_verdict import committed_verdict, render_verdict

    committed = committed_verdict((ROOT / RESULTS).read_text())
    assert committed is not None, "docs/RESULTS.md has no verdict: run `compare-heads study report`"
    rendered, _ = render_verdict(ROOT, "studies", draw=False)
    assert committed == rendered.rstrip(), (
        "the verdict in docs/RESULTS.md differs from what the studies' records render: run "
        "`compare-heads study report` (never edit it by hand)"
    )


def test_a_baseline_studys_cells_join_the_family_paired_by_seed_and_photo(tmp_path):
    import shutil

    _write_study(tmp_path)
    # The baseline: the same grid, data and records under another name.
    (tmp_path / "studies" / "base.toml").write_text(STUDY)
    shutil.copytree(
        tmp_path / "studies" / "synthetic" / "records", tmp_path / "studies" / "base" / "records"
    )
    compared = STUDY.replace(
        'family = [["gap", "fc"]]',
        'family = [["gap", "fc"], ["gap", "gap@base"]]\nbaseline = "base"',
    )
    (tmp_path / "studies" / "synthetic.toml").write_text(compared)
    section, _ = render(tmp_path, "synthetic", "x", draw=False)
    assert "Baseline: 6 cells of study `base` (the arms marked @base)" in section
    assert "**6 of them are stale**" in section  # recorded by code version "v1"
    # The same models on the same photos: no difference at all.
    assert "| gap - gap@base | 3 x 300 | +0.00 [+0.00, +0.00] |" in section
    with pytest.raises(ValueError, match="gap@other"):
        (tmp_path / "studies" / "bad.toml").write_text(
            compared.replace('["gap", "gap@base"]', '["gap", "gap@other"]')
        )
        load_study(tmp_path, "bad")


def _right_on_every_photo(root: Path, study: str, stem: str, like: str | None = None) -> None:
    """Make record ``stem`` right on every validation and test photo, or (``like``) a copy of
    record ``like``'s predictions: the same model, right and wrong on the same photos."""
    data = read_data_file(data_path(root, study, "d1"))
    record = read_record(record_path(root, study, stem))
    for split in ("validation", "test"):
        if like is None:
            truth = data.labels[split]
            record.predictions[split] = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
        else:
            record.predictions[split] = read_record(record_path(root, study, like)).predictions[
                split
            ]
    write_json_atomically(record_path(root, study, stem), record.to_json())


def test_a_protocols_ordering_is_set_against_its_baselines_fresh_backbones(tmp_path):
    """A study with a baseline says, step by step, whether its declared ordering holds with
    its protocol, and whether it also holds with fresh backbones (the baseline's own tests)
    or is shown only with the protocol, which widened it (a head it measurably lifted); the
    source's published figures stand beside ours, placed among our runs."""
    import shutil

    from gap_models.study_verdict import render_verdict

    asked = STUDY.replace('source = "photos"', 'source = "photos"\nquestion = "Chain?"')
    _write_study(tmp_path, text=asked)
    (tmp_path / "studies" / "base.toml").write_text(STUDY)
    shutil.copytree(
        tmp_path / "studies" / "synthetic" / "records", tmp_path / "studies" / "base" / "records"
    )
    chained = asked.replace(
        'family = [["gap", "fc"]]',
        'family = [["gap", "fc"], ["gap", "gap@base"], ["fc", "fc@base"]]\nbaseline = "base"\n'
        "published = { gap = 0.5, fc = 0.99 }",
    )
    (tmp_path / "studies" / "synthetic.toml").write_text(chained)
    for seed in (0, 1, 2):  # with the protocol gap is right everywhere; fresh, it is fc's twin
        _right_on_every_photo(tmp_path, "synthetic", f"gap-seed{seed}")
        _right_on_every_photo(tmp_path, "base", f"gap-seed{seed}", like=f"fc-seed{seed}")
    section, _ = render(tmp_path, "synthetic", "x", draw=False)
    assert "gap > fc shown only with the protocol (+" in section
    assert "points), which widened it by +" in section
    assert "points against fresh backbones (seeds 0, 1, 2, p " in section
    assert "with fresh backbones +0.00 [+0.00, +0.00]: not shown, not excluded" in section
    assert "came from" not in section  # not shown with fresh backbones is not excluded there
    assert "| gap > fc | +" in section and "| significant | +0.00 [+0.00, +0.00] |" in section
    assert "| gap | 50.0 |" in section and "published: below each of our 3 runs" in section
    assert "published: above each of our 3 runs" in section  # fc's 99 %
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "- the declared ordering against `base`'s fresh backbones: with the protocol it is " in (
        verdict
    )
    _make_current(tmp_path)
    _make_current(tmp_path, "base")
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "Study `synthetic` (its section below): 6 of 6 cells recorded. Final:" in verdict
    # The baseline's own tests read every cell of it, a seed the study does not pair too:
    # until that seed is in, the answer that reads them is not final either.
    (tmp_path / "studies" / "base.toml").write_text(STUDY.replace("[0, 1, 2]", "[0, 1, 2, 3]"))
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert (
        "6 of 6 cells recorded, the baseline `base` tests it reads: 2 of its 8 cells missing or "
        "stale. Provisional:" in verdict
    )

    for seed in (0, 1, 2):  # fresh backbones: gap right everywhere too, so the protocol did nothing
        _right_on_every_photo(tmp_path, "base", f"gap-seed{seed}")
    section, _ = render(tmp_path, "synthetic", "x", draw=False)
    assert (
        "gap > fc holds with a fresh backbone for every head too (its direction does not need"
        in (section)
    )
    assert "widened" not in section  # the protocol moved neither head: +0.00, not significant
    assert "| +0.00 [+0.00, +0.00], p 1 | holds without the protocol |" in section

    with pytest.raises(ValueError, match="analysis.published names"):
        (tmp_path / "studies" / "bad.toml").write_text(chained.replace("gap = 0.5", "avg = 0.5"))
        load_study(tmp_path, "bad")


def test_where_a_step_of_an_ordering_stands():
    """A step's origin from its tests: reversed or not shown with the protocol; untested,
    held, reversed or not shown with fresh backbones, the baseline's pair read either way
    round."""
    from gap_models import verdicts
    from gap_models.statistics import Difference

    def tested(a, b, difference, p):
        return Difference(a, b, 3, 300, difference, difference - 0.01, difference + 0.01, p,
                          0.005, p_holm=p)  # fmt: skip

    def origin(here, baseline=None, sign=1):
        return verdicts.OrderingStep("a", "b", here, baseline, sign).origin

    shown, against = tested("a", "b", 0.03, 0.001), tested("a", "b", -0.03, 0.001)
    assert origin(tested("a", "b", 0.01, 0.4)) == verdicts.NOT_REPRODUCED
    assert origin(against) == verdicts.REVERSED_WITH
    assert origin(shown) == verdicts.UNTESTED_WITHOUT
    assert origin(shown, tested("a", "b", 0.02, 0.01)) == verdicts.HOLDS_WITHOUT
    assert origin(shown, tested("b", "a", -0.02, 0.01), -1) == verdicts.HOLDS_WITHOUT
    assert origin(shown, tested("b", "a", 0.02, 0.01), -1) == verdicts.REVERSED_WITHOUT
    assert origin(shown, tested("a", "b", 0.005, 0.5)) == verdicts.ONLY_WITH
    step = verdicts.OrderingStep("a", "b", shown, tested("b", "a", 0.02, 0.01), -1)
    assert step.baseline_difference == pytest.approx((-0.02, -0.03, -0.01))


def test_report_without_a_name_writes_every_section_its_figures_and_the_answer(tmp_path):
    from flows.study import report_study
    from gap_models.study_verdict import FIGURE, committed_verdict

    asked = STUDY.replace('source = "photos"', 'source = "photos"\nquestion = "Is gap better?"')
    _write_study(tmp_path, text=asked)
    (tmp_path / "docs").mkdir()
    (tmp_path / RESULTS).write_text("# Results\n\nIntro.\n")
    report_study(None, root=tmp_path)
    document = (tmp_path / RESULTS).read_text()
    section, _ = render(tmp_path, "synthetic", "studies/synthetic", draw=False)
    assert committed_section(document, "synthetic") == section.rstrip()
    assert "**1. Is gap better?**" in committed_verdict(document)
    folder = tmp_path / "docs" / "studies"
    assert (folder / FIGURE).stat().st_size > 0
    assert {p.name for p in (folder / "synthetic").iterdir()} >= {"README.md", "forest.png"}


def test_the_model_a_study_hands_over_is_chosen_on_validation_never_on_test(tmp_path):
    """The arm and the one model a study names are those with the highest validation
    accuracy, whatever their test accuracy; the model's test figure has an exact interval."""
    from statsmodels.stats.proportion import proportion_confint

    from flows.study import chosen_cell
    from gap_models.study_report import analyse_study
    from gap_models.study_verdict import render_verdict

    asked = STUDY.replace('source = "photos"', 'source = "photos"\nquestion = "Is gap better?"')
    _write_study(tmp_path, text=asked)
    data = read_data_file(data_path(tmp_path, "synthetic", "d1"))
    path = record_path(tmp_path, "synthetic", "fc-seed1")
    record = read_record(path)  # right on every validation photo, on half of the test photos
    truth = data.labels["validation"]
    record.predictions["validation"] = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    test = data.labels["test"]
    half = np.arange(len(test)) < len(test) // 2
    record.predictions["test"] = np.where(half == (test == 1), 0.9, 0.1).astype(np.float32)
    write_json_atomically(path, record.to_json())

    model, chosen_record, cell = chosen_cell(tmp_path, "synthetic")
    assert (model.arm, model.seed, model.validation) == ("fc", 1, 1.0)
    assert chosen_record.result.run_id == model.run_id == "r1" and cell.head == "fc"
    accuracy, low, high = model.test
    assert accuracy == 0.5
    assert (low, high) == pytest.approx(proportion_confint(150, 300, method="beta"), abs=1e-9)
    studied = analyse_study(tmp_path, "synthetic")
    test_means = {a.arm: a.test[0] for a in studied.analysis.arms}
    assert test_means["gap"] > test_means["fc"]  # gap is better on test, fc on validation
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "chosen on validation: **fc** (mean validation accuracy" in verdict
    assert "the one model to use, chosen on validation: fc seed 1 (validation 100.00 %)" in verdict
    section, _ = render(tmp_path, "synthetic", ".", draw=False)
    assert "Chosen on validation: **fc**" in section


def test_a_study_hands_over_only_from_the_arms_it_declares(tmp_path):
    """`choose_from` limits the arm and the one model a study hands over (a learning curve's
    smaller fractions are handicaps): a cell outside it, best on validation, is not chosen,
    and the answer names the arms the choice was made from. Unknown arms are refused."""
    from flows.study import chosen_cell
    from gap_models.study_verdict import render_verdict

    asked = STUDY.replace('source = "photos"', 'source = "photos"\nquestion = "Is gap better?"')
    asked = asked.replace("[analysis]", "train_fraction = [0.5, 1.0]\n\n[analysis]")
    asked = asked.replace('[["gap", "fc"]]', '[["gap/1.0", "fc/1.0"]]')
    declared = asked.replace(
        "bootstrap_draws", 'choose_from = ["fc/1.0", "gap/1.0"]\nbootstrap_draws'
    )
    _write_study(tmp_path, text=declared)
    data = read_data_file(data_path(tmp_path, "synthetic", "d1"))
    path = record_path(tmp_path, "synthetic", "fc-0.5-seed1")
    record = read_record(path)  # the half-data arm: right on every validation photo
    truth = data.labels["validation"]
    record.predictions["validation"] = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    write_json_atomically(path, record.to_json())

    model, _, cell = chosen_cell(tmp_path, "synthetic")
    assert model.arm in ("fc/1.0", "gap/1.0") and cell.settings["train_fraction"] == 1.0
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "chosen on validation among fc/1.0, gap/1.0: **" in verdict
    assert "the one model to use, chosen on validation among fc/1.0, gap/1.0:" in verdict

    section, _ = render(tmp_path, "synthetic", ".", draw=False)
    assert re.search(r"Against the others \(Holm-adjusted\): (fc|gap)/1\.0 by", section)
    for seed in (0, 1, 2):  # the runner-up not recorded: its declared test not run yet
        record_path(tmp_path, "synthetic", f"gap-1.0-seed{seed}").unlink()
    section, _ = render(tmp_path, "synthetic", ".", draw=False)
    assert "Against the others (Holm-adjusted): none tested yet (an arm has no record)" in section
    assert "Chosen on validation among fc/1.0, gap/1.0 (gap/1.0 not recorded yet): **fc/1.0**" in (
        section
    )

    (tmp_path / "studies" / "synthetic.toml").write_text(asked)  # no choose_from: every arm
    model, _, _ = chosen_cell(tmp_path, "synthetic")
    assert (model.arm, model.seed) == ("fc/0.5", 1)
    (tmp_path / "studies" / "synthetic.toml").write_text(declared.replace('"gap/1.0"]', '"gap"]'))
    with pytest.raises(ValueError, match=r"analysis.choose_from names \['gap'\]"):
        load_study(tmp_path, "synthetic")

    (tmp_path / "studies" / "synthetic.toml").write_text(declared)
    for seed in (0, 1, 2):  # neither arm it hands over from recorded: no choice, not another
        record_path(tmp_path, "synthetic", f"fc-1.0-seed{seed}").unlink()
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert (
        "- chosen on validation among fc/1.0, gap/1.0 (fc/1.0, gap/1.0 not recorded yet): none"
        in (verdict)
    )
    with pytest.raises(ValueError, match="no recorded cell"):
        chosen_cell(tmp_path, "synthetic")


@pytest.mark.parametrize("name", study_names(ROOT))
def test_a_cells_run_command_trains_exactly_that_cell(name, tmp_path, monkeypatch):
    """`study best` prints the `compare-heads run` line of a cell whose model this machine
    lacks: the CLI turns it back into the very configuration the study trains."""
    import shlex

    from typer.testing import CliRunner

    import flows.compare_heads
    from flows.cli import app

    text = (ROOT / "studies" / f"{name}.toml").read_text()
    source = next(line for line in text.splitlines() if line.startswith("source"))
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / f"{name}.toml").write_text(text.replace(source, 'source = "photos"'))
    (tmp_path / "photos").mkdir()
    cell = load_study(tmp_path, name).cells(tmp_path)[-1]
    called = {}

    def capture(**parameters):
        called.update(parameters)
        raise SystemExit(0)

    monkeypatch.setattr(flows.compare_heads, "compare_heads", capture)
    words = shlex.split(cell.run_command())
    assert words[0] == "compare-heads"
    result = CliRunner().invoke(app, words[1:])
    assert result.exit_code == 0, result.output
    assert called == cell.config().model_dump()


def test_the_convergence_table_says_whether_each_fit_was_still_learning(tmp_path):
    from gap_models.verdicts import late_gain

    assert late_gain([0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.87, 0.95]) == pytest.approx(0.09)
    # 30 epochs, best 10 back: the last quarter (8 epochs) stayed 10 points below it
    assert late_gain([0.5] * 20 + [0.9] + [0.8] * 9) == pytest.approx(-0.1)
    assert np.isnan(late_gain([0.7, 0.8]))  # too short to have a before
    _write_study(tmp_path)
    curves = {"gap-seed0": [0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.87, 0.95],
              "fc-seed0": [0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.79]}  # fmt: skip
    for stem, curve in curves.items():
        path = record_path(tmp_path, "synthetic", stem)
        record = read_record(path)
        record.result.history[records.VAL_ACCURACY] = curve
        write_json_atomically(path, record.to_json())
    section, _ = render(tmp_path, "synthetic", ".", draw=False)
    assert "#### Convergence (validation accuracy per epoch, seed by seed)" in section
    # The synthetic study trains the faithful recipe: no precise-BatchNorm validation, said.
    assert "| fc \\* | 8, 2, 2 | 3, 2, 2 | 3, -, - | +0.0, n/a, n/a |" in section
    assert "| gap \\* | 8, 2, 2 | 8, 2, 2 | 4, -, - | +9.0, n/a, n/a |" in section
    assert "\\* Per-epoch validation accuracy from Keras' moving BatchNorm statistics" in section


def test_a_target_is_reached_only_when_the_whole_interval_clears_it():
    from gap_models.verdicts import ChosenModel, target_call

    def model(correct: int) -> ChosenModel:
        return ChosenModel("gap", 0, "r", 1000, 1800, 1905, correct, 1948)

    assert "**reached**" in target_call(model(1820), 0.9)  # 93.4 %, interval above 92 %
    assert "**missed**" in target_call(model(1690), 0.9)  # 86.8 %, interval below 88.3 %
    assert target_call(model(1760), 0.9).endswith(
        "(the estimate is above it, the interval spans it)"
    )
    assert target_call(model(1745), 0.9).endswith(
        "(the estimate is below it, the interval spans it)"
    )


def test_study_best_says_clearly_when_there_is_nothing_to_hand_over(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "synthetic.toml").write_text(STUDY)
    monkeypatch.setattr("tracking.runs.repo_root", lambda: tmp_path)
    result = CliRunner().invoke(app, ["study", "best", "synthetic"])
    assert result.exit_code == 2
    assert "study synthetic has no recorded cell yet: `compare-heads study run synthetic`" in (
        result.output
    )
    result = CliRunner().invoke(app, ["study", "best", "nosuch"])
    assert result.exit_code == 2 and "nosuch" in result.output


def test_committed_records_read_the_same_on_a_machine_without_the_studys_photos(tmp_path):
    """A fresh clone without ../shared: the answer still reads from the records (no cell
    turns stale for want of the photos) and the same section renders."""
    import shutil

    from gap_models.study_report import analyse_study

    shutil.copytree(ROOT / "studies", tmp_path / "repo" / "studies")
    elsewhere = analyse_study(tmp_path / "repo", "deep_trunk")
    here = analyse_study(ROOT, "deep_trunk")
    source = next(iter(elsewhere.study.cells(tmp_path / "repo"))).source
    assert not Path(source).exists()
    assert elsewhere.stale_cells == here.stale_cells == frozenset()
    rendered, _ = render(tmp_path / "repo", "deep_trunk", "studies/deep_trunk", draw=False)
    assert rendered.rstrip() == committed_section((ROOT / RESULTS).read_text(), "deep_trunk")


def test_an_exploratory_difference_of_differences_is_tested_and_said_to_be_one(tmp_path):
    """A question the family does not test (does gap - fc change with the training
    fraction?) gets the study's declared exploratory test: (A - B) - (C - D) on the seeds
    all four arms have, counted in photos, called exploratory and unadjusted, in the answer
    and the study's section, and never part of the Holm family. The answer also says that
    its intervals are not adjusted for the family and where p bottoms out."""
    from gap_models.study_verdict import render_verdict

    asked = STUDY.replace('source = "photos"', 'source = "photos"\nquestion = "Does it change?"')
    asked = asked.replace("[analysis]", "train_fraction = [0.5, 1.0]\n\n[analysis]")
    asked = asked.replace('[["gap", "fc"]]', '[["gap/1.0", "fc/1.0"]]')
    declared = asked.replace(
        "bootstrap_draws",
        'exploratory = [["gap/1.0", "fc/1.0", "gap/0.5", "fc/0.5"]]\nbootstrap_draws',
    )
    _write_study(tmp_path, text=declared)
    study_file = tmp_path / "studies" / "synthetic.toml"
    data = read_data_file(data_path(tmp_path, "synthetic", "d1"))

    def expected() -> float:
        right = {}
        for arm in ("gap/1.0", "fc/1.0", "gap/0.5", "fc/0.5"):
            stems = [f"{arm.replace('/', '-')}-seed{seed}" for seed in (0, 1, 2)]
            rows = [
                read_record(record_path(tmp_path, "synthetic", s)).predictions["test"]
                for s in stems
            ]
            right[arm] = np.array([(r > 0.5) == data.labels["test"] for r in rows], dtype=int)
        both = right["gap/1.0"] - right["fc/1.0"] - right["gap/0.5"] + right["fc/0.5"]
        return both.sum() / both.size

    def exploratory_line(text: str) -> str:
        return next(x for x in text.splitlines() if x.startswith("- exploratory"))

    head = (
        "- exploratory (one test outside the pre-registered family, unadjusted: a lead, not a "
        "finding): (gap/1.0 - fc/1.0) - (gap/0.5 - fc/0.5): "
    )
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    line = exploratory_line(verdict)  # the same skill gap at both fractions: no change
    assert line.startswith(head) and f"{100 * expected():+.2f} [" in line
    assert "(seeds 0, 1, 2 x 300 photos), p " in line
    assert line.endswith("the first difference is not shown to differ from the second.")
    assert "not adjusted for the family" in verdict and "2/301, about 0.0066" in verdict
    section, _ = render(tmp_path, "synthetic", ".", draw=False)
    assert "not adjusted for the family" in section and exploratory_line(section) == line

    for seed in (0, 1, 2):  # gap right everywhere with all the photos: the lead grows
        _right_on_every_photo(tmp_path, "synthetic", f"gap-1.0-seed{seed}")
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    line = exploratory_line(verdict)
    assert f"{100 * expected():+.2f} [" in line and expected() > 0.1
    assert line.endswith("the first difference is larger than the second.")
    holm = re.search(r"- gap/1.0 - fc/1.0: .*Holm p (\S+):", verdict).group(1)
    study_file.write_text(asked)  # without the exploratory test: the family's p is the same
    undeclared, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "exploratory" not in undeclared
    assert re.search(r"- gap/1.0 - fc/1.0: .*Holm p (\S+):", undeclared).group(1) == holm

    study_file.write_text(declared)
    for seed in (0, 1, 2):
        record_path(tmp_path, "synthetic", f"fc-0.5-seed{seed}").unlink()
    verdict, _ = render_verdict(tmp_path, "studies", draw=False)
    assert "- exploratory, not tested yet (an arm has no record, or the four share no seed): " in (
        verdict
    )

    for bad, message in (
        ('"gap/0.25", "fc/0.5"]]', r"analysis names arms \['gap/0.25'\]"),
        ('"gap/1.0", "fc/1.0"]]', "needs two different pairs of different arms"),
    ):
        (tmp_path / "studies" / "bad.toml").write_text(
            declared.replace('"gap/0.5", "fc/0.5"]]', bad)
        )
        with pytest.raises(ValueError, match=message):
            load_study(tmp_path, "bad")
