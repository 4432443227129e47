"""Detection data as ultralytics users keep it: dataset YAMLs, YOLO txt labels, image folders.

* :func:`read_dataset`: a dataset YAML parsed by ultralytics' own ``check_det_dataset``
  (paths resolved, ``names`` as a list or a dict, splits as folders, txt lists or lists of
  them), never downloading.
  A relative ``path:`` that ultralytics' own lookup misses is read beside the YAML
  (:func:`resolved_yaml`, which also hands ultralytics' validator a readable copy).
* :func:`split_images`: a split's images, with one-line errors for a missing folder or list and
  for listed images that do not exist; :func:`check_names`: the dataset's classes are the model's.
* :func:`image_files`, :func:`label_files`, :func:`read_labels`, :func:`load_image`: the
  images of a split, their YOLO txt labels as a multi-hot row, an image letterboxed as the
  detectors see it.
* :func:`batches` / :class:`Batches`: re-iterable ``(images, multi_hot)`` batches from a
  dataset YAML (its labels) or from an image folder or one image (labels from a callable
  the caller passes in, typically the model's own confident detections).
* :func:`digits_yaml`: DigitScenes written once as a YOLO dataset, cached.

This module reads data only: it uses ultralytics' dataset utilities, never its model classes.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tpunlearn.errors import DataError, UsageError, listed

from . import folder

__all__ = ["DIGITS_SEED", "Batches", "Labeller", "batches", "bundled_images", "cache_root", "check_names",
           "digits_yaml", "error_line", "image_files", "is_image", "label_files", "load_image", "quiet",
           "read_dataset", "read_labels", "resolved_yaml", "split_images"]

DIGITS_SEED = 0  # the seed of the DigitScenes that digits_yaml writes (the zoo's own scenes)
Labeller = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) -> multi_hot (B, nc)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """ultralytics' log level raised to warnings for a call (it logs 'Overriding model.yaml nc=...')."""
    import logging

    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def error_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message, without ultralytics' emoji prefixes."""
    text = str(exc).replace("ERROR ❌️", "").replace("❌", "").strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)
    return line if len(line) <= 200 else line[:197] + "..."


def read_dataset(path: Path, split: str = "") -> dict[str, Any]:
    """ultralytics' own parse of a dataset YAML (paths resolved, ``nc`` and ``names`` set), never
    downloading; ``split`` names the split that must exist (``""``: none is checked).

    A relative ``path`` is looked up as ultralytics does (the current folder, then its datasets
    folder), then beside the YAML (:func:`resolved_yaml`).
    """
    from ultralytics.data.utils import check_det_dataset

    with resolved_yaml(path) as readable:
        try:
            with quiet():
                data = check_det_dataset(str(readable), autodownload=False, split=split)
        except Exception as exc:  # noqa: BLE001 - FileNotFoundError, SyntaxError, TypeError from its checks
            raise DataError(f"cannot read dataset {path}: {error_line(exc)}") from None
    data["yaml_file"] = str(path)
    return data


@contextlib.contextmanager
def resolved_yaml(path: Path) -> Iterator[Path]:
    """``path``, or inside the block a copy of it whose relative ``path:`` is made absolute when
    only the YAML's own folder holds the splits it names (ultralytics reads a relative root
    against the current folder, then its datasets folder: a run from another folder would miss
    the user's dataset)."""
    import yaml

    if not path.is_file():
        raise DataError(f"no such dataset YAML: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read dataset {path}: YAML syntax error ({error_line(exc)})") from None
    root = data.get("path") if isinstance(data, dict) else None
    if not isinstance(root, str) or not root or Path(root).is_absolute() or _ultralytics_finds(Path(root), data):
        yield path
        return
    beside = (path.resolve().parent / root).resolve()
    if not _holds_splits(beside, data):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tpunlearn-data-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_text(yaml.safe_dump({**data, "path": str(beside)}, sort_keys=False))
        yield copy


def _ultralytics_finds(root: Path, data: dict[str, Any]) -> bool:
    """Does ultralytics find the splits under a relative dataset root (the current folder, else its
    datasets folder, the first that exists)?"""
    from ultralytics.utils import DATASETS_DIR

    return _holds_splits(root if root.exists() else DATASETS_DIR / root, data)


