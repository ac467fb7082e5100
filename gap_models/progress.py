"""Progress a person can follow: one line per epoch with what it measured, and the time
left for the model and the run, estimated from the images/s just measured."""

from __future__ import annotations

from gap_models import records


def describe_epoch(label: str, epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """One log line for an epoch: its losses, accuracies, seconds and images per second."""
    scores = " ".join(f"{name} {metrics[name]:.4f}" for name in records.CURVE_METRICS)
    return (
        f"{label} epoch {epoch}/{epochs}: {scores} ({metrics[records.EPOCH_SECONDS]:.1f} s, "
        f"{metrics[records.IMAGES_PER_SECOND]:.0f} images/s)"
    )
