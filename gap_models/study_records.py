"""A study's committed evidence: one small JSON record per finished cell, and one data file
per data set naming its photos, under ``studies/<name>/records/``.

A record holds the cell's identity (its key), the machine and code that trained it, its
curves, timings and scores, and its per-photo probabilities (float16) on the validation and
test splits and on a fixed subset of training photos, in the order of the data file's ids
(content digests), so cells pair photo by photo. Files are written atomically: a study run
killed at any moment leaves complete records or none.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gap_models import records
from gap_models.records import RunResult

FORMAT = 1


def encode_array(values: np.ndarray, dtype: str) -> dict:
    """A numpy array as JSON: its dtype, shape and base64 bytes (little-endian)."""
    array = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return {
        "dtype": dtype,
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode(),
    }


def probabilities_float16(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as float16 (half the bytes of a record) on the same side of 0.5 as
    before: a probability just below 0.5 that would round up to 0.5 is stored as the
    largest float16 below it, so the stored predictions count exactly the photos the model
    got right (rounding had moved one photo in a few thousand)."""
    values = np.asarray(probabilities, dtype=np.float32)
    stored = values.astype(np.float16)
    below = np.nextafter(np.float16(0.5), np.float16(0))
    return np.where((values < 0.5) & (stored >= 0.5), below, stored).astype(np.float16)


def decode_array(encoded: dict) -> np.ndarray:
    dtype = np.dtype(encoded["dtype"]).newbyteorder("<")
    flat = np.frombuffer(base64.b64decode(encoded["data"]), dtype=dtype)
    return flat.reshape(encoded["shape"]).astype(encoded["dtype"])


def write_json_atomically(path: Path, content: dict) -> None:
    """Write into a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream, indent=1, sort_keys=True)
            stream.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 is for secrets, not records
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class DataFile:
    """The photos of one data set (one cache key): per split, content ids and labels."""

    key: str
    class_names: tuple[str, ...]
    train_images: int  # the size of the training split (what time estimates scale with)
    ids: dict[str, np.ndarray]  # split -> uint64 content ids
    labels: dict[str, np.ndarray]  # split -> int labels

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "key": self.key,
            records.CLASS_NAMES: list(self.class_names),
            "train_images": self.train_images,
            "ids": {s: encode_array(v, "uint64") for s, v in self.ids.items()},
            "labels": {s: encode_array(v, "uint8") for s, v in self.labels.items()},
        }

    @classmethod
    def from_json(cls, content: dict) -> DataFile:
        return cls(
            key=content["key"],
            class_names=tuple(content[records.CLASS_NAMES]),
            train_images=content["train_images"],
            ids={s: decode_array(v) for s, v in content["ids"].items()},
            labels={s: decode_array(v).astype(np.int64) for s, v in content["labels"].items()},
        )


@dataclass
class CellRecord:
    """What one finished cell leaves: identity, provenance, curves, scores, predictions."""

    study: str
    arm: str
    head: str
    seed: int
    key: str
    data: str
    code_version: str
    settings: dict
    machine: dict[str, str]  # the CPU (model, flags) that trained it
    result: RunResult
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (n,) or (n, C)
    shifts: dict[int, np.ndarray] = field(default_factory=dict)  # pixels -> directions right
    flops_per_image: int = 0
    train_images: int = 0
    cell_seconds: float = 0.0  # wall time of the whole cell: flow, training, scoring
    extra_metrics: dict[str, float] = field(default_factory=dict)  # train_subset_*, final_val_*
    recorded_at: str = ""
    # Photos of a split that differ from the data file's: the training subset of a cell
    # trained on part of the training split (train_fraction < 1). Split -> ids, labels.
    own_ids: dict[str, np.ndarray] = field(default_factory=dict)
    own_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def labels(self, data: DataFile) -> dict[str, np.ndarray]:
        """Per split, the labels of the photos this cell's predictions are of."""
        return {**data.labels, **self.own_labels}

    def to_json(self) -> dict:
        tracked = self.result.to_tracked()
        return {
            "format": FORMAT,
            "study": self.study,
            "arm": self.arm,
            records.HEAD: self.head,
            records.SEED: self.seed,
            "key": self.key,
            "data": self.data,
            records.CODE_VERSION: self.code_version,
            "settings": self.settings,
            "machine": self.machine,
            "run_id": tracked.run_id,
            "params": tracked.params,
            "metrics": {
                k: round(v, 6) for k, v in {**self.extra_metrics, **tracked.metrics}.items()
            },
            "histories": {k: [round(x, 6) for x in v] for k, v in tracked.histories.items()},
            "predictions": {
                s: encode_array(probabilities_float16(p), "float16")
                for s, p in self.predictions.items()
            },
            "shifts": {str(p): encode_array(c, "uint8") for p, c in self.shifts.items()},
            records.FLOPS_PER_IMAGE: self.flops_per_image,
            "train_images": self.train_images,
            "cell_seconds": round(self.cell_seconds, 3),
            "recorded_at": self.recorded_at,
            **(
                {
                    "own_ids": {s: encode_array(v, "uint64") for s, v in self.own_ids.items()},
                    "own_labels": {s: encode_array(v, "uint8") for s, v in self.own_labels.items()},
                }
                if self.own_ids
                else {}
            ),
        }

    @classmethod
    def from_json(cls, content: dict) -> CellRecord:
        tracked = records.TrackedRun(
            run_id=content["run_id"],
            params=content["params"],
            metrics=content["metrics"],
            histories=content["histories"],
        )
        result = RunResult.from_tracked(tracked)
        result.flops_per_image = result.flops_per_image or content[records.FLOPS_PER_IMAGE]
        return cls(
            study=content["study"],
            arm=content["arm"],
            head=content[records.HEAD],
            seed=content[records.SEED],
            key=content["key"],
            data=content["data"],
            code_version=content[records.CODE_VERSION],
            settings=content["settings"],
            machine=content["machine"],
            result=result,
            predictions={
                s: decode_array(v).astype(np.float32) for s, v in content["predictions"].items()
            },
            shifts={int(p): decode_array(c) for p, c in content["shifts"].items()},
            flops_per_image=content[records.FLOPS_PER_IMAGE],
            train_images=content["train_images"],
            cell_seconds=content["cell_seconds"],
            extra_metrics=content["metrics"],
            recorded_at=content["recorded_at"],
            own_ids={s: decode_array(v) for s, v in content.get("own_ids", {}).items()},
            own_labels={
                s: decode_array(v).astype(np.int64)
                for s, v in content.get("own_labels", {}).items()
            },
        )


def records_dir(root: Path, study: str) -> Path:
    return root / "studies" / study / "records"


def record_path(root: Path, study: str, file_stem: str) -> Path:
    return records_dir(root, study) / f"{file_stem}.json"


def data_path(root: Path, study: str, key: str) -> Path:
    return records_dir(root, study) / f"data-{key}.json"


def read_record(path: Path) -> CellRecord | None:
    """A record, or None when the file is absent."""
    if not path.is_file():
        return None
    return CellRecord.from_json(json.loads(path.read_text()))


def read_data_file(path: Path) -> DataFile:
    return DataFile.from_json(json.loads(path.read_text()))


def find_record_by_key(root: Path, key: str) -> Path | None:
    """A record of any study with this cell key (the same model, trained already)."""
    for path in sorted((root / "studies").glob("*/records/*.json")):
        if path.name.startswith("data-"):
            continue
        if json.loads(path.read_text()).get("key") == key:
            return path
    return None
