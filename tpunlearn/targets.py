"""Targets ``Y_t``: callables from one batch's model output to a scalar to explain.

After pytorch-grad-cam's target callables, one class per task. Each Target gives a
per-sample score; calling it sums that score over the selected samples (those that hold
the target), so one ``torch.autograd.grad`` per target serves the whole batch.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch


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
        logits = _as_tensor(output)
        if logits.ndim != 2:
            raise ValueError(f"ClassLogit expects a (batch, classes) output, got shape {tuple(logits.shape)}")
        if not self.probability:
            return logits[:, self.index]
        if self.multilabel:
            return torch.sigmoid(logits[:, self.index])
        return torch.softmax(logits, dim=1)[:, self.index]


TargetFactory = Callable[[int], Target]


def _as_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model output (dict ``out`` key, or first element of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["out"]
    if isinstance(output, (tuple, list)):
        return _as_tensor(output[0])
    raise TypeError(f"cannot read a tensor from a model output of type {type(output).__name__}")
