"""VOC-style segmentation folders, and the batches of images and class masks every segmentation source gives.

A VOC-style folder (the layout of PASCAL VOC's segmentation set, and what
:func:`tpunlearn.data.write_voc` writes)::

    JPEGImages/<id>.jpg | .jpeg | .png       the images (any size; converted to RGB)
    SegmentationClass/<id>.png               palette (P) or gray (L) PNG whose pixel values are class indices,
                                             255 ignored (VOC's object borders); or an RGB colour mask whose
                                             colours labelmap.txt maps to classes
    ImageSets/Segmentation/<list>.txt        one id per line: train.txt, val.txt, test.txt
    labelmap.txt                             optional: class names (and colours) in index order, as
                                             annotation tools export it (:mod:`tpunlearn.data.labelmap`)

:class:`MaskBatches` is the shape of segmentation data here, whatever the source:
re-iterable batches of images ``(B, 3, H, W)`` resized to a model's input size (bilinear,
antialiased, aspect not kept) and normalised with a given mean and std, with either one
class mask per image at its own resolution (evaluation, training) or a multi-hot ``(B, C)``
of the classes each mask holds (scoring). Nothing here knows a model.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tpunlearn.errors import DataError, UsageError

from .labelmap import LABELMAP, Labelmap, colour_mask, read_labelmap

__all__ = ["IGNORE_INDEX", "VOC_CLASSES", "MaskBatches", "MaskFilter", "SceneMasks", "VOCBatches", "mask_batches",
           "read_voc", "redirect_masks", "resize_images", "voc_class_names", "voc_ids", "voc_labelmap"]

IGNORE_INDEX = 255  # mask value of pixels that count for no class (VOC's object borders)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VOC_CLASSES = [  # PASCAL VOC's segmentation classes, in mask-index order
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


class MaskBatches(ABC):
    """Re-iterable ``(images, masks)`` batches (``with_masks=False``: ``(images, multi_hot)``).

    A source implements :meth:`chunks` (raw images and masks, ``batch_size`` at a time); this
    class resizes the images to ``size`` (``(H, W)``), normalises them with ``mean``/``std``
    (per RGB channel; None: images stay in [0, 1]) and turns masks into multi-hot vectors over
    ``num_classes`` when asked. A mask value ``>= num_classes`` (other than 255) is a DataError.
    """

    def __init__(self, size: Sequence[int], num_classes: int, batch_size: int = 16, with_masks: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if int(batch_size) < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        h, w = (int(v) for v in size)
        self.size, self.num_classes = (h, w), int(num_classes)
        self.batch_size, self.with_masks = int(batch_size), with_masks
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) if mean is not None else None
        self.std = torch.tensor(std).view(1, 3, 1, 1) if std is not None else None

    @abstractmethod
    def chunks(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Float images ``(B, 3, h, w)`` in [0, 1] and one uint8 ``(h', w')`` mask per image."""

    @property
    def n_images(self) -> int:
        """Images per pass (a source that knows says so; this counts them with a pass)."""
        return sum(len(masks) for _, masks in self.chunks())

    def __len__(self) -> int:
        """Batches per pass (what a training loop schedules its learning rate by)."""
        return -(-self.n_images // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        for images, masks in self.chunks():
            yield self.finish(images, masks)

    def finish(self, images: torch.Tensor, masks: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Resized and normalised images, with the masks or their multi-hot ``(B, C)``."""
        if tuple(images.shape[-2:]) != self.size:
            images = resize_images(images, self.size)
        if self.mean is not None and self.std is not None:
            images = (images - self.mean) / self.std
        if self.with_masks:
            return images, masks
        return images, torch.stack([self.multi_hot(m) for m in masks])

    def multi_hot(self, mask: torch.Tensor) -> torch.Tensor:
        """float ``(C,)``: 1 for each class the mask holds (255 ignored)."""
        ids = mask.flatten().long()
        ids = ids[ids != IGNORE_INDEX]
        if ids.numel() and int(ids.max()) >= self.num_classes:
            raise DataError(f"a mask holds class {int(ids.max())}, but the model has {self.num_classes} classes")
        return (torch.bincount(ids, minlength=self.num_classes) > 0).float()


class SceneMasks(MaskBatches):
    """A generated scene set's ``split`` (``n_scenes`` of them) as segmentation batches at any input
    ``size``: a subclass composes the scenes for the larger side (:meth:`scenes`) and gives their RGB
    images in [0, 1] (:meth:`rgb`); masks not at ``(H, W)`` are resized nearest, images by :meth:`finish`."""

    def __init__(self, split: str, n_scenes: int, size: Sequence[int], num_classes: int, batch_size: int = 16,
                 with_masks: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__(size, num_classes, batch_size, with_masks, mean, std)
        self.split, self.n_scenes = split, int(n_scenes)

    @property
    def n_images(self) -> int:
        return self.n_scenes

    @abstractmethod
    def scenes(self, side: int) -> Any:
        """The split's scenes for an input whose larger side is ``side`` (with ``masks`` and ``len``)."""

    @abstractmethod
    def rgb(self, scenes: Any, start: int, stop: int) -> torch.Tensor:
        """Float RGB images ``(B, 3, h, w)`` in [0, 1] of scenes ``start:stop``."""

    def chunks(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        h, w = self.size
        ds = self.scenes(max(h, w))
        for start in range(0, len(ds), self.batch_size):
            images = self.rgb(ds, start, start + self.batch_size)
            masks = list(ds.masks[start:start + self.batch_size])
            if masks and masks[0].shape != (h, w):
                masks = [F.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0].to(m.dtype)
                         for m in masks]
            yield images, masks


class VOCBatches(MaskBatches):
    """The images listed in ``ids`` of the VOC-style folder ``root`` (see :func:`voc_ids`), in list order."""

    def __init__(self, root: str | Path, ids: Sequence[str], size: Sequence[int], num_classes: int,
                 batch_size: int = 16, with_masks: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__(size, num_classes, batch_size, with_masks, mean, std)
        self.root, self.ids = Path(root), list(ids)
        self.labelmap = voc_labelmap(self.root)

    @property
    def n_images(self) -> int:
        return len(self.ids)

    def chunks(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        for start in range(0, len(self.ids), self.batch_size):
            stems = self.ids[start:start + self.batch_size]
            pairs = [read_voc(self.root, stem, self.labelmap) for stem in stems]
            for stem, (_, mask) in zip(stems, pairs, strict=True):
                self.check_mask(stem, mask)
            # images of a folder differ in size: each is resized before they stack
            yield torch.stack([resize_images(image[None], self.size)[0] for image, _ in pairs]), [m for _, m in pairs]


    def check_mask(self, stem: str, mask: torch.Tensor) -> None:
        """A mask value that is no class of the model (255 aside) is a DataError naming the mask."""
        values = mask[mask != IGNORE_INDEX]
        if values.numel() and int(values.max()) >= self.num_classes:
            raise DataError(f"{self.root / 'SegmentationClass' / stem}.png holds class {int(values.max())}, but "
                            f"the model has {self.num_classes} classes (0..{self.num_classes - 1}; 255 ignored)")


class MaskFilter:
    """Re-iterable ``(images, masks)`` batches without the images whose masks hold one of
    ``classes`` (``holding=True``: only those images); batches left empty are skipped."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]], classes: Sequence[int],
                 holding: bool = False) -> None:
        self.batches, self.classes, self.holding = batches, torch.tensor([int(t) for t in classes]), holding

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        for images, masks in self.batches:
            keep = [i for i, m in enumerate(masks) if bool(torch.isin(m.long(), self.classes).any()) == self.holding]
            if keep:
                yield images[keep], [masks[i] for i in keep]


def redirect_masks(masks: torch.Tensor, classes: Sequence[int], to: int | torch.Tensor = 0) -> torch.Tensor:
    """A copy of the class masks ``masks`` (long, any shape) whose pixels of ``classes`` hold ``to``
    instead: one class index (background, 0, by default), or a tensor of ``masks``' shape giving each
    pixel its own (e.g. what a model says is the next-best class). Other pixels, 255 included, are kept.

    The targets that a repair which forgets trains toward: the forgotten class's pixels relabelled,
    everything else as annotated.
    """
    masks = masks.long()
    hit = torch.isin(masks, torch.tensor([int(c) for c in classes], dtype=torch.long, device=masks.device))
    if isinstance(to, torch.Tensor):
        return torch.where(hit, to.to(masks.device).long(), masks)
    return masks.masked_fill(hit, int(to))


def mask_batches(spec: str, split: str, size: Sequence[int], num_classes: int, n_digits: int,
                 batch_size: int = 16, with_masks: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> MaskBatches:
    """The :class:`MaskBatches` of a data spec: ``digits`` (``n_digits`` scenes) / ``digits:N`` for
    DigitScenes' ``split``, or a VOC-style folder (``split`` ``"train"``/``"val"``: that list; else
    ``val.txt``, or ``test.txt`` when there is none)."""
    from . import digits_count
    from .digitscenes import MASK_CLASSES, DigitScenesMasks

    options: dict[str, Any] = {"batch_size": batch_size, "with_masks": with_masks, "mean": mean, "std": std}
    n = digits_count(spec, n_digits)
    if n is not None:
        if int(num_classes) != MASK_CLASSES:
            raise UsageError(f"DigitScenes has {MASK_CLASSES} segmentation classes (background + 10 digits); this "
                             f"model has {num_classes}: pass --data PATH to a VOC-style folder")
        return DigitScenesMasks(split, n, size, **options)
    if not Path(spec).is_dir():
        raise DataError(f"data {spec!r} is neither 'digits' nor a folder; pass --data digits[:N] or a VOC-style "
                        "folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)")
    lists = (split,) if split in ("train", "val") else ("val", "test")
    return VOCBatches(spec, voc_ids(spec, lists), size, num_classes, **options)


def resize_images(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, C, h, w)`` images at ``(H, W)``: bilinear, antialiased (aspect not kept)."""
    return F.interpolate(images, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False,
                         antialias=True)


def voc_ids(root: str | Path, lists: Sequence[str]) -> list[str]:
    """The ids of the first of ``lists`` (``"train"``, ``"val"``, ``"test"``) that ``root`` has under
    ``ImageSets/Segmentation/``; a folder that is not VOC-style, or an empty list, is a DataError."""
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass"):
        if not (root / sub).is_dir():
            raise DataError(f"{root} is not a VOC-style folder: it has no {sub}/ (a VOC folder holds JPEGImages/, "
                            "SegmentationClass/ and ImageSets/Segmentation/)")
    folder = root / "ImageSets" / "Segmentation"
    for name in lists:
        path = folder / f"{name}.txt"
        if path.is_file():
            ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not ids:
                raise DataError(f"{path} lists no image")
            return ids
    raise DataError(f"{root} has no ImageSets/Segmentation/{' or '.join(n + '.txt' for n in lists)}")


def voc_labelmap(root: str | Path) -> Labelmap | None:
    """The folder's ``labelmap.txt`` (None when it has none)."""
    path = Path(root) / LABELMAP
    return read_labelmap(path) if path.is_file() else None


def voc_class_names(root: str | Path) -> list[str] | None:
    """The class names of a VOC-style folder's ``labelmap.txt`` (None: no labelmap, or not a folder)."""
    labelmap = voc_labelmap(root) if Path(root).is_dir() else None
    return list(labelmap.names) if labelmap is not None else None


def read_voc(root: str | Path, stem: str, labelmap: Labelmap | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (float ``(3, h, w)`` in [0, 1]) and its class-index mask (uint8 ``(h, w)``); an RGB
    colour mask is mapped to indices through ``labelmap``'s colours."""
    root = Path(root)
    image_path = next((root / "JPEGImages" / f"{stem}{ext}" for ext in IMAGE_SUFFIXES
                       if (root / "JPEGImages" / f"{stem}{ext}").is_file()), None)
    mask_path = root / "SegmentationClass" / f"{stem}.png"
    if image_path is None:
        raise DataError(f"{root / 'JPEGImages'} has no image for {stem!r} (.jpg or .png)")
    if not mask_path.is_file():
        raise DataError(f"{root / 'SegmentationClass'} has no mask {stem}.png")
    try:
        with _open_image(image_path) as img:
            rgb = img.convert("RGB")
            image = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        with _open_image(mask_path) as m:
            mask = _mask_indices(m, mask_path, labelmap)
    except (OSError, SyntaxError) as exc:  # PIL's decoders raise SyntaxError on a malformed header
        raise DataError(f"cannot read {stem!r} in {root}: {exc}") from None
    if tuple(mask.shape) != tuple(image.shape[:2]):
        raise DataError(f"{stem!r}: image is {image.shape[1]}x{image.shape[0]}, mask {mask.shape[1]}x{mask.shape[0]}")
    return image.permute(2, 0, 1).float() / 255.0, mask.clone()


def _mask_indices(m: Any, path: Path, labelmap: Labelmap | None) -> torch.Tensor:
    """uint8 class indices of an opened mask: a P/L image's pixel values, an RGB image's colours."""
    if m.mode in ("P", "L"):
        return torch.frombuffer(bytearray(m.tobytes()), dtype=torch.uint8).view(m.height, m.width)
    if m.mode not in ("RGB", "RGBA"):
        raise DataError(f"{path} is a {m.mode} image; a VOC mask is a palette (P) or gray (L) PNG of class "
                        "indices, or an RGB colour mask with a labelmap.txt")
    if labelmap is None:
        raise DataError(f"{path} is an RGB colour mask, but {path.parent.parent} has no {LABELMAP} to map its "
                        "colours to classes (lines 'name:r,g,b::')")
    rgb = m.convert("RGB")
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
    return colour_mask(pixels, labelmap.colour_table(), path)


def _open_image(path: Path) -> Any:
    """A PNG or JPEG file opened with PIL's own decoder for its signature.

    Not ``PIL.Image.open``: importing ultralytics replaces it with a wrapper that, on a file PIL
    cannot identify, installs and imports ``pi_heif`` (a traceback offline, a pip install online).
    """
    from PIL import JpegImagePlugin, PngImagePlugin

    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile(str(path))
    if head.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile(str(path))
    raise DataError(f"{path} is neither a PNG nor a JPEG image")
