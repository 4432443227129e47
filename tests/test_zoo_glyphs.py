"""The GlyphScenes classifier ``glyphscenes-resnet``: it loads through the zoo and the timm adapter,
reads its own generated data (``glyphs``, never DigitScenes) and tells the 24 classes apart on
held-out scenes (per class, the worst named by the assert). The detector reads GlyphScenes by
default, and the segmenter ``glyphscenes-deeplabv3`` loads with its per-class IoU record, reads
``glyphs`` / ``glyphs:N`` masks and runs ``tpunlearn prune --forget circle --eval``."""
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


def test_auto_judges_the_glyph_detector_on_val_scenes_never_the_test_scenes(tmp_path, monkeypatch):
    """--auto's validation data is GlyphScenes' own val split; --eval's is its test split."""
    from tpunlearn.data.yolo import glyphs_yaml, read_dataset, split_images

    monkeypatch.setenv("TPUNLEARN_CACHE", str(tmp_path))
    tested = read_dataset(glyphs_yaml(64, n_train=4, n_test=6), split="val")
    validated = read_dataset(glyphs_yaml(64, n_train=4, n_test=6, val_from="val"), split="val")
    assert tested["path"] != validated["path"]
    pixels = [sorted(open(f, "rb").read() for f in split_images(d, "val")) for d in (tested, validated)]
    assert pixels[0] != pixels[1]  # other scenes, not the same ones under another folder name
    with pytest.raises(ValueError, match="val_from"):
        glyphs_yaml(64, val_from="train")
    adapter, model, info = zoo.build_model("glyphscenes-yolov5")
    assert adapter.validate(model, info, "glyphs:16").extra["split"] == "GlyphScenes val (500 scenes)"


# ---------------------------------------------------------------- the GlyphScenes segmenter
SEG = "glyphscenes-deeplabv3"
SEG_CLASSES = ["background", *GLYPH_CLASSES]


@pytest.fixture(scope="module")
def seg_weights(tmp_path_factory):
    """The committed checkpoint, else a random model of the same architecture saved as the trainer saves
    it (the CLI and data tests need no trained weights)."""
    if zoo.weights_path(SEG).is_file():
        return zoo.weights_path(SEG)
    from tpunlearn import adapters

    adapter = adapters.get("deeplabv3")
    torch.manual_seed(0)
    model, info = adapter.build(zoo.entry(SEG).arch, zoo=zoo.entry(SEG))
    info.extra["zoo"] = {"name": SEG, "train": {"recipe": "random (no checkpoint yet)", "test_miou": 0.0,
                                                "test_iou": {n: 0.0 for n in SEG_CLASSES}}}
    path = tmp_path_factory.mktemp("seg") / "glyphscenes-deeplabv3.pt"
    adapter.save(model, info, path, half=True)
    return path


def test_the_segmenter_entry_is_the_digits_architecture_over_25_classes():
    e, digits = zoo.entry(SEG), zoo.entry("digitscenes-deeplabv3")
    assert e.family == "deeplabv3" and e.task == "segmentation" and e.data == "glyphs"
    assert e.arch == digits.arch and e.kwargs == {**digits.kwargs, "num_classes": 25}
    assert e.class_names == SEG_CLASSES
    out = zoo.build(SEG).eval()(torch.rand(2, 3, 64, 64))["out"]
    assert out.shape == (2, 25, 64, 64)


def test_the_segmenter_loads_with_its_record_of_per_class_iou(seg_weights):
    model, info = zoo.load(SEG, weights=seg_weights)
    assert info["class_names"] == SEG_CLASSES and info["input_size"] == [3, 64, 64]
    assert set(info["test_iou"]) == set(SEG_CLASSES) and isinstance(info["test_miou"], float)
    assert info["train"]["recipe"]
    if seg_weights == zoo.weights_path(SEG):  # the shipped one: torchvision's recipe and its worst class
        assert "SGD" in info["train"]["recipe"] and info["train"]["test_worst"]["class"] in GLYPH_CLASSES
        assert info["train"]["seconds"] > 0


def test_glyph_masks_read_as_segmentation_batches(seg_weights):
    """``glyphs:N`` gives GlyphScenes' own masks (train / val / test), [0, 1] RGB at the model's size."""
    adapter, model, info = zoo.build_model(SEG, weights=seg_weights)
    assert info.extra["data"] == "glyphs"
    images, masks = next(iter(adapter.mask_batches(info, "glyphs:6", "train", batch_size=4)))
    scenes = GlyphScenes("train", size=64, n_scenes=6)
    assert images.shape == (4, 3, 64, 64) and torch.equal(images, scenes.pixels[:4].float() / 255)
    assert all(torch.equal(m, scenes.masks[i]) for i, m in enumerate(masks))
    test = adapter.mask_batches(info, "glyphs:5", "eval")
    assert test.split == "test" and test.n_scenes == 5
    assert adapter.mask_batches(info, None, "val").n_scenes == 500  # the model's own data, by default
    _, multi_hot = next(iter(adapter.samples(model, info, "glyphs:6", batch_size=6)))
    assert torch.equal(multi_hot[:, 1:], scenes.multi_hot) and bool((multi_hot[:, 0] == 1).all())


def test_glyphs_for_a_model_of_another_class_count_is_one_line():
    from tpunlearn import adapters
    from tpunlearn.errors import UsageError

    adapter = adapters.get("deeplabv3")
    _, info = adapter.build("deeplabv3_resnet_tiny", num_classes=11, imgsz=64)
    with pytest.raises(UsageError, match="GlyphScenes has 25 segmentation classes"):
        adapter.mask_batches(info, "glyphs:4")


def test_prune_forget_circle_with_eval_writes_a_report(seg_weights, tmp_path, capsys):
    import json

    from helpers import run

    out = tmp_path / "o"
    code, _, err = run(capsys, "prune", "--arch", SEG, "--weights", seg_weights, "--forget", "circle",
                       "--data", "glyphs:24", "--samples", "4", "--eval", "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    # per class present in the 24 test scenes (22 of the 25 here), the forgotten one among them
    assert set(before) == set(after) and set(after) <= set(SEG_CLASSES) and len(after) >= 20
    assert "iou" in after["circle"] and "circle" in json.dumps(report["forget"])
    assert (out / "model.pt").is_file()


def test_forget_of_a_non_class_is_one_line_listing_the_classes(seg_weights, tmp_path, capsys):
    from helpers import assert_error, run

    result = run(capsys, "prune", "--arch", SEG, "--weights", seg_weights, "--forget", "banana",
                 "--data", "glyphs:8", "--out", tmp_path / "o")
    assert_error(result, 2, "unknown target 'banana'", "circle, square", "(25 in all)")
    assert not (tmp_path / "o").exists()


def test_the_shipped_segmenter_finds_glyphs_beyond_background():
    """The committed checkpoint is weak (test mIoU over the glyphs 0.19, trained 27 min on one CPU core):
    this holds it to what it measured, on held-out scenes it reads by itself."""
    if not zoo.weights_path(SEG).is_file():
        pytest.skip("glyphscenes-deeplabv3 is not trained yet")
    adapter, model, info = zoo.build_model(SEG)
    ev = adapter.evaluate(model, info, "glyphs:100")
    iou = {k: m["iou"] for k, m in ev.per_target.items()}
    objects = [v for k, v in iou.items() if k != "background"]
    assert ev.extra["split"] == "eval split of glyphs:100" and len(objects) >= 20
    assert iou["background"] >= 0.9 and sum(objects) / len(objects) >= 0.1, iou
