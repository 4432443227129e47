"""Torch basics every stage uses: modes, devices, the main output tensor, layer types.

One home for the small things that were written many times: :func:`eval_mode` restores
the training flag of *every* module (a model whose submodules were set apart, such as
frozen norms during repair, comes back exactly as it was), and :func:`forward` always runs
in eval mode without gradients, so running a model to look at it never changes it
(BatchNorm updates its running statistics in train mode).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # unannotated: isinstance narrows to the conv classes
LAYER_TYPES = (*CONV_TYPES, nn.Linear)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                                           nn.modules.instancenorm._InstanceNorm)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` in eval mode inside the block; each one's own flag restored on exit."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def requires_grad(params: Iterable[nn.Parameter], flag: bool) -> Iterator[None]:
    """Every one of ``params`` with ``requires_grad`` set to ``flag`` inside the block; each one's own
    flag restored on exit (freezing a model for an input's gradient, or all but the layers a stage trains)."""
    flags = [(p, p.requires_grad) for p in params]
    try:
        for p, _ in flags:
            p.requires_grad_(flag)
        yield
    finally:
        for p, old in flags:
            p.requires_grad_(old)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def main_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model output (a dict's ``out``, the first element of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return main_tensor(output["out"])
    if isinstance(output, (tuple, list)) and output:
        return main_tensor(output[0])
    raise TypeError(f"cannot read a tensor from a model output of type {type(output).__name__}")


def call(model: nn.Module, inputs: Any) -> Any:
    """``model`` on ``inputs`` (a tensor, a tuple of positional inputs, or a dict of keyword
    inputs) moved to the model's device; mode and gradients as the caller set them."""
    inputs = to_device(inputs, model_device(model))
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def forward(model: nn.Module, inputs: Any) -> Any:
    """``model`` on ``inputs`` in eval mode and without gradients; the model is left as it was."""
    with eval_mode(model), torch.no_grad():
        return call(model, inputs)


def count_params(model: nn.Module) -> int:
    """Number of parameters (every element of every parameter tensor)."""
    return sum(p.numel() for p in model.parameters())


def norm_width(norm: nn.Module) -> int | None:
    """The channel count a norm layer normalises (None when it does not say)."""
    n = getattr(norm, "num_features", None) or getattr(norm, "num_channels", None)
    if n is None and isinstance(norm, nn.LayerNorm):
        n = norm.normalized_shape[0]
    return int(n) if n is not None else None


def out_width(layer: nn.Module) -> int | None:
    """Output channels of a conv or linear layer (None for other modules)."""
    width = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    return int(width) if width is not None else None
