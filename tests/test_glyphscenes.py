"""GlyphScenes: the second generated benchmark (colour, 24 classes, photo backgrounds)."""
from __future__ import annotations

import torch

from tpunlearn.data.glyphscenes import GLYPH_CLASSES, GlyphScenes


def test_scenes_are_deterministic_and_labels_agree_with_masks_and_boxes():
    a, b = GlyphScenes("train", n_scenes=40, seed=3), GlyphScenes("train", n_scenes=40, seed=3)
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.masks, b.masks)
    assert len(GLYPH_CLASSES) == 24 and a.multi_hot.shape == (40, 24)
    for i in range(len(a)):
        s = a.scene(i)
        assert s.image.shape == (3, 64, 64) and 0.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0
        present = sorted(int(c) - 1 for c in s.mask.unique() if c > 0)
        assert present == sorted(s.labels) == s.multi_hot.nonzero().flatten().tolist()
        assert s.boxes.shape == (len(s.labels), 4)
        for c, (x1, y1, x2, y2) in zip(s.labels, s.boxes.tolist()):
            ys, xs = (s.mask == c + 1).nonzero(as_tuple=True)
            assert (x1, y1, x2, y2) == (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def test_other_seed_split_and_single_object_mode():
    base = GlyphScenes("train", n_scenes=20)
    assert not torch.equal(base.pixels, GlyphScenes("train", n_scenes=20, seed=1).pixels)
    assert not torch.equal(base.pixels, GlyphScenes("test", n_scenes=20).pixels)
    single = GlyphScenes("val", n_scenes=30, objects=(1, 1))
    assert (single.multi_hot.sum(1) == 1).all()
    image, multi_hot = single[0]
    assert image.dtype == torch.float32 and multi_hot.sum() == 1


def test_every_class_occurs_and_colours_vary():
    ds = GlyphScenes("train", n_scenes=400)
    counts = ds.multi_hot.sum(0)
    assert (counts >= 15).all(), counts  # each class in roughly 9 % of scenes
    assert 2.0 <= float(ds.multi_hot.sum(1).mean()) <= 2.6
    colours = torch.stack([ds.scene(i).image[:, ds.masks[i] > 0].mean(1) for i in range(30)])
    assert float(colours.std(0).min()) > 0.1  # a glyph's colour is drawn per instance, not per class
