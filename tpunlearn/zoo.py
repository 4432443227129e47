"""The model zoo: small models trained on DigitScenes by ``scripts/train_zoo.py``.

Checkpoints live in ``tpunlearn/weights/`` (fp16, a few MB) so that everything runs
offline. Each :class:`ZooEntry` names its family and the architecture that rebuilds it;
:func:`load` loads the weights::

    model, info = tpunlearn.zoo.load("digitscenes-resnet")
    model, info = tpunlearn.zoo.load("digitscenes-yolov5")

Two checkpoint formats, one per family:

* ``timm``: a ``torch.save`` of a dict with plain types and tensors only (it loads with
  ``weights_only=True``)::

    {"format": "tpunlearn-zoo/1", "name", "timm_name", "timm_kwargs", "state_dict" (fp16),
     "class_names", "input_size", "task", "train": {epochs, seed, lr, n_train, test_recall, ...}}

* ``yolov5``: ultralytics' own checkpoint layout (fp16 ``DetectionModel``, ``train_args``),
  as the yolov5 adapter saves it, so ``ultralytics.YOLO(path)`` loads it too; its
  ``"tpunlearn"`` entry holds ``{"zoo": {"name", "train": {epochs, imgsz, test_ap50,
  test_map50, ...}}}``. It loads through the yolov5 adapter (ultralytics' restricted
  loader first).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpunlearn.errors import UsageError, WeightsError

__all__ = ["FORMAT", "WEIGHTS_DIR", "ZOO", "ZooEntry", "entry", "load", "from_checkpoint", "names", "weights_path",
           "build"]

FORMAT = "tpunlearn-zoo/1"
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


def build(name: str):
    """The architecture of zoo model ``name``, randomly initialised (no weights loaded)."""
    e = entry(name)
    if e.family == "yolov5":
        from tpunlearn.adapters import get

        model, _ = get("yolov5").build(e.arch, names=e.class_names, imgsz=e.input_size[-1], **e.kwargs)
        return model
    if e.family == "deeplabv3":
        from tpunlearn.adapters import get

        model, _ = get("deeplabv3").build(e.arch, class_names=e.class_names, imgsz=e.input_size[-1], **e.kwargs)
        return model
    import timm

    return timm.create_model(e.arch, pretrained=False, **e.kwargs)


def load(name: str, weights: str | Path | None = None, trust_checkpoint: bool = False):
    """Build zoo model ``name``, load its weights (fp16 -> float32, strict) and set eval mode.

    ``weights`` overrides the checkpoint path. Returns ``(model, info)``; ``info`` holds
    ``name``, ``arch``, ``family``, ``task``, ``kwargs``, ``class_names``, ``input_size``,
    ``weights`` (absolute path), ``sha256``, ``test_recall``, ``test_precision`` and ``train``.
    Files load through :func:`tpunlearn.safeload.load_checkpoint` (``trust_checkpoint``
    allows a file off its allow-list, with a warning).
    """
    from tpunlearn.safeload import load_checkpoint

    e = entry(name)
    path = Path(weights).resolve() if weights is not None else weights_path(name)
    if not path.is_file():
        raise WeightsError(
            f"weights for zoo model {name!r} not found at {path}; run `python scripts/train_zoo.py {name}`"
        )
    if e.family == "yolov5":
        return _load_yolov5(e, path, trust_checkpoint)
    if e.family == "deeplabv3":
        return _load_deeplabv3(e, path, trust_checkpoint)
    return from_checkpoint(name, path, load_checkpoint(path, trust=trust_checkpoint))


def from_checkpoint(name: str, path: Path, ckpt: Any):
    """:func:`load` for a timm-family zoo model whose checkpoint ``ckpt`` was already read from ``path``."""
    import torch

    from tpunlearn.io import sha256

    e = entry(name)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        from tpunlearn.safeload import describe_checkpoint

        raise WeightsError(f"{path} is {describe_checkpoint(ckpt)}, not a {FORMAT} checkpoint of {name}; "
                           f"rebuild it with `python scripts/train_zoo.py {name}`")
    if ckpt.get("timm_name") != e.arch or dict(ckpt.get("timm_kwargs", {})) != e.kwargs:
        raise WeightsError(
            f"{path} holds {ckpt.get('timm_name')} {ckpt.get('timm_kwargs')}, not {e.arch} {e.kwargs}; "
            f"rebuild it with `python scripts/train_zoo.py {name}`"
        )
    model = build(name)
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit {e.arch}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    train = dict(ckpt.get("train", {}))
    info = {
        "name": e.name,
        "arch": e.arch,
        "family": e.family,
        "task": ckpt.get("task", e.task),
        "kwargs": dict(e.kwargs),
        "data": e.data,
        "class_names": list(ckpt.get("class_names", e.class_names)),
        "input_size": list(ckpt.get("input_size", e.input_size)),
        "weights": str(path),
        "sha256": sha256(path),
        "test_recall": train.get("test_recall"),
        "test_precision": train.get("test_precision"),
        "train": train,
    }
    return model, info


def _load_yolov5(e: ZooEntry, path: Path, trust_checkpoint: bool = False):
    """A yolov5-family zoo model through the yolov5 adapter; ``info`` as :func:`load` says,
    with ``test_ap50`` (per digit) and ``test_map50`` in place of recall and precision."""
    from tpunlearn.adapters import get

    model, minfo = get("yolov5").build(e.name, weights=path, trust_checkpoint=trust_checkpoint)
    train = dict(minfo.extra.get("train") or {})
    return model, _adapter_info(e, path, minfo, train, "test_ap50", "test_map50")


def _load_deeplabv3(e: ZooEntry, path: Path, trust_checkpoint: bool = False):
    """A deeplabv3-family zoo model through the deeplabv3 adapter (``tpunlearn-deeplabv3/1``
    checkpoint, fp16, its ``"zoo"`` record holding the training settings); ``info`` as
    :func:`load` says, with ``test_iou`` (per class name, background included),
    ``test_miou`` (over the ten digits) and ``test_miou_all`` (over all 11 classes)."""
    from tpunlearn.adapters import get

    model, minfo = get("deeplabv3").build(e.name, weights=path, trust_checkpoint=trust_checkpoint)
    train = dict((minfo.extra.get("zoo") or {}).get("train") or {})
    return model, _adapter_info(e, path, minfo, train, "test_iou", "test_miou", "test_miou_all")


def _adapter_info(e: ZooEntry, path: Path, minfo: Any, train: dict, *metrics: str) -> dict:
    """The ``info`` dict of :func:`load` for a model an adapter built, with its test ``metrics``."""
    from tpunlearn.io import sha256

    return {
        "name": e.name,
        "arch": e.arch,
        "family": e.family,
        "task": e.task,
        "kwargs": dict(e.kwargs),
        "data": e.data,
        "class_names": list(minfo.class_names),
        "input_size": list(minfo.input_size),
        "weights": str(path),
        "sha256": sha256(path),
        **{m: train.get(m) for m in metrics},
        "train": train,
    }
