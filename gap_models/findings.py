"""An analysis as Markdown: the tables and the claims that both a flow run's report.md and a
study's section of docs/RESULTS.md print. Deterministic for the same evidence (fixed
bootstrap seeds), so a committed section can be checked against a fresh rendering.
"""

from __future__ import annotations

import math

from gap_models.claims import claims
from gap_models.statistics import MIN_SEEDS_FOR_INTERVAL, bootstrap_p_floor
from gap_models.verdicts import (
    HOLDS_WITHOUT,
    NOT_REPRODUCED,
    ONLY_WITH,
    REVERSED_WITH,
    REVERSED_WITHOUT,
    UNTESTED_WITHOUT,
    VALIDATION,
    Analysis,
    OrderingStep,
    among,
    chosen_arm,
    convergence,
    interaction,
    points,
    verdict,
)

NOTE = (
    "Accuracy intervals are 95% percentile intervals of a two-level bootstrap (seeds, then "
    "photos, paired across arms); differences are counted in photos, then divided; each "
    "family of tests is Holm-adjusted over every comparison it declares."
)


def reading_note(draws: int) -> str:
    """What an interval and a p-value of ``draws`` bootstrap replicates can and cannot say:
    intervals are per comparison (the family's Holm p decides, so an interval may exclude 0
    where the test does not), and a p-value has a floor."""
    return (
        "Each interval is of its own comparison, not adjusted for the family: the Holm p "
        "decides (an interval may miss 0 where the family's test does not). The smallest p "
        f"that {draws:,} bootstrap draws can give is 2/{draws + 1:,}, about "
        f"{bootstrap_p_floor(draws):.2g}: a p there, or a Holm p made from it, means about "
        "this or smaller."
    )


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def interval(triple: tuple[float, float, float], scale: float = 100, digits: int = 2) -> str:
    value, low, high = (scale * x for x in triple)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table ("" without rows)."""
    if not rows:
        return ""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def arms_table(analysis: Analysis) -> str:
    header = ["arm", "seeds", "trainable params", "MFLOPs / image", "test accuracy %",
              "validation accuracy %", "images/s (steady)"]  # fmt: skip
    rows = [
        [s.arm, str(s.seeds), f"{s.trainable_params:,}", f"{s.flops_per_image / 1e6:.1f}",
         interval(s.test), interval(s.validation), interval(s.images_per_second, 1, 0)]
        for s in analysis.arms
    ]  # fmt: skip
    return _table(header, rows)


def call(d) -> str:
    """What a pairwise test says, in the report's table and the answer alike."""
    if d.significant:
        return "significant"
    if d.identical:
        return "identical: right and wrong on the same photos in every seed (the same model)"
    same = d.identical_seeds
    return (
        f"no difference shown (detectable at the family's level: {100 * d.detectable:.1f} points)"
        + (f"; identical in {seed_list(same)} (the same model there)" if same else "")
    )


def seed_list(seeds) -> str:
    """``seed 0`` / ``seeds 0, 1, 2``."""
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def equivalence_call(e) -> str:
    """What an equivalence test says (Holm-adjusted), with its caveat on few seeds."""
    if not e.equivalent:
        return "equivalence not shown"
    if e.seeds < MIN_SEEDS_FOR_INTERVAL:
        return (
            f"equivalent on {e.seeds} seed{'s' if e.seeds != 1 else ''}: photo sampling only, "
            "so it certifies these models, not yet the heads"
        )
    return "equivalent"


def family_table(analysis: Analysis) -> str:
    header = ["A - B (test accuracy)", "seeds x photos", "difference, points", "p", "Holm p",
              "verdict"]  # fmt: skip
    rows = [
        [f"{d.arm_a} - {d.arm_b}", f"{d.seeds} x {d.photos}",
         f"{points(d.difference)} [{points(d.low)}, {points(d.high)}]", f"{d.p_value:.3g}",
         f"{d.p_holm:.3g}", call(d)]
        for d in analysis.family
    ]  # fmt: skip
    return _table(header, rows)


