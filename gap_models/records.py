"""The one home of every name a run writes, and of a cell's result as the tracker stores it.

Every metric, parameter and tag name a compare-heads run logs is a constant here; writers
(training, evaluation, the tracking package, the flow) and readers (the comparison, the
promotion, scripts) import them, and a test fails when one is spelled as a string literal
anywhere else. ``RunResult`` converts to and from what MLflow keeps of a child run (plain
dicts: this core imports no tracking library), in both directions, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- per-epoch metrics (step = epoch); the first four are Keras' own history keys ---------
LOSS = "loss"
ACCURACY = "accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_SECOND = "images_per_second"  # in the epoch line only, not logged per epoch
CURVE_METRICS: tuple[str, ...] = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY)
EPOCH_METRICS: tuple[str, ...] = (*CURVE_METRICS, EPOCH_SECONDS)
"""What is logged after every epoch."""

# --- a child run's final metrics -----------------------------------------------------------
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
TEST_AUC = "test_auc"
TEST_PREFIX = "test_"
FINAL_VAL_PREFIX = "final_val_"
FINAL_VAL_ACCURACY = "final_val_accuracy"
SELECTION_METRIC = FINAL_VAL_ACCURACY
"""What every decision uses (best head, seed to register, champion): the final model's
accuracy on the validation split, with the BatchNorm statistics it is saved with. The test
split only reports: a figure that also chose the winner would be biased upward."""
SELECTION_SPLIT = "validation"
REPORT_SPLIT = "test"
RECALL_PREFIX = "recall_"
PRECISION_PREFIX = "precision_"
SHIFT_PREFIX = "test_accuracy_shift_"
"""Test accuracy on images shifted by N pixels is recorded as ``test_accuracy_shift_N``."""
EVALUATE_SECONDS = "evaluate_seconds"
TRAIN_SECONDS = "train_seconds"
TRAIN_IMAGES_PER_SECOND = "train_images_per_second"
BEST_VAL_ACCURACY = "best_val_accuracy"
EPOCHS_RUN = "epochs_run"
RESUMED_AT_EPOCH = "resumed_at_epoch"  # epochs restored from a checkpoint, when any
EPOCHS_TO_BEST = "epochs_to_best_val_accuracy"
EPOCHS_TO_PREFIX = "epochs_to_val_accuracy_"
VAL_ACCURACY_TARGETS: tuple[float, ...] = (0.80, 0.85, 0.90)
"""Validation accuracies whose first epoch each run logs (``epochs_to_val_accuracy_85``)."""


def epochs_to_target(target: float) -> str:
    """The metric of epochs to the first validation accuracy of at least ``target``."""
    return f"{EPOCHS_TO_PREFIX}{round(target * 100)}"


BN_RECALIBRATION_BATCHES = "bn_recalibration_batches"
EPOCH_LOGGING_SECONDS = "epoch_logging_seconds"
AUGMENTATION_CHANGE = "augmentation_mean_abs_change"
PROCESS_PEAK_MEMORY_MB = "process_peak_memory_mb"

# --- the parent run's metrics --------------------------------------------------------------
IMAGES_USED = "images_used"
SKIPPED_IMAGES = "skipped_images"
SKIPPED_PREFIX = "skipped_"
FLOW_SECONDS = "flow_seconds"
COMPUTE_SECONDS = "compute_seconds"
OVERHEAD_FRACTION = "overhead_fraction"
PEAK_MEMORY_MB = "peak_memory_mb"
PREPROCESS_CACHE_HIT = "preprocess_cache_hit"
PREPROCESS_COMPUTE_SECONDS = "preprocess_compute_seconds"
PHASE_SECONDS_PREFIX = "phase_seconds_"
CHALLENGER_VAL_ACCURACY = "challenger_val_accuracy"
CHALLENGER_TEST_ACCURACY = "challenger_test_accuracy"
CHAMPION_VAL_ACCURACY = "champion_val_accuracy"

# --- parameters ----------------------------------------------------------------------------
HEAD = "head"
SEED = "seed"
TRAINABLE_PARAMS = "trainable_params"
PRECISION_REQUESTED = "precision_requested"
PRECISION_REASON = "precision_reason"
CODE_VERSION = "code_version"
"""A digest of the core's code and its numerical libraries (gap_models.provenance): part of
every run's parameters and of the key by which a finished model is adopted."""
CALLBACKS = "callbacks"
SPLIT_PARAM = "split"  # a RunConfig field, read back by `compare-heads cams`
CLASS_NAMES = "class_names"
DATASET_PROFILE_KEYS: tuple[str, ...] = ("class_names", "split_counts", "images_used", "image_size")
"""What of the data cache's manifest the MLflow dataset input shows as its profile."""

