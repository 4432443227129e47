"""GlyphScenes: a second generated benchmark, unlike DigitScenes.

DigitScenes is grey handwriting on a flat background with ten classes. GlyphScenes is
colour, 24 classes (12 geometric shapes and 12 capital letters in five typefaces), rotated
and scaled, over crops of real photographs (scikit-learn's two bundled sample images), so
that a default tuned on DigitScenes meets other visuals, more classes and other
co-occurrence statistics. It exists offline on any machine with scikit-learn and
matplotlib (whose DejaVu fonts draw the letters).

A scene is an RGB ``size x size`` canvas holding one to four distinct glyphs at random,
non-overlapping places, each in a random colour that stands out from the photograph under
it. It carries all three label kinds, as DigitScenes does: ``multi_hot`` ``(24,)``, one
``xyxy`` box per glyph (x2/y2 exclusive) and a ``(size, size)`` uint8 mask (0 background,
``c + 1`` for class ``c``). ``objects=(1, 1)`` gives one glyph per image (multi-class data).

Splits differ in their draws and in the photographs' regions: ``train`` crops the left
60 % of each photograph, ``val`` the next 20 %, ``test`` the last 20 %. Scene ``i`` of a
split depends on ``(seed, split, i)`` alone; every scene is generated at construction.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import ImageDraw
from torch.utils.data import Dataset

from tpunlearn.data.digitscenes import Scene, scene_seed
from tpunlearn.errors import UsageError

from .voc import SceneMasks

__all__ = ["GLYPH_CLASSES", "GLYPH_MASK_CLASSES", "GlyphScenes", "GlyphScenesMasks", "SHAPES", "LETTERS"]

SHAPES = ["circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "heart",
          "arrow", "crescent"]
LETTERS = ["A", "B", "E", "F", "G", "H", "K", "M", "R", "S", "W", "Z"]
GLYPH_CLASSES: list[str] = SHAPES + LETTERS
GLYPH_MASK_CLASSES = len(GLYPH_CLASSES) + 1  # segmentation classes: background, then class c at c + 1
SPLITS = ("train", "val", "test")
DEFAULT_SCENES = {"train": 6000, "val": 1000, "test": 1000}
_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf")
_VARIANTS = len(_FONTS)  # glyph drawings per class (shapes: jittered proportions)
_BANK = 64  # side of a drawn glyph before it is warped into a scene
_REGIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}  # photo columns per split
_COUNT_PROBS = (0.25, 0.30, 0.25, 0.20)  # glyphs per scene (1..4): each class in ~10 % of scenes
_MIN_SIDE, _MAX_SIDE = 0.28, 0.46  # glyph side as a fraction of the canvas
_MAX_ROTATION = 30.0  # degrees
_ANGLES = 9  # rotations drawn per glyph drawing
_NOISE_STD = 0.03
_PLACE_TRIES = 40


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread inside the block: scene generation is thousands of tiny tensor ops,
    for which thread start-up costs more than the work (5x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def _bank() -> torch.Tensor:
    """Every class drawn ``_VARIANTS`` times: float alpha ``(24, V, 64, 64)`` in [0, 1]."""
    with single_thread():
        return torch.stack([torch.stack([_draw(name, v) for v in range(_VARIANTS)]) for name in GLYPH_CLASSES])


def _draw(name: str, variant: int) -> torch.Tensor:
    """One class drawn at 2x resolution and downsampled (anti-aliased alpha, ``(64, 64)``)."""
    from PIL import Image, ImageDraw, ImageFont

    big = _BANK * 2
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    if name in LETTERS:
        import matplotlib

        font_dir = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
        font = ImageFont.truetype(os.path.join(font_dir, _FONTS[variant]), int(big * 0.9))
        draw.text((big / 2, big / 2), name, fill=255, font=font, anchor="mm")
    else:
        jitter = 1.0 + 0.12 * (variant - (_VARIANTS - 1) / 2) / ((_VARIANTS - 1) / 2)  # aspect 0.88..1.12
        _draw_shape(draw, name, big, jitter)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(big, big).float() / 255.0
    alpha = F.avg_pool2d(pixels[None, None], 2)[0, 0]
    return _fit(alpha)


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, side: int, aspect: float) -> None:
    """Draw shape ``name`` filled (255) into a ``side``-pixel PIL canvas, stretched by ``aspect``."""
    c, r = side / 2, side * 0.45
    rx, ry = r * aspect, r / aspect

    def poly(points: list[tuple[float, float]]) -> None:
        draw.polygon([(c + x * rx, c + y * ry) for x, y in points], fill=255)

    def regular(n: int, start: float = -90.0, inner: float | None = None) -> list[tuple[float, float]]:
        pts = []
        for k in range(n * (2 if inner else 1)):
            radius = inner if inner and k % 2 else 1.0
            a = math.radians(start + k * 360.0 / (n * (2 if inner else 1)))
            pts.append((radius * math.cos(a), radius * math.sin(a)))
        return pts

    box = (c - rx, c - ry, c + rx, c + ry)
    if name == "circle":
        draw.ellipse(box, fill=255)
    elif name == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse((c - 0.55 * rx, c - 0.55 * ry, c + 0.55 * rx, c + 0.55 * ry), fill=0)
    elif name == "crescent":
        draw.ellipse(box, fill=255)
        draw.ellipse((c - 0.55 * rx, c - 1.05 * ry, c + 1.45 * rx, c + 0.95 * ry), fill=0)
    elif name == "square":
        poly([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)])
    elif name == "diamond":
        poly([(0, -1), (0.75, 0), (0, 1), (-0.75, 0)])
    elif name == "triangle":
        poly(regular(3))
    elif name == "pentagon":
        poly(regular(5))
    elif name == "hexagon":
        poly(regular(6, start=0.0))
    elif name == "star":
        poly(regular(5, inner=0.42))
    elif name == "cross":
        t = 0.32
        poly([(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
              (-t, -t)])
    elif name == "heart":
        draw.ellipse((c - rx, c - 0.8 * ry, c + 0.05 * rx, c + 0.2 * ry), fill=255)
        draw.ellipse((c - 0.05 * rx, c - 0.8 * ry, c + rx, c + 0.2 * ry), fill=255)
        poly([(-0.97, -0.15), (0.97, -0.15), (0, 1)])
    elif name == "arrow":
        poly([(-1, -0.28), (0.2, -0.28), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.28), (-1, 0.28)])
    else:
        raise ValueError(f"no drawing for {name!r}")


def _fit(alpha: torch.Tensor) -> torch.Tensor:
    """The glyph cropped to its ink and centred in a ``_BANK`` square with a small margin."""
    rows = alpha.amax(1) > 0.05
    cols = alpha.amax(0) > 0.05
    r = rows.nonzero().flatten()
    k = cols.nonzero().flatten()
    crop = alpha[int(r[0]):int(r[-1]) + 1, int(k[0]):int(k[-1]) + 1]
    h, w = crop.shape
    scale = (_BANK - 4) / max(h, w)
    crop = F.interpolate(crop[None, None], size=(max(1, round(h * scale)), max(1, round(w * scale))),
                         mode="bilinear", align_corners=False, antialias=True)[0, 0]
    out = torch.zeros(_BANK, _BANK)
    y, x = (_BANK - crop.shape[0]) // 2, (_BANK - crop.shape[1]) // 2
    out[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    return out.clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=4)
def _warped(size: int) -> dict[int, torch.Tensor]:
    """The bank warped once for a canvas size: side -> ``(24, V, _ANGLES, side, side)`` alpha,
    each drawing rotated to ``_ANGLES`` angles in [-30, 30] degrees (scenes only paste)."""
    bank = _bank().flatten(0, 1)  # (24 * V, 64, 64)
    angles = torch.linspace(-_MAX_ROTATION, _MAX_ROTATION, _ANGLES) * math.pi / 180
    out = {}
    with single_thread():
        for side in range(round(_MIN_SIDE * size), round(_MAX_SIDE * size) + 1):
            small = F.interpolate(bank[:, None], size=(side, side), mode="bilinear", align_corners=False,
                                  antialias=True)  # (24V, 1, s, s)
            rows = []
            for a in angles.tolist():
                theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
                grid = F.affine_grid(theta.expand(len(small), 2, 3), [len(small), 1, side, side], align_corners=False)
                rows.append(F.grid_sample(small, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
            out[side] = torch.stack(rows, 1)[:, :, 0].reshape(len(GLYPH_CLASSES), _VARIANTS, _ANGLES, side, side)
    return out


@functools.lru_cache(maxsize=1)
def _photos() -> torch.Tensor:
    """scikit-learn's two sample photographs, ``(2, 3, 213, 320)`` float in [0, 1] (half size)."""
    from sklearn.datasets import load_sample_images

    with single_thread():
        images = torch.stack([torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0
                              for img in load_sample_images().images])
        return F.interpolate(images, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)


