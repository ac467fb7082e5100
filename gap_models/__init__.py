"""compare-heads core library: data, models, training, evaluation and plots.

Plain Python and Keras: nothing here imports Prefect or MLflow, and nothing does I/O at
import time. The Prefect tasks in ``tasks/`` wrap these functions and do the tracking.
"""

from typing import Literal, get_args

HeadName = Literal["fc", "fc_dropout", "gap", "avgpool"]
HEAD_NAMES: tuple[str, ...] = get_args(HeadName)
"""Classifier heads that ``gap_models.models.build_model`` knows, in display order."""
