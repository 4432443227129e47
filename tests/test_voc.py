"""tpunlearn.data.voc: the VOC-style folder reader and the segmentation batches, on generated folders."""
from __future__ import annotations

import importlib

import pytest
import torch
from PIL import Image

from tpunlearn.data import DigitScenes, write_voc
from tpunlearn.data.digitscenes import MASK_CLASSES, DigitScenesMasks
from tpunlearn.data.labelmap import colour_mask, read_labelmap
from tpunlearn.data.voc import IGNORE_INDEX, MaskFilter, VOCBatches, mask_batches, read_voc, voc_class_names, voc_ids
from tpunlearn.data.writers import write_voc_folder
from tpunlearn.errors import DataError, UsageError

SIZE = 32


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A VOC folder of 5 train and 3 test DigitScenes scenes at 32x32 (no val list)."""
    root = write_voc(tmp_path_factory.mktemp("voc") / "voc", size=SIZE, splits=("train", "test"),
                     n_scenes={"train": 5, "test": 3})
    return root, DigitScenes("train", size=SIZE, n_scenes=5, channels=1)


def test_ids_come_from_the_first_list_there(voc):
    root, _ = voc
    assert voc_ids(root, ("train",)) == [f"train_{i:05d}" for i in range(5)]
    assert voc_ids(root, ("val", "test")) == [f"test_{i:05d}" for i in range(3)]  # no val.txt: test.txt
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/val.txt"):
        voc_ids(root, ("val",))


def test_read_gives_the_scene_and_its_mask(voc):
    root, ds = voc
    image, mask = read_voc(root, "train_00002")
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert (image - ds.images[2]).abs().max() <= 1 / 255  # gray replicated to RGB, 8-bit
    assert mask.dtype == torch.uint8 and torch.equal(mask, ds.masks[2])  # palette indices are the classes


def test_batches_resize_images_and_keep_each_mask(voc):
    root, ds = voc
    ids = voc_ids(root, ("train",))
    batches = list(VOCBatches(root, ids, (48, 40), MASK_CLASSES, batch_size=2))
    assert [b[0].shape for b in batches] == [(2, 3, 48, 40), (2, 3, 48, 40), (1, 3, 48, 40)]
    masks = [m for _, ms in batches for m in ms]
    assert all(torch.equal(m, ds.masks[i]) for i, m in enumerate(masks))  # at their own resolution
    multi_hot = torch.cat([b[1] for b in VOCBatches(root, ids, (SIZE, SIZE), MASK_CLASSES, with_masks=False)])
    assert multi_hot.shape == (5, MASK_CLASSES) and bool((multi_hot[:, 0] == 1).all())
    assert torch.equal(multi_hot[:, 1:], ds.multi_hot)  # digit d is class d + 1
    # normalisation with a given mean and std, per RGB channel
    mean, std = [0.5, 0.25, 0.0], [0.5, 0.25, 2.0]
    plain = next(iter(VOCBatches(root, ids, (SIZE, SIZE), MASK_CLASSES)))[0]
    normed = next(iter(VOCBatches(root, ids, (SIZE, SIZE), MASK_CLASSES, mean=mean, std=std)))[0]
    expected = (plain - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normed, expected)
    assert list(VOCBatches(root, ids, (SIZE, SIZE), MASK_CLASSES)) != []  # re-iterable
    with pytest.raises(UsageError, match="batch_size"):
        VOCBatches(root, ids, (SIZE, SIZE), MASK_CLASSES, batch_size=0)


def test_multi_hot_ignores_255_and_refuses_unknown_classes(voc):
    root, _ = voc
    batches = VOCBatches(root, ["train_00000"], (SIZE, SIZE), 3, with_masks=False)
    mask = torch.tensor([[0, 2], [IGNORE_INDEX, 2]], dtype=torch.uint8)
    assert batches.multi_hot(mask).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(DataError, match="model has 3 classes"):
        list(batches)  # DigitScenes masks hold classes up to 10


def test_folder_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no JPEGImages/"):
        voc_ids(tmp_path, ("train",))
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("\n\n")
    with pytest.raises(DataError, match="lists no image"):
        voc_ids(tmp_path, ("train",))
    with pytest.raises(DataError, match="no image for 'a'"):
        read_voc(tmp_path, "a")
    Image.new("RGB", (4, 4)).save(tmp_path / "JPEGImages" / "a.png")
    with pytest.raises(DataError, match="no mask a.png"):
        read_voc(tmp_path, "a")
    Image.new("RGB", (4, 4)).save(tmp_path / "SegmentationClass" / "a.png")
    with pytest.raises(DataError, match="RGB colour mask, but .* has no labelmap.txt"):
        read_voc(tmp_path, "a")
    Image.new("I;16", (4, 4)).save(tmp_path / "SegmentationClass" / "a.png")
    with pytest.raises(DataError, match="is a I;16 image"):
        read_voc(tmp_path, "a")
    Image.new("L", (4, 5)).save(tmp_path / "SegmentationClass" / "a.png")
    with pytest.raises(DataError, match="image is 4x4, mask 4x5"):
        read_voc(tmp_path, "a")
    Image.new("L", (4, 4)).save(tmp_path / "SegmentationClass" / "a.png")
    import ultralytics.utils.patches  # noqa: F401  (it wraps PIL.Image.open: unreadable files must not reach it)

    (tmp_path / "JPEGImages" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="neither a PNG nor a JPEG"):
        read_voc(tmp_path, "a")
    (tmp_path / "JPEGImages" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataError, match="cannot read 'a'"):
        read_voc(tmp_path, "a")
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "JPEGImages" / "a.png", format="JPEG")  # read by content
    image, mask = read_voc(tmp_path, "a")
    assert image.shape == (3, 4, 4) and float(image[0].mean()) > 0.9 and mask.shape == (4, 4)


def test_mask_filter_drops_or_keeps_images_holding_classes(voc):
    root, ds = voc
    batches = VOCBatches(root, voc_ids(root, ("train",)), (SIZE, SIZE), MASK_CLASSES, batch_size=2)
    holds = [bool((ds.masks[i] == 5).any()) for i in range(5)]  # digit 4
    assert any(holds) and not all(holds)
    kept = [m for _, ms in MaskFilter(batches, [5]) for m in ms]
    held = [m for _, ms in MaskFilter(batches, [5], holding=True) for m in ms]
    assert len(kept) == holds.count(False) and len(held) == holds.count(True)
    assert not any(bool((m == 5).any()) for m in kept) and all(bool((m == 5).any()) for m in held)
    images, masks = next(iter(MaskFilter(batches, [5], holding=True)))
    assert len(images) == len(masks)


def test_digitscenes_masks_at_any_size(monkeypatch):
    ds = DigitScenes("val", size=SIZE, n_scenes=3, channels=1)
    images, masks = next(iter(DigitScenesMasks("val", 3, (SIZE, SIZE), batch_size=8)))
    assert images.shape == (3, 3, SIZE, SIZE) and torch.equal(images[:, 1:2], ds.images)
    assert torch.equal(torch.stack(masks), ds.masks)
    module = importlib.import_module("tpunlearn.data.digitscenes")  # tpunlearn.data.digitscenes is also a function
    monkeypatch.setattr(module, "MASKS_MAX_SIDE", SIZE)  # larger sizes: composed at 32, resized
    images, masks = next(iter(DigitScenesMasks("val", 3, (40, 64), batch_size=8)))
    assert images.shape == (3, 3, 40, 64) and masks[0].shape == (40, 64)
    assert set(torch.stack(masks).unique().tolist()) == set(ds.masks.unique().tolist())


def test_mask_batches_reads_digits_or_a_folder(voc):
    root, _ = voc
    digits = mask_batches("digits:3", "test", (SIZE, SIZE), MASK_CLASSES, n_digits=200)
    assert isinstance(digits, DigitScenesMasks) and digits.n_scenes == 3 and digits.split == "test"
    assert mask_batches("digits", "val", (SIZE, SIZE), MASK_CLASSES, n_digits=7).n_scenes == 7
    folder = mask_batches(str(root), "test", (SIZE, SIZE), MASK_CLASSES, n_digits=200)
    assert isinstance(folder, VOCBatches) and folder.ids == voc_ids(root, ("test",))
    assert mask_batches(str(root), "train", (SIZE, SIZE), MASK_CLASSES, 1).ids == voc_ids(root, ("train",))
    with pytest.raises(UsageError, match="VOC-style folder"):
        mask_batches("digits", "test", (SIZE, SIZE), 21, n_digits=200)
    with pytest.raises(DataError, match="neither 'digits' nor a folder"):
        mask_batches(str(root / "absent"), "test", (SIZE, SIZE), MASK_CLASSES, n_digits=200)
    with pytest.raises(DataError, match="val.txt"):
        mask_batches(str(root), "val", (SIZE, SIZE), MASK_CLASSES, n_digits=200)


# ---- labelmap.txt and colour masks ---------------------------------------------------------------------------
LABELMAP_TEXT = "# label:color_rgb:parts:actions\nbackground:0,0,0::\n\ncat:128,0,0::\ndog: 0,128,0 ::\n"


def test_labelmap_gives_names_and_colours_in_order(tmp_path):
    (tmp_path / "labelmap.txt").write_text(LABELMAP_TEXT)
    lm = read_labelmap(tmp_path / "labelmap.txt")
    assert lm.names == ["background", "cat", "dog"]
    assert lm.colour_table() == {(0, 0, 0): 0, (128, 0, 0): 1, (0, 128, 0): 2}
    (tmp_path / "labelmap.txt").write_text("background:::\ncat:::\n")  # names only: enough for palette masks
    lm = read_labelmap(tmp_path / "labelmap.txt")
    assert lm.names == ["background", "cat"] and lm.colours == [None, None]
    with pytest.raises(DataError, match="gives no colour for background, cat"):
        lm.colour_table()


@pytest.mark.parametrize("text, message", [
    ("background:0,0,0\n", r"line 1: 'background:0,0,0' is not 'name:r,g,b:parts:actions'"),
    ("background:0,0,0::\ncat:128,0::\n", r"line 2: colour '128,0' of 'cat' is not three values 0-255"),
    ("background:0,0,0::\ncat:300,0,0::\n", r"line 2: colour '300,0,0'"),
    ("background:0,0,0::\nbackground:1,0,0::\n", r"line 2: class 'background' is named twice"),
    ("background:0,0,0::\ncat:0,0,0::\n", r"line 2: colour \(0, 0, 0\) is already class 'background'"),
    (":0,0,0::\n", "line 1"),
    ("# only a header\n", "names no class"),
])
def test_malformed_labelmaps_are_one_line(tmp_path, text, message):
    (tmp_path / "labelmap.txt").write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_labelmap(tmp_path / "labelmap.txt")
    assert str(tmp_path / "labelmap.txt") in str(info.value) and "\n" not in str(info.value)


def test_colour_masks_read_as_the_palette_masks_they_draw(tmp_path):
    ds = DigitScenes("train", size=SIZE, n_scenes=4, channels=1)
    palette = write_voc_folder(tmp_path / "p", {"train": ds})
    colour = write_voc_folder(tmp_path / "c", {"train": ds}, masks="colour")
    with Image.open(colour / "SegmentationClass" / "train_00000.png") as m:
        assert m.mode == "RGB"
    assert voc_class_names(colour) == ["background", *[str(d) for d in range(10)]]
    ids = voc_ids(colour, ("train",))
    a = [m for _, ms in VOCBatches(palette, ids, (SIZE, SIZE), MASK_CLASSES) for m in ms]
    b = [m for _, ms in VOCBatches(colour, ids, (SIZE, SIZE), MASK_CLASSES) for m in ms]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and all(torch.equal(x, ds.masks[i])
                                                                              for i, x in enumerate(b))
    assert len({int(v) for m in b for v in m.unique()}) > 2  # several classes, not all background


def test_colour_masks_keep_voc_borders_ignored_and_refuse_unknown_colours(tmp_path):
    (tmp_path / "labelmap.txt").write_text(LABELMAP_TEXT)
    table = read_labelmap(tmp_path / "labelmap.txt").colour_table()
    rgb = torch.tensor([[[0, 0, 0], [128, 0, 0]], [[224, 224, 192], [0, 128, 0]]], dtype=torch.uint8)
    assert colour_mask(rgb, table, "m.png").tolist() == [[0, 1], [IGNORE_INDEX, 2]]
    rgb[1, 1] = torch.tensor([10, 20, 30])
    with pytest.raises(DataError, match=r"m.png: colour \(10, 20, 30\) \(pixel x=1, y=1\) is not a class colour"):
        colour_mask(rgb, table, "m.png")


def test_a_mask_value_past_the_class_count_names_the_mask(voc):
    root, _ = voc
    with pytest.raises(DataError, match=r"SegmentationClass/train_0000\d.png holds class \d+, but the model has 2 "):
        list(VOCBatches(root, voc_ids(root, ("train",)), (SIZE, SIZE), 2))
