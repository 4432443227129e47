"""DigitScenes: a deterministic multi-label / detection / segmentation benchmark.

Scenes are composed from scikit-learn's bundled UCI handwritten digits
(:func:`sklearn.datasets.load_digits`: 1,797 real 8x8 scans, values 0..16), so the whole
benchmark exists offline on any machine that has scikit-learn.

Each scene is a ``size x size`` grayscale canvas (64 by default) holding one to four
*distinct* digits at random, non-overlapping places, over a faint textured background with
low-amplitude gaussian noise. A scene carries all three label kinds:

* ``multi_hot``: the set of digits present, a float32 ``(10,)`` vector;
* ``boxes``: one tight box per digit, pixel ``xyxy`` with ``x2``/``y2`` exclusive
  (so ``w = x2 - x1``), in the order of ``labels``;
* ``mask``: a ``(size, size)`` uint8 class map, 0 background and ``d + 1`` for digit ``d``.

Splits are made **by source scan**: a fixed permutation of the 1,797 scans (seeded with
:data:`SPLIT_SEED`, independent of the scene ``seed``) gives about 60% of the scans to
``train``, 20% to ``val`` and 20% to ``test``. A scene only ever uses scans of its own
split, so no test scan is ever seen in training, whatever scene seeds are used.

Generation is deterministic and independent of access order: scene ``i`` of a split is
drawn from a ``torch.Generator`` seeded from ``(seed, split, i)`` alone. All scenes of a
dataset are generated once, at construction (about a second for 6,000 scenes).

Writers :func:`write_yolo` and :func:`write_voc` export the scenes as an ultralytics YOLO
detection dataset and a VOC-style segmentation folder; :class:`DigitScenesMasks` gives them
as segmentation batches (images and masks) at a model's input size.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .voc import SceneMasks

__all__ = [
    "CLASS_NAMES",
    "SPLITS",
    "SPLIT_SEED",
    "DEFAULT_SCENES",
    "Scene",
    "DigitScenes",
    "DigitScenesMasks",
    "MASK_CLASSES",
    "MASKS_MAX_SIDE",
    "split_pool",
    "write_yolo",
    "write_voc",
]

CLASS_NAMES: list[str] = [str(d) for d in range(10)]
SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
DEFAULT_SCENES = {"train": 6000, "val": 1000, "test": 1000}
_SPLIT_FRACTIONS = (0.6, 0.2)  # train, val; test takes the rest
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}

# How many digits a scene holds (1..4) and with what probability: mean 2.3 digits, so each
# digit is in about 23% of scenes, and pairs such as (3, 7) co-occur in about 4% of them.
_COUNT_PROBS = (0.25, 0.30, 0.25, 0.20)
_MIN_DIGIT, _MAX_DIGIT = 14, 26  # digit side in pixels at size 64; scaled with the canvas
_MASK_THRESHOLD = 0.35
_NOISE_STD = 0.04
_PLACE_TRIES = 40

_MASK64 = (1 << 64) - 1


@dataclass
class Scene:
    """One scene with all its labels (see the module docstring for the conventions)."""

    image: torch.Tensor  # float32 (channels, size, size) in [0, 1]
    multi_hot: torch.Tensor  # float32 (10,)
    labels: list[int]  # digits present, one per box
    boxes: torch.Tensor  # float32 (n, 4) pixel xyxy, x2/y2 exclusive
    mask: torch.Tensor  # uint8 (size, size): 0 background, d + 1 for digit d
    sources: list[int] = field(default_factory=list)  # index of each digit's scan in load_digits()


# --------------------------------------------------------------------------- source scans

_DIGITS: tuple[torch.Tensor, torch.Tensor] | None = None


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 scans as float32 ``(N, 8, 8)`` in [0, 1] (each divided by its max) and labels."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32)
        images = images / images.amax(dim=(1, 2), keepdim=True).clamp_min(1.0)
        _DIGITS = (images.contiguous(), torch.as_tensor(bunch.target, dtype=torch.long))
    return _DIGITS


def split_pool(split: str) -> torch.Tensor:
    """Indices (into ``load_digits()``) of the source scans that belong to ``split``."""
    _check_split(split)
    images, _ = _load_digits()
    n = images.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = round(n * _SPLIT_FRACTIONS[0])
    n_val = round(n * _SPLIT_FRACTIONS[1])
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    lo, hi = bounds[split]
    return perm[lo:hi].sort().values


def _check_split(split: str) -> None:
    if split not in SPLITS:
        from tpunlearn.errors import UsageError

        raise UsageError(f"unknown DigitScenes split {split!r}; use one of {', '.join(SPLITS)}")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def scene_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit generator seed that depends on ``(seed, split, index)`` only."""
    h = _splitmix64(int(seed) & _MASK64)
    h = _splitmix64(h ^ _SPLIT_CODE[split])
    h = _splitmix64(h ^ (int(index) & _MASK64))
    return h >> 1


