"""Prefect tasks for the data stage: make the source available, preprocess it once."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from gap_models import data, records
from tasks import run_logger
from tracking import runs


@dataclass(frozen=True)
class PreparedRef:
    """What later tasks need of the preprocessing result: a path and its counts."""

    cache_dir: str
    images_used: int
    skipped_images: int
    skipped_by_reason: dict[str, int]
    split_counts: dict[str, dict[str, int]]
    cache_hit: bool
    seconds: float
    class_names: tuple[str, ...]
    skipped: list[dict] = field(default_factory=list)


def is_transient(task, task_run, state) -> bool:
    """Retry a failed download unless the failure is permanent: a wrong layout or a host
    that cannot be reached at all (each retry would only repeat the same answer)."""
    try:
        state.result()
    except (data.DataError, data.OfflineError):
        return False
    except Exception:  # a broken connection mid-download, a server error: try again
        return True
    return False


@task(
    name="download",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=is_transient,
    cache_policy=NONE,
)
def download(source: str) -> str:
    """Download tfds:cats_vs_dogs (unless prepared) or check a local source's layout."""
    logger = run_logger()
    logger.info("Checking source %s", source)
    return data.download(source, progress=logger.info)


@task(name="preprocess", cache_policy=NONE)
def preprocess(
    source: str, image_size: int, split: list[int], max_images: int | None
) -> PreparedRef:
    """Decode, split and resize once; a later run with the same data reads the cache."""
    logger = run_logger()
    last_reported = [-1]

    def progress(done: int, total: int) -> None:
        decile = done * 10 // max(total, 1)
        if decile != last_reported[0]:
            last_reported[0] = decile
            logger.info("Preprocessing: %d / %d images decoded", done, total)

    prepared = data.preprocess(source, image_size, split, max_images, progress=progress)
    manifest = prepared.manifest
    logger.info(
        "%s: %d images used, %d skipped %s, split %s (%s, %.1f s)",
        prepared.cache_dir,
        prepared.images_used,
        prepared.skipped_images,
        manifest["skipped_by_reason"],
        {name: sum(counts.values()) for name, counts in manifest["split_counts"].items()},
        "cache hit: nothing decoded" if prepared.cache_hit else "decoded and cached",
        prepared.seconds,
    )
    return PreparedRef(
        cache_dir=str(prepared.cache_dir),
        images_used=prepared.images_used,
        skipped_images=prepared.skipped_images,
        skipped_by_reason=manifest["skipped_by_reason"],
        split_counts=manifest["split_counts"],
        cache_hit=prepared.cache_hit,
        seconds=prepared.seconds,
        class_names=data.cached_class_names(prepared.cache_dir),
        skipped=manifest["skipped"],
    )


def skipped_files_csv(skipped: list[dict]) -> str:
    """The skipped source files as CSV: file, reason, detail."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["file", "reason", "detail"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(skipped)
    return buffer.getvalue()


@task(name="record-data", cache_policy=NONE)
def record_data(prepared: PreparedRef, parent_run_id: str, data_digest: str | None = None) -> None:
    """On the parent run: the data as an MLflow dataset input, the class names, the counts,
    and the list of skipped files (with reasons) as an MLflow and a Prefect artifact, so
    nothing is dropped silently."""
    client = runs.client()
    manifest = data.read_manifest(Path(prepared.cache_dir))
    runs.log_dataset(client, parent_run_id, manifest, data_digest)
    runs.log_params(client, parent_run_id, {records.CLASS_NAMES: ",".join(prepared.class_names)})
    counts = {
        records.IMAGES_USED: prepared.images_used,
        records.SKIPPED_IMAGES: prepared.skipped_images,
        **{records.SKIPPED_PREFIX + r: n for r, n in prepared.skipped_by_reason.items()},
    }
    runs.log_metrics(client, parent_run_id, counts)
    client.log_text(parent_run_id, skipped_files_csv(prepared.skipped), "skipped_files.csv")
    if prepared.skipped:
        create_table_artifact(
            key="compare-heads-skipped-files",
            table=prepared.skipped[:1000],
            description=f"{prepared.skipped_images} source files skipped: {prepared.skipped_by_reason}",
        )
