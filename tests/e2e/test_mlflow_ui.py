"""The MLflow UI, as a person opens it: a headless Chromium renders the experiment's runs.

The page is a React app that loads runs over its REST API, so the test renders it in a real
browser (Debian's chromium; `make test` installs it) and reads the resulting DOM. A
screenshot goes to test-artifacts/ for people to look at.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import (
    EXPERIMENT_NAME,
    REPO_ROOT,
    FlowRunResult,
    Services,
    artifact_paths,
    mlflow_client,
    parent_run_of,
)

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO_ROOT / "test-artifacts"
BROWSER_SECONDS = 120


def chromium(url: str, profile: Path, *outputs: str) -> subprocess.CompletedProcess:
    """Render ``url`` headless, with no network beyond it, letting scripts run ~15 s."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # we run as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "--virtual-time-budget=15000",
            *outputs,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_SECONDS,
        check=False,
    )


def visible_text(dom: str) -> str:
    """The page's text, without scripts, styles and tags."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make test installs it as root)")
def test_experiment_page_lists_the_runs(
    services: Services, completed_first_run: FlowRunResult, tmp_path
):
    client = mlflow_client(services)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None
    parents = [
        run
        for run in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    assert parents, "no parent run in the experiment"
    url = f"{services.mlflow_url}/#/experiments/{experiment.experiment_id}/runs"

    rendered = chromium(url, tmp_path / "profile", "--dump-dom")
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    text = visible_text(rendered.stdout)
    assert EXPERIMENT_NAME in text, text[:2000]
    for parent in parents:
        assert parent.info.run_name in text, f"{parent.info.run_name!r} not on {url}"

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "mlflow-experiment-runs.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    assert shot.returncode == 0, shot.stderr[-3000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make test installs it as root)")
def test_parent_run_page_shows_a_plot(
    services: Services, completed_first_run: FlowRunResult, tmp_path
):
    client = mlflow_client(services)
    parent = parent_run_of(services, completed_first_run)
    plots = [path for path in artifact_paths(client, parent.info.run_id) if path.endswith(".png")]
    assert plots, "the parent run has no PNG artifacts"
    url = (
        f"{services.mlflow_url}/#/experiments/{parent.info.experiment_id}"
        f"/runs/{parent.info.run_id}/artifacts/{plots[0]}"
    )

    rendered = chromium(url, tmp_path / "profile", "--dump-dom")
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert parent.info.run_name in visible_text(rendered.stdout)
    # The artifact viewer fetched the PNG through the server and shows it as a blob image.
    image = re.search(rf'<img[^>]*alt="{re.escape(plots[0])}"[^>]*>', rendered.stdout)
    assert image is not None, f"no <img> for {plots[0]} on {url}"
    assert 'src="blob:' in image.group(0), image.group(0)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "mlflow-parent-run-plot.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    assert shot.returncode == 0, shot.stderr[-3000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
