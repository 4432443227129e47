"""Per-class metrics, family-neutral: classifier recall and precision, segmentation IoU, and the
:class:`Evaluation` every adapter's ``evaluate()`` returns.

The adapters feed these functions from their own data (detection metrics come from
ultralytics' validator in the yolov5 adapter). Multi-label recall of target ``t``: the
fraction of images holding ``t`` whose sigmoid score passes the threshold: the number that
must fall to zero for a forgotten target and stay put for retained ones.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from tpunlearn import settings
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


# ---- one result type for every family ------------------------------------------------------------
DEFAULT_CONF = settings.DEFAULT_CONF  # detection: the deployment confidence (settings keeps it torch-free)
MATCH_IOU = 0.5  # detection: box IoU at which a prediction counts as a true positive
METRIC_ORDER = ("recall", "precision", "ap50", "ap50_95", "ap", "iou")  # columns of every table


@dataclass
class Evaluation:
    """Per-target metrics of one model on one data split, at a stated operating point.

    ``primary`` is the per-target key a verdict judges (``"recall"`` for detectors and
    classifiers, ``"iou"`` for segmentation). Targets with no labelled instance in the split
    are left out of ``per_target`` (they have no recall to judge).
    """

    task: str
    primary: str
    per_target: dict[str, dict[str, float]]
    summary: dict[str, float] = field(default_factory=dict)
    operating_point: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def primary_values(self) -> dict[str, float]:
        """Class name -> the primary metric."""
        return {name: float(m[self.primary]) for name, m in self.per_target.items() if self.primary in m}

    def metric_keys(self) -> list[str]:
        """The metrics this evaluation holds per target, in table order (``instances`` left out)."""
        held = {k for m in self.per_target.values() for k in m}
        return [k for k in METRIC_ORDER if k in held]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the keys of the dataclass)."""
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    """``num / den``, 0 when ``den`` is 0 (no prediction of a class: precision 0, never NaN)."""
    return float(num) / float(den) if den else 0.0


def classification_evaluation(logits: torch.Tensor, labels: torch.Tensor, names: Sequence[str],
                              task: str) -> Evaluation:
    """Per-class recall and precision at the model's own decision rule, from ``(N, C)`` logits and labels.

    ``task="multilabel"``: a class is predicted when its logit is > 0 (sigmoid 0.5), and AP per
    class (sklearn's ``average_precision_score``) is added; ``"multiclass"``: the argmax is the
    prediction and ``labels`` are multi-hot or one-hot (their argmax is the class). A class no
    sample is predicted as has precision 0.
    """
    if task == "multilabel":
        predicted, positive, rule = logits > 0, labels > 0.5, "logit > 0"
    elif task == "multiclass":
        C = logits.shape[1]
        predicted = torch.nn.functional.one_hot(logits.argmax(1), C).bool()
        positive = torch.nn.functional.one_hot(labels.argmax(1), C).bool() if labels.dim() == 2 else \
            torch.nn.functional.one_hot(labels.long(), C).bool()
        rule = "argmax"
    else:
        raise ValueError(f"unknown classification task {task!r}")
    hits = (predicted & positive).sum(0)
    per_target: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        n = int(positive[:, c].sum())
        if n == 0:
            continue
        row = {"recall": _ratio(int(hits[c]), n), "precision": _ratio(int(hits[c]), int(predicted[:, c].sum())),
               "instances": n}
        if task == "multilabel":
            row["ap"] = _average_precision(positive[:, c], logits[:, c])
        per_target[str(name)] = row
    accuracy = float((logits.argmax(1) == positive.float().argmax(1)).float().mean()) if task == "multiclass" else None
    summary = {"accuracy": accuracy} if accuracy is not None else {}
    if task == "multilabel" and per_target:
        summary["mAP"] = sum(r["ap"] for r in per_target.values()) / len(per_target)
    return Evaluation(task=task, primary="recall", per_target=per_target, summary=summary,
                      operating_point={"rule": rule})


def _average_precision(positive: torch.Tensor, scores: torch.Tensor) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(positive.numpy().astype(int), scores.double().numpy()))