# --------------------------------------------------------------------------- the dataset


class DigitScenes(Dataset):
    """Scenes of 1 to 4 handwritten digits; ``ds[i]`` is ``(image, multi_hot)``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint source scans, see module doc).
        size: canvas side in pixels (digit sizes scale with it; 64 gives 14..26 px digits).
        n_scenes: number of scenes; default 6000 / 1000 / 1000 for train / val / test.
        seed: scene seed; the same ``(split, size, seed, index)`` gives a bit-identical scene.
        channels: image channels; the grayscale canvas is replicated (3 by default, 1 allowed).

    ``scene(i)`` returns the full :class:`Scene` (labels, boxes, mask, source scans).
    ``images``/``multi_hot`` hold every scene as ``(N, 1, size, size)`` / ``(N, 10)`` tensors
    and :meth:`tensors` gives them with ``channels`` channels, for fast full-batch work.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 64,
        n_scenes: int | None = None,
        seed: int = 0,
        channels: int = 3,
    ) -> None:
        from tpunlearn.errors import UsageError

        _check_split(split)
        if int(size) < 24:
            raise UsageError(f"DigitScenes size must be at least 24 pixels, got {size}")
        if int(channels) < 1:
            raise UsageError(f"DigitScenes channels must be >= 1, got {channels}")
        n = DEFAULT_SCENES[split] if n_scenes is None else int(n_scenes)
        if n < 0:
            raise UsageError(f"DigitScenes n_scenes must be >= 0, got {n_scenes}")
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.channels = int(channels)
        self.n_scenes = n
        self.class_names = list(CLASS_NAMES)
        self.pool = split_pool(split)  # global scan indices of this split

        scans, scan_labels = _load_digits()
        pool_scans = scans[self.pool]
        pool_labels = scan_labels[self.pool]
        self._by_digit = [torch.nonzero(pool_labels == d).flatten() for d in range(10)]
        lo = max(6, round(_MIN_DIGIT * self.size / 64))
        hi = max(lo, round(_MAX_DIGIT * self.size / 64))
        self._sizes = list(range(lo, hi + 1))
        # every pool scan upscaled once per digit size (bilinear), so scenes only paste
        self._glyphs = {
            s: F.interpolate(pool_scans[:, None], size=(s, s), mode="bilinear", align_corners=False)[:, 0]
            .clamp_(0.0, 1.0)
            .contiguous()
            for s in self._sizes
        }
        self._count_cdf = torch.tensor(_COUNT_PROBS, dtype=torch.float64).cumsum(0)

        self.images = torch.empty(n, 1, self.size, self.size, dtype=torch.float32)
        self.masks = torch.empty(n, self.size, self.size, dtype=torch.uint8)
        self.multi_hot = torch.zeros(n, 10, dtype=torch.float32)
        self.labels: list[list[int]] = []
        self.boxes: list[torch.Tensor] = []
        self.sources: list[list[int]] = []
        for i in range(n):
            image, mask, labels, boxes, sources = self._generate(i)
            self.images[i, 0] = image
            self.masks[i] = mask
            self.multi_hot[i, labels] = 1.0
            self.labels.append(labels)
            self.boxes.append(boxes)
            self.sources.append(sources)
        del self._glyphs

    # -- generation ---------------------------------------------------------------------

    def _generate(self, index: int):
        S = self.size
        g = torch.Generator().manual_seed(scene_seed(self.seed, self.split, index))
        u = torch.rand(8, generator=g, dtype=torch.float64).tolist()
        count = 1 + int((self._count_cdf < u[0]).sum())
        count = min(count, 4)
        digits = torch.randperm(10, generator=g)[:count].tolist()

        # background: a faint random linear gradient plus gaussian noise
        base = 0.03 + 0.12 * u[1]
        gx, gy = (u[2] - 0.5) * 0.12, (u[3] - 0.5) * 0.12
        ramp = torch.linspace(-1.0, 1.0, S)
        canvas = base + gx * ramp[None, :] + gy * ramp[:, None]
        canvas = canvas + _NOISE_STD * torch.randn(S, S, generator=g)
        mask = torch.zeros(S, S, dtype=torch.uint8)

        labels: list[int] = []
        boxes: list[list[float]] = []
        sources: list[int] = []
        squares: list[tuple[int, int, int, int]] = []
        n_sizes = len(self._sizes)
        for d in digits:
            cands = self._by_digit[d]
            r = torch.randint(0, 1 << 30, (3 + 2 * _PLACE_TRIES,), generator=g).tolist()
            local = int(cands[r[0] % len(cands)])
            side = self._sizes[r[1] % n_sizes]
            intensity = 0.65 + 0.35 * (r[2] / (1 << 30))
            placed = None
            for t in range(_PLACE_TRIES):
                x = r[3 + 2 * t] % (S - side + 1)
                y = r[4 + 2 * t] % (S - side + 1)
                if all(x + side <= a or a + w <= x or y + side <= b or b + h <= y for a, b, w, h in squares):
                    placed = (x, y)
                    break
            if placed is None:
                continue  # no room left: drop this digit
            x, y = placed
            squares.append((x, y, side, side))
            glyph = self._glyphs[side][local]
            region = canvas[y : y + side, x : x + side]
            torch.maximum(region, glyph * intensity, out=region)
            ink = glyph > _MASK_THRESHOLD
            mask[y : y + side, x : x + side][ink] = d + 1
            rows = torch.nonzero(ink.any(1)).flatten()
            cols = torch.nonzero(ink.any(0)).flatten()
            if len(rows) == 0:  # cannot happen with max-normalised scans; keep the paste square
                box = [x, y, x + side, y + side]
            else:
                box = [x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1]
            labels.append(d)
            boxes.append([float(v) for v in box])
            sources.append(int(self.pool[local]))
        canvas.clamp_(0.0, 1.0)
        box_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return canvas, mask, labels, box_t, sources

    # -- access -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n_scenes

    def _image(self, i: int) -> torch.Tensor:
        return self.images[i].repeat(self.channels, 1, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(i)
        return self._image(i), self.multi_hot[i].clone()

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.n_scenes
        if not 0 <= i < self.n_scenes:
            raise IndexError(f"scene index {i} out of range for {self.n_scenes} scenes")
        return i

    def scene(self, i: int) -> Scene:
        """Scene ``i`` with its labels, boxes, mask and source scans."""
        i = self._index(i)
        return Scene(
            image=self._image(i),
            multi_hot=self.multi_hot[i].clone(),
            labels=list(self.labels[i]),
            boxes=self.boxes[i].clone(),
            mask=self.masks[i].clone(),
            sources=list(self.sources[i]),
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``(N, channels, size, size)`` and multi-hot targets ``(N, 10)``."""
        return self.images.repeat(1, self.channels, 1, 1), self.multi_hot.clone()

    def __repr__(self) -> str:
        return (
            f"DigitScenes(split={self.split!r}, size={self.size}, n_scenes={self.n_scenes}, "
            f"seed={self.seed}, channels={self.channels})"
        )


