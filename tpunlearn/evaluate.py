"""Per-target metrics for classifiers (segmentation and detection metrics live in adapters).

Multi-label recall of target ``t``: the fraction of images holding ``t`` whose sigmoid
score passes the threshold. It is the number that must fall to zero for a forgotten target
and stay put for retained ones.
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
