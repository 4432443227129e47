"""A dataset of image files with label vectors, shared by the classification readers.

The tags CSV and CelebA readers each end in a list of ``(path, multi_hot)`` rows; this
dataset opens the images with torchvision's own loader and applies the caller's transform
(the family builds it, e.g. from timm's data config), so the readers stay family-neutral.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["LabelledFiles", "by_split", "one_hot"]


class LabelledFiles(Dataset):
    """``(transform(image), labels[i])`` for ``files[i]``; ``labels`` is an ``(N, K)`` 0/1 tensor."""

    def __init__(self, files: Sequence[str], labels: torch.Tensor,
                 transform: Callable[[Any], Any] | None = None) -> None:
        self.files = list(files)
        self.multi_hot = labels.float()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        from torchvision.datasets.folder import default_loader

        image = default_loader(self.files[i])
        return (self.transform(image) if self.transform is not None else image), self.multi_hot[i]


def one_hot(num_classes: int) -> Callable[[int], torch.Tensor]:
    """A target transform: class index -> float one-hot vector (the label form every reader yields)."""
    def encode(index: int) -> torch.Tensor:
        out = torch.zeros(num_classes)
        out[int(index)] = 1.0
        return out

    return encode


def by_split(files: Sequence[str], labels: torch.Tensor, splits: Sequence[str], transform: Callable[[Any], Any] | None,
             source: str) -> dict[str, LabelledFiles]:
    """The listed ``files`` grouped into one dataset per split (train, val, test), after checking every
    file exists and the training split holds one; ``source`` names the listing in the one-line errors."""
    from pathlib import Path

    from tpunlearn.errors import DataError

    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"{source} lists {len(missing)} image(s) that do not exist, first {missing[0]}")
    out = {}
    for split in ("train", "val", "test"):
        idx = [i for i, s in enumerate(splits) if s == split]
        if idx:
            out[split] = LabelledFiles([files[i] for i in idx], labels[idx], transform)
    if "train" not in out:
        raise DataError(f"{source} puts no image in the training split")
    return out
