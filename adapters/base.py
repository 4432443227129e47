"""The Adapter contract: what tpunlearn needs to know about one model family.

The core (targets, scoring, graph, plan, api) never imports a model library. An adapter
joins a family (timm, torchvision segmentation, ultralytics) to the core: it builds or
loads the model, names its classes, makes the Target for a class, lists the layers that
must never lose output channels, and evaluates and saves the model in the family's format.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from tpunlearn.errors import UsageError
from tpunlearn.targets import Target


@dataclass
class ModelInfo:
    """What an adapter knows about a built model: enough to score, prune and report on it."""

    arch: str
    family: str
    task: str  # "multilabel" | "multiclass" | "segmentation" | "detection"
    class_names: list[str]
    input_size: tuple[int, int, int]  # (C, H, W)
    weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "family": self.family,
            "task": self.task,
            "class_names": list(self.class_names),
            "input_size": list(self.input_size),
            "weights": self.weights,
            **self.extra,
        }


class Adapter(ABC):
    """One model family. Subclasses are registered by name in :mod:`tpunlearn.adapters.registry`."""

    name: str = ""
    library: str = ""  # the model library whose version goes in reports
    # unlearn() settings that suit this family better than the library's own defaults; the CLI
    # uses them where the user gives none (say why in the adapter, with the measurement)
    defaults: dict[str, Any] = {}

    @abstractmethod
    def handles(self, arch: str) -> bool:
        """True when this family can build ``arch``."""

    @abstractmethod
    def build(self, arch: str, weights: str | Path | None = None, **kwargs: Any) -> tuple[nn.Module, ModelInfo]:
        """Build ``arch`` (randomly initialised when ``weights`` is None) and describe it."""

    @abstractmethod
    def target(self, info: ModelInfo, index: int) -> Target:
        """The Target callable ``Y_t`` for class ``index``."""

    @abstractmethod
    def ignored_layers(self, model: nn.Module, info: ModelInfo) -> list[nn.Module]:
        """Layers whose output channels must never be removed (heads)."""

    def target_factory(self, info: ModelInfo) -> Callable[[int], Target]:
        """A callable from class index to Target, as :func:`tpunlearn.unlearn` takes."""
        return lambda index: self.target(info, index)

    def example_inputs(self, info: ModelInfo, batch: int = 1) -> torch.Tensor:
        """A random input of the model's size, for tracing and export."""
        return torch.rand(batch, *info.input_size)

    def output_transform(self, output: Any) -> torch.Tensor:
        """Reduce a model output to one tensor for tracing (identity for plain tensors)."""
        return output

    @abstractmethod
    def samples(self, model: nn.Module, info: ModelInfo, spec: str | None, batch_size: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(images, multi_hot)`` for scoring, read from a data spec."""

    @abstractmethod
    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None) -> dict[str, float]:
        """Per-class metric on held-out data, keyed by class name."""

    metric_name: str = "recall"

    def validate(self, model: nn.Module, info: ModelInfo, spec: str | None) -> dict[str, float]:
        """Per-class metric on a validation split, for choosing settings (``--auto``).

        Families whose data has a validation split distinct from the test split that
        :meth:`evaluate` reports on override this; the default evaluates.
        """
        return self.evaluate(model, info, spec)

    @abstractmethod
    def save(self, model: nn.Module, info: ModelInfo, path: str | Path) -> None:
        """Save in the family's own format (atomically)."""

    # ---- repair fine-tune (optional; families without it refuse --repair-epochs) -----------
    def repair_data(self, model: nn.Module, info: ModelInfo, spec: str | None, forget: Sequence[int],
                    batch_size: int = 32) -> Iterable[Any]:
        """Re-iterable training batches that hold none of the ``forget`` targets."""
        raise UsageError(f"the {self.name} adapter has no repair fine-tune yet; drop --repair-epochs")

    def mia_data(self, model: nn.Module, info: ModelInfo, spec: str | None,
                 forget: Sequence[int]) -> tuple[Iterable[Any], Iterable[Any], Iterable[Any]]:
        """``(retain_train, test, forget_train)`` batches for :func:`tpunlearn.privacy.mia_score`."""
        raise UsageError(f"--mia is for classifiers; the {self.name} adapter ({info.task}) has no membership check")

    def repair_loss(self, info: ModelInfo) -> Callable[[Any, Any], torch.Tensor]:
        """``loss(model_output, batch)`` for :func:`tpunlearn.repair.repair`, the family's training loss."""
        raise UsageError(f"the {self.name} adapter has no repair fine-tune yet; drop --repair-epochs")