# --- the logged model's configuration (mirrored in tracking/image_classifier.py, which is
# loaded where this project is not installed; a test keeps the two equal) ------------------
MODEL_CLASS_NAMES = "class_names"
MODEL_IMAGE_SIZE = "image_size"
MODEL_KERAS_ARTIFACT = "keras_model"

# --- tags ----------------------------------------------------------------------------------
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own (mlflow.utils.mlflow_tags)
SOURCE_NAME_TAG = "mlflow.source.name"  # MLflow's own: the UI's Source column
SOURCE_TYPE_TAG = "mlflow.source.type"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
NOTE_TAG = "mlflow.note.content"  # MLflow's own: the run's description
KIND_TAG = "kind"
KIND_COMPARISON = "comparison"
MODEL_URI_TAG = "model_uri"
OUTPUT_DIR_TAG = "compare_heads.output_dir"
"""Of a parent run: the local folder its plots and tables were written to."""
RUN_KEY_TAG = "compare_heads.run_key"
RESUMED_TAG = "compare_heads.resumed_from_parent"
FAILURE_TAG = "compare_heads.failure"
FLOW_RUN_TAG = "prefect.flow_run_id"
OWNER_HOST_TAG = "compare_heads.host"
OWNER_PID_TAG = "compare_heads.pid"
WORKER_TAG = "compare_heads.worker"
REGISTERED_MODEL_TAG = "registered_model"
PROMOTION_DECISION_TAG = "promotion_decision"
REGISTERED_VERSION_TAG = "registered_version"
PROMOTION_REASON_TAG = "promotion_reason"  # on the version and the parent run (gap_models.gate)
MCNEMAR_P_VALUE = "mcnemar_p_value"  # the gate's paired test: a version tag, a parent metric

# --- the summary table's columns (summary.csv) ---------------------------------------------
SEEDS_COLUMN = "seeds"
TEST_ACCURACY_STD_COLUMN = "test_accuracy_std"
TRAIN_MINUS_VAL_COLUMN = "final_train_minus_val_accuracy"


def recall_metric(split_prefix: str, class_key: str) -> str:
    """``test_recall_<class>`` / ``final_val_recall_<class>``."""
    return f"{split_prefix}{RECALL_PREFIX}{class_key}"


def precision_metric(split_prefix: str, class_key: str) -> str:
    """``test_precision_<class>`` / ``final_val_precision_<class>``."""
    return f"{split_prefix}{PRECISION_PREFIX}{class_key}"


TRAIN_SUBSET_SPLIT = "train_subset"
PREDICTIONS_ARTIFACT = "predictions.npz"
IDS_PREFIX = "ids_"
SHIFT_ARRAY_PREFIX = "shift_"
LABELS_PREFIX = "labels_"
FLOPS_PER_IMAGE = "flops_per_image"
TRAIN_SUBSET_PREFIX = "train_subset_"
TRAIN_SUBSET_ACCURACY = "train_subset_accuracy"
TRAIN_SUBSET_LOSS = "train_subset_loss"


def as_train_subset(test_metrics: dict[str, float]) -> dict[str, float]:
    """Test-split metric names renamed for the fixed training subset (``train_subset_*``)."""
    return {
        TRAIN_SUBSET_PREFIX + key.removeprefix(TEST_PREFIX): value
        for key, value in test_metrics.items()
    }


