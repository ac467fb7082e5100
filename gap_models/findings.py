"""An analysis as Markdown: the tables and the claims that both a flow run's report.md and a
study's section of docs/RESULTS.md print. Deterministic for the same evidence (fixed
bootstrap seeds), so a committed section can be checked against a fresh rendering.
"""

from __future__ import annotations

import math

from gap_models.claims import claims
from gap_models.statistics import MIN_SEEDS_FOR_INTERVAL
from gap_models.verdicts import (
    HOLDS_WITHOUT,
    NOT_REPRODUCED,
    ONLY_WITH,
    REVERSED_WITHOUT,
    UNTESTED_WITHOUT,
    VALIDATION,
    Analysis,
    OrderingStep,
    among,
    chosen_arm,
    convergence,
    points,
    protocol_effect,
    verdict,
)

NOTE = (
    "Accuracy intervals are 95% percentile intervals of a two-level bootstrap (seeds, then "
    "photos, paired across arms); differences are counted in photos, then divided; each "
    "family of tests is Holm-adjusted over every comparison it declares."
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
    return (
        f"no difference shown (detectable at the family's level: {100 * d.detectable:.1f} points)"
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
        NOTE + caveat,
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


def ordering_table(steps: list[OrderingStep], baseline: str) -> str:
    """Each declared step with the study's protocol and with fresh backbones (the baseline
    study's own tests), and what follows."""
    rows = []
    for s in steps:
        here = _points_interval(s.here.difference, s.here.low, s.here.high)
        without, said = "not tested", ""
        if s.baseline is not None:
            without, said = _points_interval(*s.baseline_difference), call(s.baseline)
        rows.append([f"{s.above} > {s.below}", here, call(s.here), without, said, s.origin])
    return _table(
        ["step (A above B)", "with the protocol, A - B points", "verdict",
         f"fresh backbones (`{baseline}`, its own seeds and Holm family), A - B points",
         "verdict", "so"],
        rows,
    )  # fmt: skip


def published_table(analysis: Analysis, published: dict[str, float], baseline: str) -> str:
    """The source's published validation accuracy of each arm (one run) beside ours, with
    the protocol and with fresh backbones: our mean (95% interval), our seeds' range, and
    where the published run falls among our runs."""
    summaries = {s.arm: s for s in analysis.arms}
    rows = []
    for arm, figure in published.items():
        cells = [arm, f"{100 * figure:.1f}"]
        for label in (arm, f"{arm}@{baseline}"):
            summary = summaries.get(label)
            if summary is None:
                cells.append("not recorded")
                continue
            runs = [c.mean() for c in analysis.evidence.arms[label].correct[VALIDATION]]
            cells.append(
                f"{interval(summary.validation)}; seeds {100 * min(runs):.2f} to "
                f"{100 * max(runs):.2f} ({_where(figure, runs)})"
            )
        rows.append(cells)
    return _table(
        ["arm", "published validation accuracy %, one run",
         "ours with the protocol: validation %, mean [95%]",
         f"ours with fresh backbones (`{baseline}`)"],
        rows,
    )  # fmt: skip


def _where(figure: float, runs: list[float]) -> str:
    """Where one published run falls among ours (single runs on both sides)."""
    if figure < min(runs):
        return "published: below every run of ours"
    if figure > max(runs):
        return "published: above every run of ours"
    return "published: among our runs"


def ordering_summary(analysis: Analysis, steps: list[OrderingStep], baseline: str) -> str:
    """One plain sentence: whether the study's protocol reproduces its declared ordering,
    and which steps hold with a fresh backbone for every head (study ``baseline``), which
    are shown only with the protocol, and, where the protocol measurably moved a head of
    such a step against its fresh-backbone self, that they came from it."""
    if not steps:
        return ""

    def named(kind: str) -> list[OrderingStep]:
        return [s for s in steps if s.origin == kind]

    missed = named(NOT_REPRODUCED)
    parts = [
        "with the protocol it is reproduced (every step significant)"
        if not missed
        else "with the protocol not shown: " + ", ".join(_step(s) for s in missed)
    ]
    held = named(HOLDS_WITHOUT)
    if held:
        parts.append(
            f"{', '.join(_step(s) for s in held)} also with a fresh backbone for every head "
            "(not from the protocol)"
        )
    for s in named(ONLY_WITH):
        parts.append(f"{_step(s)} not shown with fresh backbones{_cause(analysis, s, baseline)}")
    for s in named(REVERSED_WITHOUT):
        parts.append(f"{_step(s)} reversed with fresh backbones{_cause(analysis, s, baseline)}")
    untested = named(UNTESTED_WITHOUT)
    if untested:
        parts.append(", ".join(_step(s) for s in untested) + " not tested with fresh backbones")
    return f"the declared ordering against `{baseline}`'s fresh backbones: " + "; ".join(parts)


def _step(s: OrderingStep) -> str:
    return f"{s.above} > {s.below}"


def _cause(analysis: Analysis, s: OrderingStep, baseline: str) -> str:
    """ ": it came from the protocol, which lifted A by x points (or sank B)" where the
    family's test of that head against its fresh-backbone self is significant that way;
    else ": shown only with the protocol"."""
    lift = protocol_effect(analysis, s.above, baseline)
    if lift is not None and lift[3] and lift[0] > 0:
        return (
            f": it came from the protocol, which lifted {s.above} by "
            f"{_points_interval(*lift[:3])} points against a fresh backbone (significant)"
        )
    sink = protocol_effect(analysis, s.below, baseline)
    if sink is not None and sink[3] and sink[0] < 0:
        return (
            f": it came from the protocol, which sank {s.below} by "
            f"{_points_interval(*sink[:3])} points against a fresh backbone (significant)"
        )
    return ", and neither head measurably moved by the protocol against a fresh backbone"
