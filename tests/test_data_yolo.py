"""tpunlearn.data.yolo and tpunlearn.data.folder on generated YOLO datasets: dataset YAMLs with
folders, txt lists and lists of folders, ``names`` as a list or a dict; labels, letterboxing,
batches, the labeller of unlabelled images, and the cached DigitScenes YAML."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network (read by ultralytics at import)

from tpunlearn.data import DigitScenes, folder, write_yolo  # noqa: E402
from tpunlearn.data import yolo as yd  # noqa: E402
from tpunlearn.errors import DataError, UsageError  # noqa: E402

SIZE = 64
COUNTS = {"train": 6, "val": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A DigitScenes YOLO dataset: folders, ``names`` as a dict (as write_yolo writes it)."""
    return write_yolo(tmp_path_factory.mktemp("yolo"), size=SIZE, n_scenes=COUNTS, splits=("train", "val"))


def expected(split: str) -> torch.Tensor:
    """The multi-hot labels of the scenes write_yolo wrote for ``split``."""
    return DigitScenes(split, size=SIZE, n_scenes=COUNTS[split], seed=0).multi_hot.float()


def write_yaml(file: Path, **data) -> Path:
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    return file


def test_yaml_with_folders_and_names_as_dict(dataset):
    data = yd.read_dataset(dataset)
    assert data["nc"] == 10 and data["names"] == {i: str(i) for i in range(10)}
    images = yd.image_files(data["train"])
    assert [Path(f).name for f in images] == [f"train_{i:05d}.png" for i in range(COUNTS["train"])]
    labels = yd.label_files(images)
    assert labels == [str(dataset.parent / "labels" / "train" / f"train_{i:05d}.txt") for i in range(6)]
    rows = torch.stack([yd.read_labels(f, 10) for f in labels])
    assert torch.equal(rows, expected("train"))


def test_yaml_with_txt_lists_and_names_as_list(dataset, tmp_path):
    root = dataset.parent
    train = sorted((root / "images" / "train").glob("*.png"))
    val = sorted((root / "images" / "val").glob("*.png"))
    # a relative list (resolved against the list's folder) and an absolute one, with a blank line and a non-image
    (root / "train.txt").write_text("".join(f"./images/train/{f.name}\n" for f in train) + "\n./notes.md\n")
    (root / "val.txt").write_text("".join(f"{f}\n" for f in val))
    names = [f"digit{i}" for i in range(10)]
    spec = write_yaml(tmp_path / "lists.yaml", path=str(root), train="train.txt", val="val.txt", names=names)
    data = yd.read_dataset(spec)
    assert data["nc"] == 10 and data["names"] == dict(enumerate(names))
    assert yd.image_files(data["train"]) == [str(f) for f in train]
    assert yd.image_files(data["val"]) == [str(f) for f in val]
    got = yd.batches(str(spec), nc=10, size=SIZE, batch_size=4, labeller=_no_labeller)
    assert torch.equal(torch.cat([mh for _, mh in got]), expected("train"))


def test_yaml_with_a_list_of_folders_and_no_train_split(dataset, tmp_path):
    root = dataset.parent
    spec = write_yaml(tmp_path / "both.yaml", path=str(root), train=None, val=["images/val", "images/train"],
                      names={i: str(i) for i in range(10)})
    data = yd.read_dataset(spec)
    assert len(yd.image_files(data["val"])) == COUNTS["train"] + COUNTS["val"]
    got = list(yd.batches(str(spec), nc=10, size=SIZE, batch_size=3, labeller=_no_labeller))  # falls back on val
    assert [len(images) for images, _ in got] == [3, 3, 3, 1]
    multi_hot = torch.cat([mh for _, mh in got])
    assert torch.equal(multi_hot, torch.cat([expected("train"), expected("val")]))  # sorted: train_* < val_*


def test_dataset_errors_are_data_errors(dataset, tmp_path):
    with pytest.raises(DataError, match="no such dataset YAML"):
        yd.read_dataset(tmp_path / "absent.yaml")
    missing = write_yaml(tmp_path / "missing.yaml", path=str(tmp_path / "nowhere"), train="images/train",
                         val="images/val", names=["a"])
    with pytest.raises(DataError, match="cannot read dataset"):
        yd.read_dataset(missing, split="val")  # never downloads
    with pytest.raises(DataError, match="10 classes but the model has 3"):
        yd.batches(str(dataset), nc=3, size=SIZE, batch_size=4, labeller=_no_labeller)
    with pytest.raises(DataError, match="cannot read data"):
        yd.batches(str(tmp_path / "nothing"), nc=10, size=SIZE, batch_size=4, labeller=_no_labeller)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        yd.batches(str(tmp_path / "empty"), nc=10, size=SIZE, batch_size=4, labeller=_no_labeller)