def equivalence_table(analysis: Analysis) -> str:
    header = ["A - B (test accuracy)", "seeds", "difference, points [90% interval]", "margin",
              "TOST p", "Holm p", "verdict"]  # fmt: skip
    rows = [
        [f"{e.arm_a} - {e.arm_b}", str(e.seeds),
         f"{points(e.difference)} [{points(e.low)}, {points(e.high)}]",
         f"±{100 * e.margin:.1f}", f"{e.p_value:.3g}", f"{e.p_holm:.3g}", equivalence_call(e)]
        for e in analysis.equivalences
    ]  # fmt: skip
    return _table(header, rows)


def overfitting_table(analysis: Analysis) -> str:
    header = ["arm", "train-subset - validation accuracy, points",
              "validation - train-subset loss"]  # fmt: skip
    rows = [
        [s.arm, interval(s.overfit_accuracy), interval(s.overfit_loss, 1, 3)] for s in analysis.arms
    ]
    return _table(header, rows)


def translation_table(analysis: Analysis) -> str:
    shifts = sorted({p for s in analysis.arms for p in s.shift_accuracy})
    if not shifts:
        return ""
    rows = [
        [s.arm] + [interval(s.shift_accuracy[p]) if p in s.shift_accuracy else "" for p in shifts]
        for s in analysis.arms
    ]
    return _table(["arm"] + [f"{p} px, %" for p in shifts], rows)


def convergence_table(analysis: Analysis) -> str:
    """Per arm, seed by seed: epochs run, epoch of the best validation accuracy, epochs to
    the plan's target, and the late gain (``gap_models.verdicts.Convergence``)."""
    target = analysis.plan.target_val_accuracy
    header = ["arm", "epochs run", "epoch of best validation accuracy",
              f"epochs to {100 * target:.0f} % validation accuracy",
              "best validation gain in the last quarter of the epochs, points"]  # fmt: skip
    reached = {s.arm: s.epochs_to_target for s in analysis.arms}

    def listed(values, shown=str) -> str:
        return ", ".join("-" if v is None else shown(v) for v in values)

    rows = convergence(analysis.evidence)
    table = _table(header, [
        [c.arm + ("" if c.precise else " \\*"),
         listed(c.epochs_run) + (f" of {c.declared}" if c.declared else ""),
         listed(c.best_epoch), listed(reached.get(c.arm, [])),
         listed(c.late_gain, lambda v: "n/a" if math.isnan(v) else f"{100 * v:+.1f}")]
        for c in rows
    ])  # fmt: skip
    if table and not all(c.precise for c in rows):
        table += (
            "\n\\* Per-epoch validation accuracy from Keras' moving BatchNorm statistics "
            "(this recipe has no precise-BatchNorm pass): after few epochs they lag the "
            "weights, so these curves can sit points below the finished model's scored "
            "validation accuracy, and their epochs and gains are rough.\n"
        )
    return table


def claims_table(analysis: Analysis) -> str:
    rows = [[c.claim, f"**{c.verdict}**", c.evidence] for c in claims(analysis)]
    return _table(["claim", "verdict", "what we measured"], rows)


def verdict_line(analysis: Analysis) -> str:
    """One sentence: the arm chosen on validation (ranked on the seeds every arm has), its
    test accuracy, and how it stands against each other arm in the family."""
    chosen = chosen_arm(analysis)
    if chosen is None:
        return f"Chosen on validation{among(analysis)}: none yet."
    best = chosen.summary
    parts = []
    for d in analysis.family:
        if best.arm not in (d.arm_a, d.arm_b):
            continue
        other = d.arm_b if d.arm_a == best.arm else d.arm_a
        sign = 1 if d.arm_a == best.arm else -1
        call = verdict(d, sign > 0)
        parts.append(f"{other} by {points(sign * d.difference)} points ({call})")
    declared = any(best.arm in pair for pair in analysis.plan.family)
    untested = (
        "none tested yet (an arm has no record)" if declared else "no pairwise test in this plan"
    )
    against = "; ".join(parts) if parts else untested
    ranked = "" if chosen.every_seed else f" on {seed_list(chosen.seeds)}, which every arm has"
    return (
        f"Chosen on validation{among(analysis)}: **{best.arm}** (mean validation accuracy "
        f"{_pct(chosen.validation)} %{ranked}), test accuracy {interval(best.test)} %. "
        f"Against the others (Holm-adjusted): {against}."
    )


