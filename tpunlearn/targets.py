"""Targets ``Y_t``: callables from one batch's model output to a scalar to explain.

After pytorch-grad-cam's target callables, one class per task. Each Target gives a
per-sample score; calling it sums that score over the selected samples (those that hold
the target), so one ``torch.autograd.grad`` per target serves the whole batch.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from tpunlearn.torchutils import main_tensor


class Target(ABC):
    """A target ``t``: ``Y_t`` as a differentiable function of the model output."""

    index: int

    @abstractmethod
    def per_sample(self, output: Any) -> torch.Tensor:
        """``Y_t`` for each sample in the batch, shape ``(B,)``."""

    def __call__(self, output: Any, select: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar ``Y_t`` summed over the samples in ``select`` (a bool mask; all when None)."""
        values = self.per_sample(output)
        if select is not None:
            values = values[select]
        return values.sum()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.index})"


class ClassLogit(Target):
    """The logit of class ``index`` in a ``(B, C)`` multi-label or multi-class output.

    Logits do not saturate, so their gradients keep ranking channels on confident samples.
    ``probability=True`` explains the sigmoid (multi-label) or softmax (multi-class)
    probability instead, as the paper did.
    """

    def __init__(self, index: int, probability: bool = False, multilabel: bool = True) -> None:
        self.index = int(index)
        self.probability = probability
        self.multilabel = multilabel

    def per_sample(self, output: Any) -> torch.Tensor:
        logits = main_tensor(output)
        if logits.ndim != 2:
            raise ValueError(f"ClassLogit expects a (batch, classes) output, got shape {tuple(logits.shape)}")
        if not self.probability:
            return logits[:, self.index]
        if self.multilabel:
            return torch.sigmoid(logits[:, self.index])
        return torch.softmax(logits, dim=1)[:, self.index]


class SegmentationLogit(Target):
    """Class ``index`` logits of a ``(B, C, H, W)`` segmentation output, summed over its pixels.

    The pixels are the ground-truth mask's when :meth:`with_masks` gave one for the batch,
    else those the model itself assigns to the class (argmax). A sample with no such pixel
    contributes nothing. Dict outputs (torchvision's ``{"out", "aux"}``) use ``out``.
    """

    def __init__(self, index: int) -> None:
        self.index = int(index)
        self.masks: torch.Tensor | None = None

    def with_masks(self, masks: torch.Tensor | None) -> SegmentationLogit:
        """Use these ``(B, H, W)`` class-index masks for the next batch."""
        self.masks = masks
        return self

    def per_sample(self, output: Any) -> torch.Tensor:
        logits = main_tensor(output)
        if logits.ndim != 4:
            raise ValueError("SegmentationLogit expects a (batch, classes, H, W) output, "
                             f"got shape {tuple(logits.shape)}")
        if self.masks is not None:
            region = self.masks.to(logits.device) == self.index
        else:
            region = logits.detach().argmax(1) == self.index
        return (logits[:, self.index] * region).flatten(1).sum(1)


class DetectionScore(Target):
    """Class ``index`` scores of a YOLO eval output ``(B, 4 + nc, A)``, summed over confident anchors.

    Anchors whose class-``index`` score passes ``conf`` count; a sample where none does uses
    its ``top_k`` best anchors instead, so every sample still gives a gradient.
    """

    def __init__(self, index: int, conf: float = 0.25, top_k: int = 10, box_channels: int = 4) -> None:
        self.index = int(index)
        self.conf = float(conf)
        self.top_k = int(top_k)
        self.box_channels = int(box_channels)

    def per_sample(self, output: Any) -> torch.Tensor:
        pred = main_tensor(output)
        if pred.ndim != 3:
            raise ValueError("DetectionScore expects a (batch, 4 + classes, anchors) output, "
                             f"got shape {tuple(pred.shape)}")
        scores = pred[:, self.box_channels + self.index, :]  # (B, A)
        confident = scores.detach() > self.conf
        k = min(self.top_k, scores.shape[1])
        top = torch.zeros_like(confident)
        top.scatter_(1, scores.detach().topk(k, dim=1).indices, True)
        region = torch.where(confident.any(1, keepdim=True), confident, top)
        return (scores * region).sum(1)


TargetFactory = Callable[[int], Target]

