"""ImageFolder roots (multi-class): ``train/<class>/*``, ``val/<class>/*``, optional ``test/``,
or one folder of class subfolders, read through torchvision's :class:`ImageFolder`.

Every split takes the class list of the first split found (``train``, else the root), so a
class index means the same class in every split; a split missing a class is a DataError.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tpunlearn.errors import DataError

from .folder import is_image
from .labelled import one_hot

__all__ = ["SPLIT_DIRS", "class_folders", "is_image_folder", "read_image_folder"]

SPLIT_DIRS = ("train", "val", "test")


def class_folders(root: Path) -> list[str]:
    """The class subfolder names of ``root``, sorted (torchvision's order)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def is_image_folder(root: Path) -> bool:
    """True when ``root`` holds split folders or class folders (with images one level down)."""
    if not root.is_dir():
        return False
    if (root / "train").is_dir():
        return True
    return any(any(is_image(f) for f in (root / c).iterdir()) for c in class_folders(root))


def _check_classes(root: Path, where: str) -> list[str]:
    """The classes of one split folder: at least two, none empty (else one line)."""
    classes = class_folders(root)
    if len(classes) < 2:
        raise DataError(f"image folder {where} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
                        "classification needs at least two")
    empty = [c for c in classes if not any(is_image(f) for f in (root / c).rglob("*") if f.is_file())]
    if empty:
        raise DataError(f"image folder {where}: class folder {empty[0]!r} holds no images"
                        + (f" ({len(empty)} empty in all)" if len(empty) > 1 else ""))
    return classes


def read_image_folder(root: str | Path, transform: Callable[[Any], Any] | None = None
                      ) -> tuple[list[str], dict[str, Any]]:
    """``(class_names, {split: dataset})`` of an ImageFolder root; labels are one-hot vectors.

    With ``train/`` the splits are the ``train``/``val``/``test`` folders present; without, the
    root itself is the one ``train`` split (the caller holds out a validation part).
    """
    from torchvision.datasets import ImageFolder

    root = Path(root)
    dirs = {s: root / s for s in SPLIT_DIRS if (root / s).is_dir()} if (root / "train").is_dir() else {"train": root}
    names = _check_classes(dirs["train"], str(dirs["train"]))
    encode = one_hot(len(names))

    class _Fixed(ImageFolder):  # every split indexes the training split's classes
        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            return names, {c: i for i, c in enumerate(names)}

    splits: dict[str, Any] = {}
    for split, folder in dirs.items():
        found = class_folders(folder)
        extra = sorted(set(found) - set(names))
        if extra:
            raise DataError(f"image folder {folder} has class folder(s) {', '.join(extra)} that {dirs['train']} "
                            f"lacks; classes: {', '.join(names)}")
        try:
            splits[split] = _Fixed(str(folder), transform=transform, target_transform=encode, allow_empty=True)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"image folder {folder}: {exc}") from None
        if len(splits[split]) == 0:
            raise DataError(f"image folder {folder} holds no images")
    return names, splits
