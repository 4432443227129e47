"""timm family: any ``timm.create_model`` name, plus the DigitScenes zoo classifiers.

Multi-label (sigmoid) or multi-class (softmax) heads; the classifier returned by
``get_classifier()`` is never pruned. A pruned model saves as the architecture, its
torch-pruning history and the state dict, so it reloads with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from tpunlearn.errors import UsageError, WeightsError
from tpunlearn.targets import ClassLogit, Target

from .base import Adapter, ModelInfo
from .registry import register

SAVE_FORMAT = "tpunlearn-timm/1"


@register
class TimmAdapter(Adapter):
    name = "timm"
    library = "timm"
    metric_name = "recall"

    def handles(self, arch: str) -> bool:
        from tpunlearn import zoo

        if arch in zoo.ZOO:
            return zoo.entry(arch).family == "timm"
        import timm

        return timm.is_model(arch.removeprefix("timm/"))

    def build(self, arch: str, weights: str | Path | None = None, num_classes: int = 10, in_chans: int = 3,
              input_size: tuple[int, int, int] | None = None, task: str = "multilabel",
              class_names: list[str] | None = None, **kwargs: Any) -> tuple[nn.Module, ModelInfo]:
        """A zoo model by name, or ``timm.create_model(arch)`` randomly initialised or from ``weights``."""
        from tpunlearn import zoo

        if arch in zoo.ZOO:
            model, meta = zoo.load(arch, weights)
            info = ModelInfo(arch=arch, family="timm", task=meta["task"], class_names=meta["class_names"],
                             input_size=tuple(meta["input_size"]), weights=meta["weights"],
                             extra={"timm_name": meta["arch"], "timm_kwargs": meta["kwargs"], "data": meta["data"]})
            return model, info
        import timm

        name = arch.removeprefix("timm/")
        create_kwargs = {"num_classes": num_classes, "in_chans": in_chans, **kwargs}
        model = timm.create_model(name, pretrained=False, **create_kwargs)
        history: list[Any] = []
        if weights is not None:
            history = _load_weights(model, name, Path(weights), input_size or (in_chans, 64, 64))
        model.eval()
        size = input_size or (in_chans, *model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        info = ModelInfo(arch=arch, family="timm", task=task,
                         class_names=class_names or [str(i) for i in range(num_classes)],
                         input_size=tuple(size), weights=str(weights) if weights else None,
                         extra={"timm_name": name, "timm_kwargs": create_kwargs, "history": history})
        return model, info

    def target(self, info: ModelInfo, index: int) -> Target:
        return ClassLogit(index, multilabel=info.task == "multilabel")

    def ignored_layers(self, model: nn.Module, info: ModelInfo) -> list[nn.Module]:
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        return [head] if isinstance(head, nn.Module) else []

    def samples(self, model: nn.Module, info: ModelInfo, spec: str | None,
                batch_size: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        from tpunlearn import data

        if spec not in (None, "digits"):
            raise UsageError(f"the timm adapter reads --data digits only for now, got {spec!r}")
        return data.loader(data.digitscenes("train", size=info.input_size[-1]), batch_size=batch_size)

    def evaluate(self, model: nn.Module, info: ModelInfo, spec: str | None) -> dict[str, float]:
        from tpunlearn import data
        from tpunlearn.evaluate import recall_table

        if spec not in (None, "digits"):
            raise UsageError(f"the timm adapter evaluates on --data digits only for now, got {spec!r}")
        batches = data.loader(data.digitscenes("test", size=info.input_size[-1]), batch_size=128)
        return recall_table(model, batches, info.class_names)

    def save(self, model: nn.Module, info: ModelInfo, path: str | Path) -> None:
        """Save architecture, pruning history and weights (loads with ``weights_only=True``)."""
        from tpunlearn.io import atomic_path

        payload = {
            "format": SAVE_FORMAT,
            "timm_name": info.extra.get("timm_name", info.arch),
            "timm_kwargs": info.extra.get("timm_kwargs", {}),
            "input_size": list(info.input_size),
            "history": info.extra.get("history", []),
            "class_names": list(info.class_names),
            "task": info.task,
            "state_dict": model.state_dict(),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)


def _load_weights(model: nn.Module, name: str, path: Path, input_size: tuple[int, ...]) -> list[Any]:
    """Load a tpunlearn-timm checkpoint (replaying its pruning) or a plain timm state dict."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not a torch file
        raise WeightsError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
    history: list[Any] = []
    if isinstance(ckpt, dict) and ckpt.get("format") == SAVE_FORMAT:
        if ckpt["timm_name"] != name:
            raise WeightsError(f"{path} holds a {ckpt['timm_name']}, not a {name}")
        history = ckpt.get("history", [])
        if history:
            from tpunlearn.plan import build_dependency_graph

            dg = build_dependency_graph(model, torch.rand(1, *ckpt.get("input_size", input_size)))
            dg.load_pruning_history([list(h) for h in history])
        state = ckpt["state_dict"]
    else:
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state dict")
    try:
        model.load_state_dict({k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()})
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit {name}: {str(exc).splitlines()[0]}") from None
    return history
