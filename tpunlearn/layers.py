"""Candidate layers (sigma): the last prunable convolutions in execution order.

Execution order comes from a traced forward, not from ``named_modules()``, because the
two differ in models that define modules in one order and call them in another.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from tpunlearn.errors import UsageError
from tpunlearn.torchutils import CONV_TYPES, forward


def module_by_name(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (a qualified name from ``named_modules``)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise UsageError(f"the model has no layer named {name!r}") from None


def execution_order(model: nn.Module, example_inputs: Any,
                    types: tuple[type[nn.Module], ...] = CONV_TYPES) -> list[str]:
    """Qualified names of the modules of ``types`` in the order a forward first calls them."""
    order: list[str] = []
    seen: set[str] = set()
    handles = []

    def hook(name: str):
        def record(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            if name not in seen:
                seen.add(name)
                order.append(name)
        return record

    for name, module in model.named_modules():
        if isinstance(module, types):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        forward(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order


def is_prunable_conv(module: nn.Module) -> bool:
    """A convolution whose output channels can be scored and removed one by one."""
    return isinstance(module, CONV_TYPES) and module.out_channels > 1


def candidate_layers(model: nn.Module, example_inputs: Any, sigma: int,
                     ignored_layers: Iterable[str] = ()) -> list[str]:
    """The last ``sigma`` prunable convolutions in execution order, minus ignored layers.

    A layer is ignored when its name, or the name of a module that contains it, is in
    ``ignored_layers`` (so ignoring a whole head ignores every conv inside it).
    """
    if int(sigma) < 1:
        raise UsageError(f"sigma must be >= 1, got {sigma}")
    prunable = prunable_layers(model, example_inputs, ignored_layers)
    if not prunable:
        raise UsageError("the model has no prunable convolution outside the ignored layers")
    if sigma > len(prunable):
        raise UsageError(f"sigma={sigma} is larger than the number of prunable convolutions ({len(prunable)})")
    return prunable[-int(sigma):]


def prunable_layers(model: nn.Module, example_inputs: Any, ignored_layers: Iterable[str] = ()) -> list[str]:
    """Every prunable convolution outside the ignored layers, in execution order."""
    ignored = tuple(ignored_layers)
    return [name for name in execution_order(model, example_inputs)
            if is_prunable_conv(module_by_name(model, name)) and not _is_ignored(name, ignored)]


def _is_ignored(name: str, ignored: tuple[str, ...]) -> bool:
    return any(name == i or name.startswith(i + ".") for i in ignored)


def names_of(model: nn.Module, modules: Iterable[nn.Module]) -> list[str]:
    """Qualified names of ``modules`` inside ``model``."""
    lookup = {id(m): n for n, m in model.named_modules()}
    return [lookup[id(m)] for m in modules if id(m) in lookup]

