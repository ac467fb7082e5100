"""Download failures: transient ones are retried, permanent ones fail fast."""

from __future__ import annotations

import pytest

import gap_models.data
import tasks.data
from flows.compare_heads import compare_heads
from tests.fixtures import make_pet_images

pytestmark = pytest.mark.integration


def test_offline_tfds_source_fails_at_once_without_retries(
    monkeypatch, tracking_uri, prefect_harness
):
    try:
        gap_models.data.check_network()
    except gap_models.data.OfflineError:
        pass
    else:
        pytest.skip("the tfds download host is reachable here: offline behaviour not testable")
    calls: list[str] = []
    real = gap_models.data.download

    def counted(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tasks.data.data, "download", counted)
    with pytest.raises(ConnectionError, match="set the `source` parameter"):
        compare_heads(source="tfds:cats_vs_dogs", epochs=1)
    assert calls == ["tfds:cats_vs_dogs"]  # an unreachable host is not retried


def test_transient_download_error_is_retried(tmp_path, monkeypatch, tracking_uri, prefect_harness):
    source = str(make_pet_images(tmp_path / "photos", per_class=60, size=32))
    calls: list[str] = []
    real = gap_models.data.download

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise OSError("connection reset by peer")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tasks.data.data, "download", flaky)
    monkeypatch.setattr(tasks.data.download, "retry_delay_seconds", [0, 0])
    summary = compare_heads(source=source, image_size=32, epochs=1, heads=["gap"], promote=False)
    assert calls == [source, source]
    assert summary.images_used == 120
