"""Datasets shipped with tpunlearn (offline, built from data bundled with installed packages).

* :func:`digitscenes` / :class:`DigitScenes`: scenes of one to four UCI handwritten digits
  with multi-label, box and mask labels (see :mod:`tpunlearn.data.digitscenes`).
* :func:`write_yolo` / :func:`write_voc`: export them as an ultralytics YOLO dataset or a
  VOC-style segmentation folder.
* :func:`loader`: a plain, deterministic DataLoader over any of them.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from .digitscenes import CLASS_NAMES, DigitScenes, Scene, write_voc, write_yolo

__all__ = ["CLASS_NAMES", "DigitScenes", "Scene", "digitscenes", "loader", "write_voc", "write_yolo"]


def digitscenes(split: str = "test", **kw) -> DigitScenes:
    """The DigitScenes ``split`` (``"train"``, ``"val"`` or ``"test"``); ``kw`` go to DigitScenes."""
    return DigitScenes(split=split, **kw)


def loader(dataset: Dataset, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader (no worker processes) yielding ``(images, multi_hot)`` batches.

    With ``shuffle=True`` the order comes from a generator seeded with ``seed``, so it is
    reproducible.
    """
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, num_workers=0, generator=generator)
