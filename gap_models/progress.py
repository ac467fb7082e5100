"""Progress a person can follow: one line per epoch with what it measured, which model of
the run it is, and the time left for the model and the run, estimated from the epochs just
measured."""

from __future__ import annotations

from gap_models import records


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def describe_epoch(
    label: str,
    epoch: int,
    epochs: int,
    metrics: dict[str, float],
    position: tuple[int, int] = (1, 1),
    epoch_seconds: list[float] | None = None,
) -> str:
    """One log line for an epoch: model k of n, its losses, accuracies, seconds and images
    per second, and the time left for this model and for the run (the remaining models
    assumed as long as this one: in a run on one machine they are alike)."""
    scores = " ".join(f"{name} {metrics[name]:.4f}" for name in records.CURVE_METRICS)
    seen = epoch_seconds or [metrics[records.EPOCH_SECONDS]]
    per_epoch = sum(seen[1:]) / len(seen[1:]) if len(seen) > 1 else seen[0]
    model_left = (epochs - epoch) * per_epoch
    position_k, count = position
    run_left = model_left + (count - position_k) * epochs * per_epoch
    return (
        f"model {position_k} of {count}, {label} epoch {epoch}/{epochs}: {scores} "
        f"({metrics[records.EPOCH_SECONDS]:.1f} s, {metrics[records.IMAGES_PER_SECOND]:.0f} "
        f"images/s; about {minutes(model_left)} left for this model, {minutes(run_left)} for "
        "the run's training)"
    )
