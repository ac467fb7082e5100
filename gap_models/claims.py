"""The article's claims about GAP against FC, each with what we measured and a verdict that
follows its test: "supported" only when the test says so, "contradicted" when it says the
opposite, "not shown" otherwise, with the smallest difference the test could have detected.
"""

from __future__ import annotations

from dataclasses import dataclass

from gap_models.verdicts import (
    NOT_SHOWN,
    NOT_SUPPORTED,
    SUPPORTED,
    Analysis,
    points,
    precise_validation,
    verdict,
)


@dataclass(frozen=True)
class Claim:
    claim: str
    verdict: str
    evidence: str


def _find(differences, a: str, b: str):
    for d in differences:
        if (d.arm_a, d.arm_b) == (a, b):
            return d, 1
        if (d.arm_a, d.arm_b) == (b, a):
            return d, -1
    return None, 1


def _tested(d, sign: int, claimed_positive: bool, what: str, family: str) -> Claim | tuple:
    value, low, high = (sign * d.difference, *sorted((sign * d.low, sign * d.high)))
    text = (
        f"{what}: {points(value)} points [{points(low)}, {points(high)}], Holm p = "
        f"{d.p_holm:.3g} ({family}; {d.seeds} seeds x {d.photos} photos, two-level bootstrap)"
    )
    call = verdict(d, claimed_positive if sign > 0 else not claimed_positive)
    if call == NOT_SHOWN:
        text += f"; could have detected {100 * d.detectable:.1f} points at 80% power"
    return call, text


def claims(analysis: Analysis, gap: str = "gap", fc: str = "fc") -> list[Claim]:
    """The claims, gap against fc ([] when either did not run)."""
    arms = {summary.arm: summary for summary in analysis.arms}
    if gap not in arms or fc not in arms:
        return []
    g, f = arms[gap], arms[fc]
    ratio = g.trainable_params / f.trainable_params
    table = [
        Claim(
            "GAP removes most trainable parameters",
            SUPPORTED if ratio < 0.1 else NOT_SUPPORTED,
            f"{g.trainable_params:,} vs {f.trainable_params:,} trainable ({ratio:.1%}); "
            f"{g.flops_per_image / 1e6:.1f} vs {f.flops_per_image / 1e6:.1f} MFLOPs per image "
            "(the convolutions dominate both)",
        )
    ]
    accuracy, sign = _find(analysis.family, gap, fc)
    if accuracy is not None:
        call, text = _tested(accuracy, sign, True, f"test accuracy {gap} - {fc}", "pairwise family")
        table.append(Claim("GAP is more accurate than FC", call, text))
    speed = (
        f"steady-state {g.images_per_second[0]:.0f} images/s [{g.images_per_second[1]:.0f}, "
        f"{g.images_per_second[2]:.0f}] vs {f.images_per_second[0]:.0f} "
        f"[{f.images_per_second[1]:.0f}, {f.images_per_second[2]:.0f}] (median over epochs 2+ "
        f"of every seed); epochs to {analysis.plan.target_val_accuracy:.0%} validation "
        f"accuracy {_epochs(g.epochs_to_target)} vs {_epochs(f.epochs_to_target)}"
    )
    if not precise_validation(analysis.evidence.arms[gap].settings):
        speed += " (per-epoch validation from Keras' moving BatchNorm statistics: rough)"
    faster = g.images_per_second[1] > f.images_per_second[2]
    slower = g.images_per_second[2] < f.images_per_second[1]
    table.append(
        Claim(
            "GAP trains faster",
            SUPPORTED if faster else (NOT_SUPPORTED if slower else NOT_SHOWN),
            speed + " (supported only when the intervals do not overlap)",
        )
    )
    overfit, sign = _find(analysis.overfit_differences, gap, fc)
    if overfit is not None:
        what = f"(train-subset - validation accuracy, inference mode) of {gap} minus {fc}"
        call, text = _tested(overfit, sign, False, what, "overfitting family")
        table.append(Claim("GAP overfits less", call, text))
    shift, sign = _find(analysis.shift_differences, gap, fc)
    if shift is not None:
        largest = max(g.shift_accuracy)
        what = f"accuracy lost at {largest} px shift, {gap} minus {fc}"
        call, text = _tested(shift, sign, False, what, "translation family")
        table.append(Claim("GAP is more robust to translation", call, text))
    table.append(
        Claim(
            "GAP turns feature maps into category confidence maps",
            SUPPORTED,
            "by construction: the class activation map's spatial mean plus the output bias is "
            "the logit (checked numerically in the tests); a flow run's plots/cam_grid.png, or "
            "`compare-heads cams MODEL_URI --source SOURCE`, shows where it lies",
        )
    )
    return table


def _epochs(values: list[int | None]) -> str:
    shown = ["never" if v is None else str(v) for v in values]
    return "[" + ", ".join(shown) + "]"
