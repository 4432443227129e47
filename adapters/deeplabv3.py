"""torchvision DeepLabv3 family: semantic segmentation with a dict output.

Architectures: ``deeplabv3_resnet50``, ``deeplabv3_resnet101`` and
``deeplabv3_mobilenet_v3_large``, always built with ``weights=None, weights_backbone=None``
(no machine here reaches the internet); weights come from a local file. Plus
``deeplabv3_resnet_tiny`` (:func:`deeplabv3_resnet_tiny`: torchvision's ``DeepLabV3`` on a
one-block-per-stage BasicBlock ResNet, output stride 4, 128-channel ASPP; ~1.3M parameters,
for 64x64 inputs) and the zoo model ``digitscenes-deeplabv3`` (that architecture trained on
DigitScenes by ``scripts/train_zoo.py``; ``build("digitscenes-deeplabv3")`` loads the
bundled checkpoint, ``weights=`` another one, pruned ones included).

Decisions, in the order a user meets them:

* **Output.** The model returns ``{"out": (B, C, H, W)}`` plus ``"aux"`` when the auxiliary
  head is on. :meth:`DeepLabV3Adapter.output_transform` gives ``out`` (one tensor, for
  torch-pruning's trace, the post-pruning check and ONNX). When an ``aux`` output is present
  and no ONNX/JIT export is running it returns ``out + 0 * aux``: numerically ``out``, but
  the auxiliary head stays in torch-pruning's trace, so a pruned backbone channel that feeds
  the aux head also leaves the aux head's *input* (a trace of ``out`` alone would leave the
  aux head out of every group and break the forward). ONNX exports ``out`` only.
* **Auxiliary head.** Kept, never pruned: the whole ``aux_classifier`` is an ignored layer
  (none of its convs is a candidate; no group may remove its output channels; its input
  channels follow the backbone). It only matters for training (its loss); inference and
  unlearning read ``out``. ``aux_loss=None`` builds it only when the checkpoint has it.
* **Ignored convolutions.** As in the paper ("the last two convolutional layers" are not
  unlearned): the DeepLabHead's 3x3 ``Conv2d(256, 256)`` after ASPP (``classifier.1``) and
  its final ``Conv2d(256, num_classes, 1)`` (``classifier.4``), plus ``aux_classifier``.
  ASPP (branches, pooling branch, projection) and the backbone are candidates.
* **Classes.** 21 classes get torchvision's VOC names (``person`` is 15); 11 classes are
  the DigitScenes segmentation layout (``background`` then digits ``0``..``9``, so digit
  ``d`` is index ``d + 1`` and ``--forget 3`` means the digit); any other count is named
  ``"0"``..``"n-1"`` unless ``class_names`` is given.
* **Normalisation** (a build setting, stored in the checkpoint): ``"imagenet"`` (the mean
  and std torchvision's VOC models were trained with; the default for 21 classes),
  ``"none"`` (images in [0, 1]; the default otherwise, and what DigitScenes models use) or
  ``{"mean": [...], "std": [...]}``. :meth:`samples` and :meth:`evaluate` apply it; the
  model itself never normalises (as in torchvision).
* **Data.** ``"digits"`` (or ``"digits:N"`` for N scenes): DigitScenes rendered at the
  model's input size (composed at up to 256 pixels and resized beyond: DigitScenes
  pre-renders every digit size, which costs gigabytes at 512), 256 train scenes for scoring
  and 200 test scenes for evaluation by default (all are generated at once). A folder:
  VOC layout (``JPEGImages/``, ``SegmentationClass/`` palette PNGs whose indices are the
  classes, 255 ignored, ``ImageSets/Segmentation/{train,val}.txt``); scoring reads
  ``train.txt``, evaluation ``val.txt`` (else ``test.txt``). Images are resized to the
  input size (aspect not kept); evaluation compares at each mask's own resolution.
* **Metric.** Per-class IoU from one confusion matrix (bincount, 255 ignored); ``NaN`` for a
  class that is neither in the ground truth nor predicted. :meth:`segmentation_metrics`
  adds mIoU (NaN-free mean) and pixel accuracy.
* **Checkpoint** (``tpunlearn-deeplabv3/1``): arch, builder kwargs, class names, input
  size, normalisation, torch-pruning history and state dict; only tensors and plain
  Python values, so it loads with ``torch.load(weights_only=True)``. ``build(arch,
  weights=path)`` rebuilds the architecture, replays the history, then loads the weights.
  ``arch`` is always the builder's name (``deeplabv3_resnet_tiny`` for the zoo model); a zoo
  checkpoint is fp16 (``save(..., half=True)``) and adds ``"zoo": {"name", "train": {...,
  "test_iou", "test_miou"}}``; a pruned copy of a zoo model keeps only ``{"name", "pruned"}``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tpunlearn.errors import DataError, UsageError, WeightsError
from tpunlearn.targets import SegmentationLogit, Target

from .base import Adapter, BuildState, ModelInfo
from .registry import register

SAVE_FORMAT = "tpunlearn-deeplabv3/1"
ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet_tiny")
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
DIGIT_CLASSES = ["background"] + [str(d) for d in range(10)]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DEFAULT_SIZE = 512
DIGITS_SCENES = {"train": 256, "val": 200, "test": 200}  # default DigitScenes counts for "digits"
DIGITS_MAX_SIDE = 256  # DigitScenes pre-renders every glyph size: larger scenes are composed at 256 and resized
IGNORE_INDEX = 255
_TRACE_SIZE = 64  # spatial size used to trace the graph when replaying a pruning history


@register
class DeepLabV3Adapter(Adapter):
    name = "deeplabv3"
    library = "torchvision"
    metric_name = "iou"

    def handles(self, arch: str) -> bool:
        try:
            _resolve(arch)
        except UsageError:
            return False
        return True

    # ---- building and loading -----------------------------------------------------------
    # transitional: this family still overrides build() whole; the template's steps are unused
    def resolve(self, state: BuildState) -> None:
        raise NotImplementedError

    def reconcile(self, state: BuildState) -> None:
        raise NotImplementedError

    def construct(self, state: BuildState) -> nn.Module:
        raise NotImplementedError

    def describe(self, model: nn.Module, state: BuildState) -> ModelInfo:
        raise NotImplementedError

    def build(self, arch: str, weights: str | Path | None = None, num_classes: int | None = None,
              aux_loss: bool | None = None, class_names: Sequence[str] | None = None,
              imgsz: int | Sequence[int] | None = None, normalize: str | dict[str, Any] | None = None,
              trust_checkpoint: bool = False, zoo: Any = None, **kwargs: Any) -> tuple[nn.Module, ModelInfo]:
        """Build ``arch`` randomly initialised (``weights=None``) or from a local checkpoint.

        ``arch`` may be a zoo name (``digitscenes-deeplabv3``): it then loads the zoo
        checkpoint unless ``weights`` names another file (a pruned copy, say). ``weights``
        may be a tpunlearn checkpoint (:meth:`save`; pruned models included), a
        plain state dict, or a ``{"model": ...}`` / ``{"state_dict": ...}`` dict. For a plain
        state dict, ``num_classes`` defaults to the checkpoint's and ``aux_loss=None``
        follows the presence of ``aux_classifier.*`` keys (``aux_loss=False`` drops them).
        Files load through :func:`tpunlearn.safeload.load_checkpoint`; ``trust_checkpoint``
        loads one off its allow-list with full unpickling.
        """
        if zoo is not None:  # transitional: the old zoo-name path, until this adapter uses the template
            arch = zoo.name

        builder, zoo_name = _resolve(arch)
        if kwargs:
            raise UsageError(f"unknown option(s) for {arch}: {', '.join(sorted(kwargs))} "
                             "(known: num_classes, aux_loss, class_names, imgsz, normalize)")
        zoo_entry = None
        if zoo_name is not None:
            from tpunlearn import zoo

            zoo_entry = zoo.entry(zoo_name)
            if weights is None:
                weights = zoo.weights_path(zoo_name)
                if not Path(weights).is_file():
                    raise WeightsError(f"weights for zoo model {zoo_name!r} not found at {weights}; "
                                       f"run `python scripts/train_zoo.py {zoo_name}`")
            num_classes = zoo_entry.kwargs.get("num_classes") if num_classes is None else num_classes
            class_names = class_names or zoo_entry.class_names
        path = Path(weights) if weights is not None else None
        record: dict[str, Any] | None = None
        ckpt = _read(path, trust_checkpoint) if path is not None else None
        saved = ckpt if isinstance(ckpt, dict) and "format" in ckpt else None
        history: list[list[Any]] = []
        state: dict[str, torch.Tensor] | None = None
        size: tuple[int, int, int] | None = None
        if saved is not None:
            if saved.get("format") != SAVE_FORMAT:
                what = saved.get("arch") or saved.get("timm_name") or "model"
                raise WeightsError(f"{path} is a {saved.get('format')} checkpoint ({what}), not a DeepLabv3 one; "
                                   "pass the --arch it was made for")
            if saved.get("arch") != builder:
                raise WeightsError(f"{path} holds a {saved.get('arch')}, not a {arch}"
                                   + (f" ({builder})" if builder != arch else ""))
            stored = dict(saved.get("kwargs") or {})
            if zoo_entry is not None and any(stored.get(k) != v for k, v in zoo_entry.kwargs.items()):
                raise WeightsError(f"{path} holds a {builder} built with {stored}, not zoo model {zoo_name} "
                                   f"({zoo_entry.kwargs})")
            record = saved.get("zoo") if isinstance(saved.get("zoo"), dict) else None
            explicit = {k: v for k, v in (("num_classes", num_classes), ("aux_loss", aux_loss)) if v is not None}
            clash = {k: v for k, v in explicit.items() if k in stored and stored[k] != v}
            if clash:
                raise WeightsError(f"{path} holds a {arch} built with {stored}, which contradicts {clash}")
            num_classes, aux_loss = int(stored["num_classes"]), bool(stored.get("aux_loss"))
            class_names = class_names or saved.get("class_names")
            size = tuple(saved["input_size"]) if saved.get("input_size") else None
            if normalize is None:
                normalize = saved.get("normalize") or "none"
            history = [list(h) for h in saved.get("history") or []]
            state = saved.get("state_dict")
        elif ckpt is not None:
            state = _state_dict_of(ckpt)
            if state is None:
                from tpunlearn.safeload import describe_checkpoint

                raise WeightsError(f"{path} is {describe_checkpoint(ckpt)}, not DeepLabv3 weights; "
                                   "pass the --arch it was made for")
            head = state.get("classifier.4.weight")
            if num_classes is None and isinstance(head, torch.Tensor) and head.ndim == 4:
                num_classes = int(head.shape[0])
            has_aux = any(k.startswith("aux_classifier.") for k in state)
            if aux_loss is None:
                aux_loss = has_aux
            elif aux_loss and not has_aux:
                raise WeightsError(f"{path} has no auxiliary head weights; build with aux_loss=False")
            elif not aux_loss:
                state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
        num_classes = 21 if num_classes is None else int(num_classes)
        aux_loss = bool(aux_loss)
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        names = _class_names(num_classes, class_names)
        if imgsz is None and size is None and zoo_entry is not None:
            imgsz = tuple(zoo_entry.input_size[1:])
        if imgsz is not None or size is None:
            size = _input_size(imgsz)
        norm = _normalization(normalize, num_classes)

        model = _torchvision_builder(builder)(weights=None, weights_backbone=None, num_classes=num_classes,
                                              aux_loss=aux_loss)
        if history:
            from tpunlearn.plan import build_dependency_graph

            try:
                dg = build_dependency_graph(model, torch.rand(1, 3, _TRACE_SIZE, _TRACE_SIZE), self.output_transform)
                dg.load_pruning_history([list(h) for h in history])
            except Exception as exc:  # noqa: BLE001 - a history that does not fit this model
                raise WeightsError(f"{path}: its pruning history does not fit {arch} ({_first_problem(exc)})") from None
        if state is not None:
            _load_state(model, state, path, arch)
        model.eval()
        data = zoo_entry.data if zoo_entry is not None else ("digits" if names == DIGIT_CLASSES else None)
        extra: dict[str, Any] = {"builder_kwargs": {"num_classes": num_classes, "aux_loss": aux_loss},
                                 "normalize": norm, "history": history, "data": data}
        if zoo_name is not None or record is not None:
            extra["zoo"] = dict(record or {"name": zoo_name})
        info = ModelInfo(
            arch=arch, family="deeplabv3", task="segmentation", class_names=names, input_size=size,
            weights=str(path) if path is not None else None, extra=extra,
        )
        return model, info

    # ---- what the core needs ------------------------------------------------------------
    def target(self, info: ModelInfo, index: int) -> Target:
        """Class ``index`` logits summed over the pixels the model assigns to it."""
        return SegmentationLogit(index)

    def ignored_layers(self, model: nn.Module, info: ModelInfo) -> list[nn.Module]:
        """The DeepLabHead's last two convolutions, plus the whole auxiliary head if any."""
        head = getattr(model, "classifier", None)
        if head is None:
            return []
        convs = [m for m in head.children() if isinstance(m, nn.Conv2d)]
        out: list[nn.Module] = convs[-2:]
        aux = getattr(model, "aux_classifier", None)
        if isinstance(aux, nn.Module):
            out.append(aux)
        return out

    def output_transform(self, output: Any) -> torch.Tensor:
        """``output["out"]``; with an ``aux`` output, ``out + 0 * aux`` outside exports.

        The sum equals ``out`` but keeps the auxiliary head in torch-pruning's trace, so its
        input channels follow the backbone's pruning. Under ONNX or JIT export it is ``out``.
        """
        if not isinstance(output, dict):
            return output
        out = output["out"]
        aux = output.get("aux")
        if aux is None or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return out
        return out + 0.0 * aux

    # ---- data ---------------------------------------------------------------------------
    def samples(self, model: nn.Module, info: ModelInfo, spec: str | None,
                batch_size: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``(images (B, 3, H, W), multi_hot (B, C))`` batches; multi_hot from the masks."""
        source = _source(info, spec, "train")
        return _Batches(source, info, batch_size, with_masks=False)

    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None) -> dict[str, float]:
        """Per-class IoU on DigitScenes ``test`` or the folder's ``val`` list, by class name."""
        return self.segmentation_metrics(model, info, spec)["iou"]

    def segmentation_metrics(self, model: nn.Module, info: ModelInfo, spec: str | None,
                             batch_size: int = 16, split: str = "eval") -> dict[str, Any]:
        """``{"iou": {name: IoU}, "mIoU", "pixel_accuracy", "confusion": (C, C) list}`` on the
        held-out data (``split="val"``: the validation split instead)."""
        source = _source(info, spec, split)
        cm = confusion_matrix(model, _Batches(source, info, batch_size, with_masks=True), len(info.class_names))
        iou = iou_from_confusion(cm)
        valid = ~torch.isnan(iou)
        return {
            "iou": {n: float(v) for n, v in zip(info.class_names, iou)},
            "mIoU": float(iou[valid].mean()) if valid.any() else float("nan"),
            "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp(min=1)),
            "confusion": cm.tolist(),
        }

    def validate(self, model: nn.Module, info: ModelInfo, spec: str | None) -> dict[str, float]:
        """Per-class IoU on DigitScenes' ``val`` split or the folder's ``val`` list."""
        return self.segmentation_metrics(model, info, spec, split="val")["iou"]

    def miou(self, model: nn.Module, info: ModelInfo, spec: str | None) -> float:
        """Mean IoU over the classes that occur (in ground truth or prediction)."""
        return self.segmentation_metrics(model, info, spec)["mIoU"]

    # ---- repair fine-tune ---------------------------------------------------------------
    def repair_data(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int],
                    batch_size: int = 16) -> Iterable[Any]:
        """Training ``(images, masks)`` batches of the images that hold none of ``forget``."""
        return MaskFilter(_Batches(_source(info, spec, "train"), info, batch_size, with_masks=True), forget)

    def repair_loss(self, info: ModelInfo) -> Callable[[Any, Any], torch.Tensor]:
        """Per-pixel cross-entropy (255 ignored), as the zoo model was trained."""
        def loss(output: Any, batch: Any) -> torch.Tensor:
            logits = output["out"] if isinstance(output, dict) else output
            masks = torch.stack([m.long() for m in batch[1]]).to(logits.device)
            if masks.shape[-2:] != logits.shape[-2:]:
                logits = F.interpolate(logits, size=tuple(masks.shape[-2:]), mode="bilinear", align_corners=False)
            return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        return loss

    # ---- saving -------------------------------------------------------------------------
    def checkpoint(self, model: nn.Module, info: ModelInfo) -> dict[str, Any]:
        """The ``tpunlearn-deeplabv3/1`` dict that :meth:`save` writes (float32 tensors)."""
        kwargs = dict(info.extra.get("builder_kwargs") or {})
        kwargs.setdefault("num_classes", len(info.class_names))
        kwargs.setdefault("aux_loss", getattr(model, "aux_classifier", None) is not None)
        payload = {
            "format": SAVE_FORMAT,
            "arch": _resolve(info.arch)[0],
            "kwargs": {"num_classes": int(kwargs["num_classes"]), "aux_loss": bool(kwargs["aux_loss"])},
            "class_names": list(info.class_names),
            "input_size": [int(v) for v in info.input_size],
            "normalize": info.extra.get("normalize"),
            "history": [[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in info.extra.get("history") or []],
            "task": info.task,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
        record = info.extra.get("zoo")
        if isinstance(record, dict) and record.get("name"):
            # a pruned copy names its zoo origin but not the original's training record and test IoU
            payload["zoo"] = dict(record) if not payload["history"] else {"name": record["name"], "pruned": True}
        return payload

    def save(self, model: nn.Module, info: ModelInfo, path: str | Path, half: bool = False) -> None:
        """Save arch, kwargs, pruning history (``info.extra["history"]``) and weights, atomically.

        ``half=True`` stores floating-point tensors in fp16 (the zoo checkpoints); they load
        back as float32. A zoo model's record (``info.extra["zoo"]``: name, training
        settings and test IoU) is kept under ``"zoo"``.
        """
        from tpunlearn.io import save_torch

        payload = self.checkpoint(model, info)
        if half:
            payload["state_dict"] = {k: (v.half() if torch.is_floating_point(v) else v).contiguous()
                                     for k, v in payload["state_dict"].items()}
        save_torch(payload, path)


# ---------------------------------------------------------------------------- metrics
@torch.no_grad()
def confusion_matrix(model: nn.Module, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]],
                     num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts, rows = ground truth, columns = prediction; 255 ignored.

    ``batches`` yield images and one ``(h, w)`` mask per image; logits are resized to each
    mask's size before the argmax. The model runs in eval mode; its flag is restored.
    """
    C = int(num_classes)
    cm = torch.zeros(C * C, dtype=torch.long)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for images, masks in batches:
            out = model(images.to(device))
            logits = (out["out"] if isinstance(out, dict) else out).float().cpu()
            for logit, mask in zip(logits, masks):
                if logit.shape[-2:] != mask.shape[-2:]:
                    logit = F.interpolate(logit[None], size=tuple(mask.shape[-2:]), mode="bilinear",
                                          align_corners=False)[0]
                pred = logit.argmax(0).flatten()
                gt = mask.flatten().long()
                keep = gt != IGNORE_INDEX
                if (gt[keep] >= C).any():
                    raise DataError(f"a mask holds class {int(gt[keep].max())}, but the model has {C} classes")
                cm += torch.bincount(gt[keep] * C + pred[keep], minlength=C * C)
    finally:
        model.train(was_training)
    return cm.reshape(C, C)


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``diag / (row + col - diag)``; NaN where the class never occurs."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


# ---------------------------------------------------------------------------- data
class _Source:
    """Where images and masks come from: DigitScenes or a VOC-style folder."""

    def __init__(self, kind: str, split: str, n: int | None = None, root: Path | None = None,
                 ids: list[str] | None = None) -> None:
        self.kind, self.split, self.n, self.root, self.ids = kind, split, n, root, ids


def _source(info: ModelInfo, spec: str | None, use: str) -> _Source:
    spec = spec if spec is not None else info.extra.get("data")
    if spec is None:
        raise UsageError(f"{info.arch} with {len(info.class_names)} classes has no default data; "
                         "pass --data PATH to a VOC-style folder (or --data digits for an 11-class model)")
    spec = str(spec)
    if spec == "digits" or spec.startswith("digits:"):
        if len(info.class_names) != len(DIGIT_CLASSES):
            raise UsageError(f"DigitScenes has {len(DIGIT_CLASSES)} segmentation classes (background + 10 digits); "
                             f"this model has {len(info.class_names)}: pass --data PATH to a VOC-style folder")
        split = use if use in ("train", "val") else "test"
        from tpunlearn.data import digits_count

        return _Source("digits", split, n=digits_count(spec, DIGITS_SCENES[split]))
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"data {spec!r} is neither 'digits' nor a folder; pass --data digits[:N] or a VOC-style "
                        "folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)")
    for sub in ("JPEGImages", "SegmentationClass"):
        if not (root / sub).is_dir():
            raise DataError(f"{root} is not a VOC-style folder: it has no {sub}/ (a VOC folder holds JPEGImages/, "
                            "SegmentationClass/ and ImageSets/Segmentation/)")
    lists = root / "ImageSets" / "Segmentation"
    names = {"train": ("train",), "val": ("val",)}.get(use, ("val", "test"))
    for name in names:
        if (lists / f"{name}.txt").is_file():
            ids = [l.strip() for l in (lists / f"{name}.txt").read_text().splitlines() if l.strip()]
            if not ids:
                raise DataError(f"{lists / (name + '.txt')} lists no image")
            return _Source("voc", name, root=root, ids=ids)
    raise DataError(f"{root} has no ImageSets/Segmentation/{' or '.join(n + '.txt' for n in names)}")


class _Batches:
    """Re-iterable batches: ``(images, multi_hot)`` for scoring or ``(images, masks)`` for evaluation."""

    def __init__(self, source: _Source, info: ModelInfo, batch_size: int, with_masks: bool) -> None:
        if int(batch_size) < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.source, self.info, self.batch_size, self.with_masks = source, info, int(batch_size), with_masks
        self.num_classes = len(info.class_names)
        norm = info.extra.get("normalize")
        self.mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1) if norm else None
        self.std = torch.tensor(norm["std"]).view(1, 3, 1, 1) if norm else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        if self.source.kind == "digits":
            yield from self._iter_digits()
        else:
            yield from self._iter_voc()

    def _finish(self, images: torch.Tensor, masks: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
        _, h, w = self.info.input_size
        if images.shape[-2:] != (h, w):
            images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if self.mean is not None:
            images = (images - self.mean) / self.std
        if self.with_masks:
            return images, masks
        return images, torch.stack([self._multi_hot(m) for m in masks])

    def _multi_hot(self, mask: torch.Tensor) -> torch.Tensor:
        ids = mask.flatten().long()
        ids = ids[ids != IGNORE_INDEX]
        if ids.numel() and int(ids.max()) >= self.num_classes:
            raise DataError(f"a mask holds class {int(ids.max())}, but the model has {self.num_classes} classes")
        return (torch.bincount(ids, minlength=self.num_classes) > 0).float()

    def _iter_digits(self) -> Iterator[tuple[torch.Tensor, Any]]:
        _, h, w = self.info.input_size
        ds = _digitscenes(self.source.split, min(max(h, w), DIGITS_MAX_SIDE), int(self.source.n or 0))
        for start in range(0, len(ds), self.batch_size):
            images = ds.images[start:start + self.batch_size].repeat(1, 3, 1, 1)
            masks = list(ds.masks[start:start + self.batch_size])
            if masks and masks[0].shape != (h, w):
                masks = [F.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0].to(m.dtype)
                         for m in masks]
            yield self._finish(images, masks)

    def _iter_voc(self) -> Iterator[tuple[torch.Tensor, Any]]:
        ids = self.source.ids or []
        for start in range(0, len(ids), self.batch_size):
            images, masks = [], []
            for stem in ids[start:start + self.batch_size]:
                image, mask = _read_voc(self.source.root, stem)
                _, h, w = self.info.input_size
                images.append(F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False,
                                            antialias=True)[0])
                masks.append(mask)
            yield self._finish(torch.stack(images), masks)


class MaskFilter:
    """Re-iterable ``(images, masks)`` batches without the images whose masks hold one of
    ``classes`` (``holding=True``: only those images)."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]], classes: Sequence[int],
                 holding: bool = False) -> None:
        self.batches, self.classes, self.holding = batches, torch.tensor([int(t) for t in classes]), holding

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        for images, masks in self.batches:
            keep = [i for i, m in enumerate(masks) if bool(torch.isin(m.long(), self.classes).any()) == self.holding]
            if keep:
                yield images[keep], [masks[i] for i in keep]


