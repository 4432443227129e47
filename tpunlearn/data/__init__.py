"""Datasets shipped with tpunlearn (offline, built from data bundled with installed packages).

* :func:`digitscenes` / :class:`DigitScenes`: scenes of one to four UCI handwritten digits
  with multi-label, box and mask labels (see :mod:`tpunlearn.data.digitscenes`).
* :func:`write_yolo` / :func:`write_voc`: export them as an ultralytics YOLO dataset or a
  VOC-style segmentation folder.
* :class:`~tpunlearn.data.glyphscenes.GlyphScenes`: a second benchmark unlike it (colour,
  24 classes, photographic backgrounds), with the same three label kinds.
* Readers of the formats users have, family-neutral: :mod:`tpunlearn.data.voc` (VOC-style
  segmentation folders), :mod:`tpunlearn.data.yolo` (ultralytics dataset YAMLs and YOLO txt
  labels), :mod:`tpunlearn.data.folder` (image folders); :mod:`tpunlearn.data.writers`
  writes generated scenes in those formats (and ImageFolder, tags CSV, CelebA's files).
* :func:`loader`: a plain, deterministic DataLoader over any of them.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from .digitscenes import CLASS_NAMES, DigitScenes, Scene, write_voc, write_yolo

__all__ = ["CLASS_NAMES", "DigitScenes", "Scene", "digits_count", "digitscenes", "loader", "write_voc", "write_yolo"]


def digitscenes(split: str = "test", **kw) -> DigitScenes:
    """The DigitScenes ``split`` (``"train"``, ``"val"`` or ``"test"``); ``kw`` go to DigitScenes."""
    return DigitScenes(split=split, **kw)


def digits_count(spec: str | None, default: int) -> int | None:
    """Scene count of a ``"digits"`` / ``"digits:N"`` data spec (``default`` for plain
    ``digits``); None when ``spec`` names other data. A bad N is a one-line UsageError."""
    from tpunlearn.errors import UsageError

    if spec is None:
        return None
    spec = str(spec)
    if spec == "digits":
        return default
    if not spec.startswith("digits:"):
        return None
    try:
        n = int(spec.split(":", 1)[1])
    except ValueError:
        raise UsageError(f"bad data spec {spec!r}; use digits or digits:N (N scenes)") from None
    if n < 1:
        raise UsageError(f"bad data spec {spec!r}: N must be >= 1")
    return n


def loader(dataset: Dataset, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader (no worker processes) yielding ``(images, multi_hot)`` batches.

    With ``shuffle=True`` the order comes from a generator seeded with ``seed``, so it is
    reproducible.
    """
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, num_workers=0, generator=generator)