def test_read_labels(tmp_path):
    label = tmp_path / "a.txt"
    label.write_text("3 0.5 0.5 0.1 0.1\n\n7.0 0.2 0.2 0.1 0.1\n3 0.1 0.1 0.1 0.1\n")
    assert yd.read_labels(label, 10).nonzero().flatten().tolist() == [3, 7]
    assert torch.equal(yd.read_labels(tmp_path / "absent.txt", 4), torch.zeros(4))  # no file: no object
    label.write_text("x 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match="bad label line"):
        yd.read_labels(label, 10)
    label.write_text("12 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match="outside the model's 10 classes"):
        yd.read_labels(label, 10)


def test_load_image_letterboxes(tmp_path):
    import cv2
    import numpy as np

    wide = np.full((20, 40, 3), 255, dtype=np.uint8)
    wide[..., 2] = 0  # BGR: no red
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    img = yd.load_image(tmp_path / "wide.png", SIZE)
    assert img.shape == (3, SIZE, SIZE) and img.dtype == torch.float32
    assert torch.allclose(img[:, 0, 0], torch.full((3,), 114 / 255))  # padding above the image
    assert torch.allclose(img[:, SIZE // 2, SIZE // 2], torch.tensor([0.0, 1.0, 1.0]))  # RGB order
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        yd.load_image(tmp_path / "broken.png", SIZE)


def test_unlabelled_folders_and_images_use_the_labeller(dataset):
    calls = []

    def labeller(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape)
        return torch.ones(len(images), 10)

    got = list(yd.batches(str(dataset.parent / "images" / "val"), 10, SIZE, 3, labeller))
    assert [len(mh) for _, mh in got] == [3, 1] and calls == [(3, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)]
    one = sorted((dataset.parent / "images" / "val").glob("*.png"))[0]
    ((images, multi_hot),) = list(yd.batches(str(one), 10, SIZE, 8, labeller))
    assert images.shape == (1, 3, SIZE, SIZE) and torch.equal(multi_hot, torch.ones(1, 10))
    with pytest.raises(UsageError, match="labeller"):
        yd.Batches([str(one)], None, 10, SIZE, 4)
    with pytest.raises(UsageError, match="batch_size"):
        yd.Batches([str(one)], None, 10, SIZE, 0, labeller)


def test_bundled_images_exist():
    assert [Path(f).name for f in yd.bundled_images()] == ["bus.jpg", "zidane.jpg"]


def test_digits_yaml_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TPUNLEARN_CACHE", str(tmp_path / "cache"))
    path = yd.digits_yaml(SIZE, n_train=3, n_test=2)
    assert path.parent.parent == tmp_path / "cache" and path.name == "data.yaml"
    data = yd.read_dataset(path, split="val")
    assert data["val"] == data["test"] != data["train"]  # the validator's val split is the test scenes
    assert len(yd.image_files(data["train"])) == 3 and len(yd.image_files(data["val"])) == 2
    test_labels = torch.stack([yd.read_labels(f, 10) for f in yd.label_files(yd.image_files(data["val"]))])
    assert torch.equal(test_labels, DigitScenes("test", size=SIZE, n_scenes=2, seed=0).multi_hot.float())
    stamp = path.stat().st_mtime_ns
    assert yd.digits_yaml(SIZE, n_train=3, n_test=2) == path and path.stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_folder_image_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.png", "a/b/2.JPG", "a/b/notes.txt", "a/3.heic"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("a/1.png\n\na/b/notes.txt\n")
    found = folder.image_files(tmp_path / "a")
    assert found == [str(tmp_path / "a/1.png"), str(tmp_path / "a/b/2.JPG")]  # torchvision's formats: no heic
    assert folder.image_files([tmp_path / "a", tmp_path / "list.txt", tmp_path / "a/1.png"]) == found
    assert folder.image_files(tmp_path / "a", suffixes={"heic"}) == [str(tmp_path / "a/3.heic")]
    assert yd.image_files(tmp_path / "a") == sorted([*found, str(tmp_path / "a/3.heic")])  # ultralytics' formats
    assert folder.image_files(tmp_path / "absent") == []
    assert folder.is_image("x.PNG") and not folder.is_image("x.txt")


def _no_labeller(images: torch.Tensor) -> torch.Tensor:
    raise AssertionError("a labelled dataset must not call the labeller")