@functools.lru_cache(maxsize=1)
def _digitscenes(split: str, size: int, n: int) -> Any:
    """DigitScenes ``split`` at ``size`` (the last one made is kept: evaluating before and after reuses it)."""
    from tpunlearn.data import DigitScenes

    return DigitScenes(split, size=size, n_scenes=n, channels=1)


def _read_voc(root: Path, stem: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (float (3, h, w) in [0, 1]) and its class-index mask (uint8 (h, w))."""
    from PIL import Image

    image_path = next((root / "JPEGImages" / f"{stem}{ext}" for ext in (".jpg", ".jpeg", ".png")
                       if (root / "JPEGImages" / f"{stem}{ext}").is_file()), None)
    mask_path = root / "SegmentationClass" / f"{stem}.png"
    if image_path is None:
        raise DataError(f"{root / 'JPEGImages'} has no image for {stem!r} (.jpg or .png)")
    if not mask_path.is_file():
        raise DataError(f"{root / 'SegmentationClass'} has no mask {stem}.png")
    try:
        with Image.open(image_path) as img:
            rgb = img.convert("RGB")
            image = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        with Image.open(mask_path) as m:
            if m.mode not in ("P", "L"):
                raise DataError(f"{mask_path} is a {m.mode} image; a VOC mask is a palette (P) or gray (L) PNG "
                                "whose pixel values are class indices")
            mask = torch.frombuffer(bytearray(m.tobytes()), dtype=torch.uint8).view(m.height, m.width)
    except OSError as exc:
        raise DataError(f"cannot read {stem!r} in {root}: {exc}") from None
    if tuple(mask.shape) != tuple(image.shape[:2]):
        raise DataError(f"{stem!r}: image is {image.shape[1]}x{image.shape[0]}, mask {mask.shape[1]}x{mask.shape[0]}")
    return image.permute(2, 0, 1).float() / 255.0, mask.clone()


# ---------------------------------------------------------------------------- helpers
def _resolve(arch: str) -> tuple[str, str | None]:
    """``(builder arch, zoo name or None)`` for a DeepLabv3 arch or a deeplabv3-family zoo name."""
    arch = str(arch)
    if arch in ARCHS:
        return arch, None
    from tpunlearn import zoo

    if arch in zoo.ZOO and zoo.entry(arch).family == "deeplabv3":
        return zoo.entry(arch).arch, arch
    zoo_names = [n for n in zoo.names() if zoo.entry(n).family == "deeplabv3"]
    raise UsageError(f"unknown DeepLabv3 arch {arch!r}; choose one of {', '.join(ARCHS + tuple(zoo_names))}")


def _torchvision_builder(arch: str) -> Any:
    if arch == "deeplabv3_resnet_tiny":
        return deeplabv3_resnet_tiny
    from torchvision.models import segmentation

    return getattr(segmentation, arch)


# ---------------------------------------------------------------------------- deeplabv3_resnet_tiny
TINY_WIDTHS = (32, 64, 128, 128)  # stem/layer1, layer2, layer3, layer4
TINY_ASPP_CHANNELS = 128
TINY_ATROUS_RATES = (2, 4, 6)  # in output-stride-4 pixels: 8, 16 and 24 input pixels


def deeplabv3_resnet_tiny(*, weights: None = None, weights_backbone: None = None, num_classes: int = 11,
                          aux_loss: bool | None = False) -> nn.Module:
    """torchvision ``DeepLabV3`` on a small ResNet, for 64x64 inputs (~1.3M parameters).

    Backbone (torchvision ``BasicBlock`` s, one per stage, torchvision's ResNet names):
    ``conv1`` 3x3 stride 1 (32 ch) + ``bn1`` + ``relu``, ``maxpool`` 3x3 stride 2,
    ``layer1`` 32 ch, ``layer2`` 64 ch stride 2, ``layer3`` 128 ch dilation 2, ``layer4``
    128 ch dilation 4: output stride 4 (a 16x16 map for 64x64 inputs; stride 8 would cap
    the digits' stroke IoU at about 0.72 even with ideal logits, stride 4 at about 0.94).
    The dilated stages are torchvision ``BasicBlock`` s built undilated whose two 3x3 convs
    then get ``dilation = padding = d`` (``BasicBlock`` refuses ``dilation > 1`` at build time;
    a ``Conv2d`` reads both attributes at each forward).

    Head: ``IntermediateLayerGetter(return_layers={"layer4": "out"[, "layer3": "aux"]})``,
    then torchvision's ``DeepLabHead`` layout at 128 channels (torchvision's class fixes 256):
    ``nn.Sequential(ASPP(128, (2, 4, 6), 128), Conv2d(128, 128, 3), BatchNorm2d, ReLU,
    Conv2d(128, num_classes, 1))``, so ``classifier.1`` and ``classifier.4`` are the last two
    convs as in ``DeepLabHead``; ``aux_loss`` adds torchvision's ``FCNHead(128, num_classes)``
    on ``layer3``. No pretrained weights exist (``weights``/``weights_backbone`` must be None).
    """
    from collections import OrderedDict

    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.resnet import BasicBlock, conv1x1
    from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3
    from torchvision.models.segmentation.fcn import FCNHead

    if weights is not None or weights_backbone is not None:
        raise UsageError("deeplabv3_resnet_tiny has no pretrained weights; load a checkpoint with weights=PATH")

    def stage(inplanes: int, planes: int, stride: int, dilation: int) -> nn.Sequential:
        down = None
        if stride != 1 or inplanes != planes:
            down = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        block = BasicBlock(inplanes, planes, stride, down)
        if dilation > 1:
            for conv in (block.conv1, block.conv2):
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
        return nn.Sequential(block)

    w0, w1, w2, w3 = TINY_WIDTHS
    body = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, w0, 3, stride=1, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(w0)),
        ("relu", nn.ReLU(inplace=True)),
        ("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ("layer1", stage(w0, w0, 1, 1)),
        ("layer2", stage(w0, w1, 2, 1)),
        ("layer3", stage(w1, w2, 1, 2)),
        ("layer4", stage(w2, w3, 1, 4)),
    ]))
    for m in body.modules():  # torchvision ResNet's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return_layers = {"layer4": "out"}
    if aux_loss:
        return_layers["layer3"] = "aux"
    backbone = IntermediateLayerGetter(body, return_layers=return_layers)
    c = TINY_ASPP_CHANNELS
    classifier = nn.Sequential(
        ASPP(w3, TINY_ATROUS_RATES, c),
        nn.Conv2d(c, c, 3, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, int(num_classes), 1),
    )
    aux = FCNHead(w2, int(num_classes)) if aux_loss else None
    return DeepLabV3(backbone, classifier, aux)


def _class_names(num_classes: int, given: Sequence[str] | None) -> list[str]:
    if given is not None:
        names = [str(n) for n in given]
        if len(names) != num_classes:
            raise UsageError(f"{len(names)} class names given for a model with {num_classes} classes")
        return names
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    if num_classes == len(DIGIT_CLASSES):
        return list(DIGIT_CLASSES)
    return [str(i) for i in range(num_classes)]


def _input_size(imgsz: int | Sequence[int] | None) -> tuple[int, int, int]:
    if imgsz is None:
        return (3, DEFAULT_SIZE, DEFAULT_SIZE)
    if isinstance(imgsz, int):
        h = w = imgsz
    else:
        dims = [int(v) for v in imgsz]
        if len(dims) == 3 and dims[0] == 3:
            dims = dims[1:]
        if len(dims) != 2:
            raise UsageError(f"imgsz must be an int or (H, W), got {imgsz!r}")
        h, w = dims
    if h < 16 or w < 16:
        raise UsageError(f"imgsz must be at least 16 pixels, got {h}x{w}")
    return (3, int(h), int(w))


def _normalization(normalize: str | dict[str, Any] | None, num_classes: int) -> dict[str, list[float]] | None:
    if normalize is None:
        normalize = "imagenet" if num_classes == len(VOC_CLASSES) else "none"
    if isinstance(normalize, dict):
        mean, std = normalize.get("mean"), normalize.get("std")
        if not (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3):
            raise UsageError("normalize needs {'mean': [r, g, b], 'std': [r, g, b]}")
        if any(float(s) <= 0 for s in std):
            raise UsageError("normalize std values must be > 0")
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    if normalize == "imagenet":
        return {"mean": list(IMAGENET["mean"]), "std": list(IMAGENET["std"])}
    if normalize == "none":
        return None
    raise UsageError(f"unknown normalize {normalize!r}; use 'imagenet', 'none' or {{'mean': ..., 'std': ...}}")


def _read(path: Path, trust: bool = False) -> Any:
    """The checkpoint at ``path``, loaded safely; a missing, unreadable or unsafe file is a WeightsError."""
    from tpunlearn.safeload import load_checkpoint

    if not path.exists():
        raise WeightsError(f"weights file not found: {path} (pretrained torchvision weights need the internet; "
                           "pass a local checkpoint)")
    return load_checkpoint(path, trust=trust)


def _state_dict_of(ckpt: Any) -> dict[str, torch.Tensor] | None:
    """A plain state dict, or the one under ``model`` / ``state_dict`` (torchvision references)."""
    if isinstance(ckpt, nn.Module) and type(ckpt).__module__.startswith("torchvision."):
        return ckpt.state_dict()  # torch.save(model) of a torchvision model
    if not isinstance(ckpt, dict):
        return None
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if ckpt and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.items()):
        return ckpt
    return None


def _load_state(model: nn.Module, state: Any, path: Path | None, arch: str) -> None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict")
    try:
        model.load_state_dict({k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()})
    except RuntimeError as exc:
        hint = "" if "size mismatch" not in str(exc) else (
            " (another class count, or a pruned model saved as a bare state dict: save it with the adapter, "
            "which records the pruning history)")
        raise WeightsError(f"{path} does not fit {arch}: {_first_problem(exc)}{hint}") from None


def _first_problem(exc: Exception) -> str:
    """The first informative line of an error (``load_state_dict``'s first line is a header)."""
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    detail = next((l for l in lines if not l.startswith("Error(s) in loading")), lines[0] if lines else type(exc).__name__)
    return detail if len(detail) <= 160 else detail[:157] + "..."