def analysis_markdown(analysis: Analysis, heading: str = "##") -> str:
    """Every table of the analysis, each under its heading."""
    few = [s.arm for s in analysis.arms if s.seeds < MIN_SEEDS_FOR_INTERVAL]
    caveat = (
        f" Arms with fewer than {MIN_SEEDS_FOR_INTERVAL} seeds ({', '.join(few)}): their "
        "intervals hardly see seed-to-seed variation, so read them as photo sampling only."
        if few
        else ""
    )
    sections = [
        verdict_line(analysis),
        "",
        f"{NOTE} {reading_note(analysis.plan.draws)}{caveat}",
        "",
        f"{heading} Accuracy of each arm",
        "",
        arms_table(analysis),
    ]
    for title, table in (
        ("Pairwise differences (one Holm family)", family_table(analysis)),
        ("Equivalence (two one-sided tests)", equivalence_table(analysis)),
        ("Convergence (validation accuracy per epoch, seed by seed)", convergence_table(analysis)),
        ("Overfitting on like terms (inference mode, both splits)", overfitting_table(analysis)),
        ("Translation robustness (test photos shifted, 4 directions)", translation_table(analysis)),
        ("The article's claims (gap against fc)", claims_table(analysis)),
    ):
        if table:
            sections += [f"{heading} {title}", "", table]
    if analysis.evidence.missing:
        sections += [f"Not yet recorded: {', '.join(analysis.evidence.missing)}.", ""]
    return "\n".join(sections)


def _points_interval(estimate: float, low: float, high: float) -> str:
    return f"{points(estimate)} [{points(low)}, {points(high)}]"


def _difference(d) -> str:
    return _points_interval(d.difference, d.low, d.high)


def ordering_table(steps: list[OrderingStep], baseline: str) -> str:
    """Each declared step with the study's protocol and with fresh backbones (the baseline
    study's own tests), the protocol's interaction with it, and where the step stands."""
    rows = []
    for s in steps:
        without, said = "not tested", ""
        if s.baseline is not None:
            without, said = _points_interval(*s.baseline_difference), call(s.baseline)
        moved = "not recorded"
        if s.interaction is not None:
            moved = f"{_difference(s.interaction)}, p {s.interaction.p_value:.3g}"
        rows.append(
            [f"{s.above} > {s.below}", _difference(s.here), call(s.here), without, said, moved,
             s.origin]
        )  # fmt: skip
    return _table(
        ["step (A above B)", "with the protocol, A - B points", "verdict",
         f"fresh backbones (`{baseline}`, its own seeds and Holm family), A - B points",
         "verdict",
         "the protocol moved A more than B by, points (exploratory, unadjusted)", "so"],
        rows,
    )  # fmt: skip


def ordering_summary(steps: list[OrderingStep], baseline: str) -> str:
    """One plain sentence: whether the study's protocol reproduces its declared ordering;
    for each step it shows, whether the step's direction also holds with a fresh backbone
    for every head (study ``baseline``'s own tests), and whether the protocol moved its
    heads apart (the exploratory interaction): a step not shown with fresh backbones is
    said to have been widened by the protocol only when it measurably moved A more than B,
    never to come from it alone (not shown there is not excluded)."""
    if not steps:
        return ""
    missed = [s for s in steps if s.origin in (NOT_REPRODUCED, REVERSED_WITH)]
    parts = [
        "with the protocol it is reproduced (every step significant)"
        if not missed
        else "with the protocol "
        + ", ".join(
            f"{_step(s)} {'reversed' if s.origin == REVERSED_WITH else 'not shown'}" for s in missed
        )
    ]
    for s in steps:
        if s.origin == HOLDS_WITHOUT:
            parts.append(
                f"{_step(s)} holds with a fresh backbone for every head too (its direction "
                f"does not need the protocol){_widened(s)}"
            )
        elif s.origin == ONLY_WITH:
            parts.append(_only_with(s))
        elif s.origin == REVERSED_WITHOUT:
            parts.append(
                f"{_step(s)} reversed with fresh backbones "
                f"({_points_interval(*s.baseline_difference)}): the protocol turned it round"
            )
        elif s.origin == UNTESTED_WITHOUT:
            parts.append(f"{_step(s)} not tested with fresh backbones yet")
    return f"the declared ordering against `{baseline}`'s fresh backbones: " + "; ".join(parts)


def _step(s: OrderingStep) -> str:
    return f"{s.above} > {s.below}"