def _holds_splits(root: Path, data: dict[str, Any]) -> bool:
    """Do the ``train`` and ``val`` entries of a dataset YAML all exist under ``root``?"""
    entries = [e for k in ("train", "val") for e in ([data[k]] if isinstance(data.get(k), str) else data.get(k) or [])]
    return bool(entries) and all(isinstance(e, str) and (root / e).exists() for e in entries)


def split_images(data: dict[str, Any], split: str, empty_ok: bool = False) -> list[str]:
    """The images of one split of a parsed dataset YAML; a one-line DataError when its folder or
    list is missing, when a txt list names images that do not exist, or (unless ``empty_ok``)
    when it holds none."""
    from ultralytics.data.utils import IMG_FORMATS

    where = f"the {split} split of {data.get('yaml_file', 'the dataset')}"
    entries = data.get(split)
    entries = [entries] if isinstance(entries, (str, Path)) else list(entries or [])
    for entry in entries:
        if not Path(entry).exists():
            raise DataError(f"{where} is missing: no such folder or file {entry}")
        if Path(entry).suffix.lower() == ".txt":
            gone = [f for f in _listed_lines(Path(entry)) if folder.is_image(f, IMG_FORMATS) and not Path(f).is_file()]
            if gone:
                raise DataError(f"{entry} lists {len(gone)} image(s) that do not exist (first: {gone[0]})")
    images = image_files(entries)
    if not images and not empty_ok:
        raise DataError(f"no images in {where}")
    return images


def _listed_lines(listing: Path) -> list[str]:
    """The paths a txt image list names, relative ones resolved against its folder."""
    lines = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return [str(Path(line) if Path(line).is_absolute() else (listing.parent / line).resolve()) for line in lines]


def check_names(data: dict[str, Any], names: Sequence[str]) -> None:
    """A dataset's classes must be the model's: the same count, and the same names in order."""
    theirs = [str(data["names"][i]) for i in range(int(data["nc"]))]
    where = data.get("yaml_file", "the dataset")
    if len(theirs) != len(names):
        raise DataError(f"{where} has {len(theirs)} classes ({listed(theirs)}) but the model has {len(names)} "
                        f"({listed(names)}); pass the dataset YAML the model was trained on")
    differ = [i for i, (a, b) in enumerate(zip(theirs, names, strict=True)) if a != b]
    if differ:
        i = differ[0]
        raise DataError(f"{where} names class {i} {theirs[i]!r} but the model calls it {names[i]!r} "
                        f"({len(differ)} class(es) differ); pass the dataset YAML the model was trained on")


def is_image(path: str | Path) -> bool:
    """True for a file of a format ultralytics' dataset loader reads."""
    from ultralytics.data.utils import IMG_FORMATS

    return folder.is_image(path, IMG_FORMATS)


def image_files(source: str | Path | Sequence[str | Path]) -> list[str]:
    """The images of a split entry (folder(s), txt list(s) or image path(s)), sorted like ultralytics."""
    from ultralytics.data.utils import IMG_FORMATS

    return folder.image_files(source, IMG_FORMATS)


def label_files(images: Sequence[str]) -> list[str]:
    """The YOLO txt label path of each image (``images/`` -> ``labels/``, as ultralytics maps them)."""
    from ultralytics.data.utils import img2label_paths

    return img2label_paths(list(images))


def read_labels(path: str | Path, nc: int) -> torch.Tensor:
    """The classes a YOLO txt label file names, as a ``(nc,)`` multi-hot row (no file: no object)."""
    row = torch.zeros(nc)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return row
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            c = int(float(parts[0]))
        except ValueError:
            raise DataError(f"{path}: bad label line {line!r}") from None
        if not 0 <= c < nc:
            raise DataError(f"{path}: class {c} is outside the model's {nc} classes")
        row[c] = 1.0
    return row


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """An image letterboxed to ``size`` (gray 114 padding), RGB, ``(3, size, size)`` in [0, 1]."""
    import numpy as np
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.patches import imread

    img = imread(str(path))
    if img is None:
        raise DataError(f"cannot read image {path}")
    boxed: Any = LetterBox(new_shape=(size, size), auto=False, stride=32)(image=img)  # an array (no labels given)
    chw = np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    return torch.from_numpy(chw).float() / 255.0


