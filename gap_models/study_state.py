"""Where a study stands: each cell's state (done, stale, missing) and how long the cells
left would take on this CPU, from every study's records trained on a CPU like it."""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from pathlib import Path

from gap_models import records
from gap_models.checkpoints import checkpoint_dir, checkpointed_epochs
from gap_models.config import TFDS_PREFIX, RunConfig
from gap_models.data import cache_key, fingerprint_source
from gap_models.hardware import detect
from gap_models.provenance import code_version
from gap_models.studies import STUDIES_DIR, Cell, Study
from gap_models.study_records import data_path, read_data_file, read_record, record_path

PRIOR_IMAGES_PER_SECOND = 60.0
"""Before this CPU has trained any cell of a study: the slowest rate measured on these
machines (float32 on an AVX2-only CPU), so a first estimate errs long, not short."""


@dataclass(frozen=True)
class CellState:
    """A cell and where it stands: done (a record with its key), stale (a record with
    another key: older code or data), or missing."""

    cell: Cell
    key: str
    data: str
    state: str

    @property
    def epochs(self) -> int:
        return self.cell.config().epochs

    @property
    def epochs_done(self) -> int:
        """Epochs a checkpoint of this cell's unfinished training holds (resumed by `study
        run`), 0 for none."""
        return 0 if self.state == "done" else checkpointed_epochs(checkpoint_dir(self.key))


def cell_states(root: Path, study: Study) -> list[CellState]:
    """Every cell of the study in priority order, with its state. FileNotFoundError when the
    study's photos are not on this machine: a cell's key holds their content's fingerprint."""
    version, fingerprints, states = code_version(), {}, []
    for cell in study.cells(root):
        if not cell.source.startswith(TFDS_PREFIX) and not Path(cell.source).exists():
            raise FileNotFoundError(
                f"study {study.name}: its source {cell.source} does not exist on this machine "
                "(its cells are keyed by the content of those photos: put them there)"
            )
        config = cell.config()
        if cell.source not in fingerprints:
            fingerprints[cell.source] = fingerprint_source(cell.source)
        data = cache_key(
            fingerprints[cell.source], config.image_size, config.split, config.max_images
        )
        key = cell.key(data, version)
        record = read_record(record_path(root, study.name, cell.file_stem))
        state = "missing" if record is None else ("done" if record.key == key else "stale")
        states.append(CellState(cell, key, data, state))
    return states


def _same_cpu(machine: dict[str, str]) -> bool:
    here = detect()
    return (
        machine.get(records.CPU_MODEL) == here.cpu_model
        and machine.get(records.CPU_FLAGS) == here.reported_flags()
    )


PRIOR_FLOPS_PER_IMAGE = 75e6
"""The article's fc model at 100 px, whose speed ``PRIOR_IMAGES_PER_SECOND`` is."""


@dataclass(frozen=True)
class _Rate:
    """One record's wall seconds per training image, epoch and forward FLOP, whole cell."""

    machine: tuple[str, str]  # CPU model and flags
    kind: tuple[str, str]  # precision and backbone
    head: str
    rate: float


def _record_rates(root: Path) -> list[_Rate]:
    files = tuple(
        (str(path), path.stat().st_mtime_ns)
        for path in sorted((root / STUDIES_DIR).glob("*/records/*.json"))
        if not path.name.startswith("data-")
    )
    return _rates_of(files)


@functools.lru_cache(maxsize=4)
def _rates_of(files: tuple[tuple[str, int], ...]) -> list[_Rate]:
    default_backbone = RunConfig.model_fields["backbone"].default
    rates = []
    for name, _ in files:
        record = read_record(Path(name))
        work = record.train_images * len(record.result.epoch_seconds) * record.flops_per_image
        if work:
            machine = (record.machine.get(records.CPU_MODEL, ""),
                       record.machine.get(records.CPU_FLAGS, ""))  # fmt: skip
            kind = (
                record.settings.get("precision", ""),
                record.settings.get("backbone", default_backbone),
            )
            rates.append(_Rate(machine, kind, record.head, record.cell_seconds / work))
    return rates


def seconds_per_flop(
    root: Path, precision: str | None = None, backbone: str | None = None
) -> float | None:
    """Median wall seconds per training image, epoch and forward FLOP of every study's
    records trained on a CPU like this one (same model and flags), the whole cell included.
    Of the cells in the same precision and backbone when there are any, else in the same
    precision (bfloat16 and float32 differ by up to 3.5x), else of all: per FLOP, so a record
    of one model sizes a cell of another (a wider head, smaller photos), but a trunk's
    convolutions run at their own rate (wide ones make more FLOPs per second). None: no
    such record yet."""
    default_backbone = RunConfig.model_fields["backbone"].default
    rates: dict[tuple[str, str], list[float]] = {}
    for rate in _record_rates(root):
        model, flags = rate.machine
        if _same_cpu({records.CPU_MODEL: model, records.CPU_FLAGS: flags}):
            rates.setdefault(rate.kind, []).append(rate.rate)
    same_precision = [r for (p, _), group in rates.items() if p == precision for r in group]
    chosen = (
        rates.get((precision or "", backbone or default_backbone))
        or same_precision
        or [rate for group in rates.values() for rate in group]
    )
    return statistics.median(chosen) if chosen else None