# --------------------------------------------------------------------------- writers


def _counts(n_scenes: int | Mapping[str, int] | None, split: str) -> int | None:
    if n_scenes is None or isinstance(n_scenes, int):
        return n_scenes
    return n_scenes.get(split)


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image[0] * 255.0).round().clamp(0, 255).to(torch.uint8)


def _save_gray(array: torch.Tensor, path: Path, palette: list[int] | None = None) -> None:
    from PIL import Image

    mode = "L" if palette is None else "P"
    img = Image.frombytes(mode, (array.shape[1], array.shape[0]), array.contiguous().numpy().tobytes())
    if palette is not None:
        img.putpalette(palette)
    img.save(path)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (index 0 black, 1 dark red, ...), 256 entries."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_yolo(
    root: str | Path,
    size: int = 64,
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    n_scenes: int | Mapping[str, int] | None = None,
) -> Path:
    """Write an ultralytics YOLO detection dataset of DigitScenes under ``root``.

    Layout: ``images/{split}/{split}_{i:05d}.png`` (8-bit grayscale),
    ``labels/{split}/{split}_{i:05d}.txt`` with one ``cls cx cy w h`` line per digit
    (normalised to [0, 1]), and ``data.yaml`` (``path``, ``train``, ``val``, ``test``,
    ``names``). ``n_scenes`` is one count for every split, a ``{split: count}`` mapping, or
    None for the defaults. Returns the path of ``data.yaml``.
    """
    import yaml

    root = Path(root).resolve()
    for split in splits:
        ds = DigitScenes(split, size=size, n_scenes=_counts(n_scenes, split), seed=seed, channels=1)
        img_dir = root / "images" / split
        lbl_dir = root / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(ds)):
            stem = f"{split}_{i:05d}"
            _save_gray(_to_uint8(ds.images[i]), img_dir / f"{stem}.png")
            lines = []
            for d, (x1, y1, x2, y2) in zip(ds.labels[i], ds.boxes[i].tolist(), strict=True):
                cx, cy = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size
                w, h = (x2 - x1) / size, (y2 - y1) / size
                lines.append(f"{d} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data: dict[str, object] = {"path": str(root)}
    for split in SPLITS:
        if split in splits:
            data[split] = f"images/{split}"
    data["names"] = {d: name for d, name in enumerate(CLASS_NAMES)}
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path


def write_voc(
    root: str | Path,
    size: int = 64,
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    n_scenes: int | Mapping[str, int] | None = None,
) -> Path:
    """Write a VOC-style segmentation folder of DigitScenes under ``root``; returns ``root``.

    Layout: ``JPEGImages/{split}_{i:05d}.png`` (PNG, not JPEG, so the pixels are exact),
    ``SegmentationClass/{split}_{i:05d}.png`` (palette PNG whose pixel *indices* are the
    classes: 0 background, ``d + 1`` for digit ``d``; coloured with the VOC colour map) and
    ``ImageSets/Segmentation/{split}.txt`` listing the ids of each split.
    """
    root = Path(root).resolve()
    jpeg = root / "JPEGImages"
    seg = root / "SegmentationClass"
    sets = root / "ImageSets" / "Segmentation"
    for d in (jpeg, seg, sets):
        d.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for split in splits:
        ds = DigitScenes(split, size=size, n_scenes=_counts(n_scenes, split), seed=seed, channels=1)
        ids = []
        for i in range(len(ds)):
            stem = f"{split}_{i:05d}"
            _save_gray(_to_uint8(ds.images[i]), jpeg / f"{stem}.png")
            _save_gray(ds.masks[i], seg / f"{stem}.png", palette=palette)
            ids.append(stem)
        (sets / f"{split}.txt").write_text("\n".join(ids) + ("\n" if ids else ""))
    return root


# --------------------------------------------------------------------------- segmentation batches
MASKS_MAX_SIDE = 256  # every glyph size is pre-rendered (gigabytes at 512): larger scenes are made here and resized
MASK_CLASSES = 1 + len(CLASS_NAMES)  # mask values: 0 background, d + 1 for digit d


class DigitScenesMasks(SceneMasks):
    """DigitScenes ``split`` as segmentation batches at any input ``size`` (``(H, W)``).

    Scenes are composed at ``max(H, W)`` (at most :data:`MASKS_MAX_SIDE`), their grayscale
    replicated to RGB, then resized to ``(H, W)`` (masks nearest), over the
    :data:`MASK_CLASSES` mask classes. See :class:`tpunlearn.data.voc.SceneMasks`.
    """

    def __init__(self, split: str, n_scenes: int, size: Sequence[int], batch_size: int = 16, with_masks: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        _check_split(split)
        super().__init__(split, n_scenes, size, MASK_CLASSES, batch_size, with_masks, mean, std)

    def scenes(self, side: int) -> DigitScenes:
        return _segmentation_scenes(self.split, min(side, MASKS_MAX_SIDE), self.n_scenes)

    def rgb(self, scenes: DigitScenes, start: int, stop: int) -> torch.Tensor:
        return scenes.images[start:stop].repeat(1, 3, 1, 1)


@functools.lru_cache(maxsize=1)
def _segmentation_scenes(split: str, size: int, n: int) -> DigitScenes:
    """DigitScenes ``split`` at ``size`` (the last one made is kept: evaluating before and after reuses it)."""
    return DigitScenes(split, size=size, n_scenes=n, channels=1)
