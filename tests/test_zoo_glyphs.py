"""The GlyphScenes classifier ``glyphscenes-resnet``: it loads through the zoo and the timm adapter,
reads its own generated data (``glyphs``, never DigitScenes) and tells the 24 classes apart on
held-out scenes (per class, the worst named by the assert)."""
from __future__ import annotations

import pytest
import torch

from tpunlearn import zoo
from tpunlearn.data.glyphscenes import GLYPH_CLASSES, GlyphScenes
from tpunlearn.data.specs import read_classification
from tpunlearn.errors import DataError

NAME = "glyphscenes-resnet"


@pytest.fixture(scope="module")
def built():
    return zoo.build_model(NAME)


def test_the_checkpoint_records_its_recipe_and_test_metrics():
    _, info = zoo.load(NAME)
    assert info["class_names"] == list(GLYPH_CLASSES) and info["input_size"] == [3, 64, 64]
    assert len(info["test_recall"]) == len(GLYPH_CLASSES) and "timm" in info["train"]["recipe"]
    assert min(info["test_recall"]) >= 0.9 and min(info["test_precision"]) >= 0.9  # as trained (1000 scenes)


def test_its_default_data_is_glyphscenes(built):
    adapter, model, info = built
    images, multi_hot = next(iter(adapter.samples(model, info, None, batch_size=8)))
    assert images.shape == (8, 3, 64, 64) and multi_hot.shape == (8, len(GLYPH_CLASSES))
    assert info.extra["data"] == "glyphs"


def test_it_tells_the_glyphs_apart_per_class(built):
    adapter, model, info = built
    ev = adapter.evaluate(model, info, "glyphs:300")
    recall = {k: m["recall"] for k, m in ev.per_target.items()}
    precision = {k: m["precision"] for k, m in ev.per_target.items()}
    assert len(recall) == len(GLYPH_CLASSES)
    worst = min(recall, key=recall.get)
    assert recall[worst] >= 0.85 and sum(recall.values()) / len(recall) >= 0.95, (worst, recall)
    assert min(precision.values()) >= 0.85, precision


def test_glyphs_spec_reads_scene_counts_and_refuses_bad_ones():
    data = read_classification("glyphs:12")
    assert data.format == "glyphs" and data.class_names == list(GLYPH_CLASSES)
    assert len(data.split("train")) == 12 and len(data.split("val")) == 12
    x, y = data.split("train")[0]
    assert torch.equal(x, GlyphScenes("train", size=64, n_scenes=12)[0][0]) and y.shape == (len(GLYPH_CLASSES),)
    with pytest.raises(DataError, match="positive scene count"):
        read_classification("glyphs:0")


def test_the_glyph_detector_reads_glyphscenes_by_default(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("TPUNLEARN_CACHE", str(tmp_path))
    adapter, model, info = zoo.build_model("glyphscenes-yolov5")
    images, multi_hot = next(iter(adapter.samples(model, info, "glyphs:16", batch_size=8)))
    assert images.shape == (8, 3, 64, 64) and multi_hot.shape == (8, len(GLYPH_CLASSES))
    assert bool((multi_hot.sum(1) >= 1).all())  # labelled scenes, not the model's own detections
    written = yaml.safe_load(next(tmp_path.glob("glyphscenes-yolo-64px-train16-*/data.yaml")).read_text())
    assert written["path"] == str(next(tmp_path.glob("glyphscenes-yolo-64px-train16-*")))
    assert list(written["names"].values()) == list(GLYPH_CLASSES)