def _moved(s: OrderingStep) -> bool:
    """The protocol measurably moved A more than B (exploratory, unadjusted)."""
    i = s.interaction
    return i is not None and i.p_value < 0.05 and i.difference > 0


def _widened(s: OrderingStep) -> str:
    if not _moved(s):
        return ""
    return (
        f", though the protocol widened it by {_difference(s.interaction)} points (exploratory "
        "test of the interaction, unadjusted)"
    )


def _only_with(s: OrderingStep) -> str:
    """A step shown with the protocol, not with fresh backbones. Not shown is not excluded:
    the protocol is said to have widened it only when the interaction test says it moved A
    more than B, and never to be the step's whole cause (that would need the step excluded
    with fresh backbones, an equivalence the baseline does not test)."""
    fresh = (
        f"{_step(s)} not shown with fresh backbones ({_points_interval(*s.baseline_difference)})"
    )
    if _moved(s):
        return (
            f"{_step(s)} shown only with the protocol ({_difference(s.here)} points), which "
            f"widened it by {_difference(s.interaction)} points against fresh backbones "
            f"({seed_list(s.interaction.seed_ids)}, p {s.interaction.p_value:.3g}; an "
            "exploratory test of the interaction, not in the declared family, unadjusted); "
            f"with fresh backbones {_points_interval(*s.baseline_difference)}: not shown, not "
            "excluded"
        )
    if s.interaction is None:
        return f"{fresh}; the protocol's effect on these heads is not tested yet"
    return (
        f"{fresh}; that the protocol moved {s.above} more than {s.below} is not shown "
        f"({_difference(s.interaction)} points, p {s.interaction.p_value:.3g}, exploratory)"
    )


def published_table(
    analysis: Analysis, baseline_analysis: Analysis | None, published: dict[str, float],
    baseline: str,
) -> str:  # fmt: skip
    """The source's published validation accuracy of each arm (one run) beside ours, with
    the protocol and with fresh backbones (the baseline study's own records, all its seeds):
    our mean (95% interval), our runs' range, and where the published run falls."""
    rows = []
    for arm, figure in published.items():
        cells = [arm, f"{100 * figure:.1f}"]
        for source in (analysis, baseline_analysis):
            summary = next((a for a in source.arms if a.arm == arm), None) if source else None
            if summary is None:
                cells.append("not recorded")
                continue
            runs = [c.mean() for c in source.evidence.arms[arm].correct[VALIDATION]]
            cells.append(
                f"{interval(summary.validation)}; runs {100 * min(runs):.2f} to "
                f"{100 * max(runs):.2f} ({_where(figure, runs)})"
            )
        rows.append(cells)
    return _table(
        ["arm", "published validation accuracy %, one run",
         "ours with the protocol: validation %, mean [95%]",
         f"ours with fresh backbones (`{baseline}`, all its seeds)"],
        rows,
    )  # fmt: skip


def _where(figure: float, runs: list[float]) -> str:
    """Where one published run falls among our runs of the same setup."""
    if figure < min(runs):
        return f"published: below each of our {len(runs)} runs"
    if figure > max(runs):
        return f"published: above each of our {len(runs)} runs"
    return f"published: among our {len(runs)} runs"


def exploratory_lines(analysis: Analysis, declared: list[tuple[str, str, str, str]]) -> list[str]:
    """A study's exploratory differences of differences, (A - B) - (C - D), each said to be
    one (outside the family, unadjusted: a lead for a new study, not a finding)."""
    lines = []
    for a, b, c, d in declared:
        found = interaction(analysis, a, b, c, d)
        named = f"({a} - {b}) - ({c} - {d})"
        if found is None:
            lines.append(
                f"exploratory, not tested yet (an arm has no record, or the four share no "
                f"seed): {named}."
            )
            continue
        if found.p_value >= 0.05:
            said = "the first difference is not shown to differ from the second"
        else:
            said = f"the first difference is {'larger' if found.difference > 0 else 'smaller'} "
            said += "than the second"
        lines.append(
            f"exploratory (one test outside the pre-registered family, unadjusted: a lead, "
            f"not a finding): {named}: {_difference(found)} points "
            f"({seed_list(found.seed_ids)} x {found.photos} photos), p "
            f"{found.p_value:.3g}: {said}."
        )
    return lines
