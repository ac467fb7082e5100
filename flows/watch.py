"""The light deployment: fingerprint the photos (seconds) and, when their content changed,
emit the event that starts the retraining deployment.

``compare-heads-watch`` runs hourly (prefect.yaml); the trigger of
``compare-heads-scheduled`` expects ``compare-heads.source.changed`` and runs it on the
event's source. The last digest seen per source is a Prefect variable; on the first watch of
a source, the champion's data digest stands in for it, so photos added before the first
watch are noticed too. Nothing is emitted when nothing changed: nothing trains.
"""

from __future__ import annotations

import hashlib

from prefect import flow, get_run_logger
from prefect.events import emit_event
from prefect.variables import Variable

from gap_models.config import DEFAULT_SOURCE, TFDS_PREFIX, RunConfig
from gap_models.data import class_names, default_cache_dir
from gap_models.data.manifest import build_manifest
from tracking import runs
from tracking.champion import read_champion
from tracking.registry import registered_model_name

SOURCE_CHANGED = "compare-heads.source.changed"


def _source_id(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@flow(name="watch-source", log_prints=True)
def watch_source(source: str = DEFAULT_SOURCE, model_name: str | None = None) -> bool:
    """Emit ``compare-heads.source.changed`` when the photos of ``source`` differ from the
    last watch's (or, at the first watch, from the champion's); returns whether it did."""
    logger = get_run_logger()
    if source.startswith(TFDS_PREFIX):  # a tfds dataset changes only with its version
        logger.info("%s is versioned by tensorflow-datasets: nothing to watch", source)
        return False
    config = RunConfig(source=source, model_name=model_name)
    digest = build_manifest(source, config.split, default_cache_dir()).digest
    variable = f"compare_heads_watch_{_source_id(source)}"
    previous = Variable.get(variable, default=None)
    if previous is None:
        name = registered_model_name(config, class_names(source))
        champion = read_champion(runs.client(), name)
        previous = champion.manifest.digest if champion and champion.manifest else digest
    Variable.set(variable, digest, overwrite=True)
    if previous == digest:
        logger.info("%s unchanged (data digest %s): nothing to retrain", source, digest)
        return False
    emit_event(
        event=SOURCE_CHANGED,
        resource={
            "prefect.resource.id": f"compare-heads.source.{_source_id(source)}",
            "prefect.resource.name": source,
        },  # fmt: skip
        payload={"source": source, "digest": digest, "previous_digest": previous},
    )
    logger.info("%s changed (data digest %s, was %s): %s emitted", source, digest, previous,
                SOURCE_CHANGED)  # fmt: skip
    return True