def as_validation(test_metrics: dict[str, float]) -> dict[str, float]:
    """Test-split metric names renamed for the validation split (``final_val_*``)."""
    return {
        FINAL_VAL_PREFIX + key.removeprefix(TEST_PREFIX): value
        for key, value in test_metrics.items()
    }


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker keeps of one child run, as plain values: parameters and tags as
    strings, final metrics, and per-epoch histories (metric -> values by epoch)."""

    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    histories: dict[str, list[float]]
    tags: dict[str, str] = field(default_factory=dict)


HISTORY_METRICS: tuple[str, ...] = (*CURVE_METRICS, EPOCH_SECONDS)
"""The per-epoch metrics a ``RunResult`` is rebuilt from."""


@dataclass
class RunResult:
    """Everything the comparison and the promotion need from one trained (head, seed) cell."""

    head: str
    seed: int
    run_id: str
    trainable_params: int
    history: dict[str, list[float]]
    test_metrics: dict[str, float]
    train_seconds: float
    train_images_per_second: float
    shift_accuracy: dict[int, float] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    model_uri: str = ""
    # The final model on the validation split: what decisions are made on.
    final_val_accuracy: float = float("nan")
    flops_per_image: int = 0  # analytic, one forward pass (0: not recorded)

    @property
    def test_accuracy(self) -> float:
        return self.test_metrics[TEST_ACCURACY]

    @property
    def best_val_accuracy(self) -> float:
        values = self.history.get(VAL_ACCURACY) or [float("nan")]
        return float(max(values))

    @classmethod
    def from_tracked(cls, run: TrackedRun) -> RunResult:
        """A cell's result from what the tracker stored of its run."""
        metrics = run.metrics
        shifts = {
            int(key.removeprefix(SHIFT_PREFIX)): value
            for key, value in metrics.items()
            if key.startswith(SHIFT_PREFIX)
        }
        return cls(
            head=run.params[HEAD],
            seed=int(run.params[SEED]),
            run_id=run.run_id,
            trainable_params=int(run.params[TRAINABLE_PARAMS]),
            history={key: list(run.histories.get(key, [])) for key in CURVE_METRICS},
            test_metrics={key: metrics[key] for key in (TEST_ACCURACY, TEST_LOSS, TEST_AUC)},
            train_seconds=metrics[TRAIN_SECONDS],
            train_images_per_second=metrics[TRAIN_IMAGES_PER_SECOND],
            shift_accuracy=dict(sorted(shifts.items())),
            epoch_seconds=list(run.histories.get(EPOCH_SECONDS, [])),
            model_uri=run.tags.get(MODEL_URI_TAG, ""),
            final_val_accuracy=metrics[SELECTION_METRIC],
            flops_per_image=int(float(run.params.get(FLOPS_PER_IMAGE, 0))),
        )

    def to_tracked(self) -> TrackedRun:
        """What the tracker stores of this result (the inverse of ``from_tracked``)."""
        metrics = {
            **self.test_metrics,
            TRAIN_SECONDS: self.train_seconds,
            TRAIN_IMAGES_PER_SECOND: self.train_images_per_second,
            SELECTION_METRIC: self.final_val_accuracy,
            **{f"{SHIFT_PREFIX}{pixels}": value for pixels, value in self.shift_accuracy.items()},
        }
        return TrackedRun(
            run_id=self.run_id,
            params={
                HEAD: self.head,
                SEED: str(self.seed),
                TRAINABLE_PARAMS: str(self.trainable_params),
                FLOPS_PER_IMAGE: str(self.flops_per_image),
            },
            metrics=metrics,
            histories={**self.history, EPOCH_SECONDS: list(self.epoch_seconds)},
            tags={MODEL_URI_TAG: self.model_uri} if self.model_uri else {},
        )


# --- a run's configuration as parameters (a cell's: gap_models.identity) --------------------
CPU_MODEL = "cpu_model"
CPU_FLAGS = "cpu_flags"
GPUS = "gpus"


def run_params(
    config, requested_precision: str, precision_reason: str, code_version: str
) -> dict[str, str]:
    """The parent run's parameters (strings, once): every ``RunConfig`` field (precision as
    resolved), what was asked for and why it resolved so, and the code version."""
    return {
        **{key: str(value) for key, value in config.model_dump().items()},
        PRECISION_REQUESTED: requested_precision,
        PRECISION_REASON: precision_reason,
        CODE_VERSION: code_version,
    }


def hardware_params(cpu_model: str, cpu_flags: str, gpus: str) -> dict[str, str]:
    """What a run logs about the machine, so runs on different CPUs can be told apart."""
    return {CPU_MODEL: cpu_model, CPU_FLAGS: cpu_flags, GPUS: gpus}


# --- the retraining plan (gap_models.planning): parent-run tags, metrics, artifacts ---------
RETRAIN_DECISION_TAG = "retrain_decision"
RETRAIN_REASONS_TAG = "retrain_reasons"  # comma-separated reason codes, below
DATA_DIGEST_TAG = "data_digest"
CHAMPION_DATA_DIGEST_TAG = "champion_data_digest"
CODE_DIGEST_TAG = "code_digest"
CONFIG_DIGEST_TAG = "compare_heads.config_digest"  # a child run's cell without its data
TRAINED_BECAUSE_TAG = "trained_because"  # on a registered model version: the plan's reasons
# On a registered model version: the flow run (parent) whose comparison registered it, which
# may have reused the model from an earlier run; the next plan compares against that run.
COMPARED_IN_RUN_TAG = "compared_in_run"
PHOTOS_METRIC_PREFIX = "photos_"  # + added / removed / modified / relabelled
DRIFT_MMD = "drift_mmd"
DRIFT_P_VALUE = "drift_p_value"
DRIFT_STATISTIC_PREFIX = "drift_change_"  # + brightness, red, ... (new minus reference)
WHAT_CHANGED_ARTIFACT = "what_changed.md"
MANIFEST_ARTIFACT = "data_manifest.tsv"
REUSED_RUNS_TAG = "compare_heads.reused_runs"  # a partial run: the cells it did not retrain
