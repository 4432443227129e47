"""``labelmap.txt``: the class names and mask colours of a VOC-style export (CVAT, Datumaro, ...).

The format, as annotation tools write it beside ``SegmentationClass/``::

    # label:color_rgb:parts:actions
    background:0,0,0::
    cat:128,0,0::

One class per line, in mask-index order; ``#`` lines and blank lines are comments. The colour
may be empty (a palette mask needs none), but every class needs one to read RGB colour masks.
:func:`colour_mask` turns such a mask into class indices; VOC's border colour (224, 224, 192)
is its ignored index 255.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tpunlearn.errors import DataError

__all__ = ["LABELMAP", "VOID_COLOUR", "Labelmap", "colour_mask", "read_labelmap"]

LABELMAP = "labelmap.txt"
VOID_COLOUR = (224, 224, 192)  # VOC's object borders, ignored (mask index 255)


@dataclass(frozen=True)
class Labelmap:
    """Class names in mask-index order, and each one's RGB colour (None where the file gives none)."""

    names: list[str]
    colours: list[tuple[int, int, int] | None]
    path: Path

    def colour_table(self) -> dict[tuple[int, int, int], int]:
        """RGB colour -> class index; a class without a colour is a DataError (colour masks need them all)."""
        missing = [n for n, c in zip(self.names, self.colours, strict=True) if c is None]
        if missing:
            raise DataError(f"{self.path} gives no colour for {', '.join(missing[:6])}: colour masks need one "
                            "per class (name:r,g,b::)")
        return {c: i for i, c in enumerate(self.colours) if c is not None}


def read_labelmap(path: str | Path) -> Labelmap:
    """The names and colours of a ``labelmap.txt``; a malformed line is a DataError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colour = _parse_line(line, f"{path} line {number}")
        if name in names:
            raise DataError(f"{path} line {number}: class {name!r} is named twice")
        if colour is not None and colour in colours:
            raise DataError(f"{path} line {number}: colour {colour} is already class {names[colours.index(colour)]!r}")
        names.append(name)
        colours.append(colour)
    if not names:
        raise DataError(f"{path} names no class (lines 'name:r,g,b::', e.g. 'background:0,0,0::')")
    return Labelmap(names, colours, path)


def _parse_line(line: str, where: str) -> tuple[str, tuple[int, int, int] | None]:
    fields = line.split(":")
    if len(fields) != 4 or not fields[0].strip():
        raise DataError(f"{where}: {line!r} is not 'name:r,g,b:parts:actions' (e.g. 'cat:128,0,0::')")
    name, rgb = fields[0].strip(), fields[1].strip()
    if not rgb:
        return name, None
    parts = rgb.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        raise DataError(f"{where}: colour {rgb!r} of {name!r} is not three values 0-255 ('r,g,b')")
    r, g, b = (int(p) for p in parts)
    return name, (r, g, b)


def colour_mask(rgb: torch.Tensor, table: dict[tuple[int, int, int], int], path: str | Path) -> torch.Tensor:
    """uint8 ``(h, w)`` class indices of a uint8 ``(h, w, 3)`` colour mask; VOC's border colour is 255.

    A colour neither in ``table`` nor VOC's border colour is a DataError naming the file, the
    colour and one pixel that has it.
    """
    codes = (rgb[..., 0].long() << 16) | (rgb[..., 1].long() << 8) | rgb[..., 2].long()
    lut = {(r << 16) | (g << 8) | b: i for (r, g, b), i in table.items()}
    lut.setdefault((VOID_COLOUR[0] << 16) | (VOID_COLOUR[1] << 8) | VOID_COLOUR[2], 255)
    keys = torch.tensor(sorted(lut), dtype=torch.long)
    values = torch.tensor([lut[k] for k in sorted(lut)], dtype=torch.uint8)
    pos = torch.searchsorted(keys, codes).clamp_(max=len(keys) - 1)
    known = keys[pos] == codes
    if not bool(known.all()):
        y, x = (int(v) for v in (~known).nonzero()[0])
        colour = tuple(int(v) for v in rgb[y, x])
        raise DataError(f"{path}: colour {colour} (pixel x={x}, y={y}) is not a class colour in {LABELMAP}")
    return values[pos]
