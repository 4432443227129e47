"""The model zoo: small models trained on DigitScenes and GlyphScenes by ``scripts/train_zoo.py``.

Checkpoints live in ``tpunlearn/weights/`` (fp16, a few MB) so that everything runs
offline. Each :class:`ZooEntry` names its family and the architecture that rebuilds it;
the family's adapter, from the adapter registry, builds and loads it (the adapters know
nothing of the zoo: an entry is handed to them)::

    model, info = tpunlearn.zoo.load("digitscenes-resnet")
    model, info = tpunlearn.zoo.load("digitscenes-yolov5", weights="out/model.pt")  # a pruned copy

One checkpoint format per family, each the family's own save format plus a training record:

* ``timm``: ``tpunlearn-zoo/1``, a dict of plain types and tensors (loads with
  ``weights_only=True``): ``{"format", "name", "timm_name", "timm_kwargs", "state_dict"
  (fp16), "class_names", "input_size", "task", "train": {epochs, seed, n_train, test_recall, ...}}``.
* ``yolov5``: ultralytics' own checkpoint layout (fp16 ``DetectionModel``), so
  ``ultralytics.YOLO(path)`` loads it too; its ``"tpunlearn"`` entry holds
  ``{"zoo": {"name", "train": {epochs, imgsz, test_ap50, test_map50, ...}}}``.
* ``deeplabv3``: ``tpunlearn-deeplabv3/1`` (fp16), with ``"zoo": {"name", "train": {...,
  test_iou, test_miou}}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpunlearn.data.glyphscenes import GLYPH_CLASSES
from tpunlearn.errors import UsageError, WeightsError

__all__ = ["FORMAT", "WEIGHTS_DIR", "ZOO", "ZooEntry", "adapter_of", "build", "build_model", "checkpoint", "entry",
           "load", "names", "weights_path"]

FORMAT = "tpunlearn-zoo/1"  # the timm family's zoo checkpoints (the adapter reads them)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it and its weights.

    ``family="timm"``: ``timm.create_model(arch, **kwargs)``; ``family="yolov5"``: the
    ultralytics model YAML ``arch`` with ``kwargs["nc"]`` classes; ``family="deeplabv3"``:
    the deeplabv3 adapter's ``arch`` with ``kwargs`` (its ``tpunlearn-deeplabv3/1`` checkpoint,
    fp16, carries the training record under ``"zoo"``).
    """

    name: str
    arch: str
    kwargs: dict[str, Any]
    weights: str  # file name under tpunlearn/weights/
    task: str = "multilabel"
    description: str = ""
    family: str = "timm"
    data: str = "digits"
    class_names: list[str] = field(default_factory=lambda: [str(d) for d in range(10)])
    input_size: tuple[int, int, int] = (3, 64, 64)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="digitscenes-resnet",
            arch="resnet18",
            kwargs={"num_classes": 10, "in_chans": 3, "layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256]},
            weights="digitscenes-resnet.pt",
            task="multilabel",
            description=(
                "timm ResNet (BasicBlock, one block per stage, widths 32-64-128-256, 1.25M params), "
                "10 sigmoid outputs: which digits a 64x64 DigitScenes scene holds"
            ),
        ),
        ZooEntry(
            name="digitscenes-yolov5",
            arch="yolov5n.yaml",
            kwargs={"nc": 10},
            weights="digitscenes-yolov5.pt",
            task="detection",
            family="yolov5",
            description=(
                "ultralytics YOLOv5n (yolov5n.yaml, anchor-free Detect head, 2.5M params), "
                "10 classes: boxes around the digits of a 64x64 DigitScenes scene"
            ),
        ),
        ZooEntry(
            name="glyphscenes-resnet",
            arch="resnet18",
            kwargs={"num_classes": len(GLYPH_CLASSES), "in_chans": 3, "layers": [1, 1, 1, 1],
                    "channels": [32, 64, 128, 256]},
            weights="glyphscenes-resnet.pt",
            task="multilabel",
            data="glyphs",
            class_names=list(GLYPH_CLASSES),
            description=(
                "timm ResNet (as digitscenes-resnet), 24 sigmoid outputs: which shapes and letters a 64x64 "
                "GlyphScenes scene holds; trained with timm's optimizer, scheduler and BCE"
            ),
        ),
        ZooEntry(
            name="glyphscenes-yolov5",
            arch="yolov5n.yaml",
            kwargs={"nc": len(GLYPH_CLASSES)},
            weights="glyphscenes-yolov5.pt",
            task="detection",
            family="yolov5",
            data="glyphs",
            class_names=list(GLYPH_CLASSES),
            description=(
                "ultralytics YOLOv5n (yolov5n.yaml), 24 classes: boxes around the shapes and letters of a 64x64 "
                "GlyphScenes scene; trained by ultralytics' own trainer"
            ),
        ),
        ZooEntry(
            name="digitscenes-deeplabv3",
            arch="deeplabv3_resnet_tiny",
            kwargs={"num_classes": 11, "aux_loss": False},
            weights="digitscenes-deeplabv3.pt",
            task="segmentation",
            family="deeplabv3",
            class_names=["background"] + [str(d) for d in range(10)],
            description=(
                "torchvision DeepLabV3 on a small BasicBlock ResNet (output stride 4, 128-channel ASPP, "
                "1.31M params), 11 classes: background and digits 0-9 per pixel of a 64x64 DigitScenes scene"
            ),
        ),
        ZooEntry(
            name="glyphscenes-deeplabv3",
            arch="deeplabv3_resnet_tiny",
            kwargs={"num_classes": len(GLYPH_CLASSES) + 1, "aux_loss": False},
            weights="glyphscenes-deeplabv3.pt",
            task="segmentation",
            family="deeplabv3",
            data="glyphs",
            class_names=["background", *GLYPH_CLASSES],
            description=(
                "torchvision DeepLabV3 on the small ResNet of digitscenes-deeplabv3, 25 classes: background and "
                "the 24 shapes and letters per pixel of a 64x64 GlyphScenes scene; trained with torchvision's "
                "segmentation reference recipe (SGD, polynomial LR)"
            ),
        ),
    )
}


