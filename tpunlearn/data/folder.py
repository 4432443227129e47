"""Image files of a folder, a txt list or single paths, for any family.

The readers of labelled formats (:mod:`tpunlearn.data.yolo`, and the classification and
segmentation readers) and the unlabelled "folder of images" spec list their files here, so
that every family reads the same files, in the same order, from the same spec.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

__all__ = ["image_files", "is_image"]


def _default_suffixes() -> Collection[str]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return {s.lstrip(".") for s in IMG_EXTENSIONS}


def is_image(path: str | Path, suffixes: Collection[str] | None = None) -> bool:
    """True when ``path``'s suffix (without the dot, any case) is one of ``suffixes``
    (default: the formats torchvision's image folders read)."""
    suffixes = _default_suffixes() if suffixes is None else suffixes
    return Path(path).suffix.lower().lstrip(".") in suffixes


def image_files(source: str | Path | Sequence[str | Path], suffixes: Collection[str] | None = None) -> list[str]:
    """The image files of ``source``, sorted and without repeats.

    ``source`` is a folder (searched recursively), a ``.txt`` list (one path a line, relative
    to the list's folder unless absolute), an image path, or a sequence of any of these.
    Paths that do not exist, and files that are not images, are passed over.
    """
    suffixes = _default_suffixes() if suffixes is None else suffixes
    out: list[str] = []
    for item in [source] if isinstance(source, (str, Path)) else source:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in p.rglob("*") if f.is_file() and is_image(f, suffixes))
        elif p.is_file() and p.suffix.lower() == ".txt":
            out.extend(_listed(p, suffixes))
        elif p.is_file() and is_image(p, suffixes):
            out.append(str(p))
    return sorted(set(out))


def _listed(listing: Path, suffixes: Collection[str]) -> list[str]:
    """The image paths a txt list names (relative lines resolved against its folder)."""
    out = []
    for line in listing.read_text().splitlines():
        line = line.strip()
        if line:
            f = Path(line)
            f = f if f.is_absolute() else (listing.parent / line).resolve()
            if is_image(f, suffixes):
                out.append(str(f))
    return out