def bundled_images() -> list[str]:
    """ultralytics' bundled ``bus.jpg`` and ``zidane.jpg`` (the data of a YOLO model that names none)."""
    from ultralytics.utils import ASSETS

    files = [ASSETS / "bus.jpg", ASSETS / "zidane.jpg"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"ultralytics' bundled images are missing ({missing[0]}); pass --data")
    return [str(f) for f in files]


class Batches:
    """Re-iterable ``(images, multi_hot)`` batches, read lazily (the scorer stops early).

    Labels come from the YOLO txt files ``labels`` (one per image) or, when None, from
    ``labeller`` called on each batch of images.
    """

    def __init__(self, images: list[str], labels: list[str] | None, nc: int, size: int, batch_size: int,
                 labeller: Labeller | None = None, names: Sequence[str] | None = None) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if labels is None and labeller is None:
            raise UsageError("unlabelled images need a labeller")
        self.images, self.labels, self.nc, self.size = images, labels, nc, size
        self.batch_size, self.labeller = int(batch_size), labeller
        self.names = list(names) if names is not None else [str(c) for c in range(nc)]

    def classes_found(self) -> list[str] | None:
        """The names of the classes that the labels hold at least once (None: unlabelled images)."""
        if self.labels is None:
            return None
        found = torch.zeros(self.nc)
        for f in self.labels:
            found = torch.maximum(found, read_labels(f, self.nc))
        return [self.names[c] for c in found.nonzero().flatten().tolist()]

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.images), self.batch_size):
            stop = start + self.batch_size
            images = torch.stack([load_image(f, self.size) for f in self.images[start:stop]])
            if self.labels is not None:
                multi_hot = torch.stack([read_labels(f, self.nc) for f in self.labels[start:stop]])
            else:
                assert self.labeller is not None  # checked in __init__
                multi_hot = self.labeller(images)
            yield images, multi_hot


def batches(spec: str, nc: int, size: int, batch_size: int, labeller: Labeller,
            names: Sequence[str] | None = None) -> Batches:
    """Batches of a data spec: a dataset YAML (its ``train`` split, else ``val``; YOLO txt labels),
    an image folder or one image (labels from ``labeller``).

    A dataset YAML's classes must be the model's ``names`` (given: count and names; else the count).
    """
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        data = read_dataset(path)
        if names is not None:
            check_names(data, names)
        elif int(data["nc"]) != nc:
            raise DataError(f"{spec} has {data['nc']} classes but the model has {nc}")
        images = split_images(data, "train" if data.get("train") else "val")
        if data.get("train") and data.get("val"):
            split_images(data, "val", empty_ok=True)  # a broken val split fails now, not after scoring (--eval, --auto)
        return Batches(images, label_files(images), nc, size, batch_size, names=names)
    if path.is_dir():
        images = image_files(path)
        if not images:
            raise DataError(f"no images in {spec}; pass a folder of images, a dataset YAML or digits[:N]")
        return Batches(images, None, nc, size, batch_size, labeller)
    if path.is_file() and is_image(path):
        return Batches([str(path)], None, nc, size, batch_size, labeller)
    raise DataError(f"cannot read data {spec!r}: give an ultralytics dataset YAML, an image folder, an image "
                    "or digits[:N]")