def names() -> list[str]:
    """Names of the zoo models."""
    return sorted(ZOO)


def entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` called ``name``; unknown names raise :class:`UsageError`."""
    try:
        return ZOO[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown zoo model {name!r}; known: {', '.join(names())}") from None


def weights_path(name: str) -> Path:
    """Absolute path of the checkpoint file of zoo model ``name`` (it may not exist yet)."""
    return WEIGHTS_DIR / entry(name).weights


def adapter_of(name: str) -> Any:
    """The adapter of zoo model ``name``'s family (from the adapter registry)."""
    from tpunlearn import adapters

    return adapters.get(entry(name).family)


def build(name: str) -> Any:
    """The architecture of zoo model ``name``, randomly initialised (no weights loaded)."""
    model, _ = adapter_of(name).build(entry(name).arch, zoo=entry(name))
    return model


def build_model(name: str, weights: str | Path | None = None, trust_checkpoint: bool = False,
                **options: Any) -> tuple[Any, Any, Any]:
    """``(adapter, model, ModelInfo)`` of zoo model ``name`` with its weights (or ``weights``, a
    pruned copy of it), built by its family's adapter; the model is in eval mode."""
    path = Path(weights).resolve() if weights is not None else weights_path(name)
    if weights is None and not path.is_file():
        raise WeightsError(f"weights for zoo model {name!r} not found at {path}; "
                           f"run `python scripts/train_zoo.py {name}`")
    adapter = adapter_of(name)
    model, info = adapter.build(entry(name).arch, weights=path, zoo=entry(name), trust_checkpoint=trust_checkpoint,
                                **options)
    return adapter, model, info


def checkpoint(name: str, model: Any, train: dict[str, Any]) -> dict[str, Any]:
    """The ``tpunlearn-zoo/1`` checkpoint of timm zoo model ``name``: its fp16 state, names, input size
    and ``train`` (the training record), as scripts/train_zoo.py writes it."""
    import torch

    e = entry(name)
    state = {k: (v.detach().half() if torch.is_floating_point(v) else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    return {"format": FORMAT, "name": name, "timm_name": e.arch, "timm_kwargs": dict(e.kwargs),
            "state_dict": state, "class_names": list(e.class_names), "input_size": list(e.input_size),
            "task": e.task, "train": train}


def load(name: str, weights: str | Path | None = None, trust_checkpoint: bool = False) -> tuple[Any, dict[str, Any]]:
    """Build zoo model ``name``, load its weights (fp16 -> float32, strict) and set eval mode.

    ``weights`` overrides the checkpoint path (a pruned copy of the zoo model loads too).
    Returns ``(model, info)``; ``info`` holds ``name``, ``arch``, ``family``, ``task``,
    ``kwargs``, ``data``, ``class_names``, ``input_size``, ``weights`` (absolute path),
    ``sha256``, ``train`` (the training record) and its ``test_*`` metrics (``test_recall``
    for classifiers, ``test_ap50``/``test_map50`` for detectors, ``test_iou``/``test_miou``
    for segmenters). Files load through :func:`tpunlearn.safeload.load_checkpoint`
    (``trust_checkpoint`` allows a file off its allow-list, with a warning).
    """
    from tpunlearn.io import sha256

    e = entry(name)
    path = Path(weights).resolve() if weights is not None else weights_path(name)
    if not path.is_file():
        raise WeightsError(f"weights for zoo model {name!r} not found at {path}; "
                           f"run `python scripts/train_zoo.py {name}`")
    _adapter, model, minfo = build_model(name, path, trust_checkpoint)
    train = dict(minfo.extra.get("train") or {})
    info = {
        "name": e.name,
        "arch": e.arch,
        "family": e.family,
        "task": minfo.task,
        "kwargs": dict(e.kwargs),
        "data": e.data,
        "class_names": list(minfo.class_names),
        "input_size": list(minfo.input_size),
        "weights": str(path),
        "sha256": sha256(path),
        **{k: v for k, v in train.items() if k.startswith("test_")},
        "train": train,
    }
    return model, info
