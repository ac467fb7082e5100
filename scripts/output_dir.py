"""Print the folder a flow run wrote its plots and tables to, as its MLflow parent run
records it (tag ``compare_heads.output_dir``); nothing when there is no such run.

    .venv/bin/python scripts/output_dir.py FLOW_RUN_ID EXPERIMENT_ID
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gap_models.records import FLOW_RUN_TAG, OUTPUT_DIR_TAG  # noqa: E402


def main(flow_run_id: str, experiment_id: str) -> None:
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}' and tags.kind = 'comparison'",
    )
    if runs:
        print(runs[0].data.tags.get(OUTPUT_DIR_TAG, ""))


if __name__ == "__main__":
    main(*sys.argv[1:3])
