"""DigitScenes: determinism, split hygiene, label consistency and the YOLO / VOC writers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tpunlearn.data import CLASS_NAMES, DigitScenes, digitscenes, loader, write_voc, write_yolo
from tpunlearn.data.digitscenes import split_pool
from tpunlearn.errors import UsageError


@pytest.fixture(scope="module")
def train():
    return DigitScenes("train", n_scenes=2000)


@pytest.fixture(scope="module")
def test_small():
    return digitscenes("test", n_scenes=200)


def _overlap(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def test_class_names():
    assert CLASS_NAMES == [str(d) for d in range(10)]


def test_deterministic_and_order_independent(test_small):
    again = DigitScenes("test", n_scenes=200)
    assert torch.equal(test_small.images, again.images)
    assert torch.equal(test_small.masks, again.masks)
    assert torch.equal(test_small.multi_hot, again.multi_hot)
    # scene i depends on (seed, split, i) only, not on how many scenes are built or read first
    short = DigitScenes("test", n_scenes=20)
    for i in (19, 3, 0):
        a, b = short.scene(i), test_small.scene(i)
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
        assert torch.equal(a.boxes, b.boxes) and a.labels == b.labels
    # another seed or split gives other scenes
    assert not torch.equal(DigitScenes("test", n_scenes=20, seed=1).images, short.images)
    assert not torch.equal(DigitScenes("val", n_scenes=20).images, short.images)


def test_split_disjoint_by_source_scan():
    pools = {s: set(split_pool(s).tolist()) for s in ("train", "val", "test")}
    assert not pools["train"] & pools["val"]
    assert not pools["train"] & pools["test"]
    assert not pools["val"] & pools["test"]
    assert set().union(*pools.values()) == set(range(1797))
    assert 0.55 < len(pools["train"]) / 1797 < 0.65
    assert 0.15 < len(pools["test"]) / 1797 < 0.25
    for split in ("train", "val", "test"):
        ds = DigitScenes(split, n_scenes=100, seed=3)
        used = {s for src in ds.sources for s in src}
        assert used <= pools[split]


def test_item_shapes_dtypes_ranges(test_small):
    assert len(test_small) == 200
    image, target = test_small[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert target.shape == (10,) and target.dtype == torch.float32
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert float(test_small.images.min()) >= 0.0 and float(test_small.images.max()) <= 1.0
    assert set(torch.unique(test_small.multi_hot).tolist()) <= {0.0, 1.0}
    gray = DigitScenes("val", size=96, n_scenes=5, channels=1)
    assert gray[4][0].shape == (1, 96, 96)
    assert gray.scene(4).mask.shape == (96, 96)
    with pytest.raises(IndexError):
        test_small[200]
    with pytest.raises(UsageError):
        DigitScenes("holdout")


def test_default_sizes():
    assert len(DigitScenes("val")) == 1000


def test_scene_labels_agree(test_small):
    for i in range(len(test_small)):
        sc = test_small.scene(i)
        n = len(sc.labels)
        assert 1 <= n <= 4
        assert len(set(sc.labels)) == n
        assert sorted(torch.nonzero(sc.multi_hot).flatten().tolist()) == sorted(sc.labels)
        assert sc.boxes.shape == (n, 4) and len(sc.sources) == n
        assert sc.mask.dtype == torch.uint8
        assert set(torch.unique(sc.mask).tolist()) == {0, *(d + 1 for d in sc.labels)}
        for d, box in zip(sc.labels, sc.boxes.tolist()):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            inside = sc.mask[int(y1) : int(y2), int(x1) : int(x2)]
            total = int((sc.mask == d + 1).sum())
            assert total > 0 and int((inside == d + 1).sum()) == total  # box is tight around the mask
        for a in range(n):
            for b in range(a + 1, n):
                assert not _overlap(sc.boxes[a].tolist(), sc.boxes[b].tolist())


def test_digit_frequencies(train):
    frac = train.multi_hot.mean(0)
    assert bool(((frac > 0.17) & (frac < 0.30)).all()), frac
    counts = train.multi_hot.sum(1)
    for k in (1, 2, 3, 4):
        assert float((counts == k).float().mean()) > 0.08
    both = (train.multi_hot[:, 3] > 0) & (train.multi_hot[:, 7] > 0)
    assert int(both.sum()) > 20  # co-occurrences exist (forget 3 in scenes that also hold 7)


def test_loader_batches(test_small):
    images, targets = next(iter(loader(test_small, batch_size=32)))
    assert images.shape == (32, 3, 64, 64) and targets.shape == (32, 10)
    assert torch.equal(images, torch.stack([test_small[i][0] for i in range(32)]))
    a = next(iter(loader(test_small, batch_size=16, shuffle=True, seed=5)))[1]
    b = next(iter(loader(test_small, batch_size=16, shuffle=True, seed=5)))[1]
    assert torch.equal(a, b)


def test_write_yolo_round_trip(tmp_path):
    counts = {"train": 6, "val": 4, "test": 5}
    yaml_path = write_yolo(tmp_path / "yolo", n_scenes=counts)
    data = yaml.safe_load(yaml_path.read_text())
    assert data["names"] == {d: str(d) for d in range(10)}
    root = tmp_path / "yolo"
    assert data["path"] == str(root.resolve())
    for split, n in counts.items():
        assert data[split] == f"images/{split}"
        ds = DigitScenes(split, n_scenes=n)
        images = sorted((root / data[split]).glob("*.png"))
        assert len(images) == n
        for i, img_path in enumerate(images):
            img = np.asarray(Image.open(img_path))
            assert img.shape == (64, 64) and img.dtype == np.uint8
            expect = (ds.images[i, 0] * 255).round().to(torch.uint8).numpy()
            assert np.array_equal(img, expect)
            rows = [line.split() for line in (root / "labels" / split / f"{img_path.stem}.txt").read_text().splitlines()]
            assert [int(r[0]) for r in rows] == ds.labels[i]
            got = torch.tensor([[float(v) for v in r[1:]] for r in rows])
            b = ds.boxes[i]
            want = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1) / 64
            assert torch.allclose(got, want, atol=1e-5)


def test_write_voc_round_trip(tmp_path):
    root = write_voc(tmp_path / "voc", n_scenes=4, splits=("train", "test"))
    for split in ("train", "test"):
        ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids) == 4
        ds = DigitScenes(split, n_scenes=4)
        for i, stem in enumerate(ids):
            mask = np.asarray(Image.open(root / "SegmentationClass" / f"{stem}.png"))
            assert np.array_equal(mask, ds.masks[i].numpy())
            image = np.asarray(Image.open(root / "JPEGImages" / f"{stem}.png"))
            assert image.shape == (64, 64)
    assert not (root / "ImageSets" / "Segmentation" / "val.txt").exists()