def segmentation_evaluation(cm: torch.Tensor, names: Sequence[str]) -> Evaluation:
    """Per-class IoU from a ``(C, C)`` confusion matrix (rows ground truth), mIoU and pixel accuracy.

    Classes neither in the ground truth nor predicted are left out. The matrix itself goes
    under ``extra["confusion"]``, its row names under ``extra["names"]`` (for :func:`pixels_to`).
    """
    iou = iou_from_confusion(cm)
    valid = ~torch.isnan(iou)
    per_target = {str(n): {"iou": float(v), "instances": int(cm[c].sum())}
                  for c, (n, v) in enumerate(zip(names, iou, strict=True)) if valid[c]}
    summary = {"mIoU": float(iou[valid].mean()) if valid.any() else 0.0,
               "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp(min=1))}
    return Evaluation(task="segmentation", primary="iou", per_target=per_target, summary=summary,
                      operating_point={"rule": "argmax"},
                      extra={"confusion": cm.tolist(), "names": [str(n) for n in names]})


def detection_evaluation(names: Sequence[str], matched: dict[str, Any], ap: dict[int, tuple[float, float]],
                         summary: dict[str, float], conf: float) -> Evaluation:
    """Per-class detection metrics: recall and precision at confidence ``conf`` and box IoU 0.5, AP50 and
    AP50-95 (ranked at a low confidence, as ultralytics' validator does).

    ``matched`` holds, for the predictions kept at ``conf``, ``tp50`` (bool, matched to a labelled box
    of the same class at IoU >= 0.5, each box matched once), ``pred_cls`` and the labelled boxes'
    ``target_cls`` (arrays). ``ap`` maps a class index to ``(ap50, ap50_95)``. Recall is
    ``TP / labelled boxes``, precision ``TP / predictions`` of the class (0 when it has none).
    """
    tp = torch.as_tensor(matched["tp50"]).bool().flatten()
    pred_cls = torch.as_tensor(matched["pred_cls"]).long().flatten()
    target_cls = torch.as_tensor(matched["target_cls"]).long().flatten()
    per_target: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        n = int((target_cls == c).sum())
        if n == 0:
            continue
        mine = pred_cls == c
        hits = int((tp & mine).sum())
        ap50, ap50_95 = ap.get(c, (0.0, 0.0))
        per_target[str(name)] = {"recall": _ratio(hits, n), "precision": _ratio(hits, int(mine.sum())),
                                 "ap50": float(ap50), "ap50_95": float(ap50_95), "instances": n}
    return Evaluation(task="detection", primary="recall", per_target=per_target, summary=dict(summary),
                      operating_point={"conf": float(conf), "iou": MATCH_IOU})


def pixels_to(confusion: Sequence[Sequence[float]] | torch.Tensor, names: Sequence[str],
              forgotten: Iterable[str], top: int = 3) -> dict[str, dict[str, float]]:
    """Where each forgotten class's ground-truth pixels go: the ``top`` predicted classes (itself and
    background included) and the fraction of its pixels each one gets."""
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    out: dict[str, dict[str, float]] = {}
    for name in forgotten:
        if name not in names:
            continue
        row = cm[list(names).index(name)]
        if row.sum() <= 0:
            continue
        share = row / row.sum()
        order = torch.argsort(share, descending=True)[:top]
        out[name] = {str(names[int(c)]): round(float(share[c]), 4) for c in order if share[c] > 0}
    return out


def retained_summary(before: Mapping[Any, float], after: Mapping[Any, float],
                     forget: Iterable[Any]) -> dict[str, Any]:
    """Mean before and after over the retained targets (those not in ``forget``, held by both, not NaN)
    and the worst one: the largest drop ``before - after``. ``worst`` is None with no retained target."""
    skip = set(forget)
    keys = [k for k in before if k not in skip and k in after
            and not math.isnan(float(before[k])) and not math.isnan(float(after[k]))]
    if not keys:
        return {"mean_before": None, "mean_after": None, "worst": None}
    drops = {k: float(before[k]) - float(after[k]) for k in keys}
    worst = max(keys, key=lambda k: drops[k])
    return {"mean_before": sum(float(before[k]) for k in keys) / len(keys),
            "mean_after": sum(float(after[k]) for k in keys) / len(keys),
            "worst": {"target": worst, "before": float(before[worst]), "after": float(after[worst]),
                      "drop": drops[worst]}}


def compare(before: Evaluation, after: Evaluation, forget_names: Iterable[str]) -> dict[str, Any]:
    """The retained summary of the primary metric (forgotten targets left out), plus ``means``: the
    retained mean of every metric before and after (the forgotten targets never enter them)."""
    forget = set(forget_names)
    out = retained_summary(before.primary_values(), after.primary_values(), forget)
    means: dict[str, dict[str, float]] = {}
    for key in before.metric_keys():
        b = {n: m[key] for n, m in before.per_target.items() if key in m}
        a = {n: m[key] for n, m in after.per_target.items() if key in m}
        kept = retained_summary(b, a, forget)
        if kept["worst"] is not None:
            means[key] = {"before": kept["mean_before"], "after": kept["mean_after"]}
    out["means"] = means
    return out
