"""Prediction: one line per file; bad, huge or missing files are per-file errors."""

from __future__ import annotations

import numpy as np

from gap_models.models import build_model
from gap_models.predict import classify_files
from tests.fixtures import make_pet_image, png_header_only


def test_each_file_gets_a_verdict_or_an_error(tmp_path):
    good = tmp_path / "cat.jpg"
    make_pet_image(0, 64).save(good)
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(50_000, 50_000))
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    missing = tmp_path / "missing.jpg"
    model = build_model("gap", image_size=40)
    # The 2.5-gigapixel header is refused from its size alone (decoding it would take
    # minutes and gigabytes): the verdict is "too_large", not a decode error.
    results = classify_files(model, [good, huge, text, missing], 40, ("cat", "dog"))
    assert [r.path for r in results] == [str(p) for p in (good, huge, text, missing)]
    assert results[0].label in ("cat", "dog") and 0.5 <= results[0].probability <= 1
    assert results[1].error.startswith("too_large")
    assert results[2].error.startswith("not_an_image")
    assert "No such file" in results[3].error
    assert results[0].line().count("\t") == 2 and results[1].line().split("\t")[1] == "error"


def test_probability_is_of_the_predicted_label(tmp_path):
    class Always:
        def __init__(self, outputs):
            self.outputs = np.asarray(outputs, dtype=np.float32)

        def predict(self, images, verbose=0):
            return np.tile(self.outputs, (len(images), 1))

    path = tmp_path / "x.jpg"
    make_pet_image(1, 32).save(path)
    (cat,) = classify_files(Always([0.2]), [path], 32, ("cat", "dog"))
    (dog,) = classify_files(Always([0.9]), [path], 32, ("cat", "dog"))
    assert (cat.label, round(cat.probability, 4)) == ("cat", 0.8)
    assert (dog.label, round(dog.probability, 4)) == ("dog", 0.9)
    # A softmax over three classes: the most probable one, named.
    (bird,) = classify_files(Always([0.1, 0.3, 0.6]), [path], 32, ("ant", "bee", "bird"))
    assert (bird.label, round(bird.probability, 4)) == ("bird", 0.6)
