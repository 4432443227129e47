"""Multi-label tags CSV: a ``file`` column (paths relative to the CSV), one 0/1 column per
class, and an optional ``split`` column (``train``/``val``/``test``).

Read with the standard ``csv`` module; every bad cell is a one-line DataError that names
its column and line, so a user can fix the file.
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tpunlearn.errors import DataError

from .labelled import LabelledFiles, by_split

__all__ = ["SPLITS", "read_tags_csv"]

SPLITS = ("train", "val", "test")


def _header(path: Path, rows: list[list[str]]) -> tuple[list[str], int | None]:
    """The class columns and the ``split`` column's index (the ``file`` column must be first or anywhere)."""
    if not rows:
        raise DataError(f"tags CSV {path} is empty")
    head = [h.strip() for h in rows[0]]
    if "file" not in head:
        raise DataError(f"tags CSV {path} has no 'file' column (header: {', '.join(head)})")
    names = [h for h in head if h not in ("file", "split")]
    if len(names) < 1:
        raise DataError(f"tags CSV {path} has no class columns besides 'file'")
    return names, head.index("split") if "split" in head else None


def _parse(path: Path, rows: list[list[str]]) -> tuple[list[str], list[str], torch.Tensor, list[str]]:
    """``(class_names, files, labels, split_per_row)``; bad cells raise with column and line."""
    names, split_col = _header(path, rows)
    head = [h.strip() for h in rows[0]]
    file_col, cols = head.index("file"), [head.index(n) for n in names]
    files, labels, splits = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(head):
            raise DataError(f"tags CSV {path} line {line} has {len(row)} cells, the header {len(head)}")
        values = []
        for name, c in zip(names, cols, strict=True):
            cell = row[c].strip()
            if cell not in ("0", "1"):
                raise DataError(f"tags CSV {path}: column {name!r} line {line} is {cell!r}, not 0 or 1")
            values.append(int(cell))
        split = row[split_col].strip() if split_col is not None else "train"
        if split not in SPLITS:
            raise DataError(f"tags CSV {path}: split {split!r} on line {line}; use one of {', '.join(SPLITS)}")
        f = Path(row[file_col].strip())
        files.append(str(f if f.is_absolute() else path.parent / f))
        labels.append(values)
        splits.append(split)
    if not files:
        raise DataError(f"tags CSV {path} lists no images")
    return names, files, torch.tensor(labels, dtype=torch.float32), splits


def read_tags_csv(path: str | Path, transform: Callable[[Any], Any] | None = None
                  ) -> tuple[list[str], dict[str, LabelledFiles]]:
    """``(class_names, {split: dataset})`` of a tags CSV; images listed but missing are one line."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read tags CSV {path}: {exc}") from None
    names, files, labels, splits = _parse(path, rows)
    out = by_split(files, labels, splits, transform, f"tags CSV {path}")
    return names, out
