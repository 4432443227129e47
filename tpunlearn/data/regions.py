"""Batches of images with the regions their targets occupy, for the region probes of
:func:`tpunlearn.privacy.region_checks`.

Each batch is ``(images, regions)``: per image a list of ``(class, region)``, the region a
bool mask (segmentation: the class's pixels, at the mask's own resolution) or a box ``(4,)``
``x1, y1, x2, y2`` in [0, 1] of the (letterboxed) input (detection: one per labelled box).
Nothing here knows a model.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from tpunlearn.errors import DataError

from .voc import IGNORE_INDEX

__all__ = ["BoxRegions", "MaskRegions", "letterboxed_boxes", "read_boxes"]

Regions = list[list[tuple[int, torch.Tensor]]]


class MaskRegions:
    """Re-iterable ``(images, regions)`` from ``(images, masks)`` batches: one region per class a
    mask holds (``skip``: classes left out, such as the background; 255 is never a class)."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]], skip: Sequence[int] = ()) -> None:
        self.batches, self.skip = batches, {int(c) for c in skip} | {IGNORE_INDEX}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Regions]]:
        for images, masks in self.batches:
            regions = [[(int(c), mask == c) for c in mask.unique().tolist() if int(c) not in self.skip]
                       for mask in masks]
            yield images, regions


def read_boxes(path: str | Path, nc: int) -> torch.Tensor:
    """The boxes of a YOLO txt label file as ``(n, 5)``: class, then ``cx, cy, w, h`` normalised
    to the original image (no file: no box)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return torch.zeros(0, 5)
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(v) for v in parts[:5]]
        except ValueError:
            raise DataError(f"{path}: bad label line {line!r}") from None
        if len(values) < 5 or not 0 <= int(values[0]) < nc:
            raise DataError(f"{path}: label line {line!r} is not 'class cx cy w h' with a class under {nc}")
        rows.append(values)
    return torch.tensor(rows).reshape(-1, 5)


def letterboxed_boxes(boxes: torch.Tensor, width: int, height: int, size: int) -> torch.Tensor:
    """``(n, 4)`` xyxy in [0, 1] of a ``size`` x ``size`` letterboxed input (ultralytics' LetterBox
    with ``auto=False``: scaled to fit, centred, padded) from YOLO ``cx, cy, w, h`` boxes of a
    ``width`` x ``height`` image."""
    r = min(size / height, size / width)
    new_w, new_h = round(width * r), round(height * r)
    left, top = round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1)
    cx, cy, w, h = boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] * new_w + left) / size
    xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] * new_h + top) / size
    return xyxy.clamp(0, 1)


class BoxRegions:
    """Re-iterable ``(images, regions)`` of YOLO-labelled images letterboxed to ``size``: one box
    region per label line."""

    def __init__(self, images: list[str], labels: list[str], nc: int, size: int, batch_size: int = 32) -> None:
        self.images, self.labels, self.nc, self.size, self.batch_size = images, labels, nc, size, int(batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Regions]]:
        from PIL import Image

        from .yolo import load_image

        for start in range(0, len(self.images), self.batch_size):
            files = self.images[start:start + self.batch_size]
            regions: Regions = []
            for image, label in zip(files, self.labels[start:start + self.batch_size], strict=True):
                boxes = read_boxes(label, self.nc)
                with Image.open(image) as im:
                    width, height = im.size
                xyxy = letterboxed_boxes(boxes, width, height, self.size)
                regions.append([(int(c), box) for c, box in zip(boxes[:, 0].tolist(), xyxy, strict=True)])
            yield torch.stack([load_image(f, self.size) for f in files]), regions