def cache_root() -> Path:
    """Where generated datasets are kept: ``$TPUNLEARN_CACHE``, else ``$XDG_CACHE_HOME/tpunlearn``
    (``~/.cache/tpunlearn``), else a folder in the system temp dir when that is not writable."""
    env = os.environ.get("TPUNLEARN_CACHE")
    candidates = [Path(env)] if env else []
    candidates.append(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tpunlearn")
    candidates.append(Path(tempfile.gettempdir()) / f"tpunlearn-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")
    for root in candidates:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if os.access(root, os.W_OK):
                return root
        except OSError:
            continue
    raise DataError("no writable cache folder for DigitScenes; set TPUNLEARN_CACHE to one")


def digits_yaml(size: int, n_train: int = 0, n_test: int = 0, seed: int = DIGITS_SEED, n_val: int = 0) -> Path:
    """An ultralytics dataset YAML of DigitScenes at ``size`` pixels, written once and cached.

    The folder (under :func:`cache_root`, keyed by size, seed and scene counts) holds
    ``images/{train,test}`` and their labels as :func:`tpunlearn.data.write_yolo` writes
    them; its ``data.yaml`` names the train split ``train`` and the *test* split both
    ``val`` and ``test``, so ultralytics' validator (which reads ``val``) scores the test
    scenes. With ``n_val`` scenes of DigitScenes' own validation split, those are ``val``
    instead (for choosing settings without touching the test scenes). Scene ``i`` of a
    split depends only on ``(seed, split, i)``, so these are the first scenes of the splits
    that the zoo model was trained and tested on. A split with 0 scenes is written empty.
    Written to a temp folder and renamed into place: concurrent
    callers never see half a dataset.
    """
    size, n_train, n_test, n_val = int(size), int(n_train), int(n_test), int(n_val)
    root = cache_root() / (f"digitscenes-yolo-{size}px-seed{int(seed)}-train{n_train}-test{n_test}"
                           + (f"-val{n_val}" if n_val else ""))
    return _cached_dataset(root, lambda tmp: _write_digits(tmp, root, size, seed,
                                                           {"train": n_train, "test": n_test, "val": n_val}))


def glyphs_yaml(size: int, n_train: int = 512, n_test: int = 1000, val_from: str = "test") -> Path:
    """An ultralytics dataset YAML of GlyphScenes at ``size`` pixels (train split for scoring, the
    test split as ``val``, which ultralytics' validator reads), written once into the cache.
    ``val_from="val"`` puts ``n_test`` scenes of GlyphScenes' own val split there instead: the data
    ``--auto`` chooses settings on, never the test scenes ``--eval`` reports."""
    if val_from not in ("test", "val"):
        raise ValueError(f"val_from must be 'test' or 'val', got {val_from!r}")
    root = cache_root() / f"glyphscenes-yolo-{int(size)}px-train{int(n_train)}-{val_from}{int(n_test)}"
    return _cached_dataset(root, lambda tmp: _write_glyphs(tmp, root, int(size), int(n_train), int(n_test), val_from))


def _cached_dataset(root: Path, write: Callable[[Path], None]) -> Path:
    """``root/data.yaml``, written once: ``write(tmp)`` fills a temp folder beside ``root`` that is
    then renamed into place, so concurrent callers never see half a dataset."""
    import shutil

    data_file = root / "data.yaml"
    if data_file.is_file():
        return data_file
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, root)
        except OSError:  # another process wrote it first
            if not data_file.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return data_file


def _write_glyphs(dest: Path, root: Path, size: int, n_train: int, n_test: int, val_from: str = "test") -> None:
    """GlyphScenes' train split and its ``val_from`` split (as ``val``) into ``dest``, with a
    ``data.yaml`` that points at ``root``."""
    import yaml

    from .glyphscenes import GlyphScenes
    from .writers import write_yolo_dataset

    written = write_yolo_dataset(dest, {"train": GlyphScenes("train", size=size, n_scenes=n_train),
                                        "val": GlyphScenes(val_from, size=size, n_scenes=n_test)})
    data = yaml.safe_load(written.read_text())
    written.write_text(yaml.safe_dump({**data, "path": str(root)}, sort_keys=False))


def _write_digits(dest: Path, root: Path, size: int, seed: int, counts: dict[str, int]) -> None:
    """DigitScenes' splits (train, test and, when counted, val) into ``dest``, with a ``data.yaml``
    that points at ``root``."""
    import yaml

    from .digitscenes import CLASS_NAMES, write_yolo

    splits = ("train", "test", "val") if counts.get("val") else ("train", "test")
    write_yolo(dest, size=size, seed=seed, splits=splits, n_scenes={k: counts.get(k, 0) for k in splits})
    val = "images/val" if counts.get("val") else "images/test"
    data = {"path": str(root), "train": "images/train", "val": val, "test": "images/test",
            "names": {d: name for d, name in enumerate(CLASS_NAMES)}}
    (dest / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
