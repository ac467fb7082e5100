"""Data: decoding of every kind of file, the content-hash split, subsets, the cache."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from gap_models import data
from gap_models.data import (
    DataError,
    ImageDecodeError,
    assign_split,
    decode_image,
    list_source,
    load_split,
    preprocess,
)
from tests.fixtures import bad_files, make_pet_images, zip_folder


@pytest.mark.parametrize(("name", "case"), list(bad_files().items()))
def test_each_odd_or_broken_file(name, case):
    payload, reason = case
    if reason is None:
        pixels = decode_image(payload, 40)
        assert pixels.shape == (40, 40, 3) and pixels.dtype == np.uint8
    else:
        with pytest.raises(ImageDecodeError) as raised:
            decode_image(payload, 40)
        assert raised.value.reason == reason


def test_grayscale_becomes_three_equal_channels():
    payload, _ = bad_files()["grayscale.jpg"]
    pixels = decode_image(payload, 32).astype(int)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 1


def _with_defects(root: Path) -> Path:
    make_pet_images(root, per_class=40)
    for name, (payload, _) in bad_files().items():
        (root / "PetImages" / "Dog" / name).write_bytes(payload)
    return root


def test_preprocess_skips_and_counts_by_reason_and_converts_the_rest(tmp_path):
    source = _with_defects(tmp_path / "photos")
    prepared = preprocess(str(source), 40, [80, 10, 10], None, cache_root=tmp_path / "cache")
    expected = {name: reason for name, (_, reason) in bad_files().items() if reason}
    assert prepared.images_used == 80 + len(bad_files()) - len(expected)
    assert prepared.skipped_images == len(expected)
    assert prepared.manifest["skipped_by_reason"] == {
        "empty_file": 1,
        "truncated": 1,
        "not_an_image": 2,
    }
    skipped = {Path(item["file"]).name: item["reason"] for item in prepared.manifest["skipped"]}
    assert skipped == expected
    total = sum(len(load_split(prepared.cache_dir, s)[1]) for s in data.SPLIT_NAMES)
    assert total == prepared.images_used


def test_split_is_stable_when_images_are_added(tmp_path):
    source = make_pet_images(tmp_path / "photos", per_class=40)
    files = list(data.iter_source(str(source)))
    before = {f.name: assign_split(f.digest, [80, 10, 10]) for f in files}
    make_pet_images(tmp_path / "more", per_class=40, seed=7)
    for path in (tmp_path / "more").rglob("*.jpg"):
        target = source / path.relative_to(tmp_path / "more")
        shutil.copy(path, target.with_name("new_" + target.name))
    after = {f.name: assign_split(f.digest, [80, 10, 10]) for f in data.iter_source(str(source))}
    assert len(after) == 160
    assert {name: after[name] for name in before} == before
    assert set(after.values()) == {"train", "validation", "test"}


def test_split_follows_the_percentages():
    rng = np.random.default_rng(0)
    digests = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex() for _ in range(20_000)]
    shares = {s: 0 for s in data.SPLIT_NAMES}
    for digest in digests:
        shares[assign_split(digest, [70, 20, 10])] += 1
    assert abs(shares["train"] / 20_000 - 0.7) < 0.02
    assert abs(shares["validation"] / 20_000 - 0.2) < 0.02


def test_exact_duplicates_share_a_split(tmp_path):
    source = make_pet_images(tmp_path / "photos", per_class=30)
    for path in list((source / "PetImages" / "Cat").glob("*.jpg"))[:10]:
        shutil.copy(path, path.with_name("copy_" + path.name))
    files = list(data.iter_source(str(source)))
    by_digest: dict[str, set[str]] = {}
    for f in files:
        by_digest.setdefault(f.digest, set()).add(assign_split(f.digest, [80, 10, 10]))
    assert sum(1 for f in files if f.name.split("/")[-1].startswith("copy_")) == 10
    assert all(len(splits) == 1 for splits in by_digest.values())


def test_max_images_is_balanced_and_deterministic(tmp_path):
    source = make_pet_images(tmp_path / "photos", per_class=150, size=32)
    first = preprocess(str(source), 32, [60, 20, 20], 120, cache_root=tmp_path / "a")
    second = preprocess(str(source), 32, [60, 20, 20], 120, cache_root=tmp_path / "b")
    assert first.images_used == 120
    counts = first.manifest["split_counts"]
    assert first.manifest["class_names"] == ["Cat", "Dog"]  # the folders' names, sorted
    assert sum(c["Cat"] for c in counts.values()) == sum(c["Dog"] for c in counts.values()) == 60
    for split in data.SPLIT_NAMES:
        np.testing.assert_array_equal(
            load_split(first.cache_dir, split)[0], load_split(second.cache_dir, split)[0]
        )


def test_zip_and_folder_give_the_same_data(tmp_path):
    folder = make_pet_images(tmp_path / "photos", per_class=100, size=32)
    archive = zip_folder(folder, tmp_path / "pets.zip")
    from_folder = preprocess(str(folder), 32, [80, 10, 10], None, cache_root=tmp_path / "c1")
    from_zip = preprocess(str(archive), 32, [80, 10, 10], None, cache_root=tmp_path / "c2")
    for split in data.SPLIT_NAMES:
        np.testing.assert_array_equal(
            load_split(from_folder.cache_dir, split)[1], load_split(from_zip.cache_dir, split)[1]
        )


def test_second_run_hits_the_cache_without_decoding(tmp_path, monkeypatch):
    source = zip_folder(
        make_pet_images(tmp_path / "photos", per_class=100, size=32), tmp_path / "pets.zip"
    )
    decoded: list[int] = []
    real_decode = data.decoding.decode_image

    def counting_decode(payload: bytes, image_size: int) -> np.ndarray:
        decoded.append(image_size)
        return real_decode(payload, image_size)

    monkeypatch.setattr(data.decoding, "decode_image", counting_decode)
    first = preprocess(str(source), 32, [80, 10, 10], None, cache_root=tmp_path / "cache")
    assert not first.cache_hit
    assert len(decoded) == 200  # the counter sees every decode: the patch is where it is used
    second = preprocess(str(source), 32, [80, 10, 10], None, cache_root=tmp_path / "cache")
    assert second.cache_hit and second.cache_dir == first.cache_dir
    assert len(decoded) == 200, "decoded again on a cache hit"
    assert second.manifest == first.manifest
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.cache_dir.name]


def test_settings_change_the_cache_key(tmp_path):
    source = make_pet_images(tmp_path / "photos", per_class=100, size=32)
    a = preprocess(str(source), 32, [80, 10, 10], None, cache_root=tmp_path / "cache")
    b = preprocess(str(source), 36, [80, 10, 10], None, cache_root=tmp_path / "cache")
    assert a.cache_dir != b.cache_dir and not b.cache_hit


def test_failed_cache_write_leaves_nothing_behind(tmp_path, monkeypatch):
    source = make_pet_images(tmp_path / "photos", per_class=100, size=32)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(
        OSError, match="cannot write the preprocessing cache.*COMPARE_HEADS_CACHE_DIR"
    ):
        preprocess(str(source), 32, [80, 10, 10], None, cache_root=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_layout_errors_say_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="neither a zip archive nor a folder"):
        list_source(str(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "1.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"<root>/<class>/<image>.*found no files in folders"):
        list_source(str(tmp_path / "flat"))
    only_cats = make_pet_images(tmp_path / "cats", per_class=3)
    shutil.rmtree(only_cats / "PetImages" / "Dog")
    with pytest.raises(DataError, match=r"two or more class folders.*found \{'PetImages/Cat': 3\}"):
        list_source(str(only_cats))
    broken_zip = tmp_path / "broken.zip"
    broken_zip.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError):
        list_source(str(broken_zip))


def test_too_few_images_for_the_split(tmp_path):
    source = make_pet_images(tmp_path / "photos", per_class=1)
    with pytest.raises(DataError, match="split is empty: too few usable images"):
        preprocess(str(source), 32, [80, 10, 10], None, cache_root=tmp_path / "cache")


def test_offline_tfds_source_fails_fast_naming_the_source_parameter(monkeypatch, tmp_path):
    """Offline, the download is refused by one bounded probe (the default host and
    timeout), never left to tensorflow-datasets' own slow retries."""
    try:
        data.check_network()
    except ConnectionError:
        pass
    else:
        pytest.skip("the tfds download host is reachable here: offline behaviour not testable")
    probes: list[tuple] = []
    real_probe = data.sources.check_network

    def counting_probe(*args, **kwargs) -> None:
        probes.append((args, kwargs))
        real_probe(*args, **kwargs)

    monkeypatch.setattr(data.sources, "check_network", counting_probe)
    monkeypatch.setenv(data.sources.TFDS_DIR_ENV, str(tmp_path / "tfds"))
    with pytest.raises(data.OfflineError, match="set the `source` parameter"):
        data.download("tfds:cats_vs_dogs")
    # One probe, of the host the builder downloads from.
    assert probes == [((data.TFDS_HOST,), {})]


