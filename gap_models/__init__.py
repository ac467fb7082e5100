"""compare-heads core library: data, models, training, evaluation, statistics and reports.

Plain Python and Keras: nothing here imports Prefect or MLflow, and nothing does I/O at
import time. The Prefect tasks in ``tasks/`` wrap these functions; the ``tracking`` package
records what they return.
"""

from gap_models.architecture import HEAD_NAMES, HeadName

__all__ = ["HEAD_NAMES", "HeadName"]
