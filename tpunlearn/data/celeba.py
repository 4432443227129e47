"""CelebA's own files as they come: ``list_attr_celeba.txt`` (a count line, the attribute
names, then ``file v1 v2 ...`` with -1/1), ``list_eval_partition.txt`` (``file 0|1|2`` for
train/val/test) and ``img_align_celeba/``. Multi-label: every attribute is a target.

Read here rather than through :class:`torchvision.datasets.CelebA`, because torchvision's
class insists on the full download layout (``<root>/celeba/`` with the identity, bounding-box
and landmark files) and checks every file's md5: a user's copy, a subset of it, or a file
re-saved by a tool fails that check although its contents are fine.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tpunlearn.errors import DataError

from .labelled import LabelledFiles, by_split

__all__ = ["ATTR_FILE", "is_celeba", "read_celeba"]

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGES = "img_align_celeba"
_SPLITS = {"0": "train", "1": "val", "2": "test"}


def is_celeba(root: Path) -> bool:
    """True for a folder holding ``list_attr_celeba.txt`` (or that file itself)."""
    return root.name == ATTR_FILE or (root / ATTR_FILE).is_file()


def _attributes(path: Path) -> tuple[list[str], list[str], torch.Tensor]:
    """``(names, files, labels in {0, 1})``; the row count must match the header's count line."""
    lines = [ln.split() for ln in path.read_text().splitlines()]
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise DataError(f"{path}: the first line must be the image count, the second the attribute names")
    names, rows = lines[1], [ln for ln in lines[2:] if ln]
    if len(rows) != int(lines[0][0]):
        raise DataError(f"{path} says {lines[0][0]} images but holds {len(rows)} rows")
    labels = []
    for line, row in enumerate(rows, start=3):
        values = row[1:]
        if len(values) != len(names) or any(v not in ("-1", "1") for v in values):
            raise DataError(f"{path} line {line}: expected a file and {len(names)} values of -1/1")
        labels.append([v == "1" for v in values])
    return names, [r[0] for r in rows], torch.tensor(labels, dtype=torch.float32)


def _partition(path: Path, files: list[str]) -> list[str]:
    """Each file's split; without a partition file every image is training data."""
    if not path.is_file():
        return ["train"] * len(files)
    split = {}
    for line, row in enumerate((ln.split() for ln in path.read_text().splitlines()), start=1):
        if row:
            if len(row) != 2 or row[1] not in _SPLITS:
                raise DataError(f"{path} line {line}: expected 'file 0|1|2'")
            split[row[0]] = _SPLITS[row[1]]
    unlisted = [f for f in files if f not in split]
    if unlisted:
        raise DataError(f"{path} does not list {len(unlisted)} image(s) of {ATTR_FILE}, first {unlisted[0]}")
    return [split[f] for f in files]


def read_celeba(root: str | Path, transform: Callable[[Any], Any] | None = None
                ) -> tuple[list[str], dict[str, LabelledFiles]]:
    """``(attribute_names, {split: dataset})`` of a CelebA folder."""
    root = Path(root)
    root = root.parent if root.name == ATTR_FILE else root
    names, files, labels = _attributes(root / ATTR_FILE)
    splits = _partition(root / PARTITION_FILE, files)
    paths = [str(root / IMAGES / f) for f in files]
    out = by_split(paths, labels, splits, transform, str(root / ATTR_FILE))
    return names, out
