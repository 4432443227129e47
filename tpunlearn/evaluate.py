"""Per-class metrics, family-neutral: classifier recall and precision, segmentation IoU.

The adapters feed these functions from their own data (detection metrics come from
ultralytics' validator in the yolov5 adapter). Multi-label recall of target ``t``: the
fraction of images holding ``t`` whose sigmoid score passes the threshold: the number that
must fall to zero for a forgotten target and stay put for retained ones.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from tpunlearn.torchutils import eval_mode, main_tensor, model_device


@torch.no_grad()
def predict_multilabel(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every sample, concatenated on the CPU: ``(N, C)`` each.

    Batches go to ``device`` (default: the model's own). The model runs in eval mode inside
    this call; every module's training flag is restored after.
    """
    device = device if device is not None else model_device(model)
    logits, labels = [], []
    with eval_mode(model):
        for images, multi_hot in batches:
            logits.append(main_tensor(model(images.to(device))).float().cpu())
            labels.append(torch.as_tensor(multi_hot).float().cpu())
    return torch.cat(logits), torch.cat(labels)


def multilabel_recall(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Per-class recall ``(C,)``: positives whose logit exceeds ``threshold`` (0 = sigmoid 0.5)."""
    positive = labels > 0.5
    hits = (logits > threshold) & positive
    return hits.sum(0).float() / positive.sum(0).clamp(min=1).float()


def multilabel_precision(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Per-class precision ``(C,)``."""
    predicted = logits > threshold
    hits = predicted & (labels > 0.5)
    return hits.sum(0).float() / predicted.sum(0).clamp(min=1).float()


def recall_table(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 names: list[str] | None = None) -> dict[str, float]:
    """Per-class multi-label recall keyed by class name."""
    logits, labels = predict_multilabel(model, batches)
    recall = multilabel_recall(logits, labels)
    names = names or [str(i) for i in range(recall.numel())]
    return {n: float(r) for n, r in zip(names, recall, strict=False)}


# ---- segmentation: per-class IoU from one confusion matrix ------------------------------------
@torch.no_grad()
def confusion_matrix(model: nn.Module, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]],
                     num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``(C, C)`` int64 pixel counts, rows = ground truth, columns = prediction; ``ignore_index`` left out.

    ``batches`` yield images and one ``(h, w)`` class mask per image; the model's main output
    (a dict's ``out``) is resized to each mask's size before the argmax, so masks keep their
    own resolution. The model runs in eval mode; every module's flag is restored.
    """
    from tpunlearn.torchutils import eval_mode, main_tensor, model_device

    C = int(num_classes)
    cm = torch.zeros(C * C, dtype=torch.long)
    device = model_device(model)
    with eval_mode(model):
        for images, masks in batches:
            logits = main_tensor(model(images.to(device))).float().cpu()
            for logit, mask in zip(logits, masks, strict=True):
                cm += _pixel_counts(logit, mask, C, ignore_index)
    return cm.reshape(C, C)


def _pixel_counts(logit: torch.Tensor, mask: torch.Tensor, C: int, ignore_index: int) -> torch.Tensor:
    """Flat ``(C * C,)`` confusion counts of one image's ``(C, H, W)`` logits against its mask."""
    from torch.nn import functional as F

    from tpunlearn.errors import DataError

    if logit.shape[-2:] != mask.shape[-2:]:
        logit = F.interpolate(logit[None], size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)[0]
    pred = logit.argmax(0).flatten()
    gt = mask.flatten().long()
    keep = gt != ignore_index
    if (gt[keep] >= C).any():
        raise DataError(f"a mask holds class {int(gt[keep].max())}, but the model has {C} classes")
    return torch.bincount(gt[keep] * C + pred[keep], minlength=C * C)


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``diag / (row + col - diag)`` (float64); NaN where a class is neither in the
    ground truth nor predicted."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def segmentation_metrics(model: nn.Module, batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]],
                         class_names: list[str], ignore_index: int = 255) -> dict[str, object]:
    """``{"iou": {name: IoU}, "mIoU", "pixel_accuracy", "confusion": (C, C) list}`` of ``model`` on
    ``(images, masks)`` batches; mIoU is the mean over the classes that occur (NaN-free)."""
    cm = confusion_matrix(model, batches, len(class_names), ignore_index)
    iou = iou_from_confusion(cm)
    valid = ~torch.isnan(iou)
    return {
        "iou": {str(n): float(v) for n, v in zip(class_names, iou, strict=True)},
        "mIoU": float(iou[valid].mean()) if valid.any() else float("nan"),
        "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp(min=1)),
        "confusion": cm.tolist(),
    }