@dataclass
class _Placed:
    cls: int
    x: int
    y: int
    side: int


class GlyphScenes(Dataset):
    """Scenes of one to four coloured glyphs over photographs; ``ds[i]`` is ``(image, multi_hot)``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: canvas side in pixels (glyph sides scale with it: 18..29 px at 64).
        n_scenes: number of scenes; default 6000 / 1000 / 1000.
        seed: scene seed; the same ``(split, size, seed, index)`` gives the same scene.
        objects: ``(min, max)`` glyphs per scene; ``(1, 1)`` makes single-label images.
    """

    num_classes = len(GLYPH_CLASSES)

    def __init__(self, split: str = "train", size: int = 64, n_scenes: int | None = None, seed: int = 0,
                 objects: tuple[int, int] = (1, 4)) -> None:
        if split not in SPLITS:
            raise UsageError(f"unknown GlyphScenes split {split!r}; use one of {', '.join(SPLITS)}")
        lo, hi = int(objects[0]), int(objects[1])
        if int(size) < 32 or not 1 <= lo <= hi <= 4:
            raise UsageError(f"GlyphScenes needs size >= 32 and 1 <= objects <= 4, got size {size}, objects {objects}")
        self.split, self.size, self.seed, self.objects = split, int(size), int(seed), (lo, hi)
        n = DEFAULT_SCENES[split] if n_scenes is None else int(n_scenes)
        if n < 0:
            raise UsageError(f"GlyphScenes n_scenes must be >= 0, got {n_scenes}")
        self.n_scenes = n
        self.class_names = list(GLYPH_CLASSES)
        self.pixels = torch.empty(n, 3, self.size, self.size, dtype=torch.uint8)
        self.masks = torch.zeros(n, self.size, self.size, dtype=torch.uint8)
        self.multi_hot = torch.zeros(n, self.num_classes)
        self.labels: list[list[int]] = []
        self.boxes: list[torch.Tensor] = []
        with single_thread():
            self._generate_all()

    def _generate_all(self) -> None:
        for i in range(self.n_scenes):
            image, mask, placed = self._generate(i)
            self.pixels[i] = (image * 255.0).round().clamp(0, 255).to(torch.uint8)
            self.masks[i] = mask
            self.labels.append([p.cls for p in placed])
            self.multi_hot[i, self.labels[-1]] = 1.0
            self.boxes.append(_boxes(mask, placed))

    # ---- generation ----------------------------------------------------------------------
    def _count(self, u: float) -> int:
        lo, hi = self.objects
        probs = _COUNT_PROBS[lo - 1:hi]
        total, acc = sum(probs), 0.0
        for k, p in enumerate(probs):
            acc += p / total
            if u < acc:
                return lo + k
        return hi

    def _generate(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[_Placed]]:
        seed = scene_seed(self.seed, self.split, index)
        rng = random.Random(seed)
        count = self._count(rng.random())
        classes = rng.sample(range(self.num_classes), count)
        canvas = self._background(rng)
        mask = torch.zeros(self.size, self.size, dtype=torch.uint8)
        bank = _warped(self.size)
        placed: list[_Placed] = []
        for c in classes:
            spot = self._place(rng, placed)
            if spot is None:
                continue  # no room left: drop this glyph
            alpha = bank[spot.side][c, rng.randrange(_VARIANTS), rng.randrange(_ANGLES)]
            region = canvas[:, spot.y:spot.y + spot.side, spot.x:spot.x + spot.side]
            colour = _contrasting(region.mean((1, 2)), rng)
            region.mul_(1 - alpha).add_(colour[:, None, None] * alpha)
            mask[spot.y:spot.y + spot.side, spot.x:spot.x + spot.side][alpha > 0.5] = c + 1
            placed.append(_Placed(c, spot.x, spot.y, spot.side))
        noise = torch.randn(canvas.shape, generator=torch.Generator().manual_seed(seed))
        canvas.add_(_NOISE_STD * noise).clamp_(0.0, 1.0)
        return canvas, mask, placed

    def _background(self, rng: random.Random) -> torch.Tensor:
        """A softened crop of one photograph, from this split's columns, at the canvas size."""
        photos = _photos()
        photo = photos[rng.randrange(len(photos))]
        _, h, w = photo.shape
        side = int(60 + rng.random() * (min(h, w * 0.2) - 60))
        lo, hi = _REGIONS[self.split]
        x0 = int(lo * w + rng.random() * max(1, (hi - lo) * w - side))
        y0 = int(rng.random() * (h - side))
        crop = photo[:, y0:y0 + side, x0:x0 + side]
        crop = F.interpolate(crop[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=True)[0]
        return 0.25 + 0.5 * crop * (0.6 + 0.4 * rng.random())

    def _place(self, rng: random.Random, placed: list[_Placed]) -> _Placed | None:
        sides = sorted(_warped(self.size))
        side = sides[rng.randrange(len(sides))]
        for _ in range(_PLACE_TRIES):
            x, y = rng.randrange(self.size - side + 1), rng.randrange(self.size - side + 1)
            if all(x + side <= p.x or p.x + p.side <= x or y + side <= p.y or p.y + p.side <= y for p in placed):
                return _Placed(-1, x, y, side)
        return None

    # ---- access --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_scenes

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(i)
        return self.pixels[i].float() / 255.0, self.multi_hot[i].clone()

    def _index(self, i: int) -> int:
        i = int(i) + (self.n_scenes if int(i) < 0 else 0)
        if not 0 <= i < self.n_scenes:
            raise IndexError(f"scene index {i} out of range for {self.n_scenes} scenes")
        return i

    def scene(self, i: int) -> Scene:
        """Scene ``i`` with its labels, boxes and mask."""
        i = self._index(i)
        return Scene(image=self.pixels[i].float() / 255.0, multi_hot=self.multi_hot[i].clone(),
                     labels=list(self.labels[i]), boxes=self.boxes[i].clone(), mask=self.masks[i].clone())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``(N, 3, size, size)`` float in [0, 1] and multi-hot targets ``(N, 24)``."""
        return self.pixels.float() / 255.0, self.multi_hot.clone()

    def __repr__(self) -> str:
        return (f"GlyphScenes(split={self.split!r}, size={self.size}, n_scenes={self.n_scenes}, seed={self.seed}, "
                f"objects={self.objects})")


def _contrasting(background: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A saturated random colour at least 0.35 away (RGB distance) from ``background``."""
    for _ in range(20):
        raw = [rng.random() for _ in range(3)]
        lo, hi = min(raw), max(raw)
        colour = torch.tensor([0.1 + 0.85 * (v - lo) / (hi - lo + 1e-6) for v in raw])  # saturated
        if float((colour - background).norm()) >= 0.35:
            return colour
    return torch.where(background > 0.5, torch.zeros(3), torch.ones(3))


def _boxes(mask: torch.Tensor, placed: list[_Placed]) -> torch.Tensor:
    """Tight ``xyxy`` boxes (x2/y2 exclusive) of each placed glyph's mask pixels."""
    out = []
    for p in placed:
        ink = mask[p.y:p.y + p.side, p.x:p.x + p.side] == p.cls + 1
        rows, cols = ink.any(1).nonzero().flatten(), ink.any(0).nonzero().flatten()
        out.append([p.x + int(cols[0]), p.y + int(rows[0]), p.x + int(cols[-1]) + 1, p.y + int(rows[-1]) + 1]
                   if len(rows) else [p.x, p.y, p.x + p.side, p.y + p.side])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


_MASKS_MAX_SIDE = 256  # larger inputs get scenes composed at 256 and resized (every glyph size is pre-warped)


class GlyphScenesMasks(SceneMasks):
    """GlyphScenes ``split`` as segmentation batches (:class:`tpunlearn.data.voc.SceneMasks`) at any input
    ``size`` ``(H, W)``: scenes composed at ``max(H, W)`` (at least 32, at most 256) and resized (masks
    nearest), over :data:`GLYPH_MASK_CLASSES` classes (0 background, ``c + 1`` for class ``c``), RGB in [0, 1]."""

    def __init__(self, split: str, n_scenes: int, size: Sequence[int], batch_size: int = 16, with_masks: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if split not in SPLITS:
            raise UsageError(f"unknown GlyphScenes split {split!r}; use one of {', '.join(SPLITS)}")
        super().__init__(split, n_scenes, size, GLYPH_MASK_CLASSES, batch_size, with_masks, mean, std)

    def scenes(self, side: int) -> GlyphScenes:
        return _mask_scenes(self.split, max(32, min(side, _MASKS_MAX_SIDE)), self.n_scenes)

    def rgb(self, scenes: GlyphScenes, start: int, stop: int) -> torch.Tensor:
        return scenes.pixels[start:stop].float() / 255.0


@functools.lru_cache(maxsize=2)
def _mask_scenes(split: str, size: int, n: int) -> GlyphScenes:
    """GlyphScenes ``split`` at ``size`` (the last two made are kept: scoring and evaluating before and after
    reuse them)."""
    return GlyphScenes(split, size=size, n_scenes=n)
