"""Turn a classifier's ``--data`` string into datasets, deciding the format from what is on disk.

* ``digits`` / ``digits:N``: DigitScenes (multi-label);
* ``glyphs`` / ``glyphs:N``: GlyphScenes, 24 shapes and letters (multi-label);
* a folder holding ``list_attr_celeba.txt``: CelebA's own files (multi-label);
* a ``.csv`` file, or a folder holding exactly one: a tags CSV (multi-label);
* a folder with ``train/<class>/`` or class subfolders: an ImageFolder root (multi-class).

The validation split is the data's own (``val/``, the ``split`` column, CelebA's partition);
when there is none, a deterministic held-out fraction of the training split, seeded, and
recorded in :attr:`ClassData.holdout` so that a report can say how it was made.
The transform is the caller's (the family builds it from its library's data config), so
this module imports no model library.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from tpunlearn.errors import DataError

__all__ = ["HOLDOUT_FRACTION", "HOLDOUT_SEED", "ClassData", "labels_of", "read_classification"]

HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0


@dataclass
class ClassData:
    """A classification dataset as read: its task, class names and one dataset per split."""

    task: str  # "multiclass" | "multilabel"
    class_names: list[str]
    format: str  # "digits" | "glyphs" | "imagefolder" | "tags" | "celeba"
    source: str
    splits: dict[str, Dataset] = field(default_factory=dict)
    holdout: dict[str, Any] | None = None  # {"fraction", "seed", "from": "train", "sizes"} when made here

    def split(self, name: str) -> Dataset:
        """The ``name`` split; ``test`` falls back to ``val`` (a user's data often has no test part)."""
        if name in self.splits:
            return self.splits[name]
        if name == "test" and "val" in self.splits:
            return self.splits["val"]
        raise DataError(f"--data {self.source} has no {name!r} split (it has {', '.join(self.splits)})")

    def describe(self) -> dict[str, Any]:
        """JSON-ready: format, task, classes, split sizes, which split each step reads
        (scoring and repair: train; ``--auto``: val; evaluation: test, else val) and the held-out
        rule (None when the validation split is the data's own)."""
        return {"format": self.format, "source": self.source, "task": self.task, "classes": len(self.class_names),
                "splits": {k: len(v) for k, v in self.splits.items()},  # type: ignore[arg-type]
                "used": {"scoring": "train", "validation": "val", "evaluation": "test" if "test" in self.splits
                         else "val"},
                "holdout": self.holdout}

    def present(self, split: str = "train") -> list[str]:
        """The classes with at least one labelled image in ``split`` (read from the labels, no image opened)."""
        counts = labels_of(self.split(split)).sum(0)
        return [name for name, n in zip(self.class_names, counts.tolist(), strict=True) if n > 0]


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The ``(N, K)`` label matrix of a reader's dataset, without opening an image."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[list(dataset.indices)]
    multi_hot = getattr(dataset, "multi_hot", None)
    if isinstance(multi_hot, torch.Tensor):
        return multi_hot.float()
    targets = getattr(dataset, "targets", None)  # torchvision's ImageFolder: class indices
    if targets is not None:
        return torch.nn.functional.one_hot(torch.as_tensor(targets), len(dataset.classes)).float()  # type: ignore[attr-defined]
    raise TypeError(f"cannot read the labels of {type(dataset).__name__}")


def _hold_out(data: ClassData, fraction: float, seed: int) -> None:
    """Split ``train`` into train and val by a seeded permutation, when the data has no val split."""
    if "val" in data.splits:
        return
    train = data.splits["train"]
    n = len(train)  # type: ignore[arg-type]
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise DataError(f"--data {data.source} holds {n} image(s): too few to hold out a validation split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    data.splits["val"] = Subset(train, sorted(order[:n_val]))
    data.splits["train"] = Subset(train, sorted(order[n_val:]))
    data.holdout = {"fraction": fraction, "seed": int(seed), "from": "train",
                    "sizes": {"train": n - n_val, "val": n_val}}


def glyphs_count(spec: str) -> int | None:
    """Scene count of ``glyphs:N`` (0 for plain ``glyphs``: the split's own); None for other data."""
    if spec == "glyphs":
        return 0
    if not spec.startswith("glyphs:"):
        return None
    count = spec.split(":", 1)[1]
    if not count.isdigit() or int(count) < 1:
        raise DataError(f"--data {spec}: glyphs:N needs a positive scene count N")
    return int(count)


def _csv_in(root: Path) -> Path | None:
    found = sorted(root.glob("*.csv"))
    return found[0] if len(found) == 1 else None


def read_classification(spec: str, transform: Callable[[Any], Any] | None = None, *, size: int = 64,
                        holdout: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED) -> ClassData:
    """The classification data ``spec`` names (see the module docstring); one-line DataError if unreadable."""
    from . import digits_count
    from .celeba import is_celeba, read_celeba
    from .imagefolder import is_image_folder, read_image_folder
    from .tags import read_tags_csv

    n = digits_count(spec, 0)
    if n is not None:
        from .digitscenes import CLASS_NAMES, DigitScenes

        splits: dict[str, Dataset] = {s: DigitScenes(split=s, size=size, n_scenes=n or None) for s in ("train", "val")}
        splits["test"] = DigitScenes(split="test", size=size)
        return ClassData("multilabel", list(CLASS_NAMES), "digits", spec, splits)
    glyphs = glyphs_count(spec)
    if glyphs is not None:
        from .glyphscenes import GLYPH_CLASSES, GlyphScenes

        # plain ``glyphs``: enough scenes for every class's instances (scenes are drawn up front)
        splits = {"train": GlyphScenes("train", size=size, n_scenes=glyphs or 1000),
                  "val": GlyphScenes("val", size=size, n_scenes=glyphs or 500),
                  "test": GlyphScenes("test", size=size)}
        return ClassData("multilabel", list(GLYPH_CLASSES), "glyphs", spec, splits)
    root = Path(spec)
    if not root.exists():
        raise DataError(f"--data {spec}: no such file or folder (give an ImageFolder root, a tags CSV, "
                        "a CelebA folder, or digits)")
    csv_file = root if root.suffix.lower() == ".csv" else (_csv_in(root) if root.is_dir() else None)
    if is_celeba(root):
        names, found, fmt, task = *read_celeba(root, transform), "celeba", "multilabel"
    elif csv_file is not None:
        names, found, fmt, task = *read_tags_csv(csv_file, transform), "tags", "multilabel"
    elif is_image_folder(root):
        names, found, fmt, task = *read_image_folder(root, transform), "imagefolder", "multiclass"
    else:
        raise DataError(f"--data {spec} is not an ImageFolder root (class subfolders), a tags CSV or a CelebA "
                        "folder (list_attr_celeba.txt)")
    data = ClassData(task, list(names), fmt, str(spec), dict(found))
    _hold_out(data, holdout, seed)
    return data