def test_network_probe_reports_a_refused_port_at_once():
    """A refused connection is reported as such, not after waiting out the timeout."""
    with pytest.raises(data.OfflineError, match="kagglecatsanddogs") as raised:
        data.check_network(("127.0.0.1", 9), timeout=5)
    assert "Connection refused" in str(raised.value)
    assert "no answer within" not in str(raised.value)


def test_network_probe_gives_up_at_its_timeout_when_the_connection_hangs(monkeypatch):
    """A connection (or DNS lookup) that never answers fails at the timeout."""
    release = threading.Event()

    def hang(address, timeout):
        release.wait()
        raise OSError("released by the test")

    monkeypatch.setattr(data.network.socket, "create_connection", hang)
    try:
        with pytest.raises(data.OfflineError, match="no answer within"):
            data.check_network(("192.0.2.1", 443), timeout=0.05)
    finally:
        release.set()


def test_read_only_cache_folder_fails_before_decoding_and_leaves_nothing(tmp_path):
    """A real permission failure: the cache folder is read-only and the process is not
    root (as root, the check runs in a child process switched to the user nobody)."""
    import os
    import stat
    import subprocess
    import sys
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="compare-heads-ro-"))
    try:
        shared.chmod(0o755)
        source = make_pet_images(shared / "photos", per_class=20, size=32)
        cache = shared / "cache"
        cache.mkdir()
        cache.chmod(
            stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        )
        for path in (shared / "photos").rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        script = (
            "import sys\n"
            "from gap_models.data import preprocess\n"
            "try:\n"
            f"    preprocess({str(source)!r}, 32, [80, 10, 10], None, cache_root={str(cache)!r})\n"
            "except OSError as error:\n"
            "    print(error); sys.exit(3)\n"
        )
        command = [sys.executable, "-c", script]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        repo = Path(__file__).resolve().parents[2]
        completed = subprocess.run(
            command, cwd=repo, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(repo), "HOME": str(shared)},
        )  # fmt: skip
        assert completed.returncode == 3, completed.stdout + completed.stderr
        assert "cannot write the preprocessing cache under" in completed.stdout
        assert "COMPARE_HEADS_CACHE_DIR" in completed.stdout
        assert list(cache.iterdir()) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_loaded_splits_are_one_shared_read_only_map_per_file(tmp_path):
    """Every model of a flow run reads the same file pages: repeated loads share memory
    (no per-model copy kept alive), and nothing can write into the cache through them."""
    source = make_pet_images(tmp_path / "photos", per_class=20, size=32)
    prepared = preprocess(str(source), 24, [80, 10, 10], None, cache_root=tmp_path / "cache")
    first, labels = load_split(prepared.cache_dir, "train")
    second, _ = load_split(prepared.cache_dir, "train")
    assert np.shares_memory(first, second) and len(first) == len(labels)
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0, 0, 0, 0] = 1


