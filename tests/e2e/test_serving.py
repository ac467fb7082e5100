"""The champion behind MLflow's own scoring server (`make serve`'s script), as a real
process: photos in, class probabilities out, equal to `compare-heads predict` on the same
files; bad requests get a 4xx with a reason and the server keeps serving."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import REPO_ROOT, VENV_BIN, FlowRunResult, Services, free_port, wait_for
from tests.fixtures import png_header_only

pytestmark = pytest.mark.e2e

SERVE_SCRIPT = REPO_ROOT / "scripts" / "serve.sh"


@pytest.fixture(scope="module")
def served(
    services: Services, completed_first_run: FlowRunResult, tmp_path_factory
) -> Iterator[str]:
    """The cats-vs-dogs champion served on a free loopback port; its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process = subprocess.Popen(
        [str(SERVE_SCRIPT)],
        env={**services.env, "SERVE_PORT": str(port)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answers():
        assert process.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/ping", timeout=5).status_code == 200
        return False

    try:
        wait_for(answers, 300, f"mlflow models serve on {url}", interval=1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def invoke(url: str, files: list[Path]) -> httpx.Response:
    data = [[base64.b64encode(path.read_bytes()).decode()] for path in files]
    payload = {"dataframe_split": {"columns": ["image"], "data": data}}
    return httpx.post(f"{url}/invocations", json=payload, timeout=120)


def test_served_champion_answers_photos_as_predict_does(served, services, pet_images, tmp_path):
    photos = sorted((pet_images / "PetImages").rglob("*.jpg"))[::20]  # both classes
    response = invoke(served, photos)
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert len(rows) == len(photos)
    predicted = services.run(VENV_BIN / "compare-heads", "predict", *map(str, photos), timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = [line.split("\t") for line in predicted.stdout.strip().splitlines()]
    for row, (path, label, probability) in zip(rows, lines, strict=True):
        assert row["label"] == label, path
        assert row["probability"] == pytest.approx(float(probability), abs=5e-5), path
        assert row["Cat"] + row["Dog"] == pytest.approx(1.0)


def test_bad_requests_get_a_reason_and_the_server_keeps_serving(served, pet_images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"<html>not a photo</html>")
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(50_000, 50_000))
    photo = next((pet_images / "PetImages" / "Cat").glob("*.jpg"))
    for files, reason in (([photo, broken], "row 1: not a usable image (not_an_image"),
                          ([huge], "too_large")):  # fmt: skip
        response = invoke(served, files)
        assert 400 <= response.status_code < 500, response.text
        assert reason in response.text
    wrong = httpx.post(
        f"{served}/invocations",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert 400 <= wrong.status_code < 500
    no_column = httpx.post(
        f"{served}/invocations",
        json={"dataframe_split": {"columns": ["pixels"], "data": [["x"]]}},
        timeout=60,
    )
    assert 400 <= no_column.status_code < 500
    assert invoke(served, [photo]).status_code == 200  # still serving
