"""Write generated scenes in the formats users already have, for tests and benchmarks.

Any dataset with ``scene(i)`` (a :class:`~tpunlearn.data.digitscenes.Scene`), ``len()`` and
``class_names`` (DigitScenes, GlyphScenes) can be written as:

* an ImageFolder root (``train/<class>/*.png``, ``val/<class>/*.png``): one class per image,
  the first label of each scene (use single-object scenes);
* a multi-label tags CSV (``file`` column relative to the CSV, one 0/1 column per class,
  a ``split`` column);
* CelebA's own files: ``img_align_celeba/*.jpg``, ``list_attr_celeba.txt`` (-1/1) and
  ``list_eval_partition.txt`` (0 train, 1 val, 2 test);
* an ultralytics detection dataset (``images/``, ``labels/``, ``data.yaml``);
* a VOC-style segmentation folder with a ``labelmap.txt`` (palette or colour masks).

``splits`` maps a split name to its dataset. Every writer returns the path a reader takes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_celeba", "write_image_folder", "write_tags_csv", "write_voc_folder", "write_yolo_dataset"]

_PARTITION = {"train": 0, "val": 1, "test": 2}


def _save_rgb(image: torch.Tensor, path: Path, quality: int | None = None) -> None:
    """A ``(C, H, W)`` float image in [0, 1] as an 8-bit PNG (or JPEG with ``quality``)."""
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.repeat(3, 1, 1)
    img = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    if quality:
        img.save(path, quality=quality)
    else:
        img.save(path)


def write_image_folder(root: str | Path, splits: Mapping[str, Any], names: Sequence[str] | None = None) -> Path:
    """``root/<split>/<class>/<split>_<i>.png``, each image under its first label's class."""
    root = Path(root)
    for split, ds in splits.items():
        class_names = list(names or ds.class_names)
        for i in range(len(ds)):
            scene = ds.scene(i)
            if not scene.labels:
                continue
            _save_rgb(scene.image, root / split / class_names[scene.labels[0]] / f"{split}_{i:05d}.png")
    return root


def write_tags_csv(root: str | Path, splits: Mapping[str, Any], csv_name: str = "tags.csv",
                   split_column: bool = True) -> Path:
    """``root/images/<split>_<i>.png`` and ``root/<csv_name>`` (``file``, one 0/1 column per class, ``split``)."""
    import csv

    root = Path(root)
    rows: list[list[str]] = []
    names: list[str] = []
    for split, ds in splits.items():
        names = list(ds.class_names)
        for i in range(len(ds)):
            scene = ds.scene(i)
            rel = f"images/{split}_{i:05d}.png"
            _save_rgb(scene.image, root / rel)
            row = [rel, *(str(int(v)) for v in scene.multi_hot.tolist())]
            rows.append(row + ([split] if split_column else []))
    path = root / csv_name
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", *names, *(["split"] if split_column else [])])
        writer.writerows(rows)
    return path


def write_celeba(root: str | Path, splits: Mapping[str, Any]) -> Path:
    """CelebA's layout: ``img_align_celeba/NNNNNN.jpg``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``."""
    root = Path(root)
    attr_lines, part_lines, names = [], [], []
    n = 0
    for split, ds in splits.items():
        names = list(ds.class_names)
        for i in range(len(ds)):
            n += 1
            scene = ds.scene(i)
            file = f"{n:06d}.jpg"
            _save_rgb(scene.image, root / "img_align_celeba" / file, quality=95)
            values = " ".join(f"{1 if v > 0.5 else -1:2d}" for v in scene.multi_hot.tolist())
            attr_lines.append(f"{file} {values}")
            part_lines.append(f"{file} {_PARTITION[split]}")
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(names)}\n" + "\n".join(attr_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
    return root


def write_yolo_dataset(root: str | Path, splits: Mapping[str, Any], names_as: str = "dict") -> Path:
    """An ultralytics dataset: ``images/<split>/*.png``, ``labels/<split>/*.txt``, ``data.yaml``."""
    import yaml

    root = Path(root).resolve()
    names: list[str] = []
    for split, ds in splits.items():
        names = list(ds.class_names)
        for i in range(len(ds)):
            scene = ds.scene(i)
            stem = f"{split}_{i:05d}"
            _save_rgb(scene.image, root / "images" / split / f"{stem}.png")
            h, w = scene.image.shape[-2:]
            lines = [f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                     for c, (x1, y1, x2, y2) in zip(scene.labels, scene.boxes.tolist(), strict=True)]
            label = root / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(lines) + ("\n" if lines else ""))
    data: dict[str, Any] = {"path": str(root), **{split: f"images/{split}" for split in splits}}
    data["names"] = {i: n for i, n in enumerate(names)} if names_as == "dict" else names
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "data.yaml"


def write_voc_folder(root: str | Path, splits: Mapping[str, Any], labelmap: bool = True,
                     masks: str = "palette") -> Path:
    """``JPEGImages/*.png``, ``SegmentationClass/*.png``, ``ImageSets/Segmentation/<split>.txt`` and
    (``labelmap``) a ``labelmap.txt`` naming ``background`` and the classes with their colours, as
    annotation tools export it. ``masks``: ``"palette"`` (P images whose values are class indices, as
    VOC ships them) or ``"colour"`` (RGB images in the labelmap's colours, as CVAT exports them)."""
    from PIL import Image

    from tpunlearn.data.digitscenes import voc_palette

    if masks not in ("palette", "colour"):
        raise ValueError(f"masks must be 'palette' or 'colour', got {masks!r}")
    root = Path(root)
    palette, names = voc_palette(), []
    colours = torch.tensor(palette, dtype=torch.uint8).view(-1, 3)
    for split, ds in splits.items():
        names = list(ds.class_names)
        ids = []
        for i in range(len(ds)):
            scene, stem = ds.scene(i), f"{split}_{i:05d}"
            _save_rgb(scene.image, root / "JPEGImages" / f"{stem}.png")
            if masks == "colour":
                mask = Image.fromarray(colours[scene.mask.long()].numpy())
            else:
                mask = Image.fromarray(scene.mask.numpy()).convert("P")
                mask.putpalette(palette)
            (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            mask.save(root / "SegmentationClass" / f"{stem}.png")
            ids.append(stem)
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / f"{split}.txt").write_text("\n".join(ids) + "\n")
    if labelmap:
        lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{','.join(map(str, colours[k].tolist()))}::"
                                                         for k, n in enumerate(["background", *names])]
        (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
    return root
