"""The light deployment stays light: compare-heads-watch runs hourly on the worker, and each
of its flow runs is a new process that imports flows/watch.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_watch_flow_imports_neither_tensorflow_nor_keras():
    """Importing TensorFlow costs its process 6 s or more (16 s without compiled bytecode)
    and ~1 GB, every hour, to fingerprint photos: nothing the watch does needs it."""
    code = (
        "import sys\n"
        "import flows.watch\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'tensorflow_datasets') "
        "if m in sys.modules)\n"
        "assert not heavy, f'flows.watch imported {heavy}'\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