def test_a_worker_without_the_flows_cache_builds_the_same_one(tmp_path, monkeypatch):
    """What a remote Dask worker does: the flow's cache folder is not there, so it builds
    the cache from the source under its own root, same key; other data is refused."""
    source = make_pet_images(tmp_path / "photos", per_class=12)
    flows = preprocess(str(source), 32, [80, 10, 10], None, cache_root=tmp_path / "flow")
    assert data.local_cache(flows.cache_dir, str(source), 32, [80, 10, 10], None) == flows.cache_dir

    monkeypatch.setenv("COMPARE_HEADS_CACHE_DIR", str(tmp_path / "worker"))
    shutil.rmtree(flows.cache_dir)  # another host: the flow's folder is not here
    built = data.local_cache(flows.cache_dir, str(source), 32, [80, 10, 10], None)
    assert built == tmp_path / "worker" / flows.cache_dir.name
    assert data.read_manifest(built)["images_used"] == flows.images_used

    changed = make_pet_images(tmp_path / "other", per_class=12, seed=1)
    with pytest.raises(DataError, match="differs from the one the flow preprocessed"):
        data.local_cache(tmp_path / "gone" / "abc", str(changed), 32, [80, 10, 10], None)


def test_any_image_folder_layout_gives_sorted_classes(tmp_path):
    """<root>/<class>/<file> at any wrapper depth, in a folder or zip; files beside the class
    folders, hidden files and __MACOSX are not photos of any class."""
    root = tmp_path / "shapes" / "wrapper"
    for name in ("square", "circle", "triangle"):
        (root / name / "deeper").mkdir(parents=True)
        (root / name / "a.png").write_bytes(b"x")
        (root / name / "deeper" / "b.png").write_bytes(b"y")
        (root / name / ".DS_Store").write_bytes(b"z")
    (root.parent / "readme.txt").write_text("about the shapes")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._a.png").write_bytes(b"z")
    archive = zip_folder(tmp_path / "shapes", tmp_path / "shapes.zip")
    for source in (tmp_path / "shapes", archive):
        layout = data.scan_source(str(source))
        assert layout.class_names == ("circle", "square", "triangle")
        labels = {name.split("/")[-2] if "deeper" not in name else name.split("/")[-3]: label
                  for name, label in layout.entries}  # fmt: skip
        assert labels == {"circle": 0, "square": 1, "triangle": 2}
        assert len(layout.entries) == 6


def test_pet_images_is_one_image_folder_instance(tmp_path):
    source = make_pet_images(tmp_path / "pets", per_class=2)
    assert data.class_names(str(source)) == ("Cat", "Dog")  # cat = 0, dog = 1
    assert data.class_names(str(source / "PetImages")) == ("Cat", "Dog")
    assert data.class_names("tfds:cats_vs_dogs") == ("cat", "dog")


def test_the_offline_probe_goes_through_the_https_proxy_unless_no_proxy_exempts(monkeypatch):
    """Behind a proxy the download host is reached through it: that is what is probed."""
    from gap_models.data.network import TFDS_HOST, proxied

    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxied(TFDS_HOST) == (TFDS_HOST, "")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    target, words = proxied(TFDS_HOST)
    assert target == ("proxy.example", 3128) and "HTTPS_PROXY" in words
    monkeypatch.setenv("NO_PROXY", TFDS_HOST[0])
    assert proxied(TFDS_HOST) == (TFDS_HOST, "")
