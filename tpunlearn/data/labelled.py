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

__all__ = ["LabelledFiles", "one_hot"]


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