def head_factor(root: Path, head: str, precision: str | None, backbone: str | None) -> float:
    """How fast this head's cells ran per FLOP against the other cells of their CPU, precision
    and backbone (median of its records' ratios: on a CPU like this one when it has any,
    else on any CPU): FLOPs are not all alike (a 3x3 convolution on 10 x 10 maps runs more
    of them a second than the trunk does), and how unlike differs between CPUs, so a cell
    is sized at its CPU's rate times this. 1 without a comparable record."""
    default_backbone = RunConfig.model_fields["backbone"].default
    kind = (precision or "", backbone or default_backbone)
    rates = _record_rates(root)
    groups: dict[tuple, list[float]] = {}
    for rate in rates:
        groups.setdefault((rate.machine, rate.kind), []).append(rate.rate)
    ratios, here = [], []
    for rate in rates:
        others = groups[rate.machine, rate.kind]
        if rate.head == head and rate.kind == kind and len(others) > 1:
            ratios.append(rate.rate / statistics.median(others))
            model, flags = rate.machine
            if _same_cpu({records.CPU_MODEL: model, records.CPU_FLAGS: flags}):
                here.append(ratios[-1])
    chosen = here or ratios
    return statistics.median(chosen) if chosen else 1.0


@functools.cache
def _cell_flops(head: str, image_size: int, backbone: str) -> int:
    from gap_models.models import build_model, flops_per_image

    return flops_per_image(build_model(head, image_size, backbone=backbone))


def train_images(root: Path, study: Study, data: str) -> int | None:
    path = data_path(root, study.name, data)
    return read_data_file(path).train_images if path.is_file() else None


def estimate_seconds(
    root: Path, study: Study, state: CellState, rate: float | None, trained_before=frozenset()
) -> float:
    """Expected wall seconds of one cell on this CPU at its epoch limit (early stopping only
    shortens it): this CPU's measured seconds per FLOP (``seconds_per_flop``) times the
    cell's training images, epochs and FLOPs per image; before any measurement, the slowest
    rate seen on these machines."""
    images = train_images(root, study, state.data)
    if images is None:  # data not prepared here yet: the declared split of the source's size
        images = 20_000
    config = state.cell.config()
    images = max(1, round(images * config.train_fraction))
    flops = _cell_flops(state.cell.head, config.image_size, config.backbone)
    epochs = state.epochs - min(state.epochs_done, state.epochs - 1)  # evaluation remains
    work = images * epochs * flops
    for head in chain_steps_to_train(state, trained_before):  # the article's chain: first
        left = config.epochs - min(chain_step_epochs_done(state, head), config.epochs - 1)
        work += images * left * _cell_flops(head, config.image_size, config.backbone)
    if rate is None:
        prior = 1.3 / (PRIOR_IMAGES_PER_SECOND * PRIOR_FLOPS_PER_IMAGE)
        return work * prior
    return work * rate


def chain_step_epochs_done(state: CellState, head: str) -> int:
    """Epochs the checkpoint of this cell's chain step ``head`` holds (a step paused at an
    earlier budget's end resumes from there)."""
    from gap_models import identity, protocols
    from gap_models.checkpoints import checkpoint_dir, checkpointed_epochs

    cell = identity.cell_identity(state.cell.config(), state.cell.head, state.cell.seed,
                                  state.data, code_version())  # fmt: skip
    step = protocols.step_key(cell, (*protocols.predecessors(head), head))
    return checkpointed_epochs(checkpoint_dir(protocols.step_checkpoint_key(step)))


def chain_steps_to_train(state: CellState, trained_before=frozenset()) -> list[str]:
    """Under the article's protocol, the heads before this cell's in the chain whose trained
    backbone this machine's cache lacks: the cell trains them first (a session on another
    machine than the one that trained the chain's first cells). ``trained_before``: heads
    whose cells of this seed train earlier in the same run, leaving their step cached."""
    from gap_models import identity, protocols
    from gap_models.data import default_cache_dir

    config = state.cell.config()
    if config.protocol != "article":
        return []
    cell = identity.cell_identity(config, state.cell.head, state.cell.seed, state.data,
                                  code_version())  # fmt: skip
    chain = protocols.predecessors(state.cell.head)
    return [
        chain[length - 1]
        for length in range(1, len(chain) + 1)
        if chain[length - 1] not in trained_before
        and protocols.load_step(default_cache_dir(), protocols.step_key(cell, chain[:length]))
        is None
    ]
