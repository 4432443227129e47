"""torch-pruning's dependency graph, made safe for any architecture.

Three things a random architecture can do to torch-pruning, handled here once for every family:

* the trace fails (a forward torch-pruning cannot follow, an index mapping it cannot
  compute): the failure becomes a :class:`~tpunlearn.errors.TracerError` naming the model
  class and the operation, and where only some index mappings fail (a concatenation whose
  input widths it cannot infer) those operations are marked and every group through them is
  left alone;
* a group runs through a channel slice (``x[:, :c] += y``, RexNet's partial residuals):
  torch-pruning's group search can run for many minutes there, and the group cannot be
  removed channel by channel anyway, so it is recognised from the graph in linear time and
  left alone without being searched;
* the model's output channels are produced by a conv or linear layer nobody named (timm's
  1x1-conv classifiers): :func:`output_layers` finds them in the graph, so they are never
  pruned.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tpunlearn.errors import TracerError
from tpunlearn.scoring import scoring_mode
from tpunlearn.torchutils import model_device, to_device

CHANNEL_CHANGING = (nn.modules.conv._ConvNd, nn.Linear)
UNTRACED = "_tpunlearn_untraced"  # attribute of a DependencyGraph: {node: why it was left alone}


def build_dependency_graph(model: nn.Module, example_inputs: Any,
                           output_transform: Callable[[Any], Any] | None = None) -> Any:
    """A torch-pruning DependencyGraph, built with gradients on (see DESIGN.md section 5).

    Parameters loaded frozen (ultralytics) make the traced graph collapse to one node, so
    ``requires_grad`` is switched on for the trace and restored afterwards. A failed trace
    is a TracerError; a failed index mapping marks its operation as untraced (see module doc).
    """
    import torch_pruning as tp

    example_inputs = to_device(example_inputs, model_device(model))
    dg = tp.DependencyGraph()
    setattr(dg, UNTRACED, {})
    with scoring_mode(model, requires_grad=True), torch.enable_grad():
        try:
            return dg.build_dependency(model, example_inputs=example_inputs, output_transform=output_transform,
                                       verbose=False)
        except Exception as exc:  # noqa: BLE001 - torch-pruning raises anything; we say what failed
            if not getattr(dg, "module2node", None):
                raise TracerError(f"torch-pruning cannot trace {type(model).__name__} "
                                  f"({type(exc).__name__}: {exc}); pass its problem layers as ignored_layers "
                                  "or use another architecture") from None
    _recover_index_mapping(dg, model)
    return dg


def _recover_index_mapping(dg: Any, model: nn.Module) -> None:
    """Redo torch-pruning's index mapping node by node; a node whose mapping fails is marked
    untraced (and stops being a concat/split/... to torch-pruning, so later searches run)."""
    import torch_pruning as tp
    from torch_pruning.dependency import index_mapping as im

    updates = {tp.ops.OPTYPE.CONCAT: im.update_concat_index_mapping, tp.ops.OPTYPE.SPLIT: im.update_split_index_mapping,
               tp.ops.OPTYPE.RESHAPE: im.update_reshape_index_mapping,
               tp.ops.OPTYPE.UNBIND: im.update_unbind_index_mapping,
               tp.ops.OPTYPE.EXPAND: im.update_expand_index_mapping, tp.ops.OPTYPE.SLICE: im.update_slice_index_mapping}
    untraced = getattr(dg, UNTRACED)
    for node in list(dg.module2node.values()):
        update = updates.get(node.type)
        if update is None:
            continue
        try:
            update(dg, node)
        except Exception as exc:  # noqa: BLE001 - one operation torch-pruning cannot model
            untraced[node] = (f"torch-pruning cannot model the {node.type.name.lower()} {near(node)} of "
                              f"{type(model).__name__} ({type(exc).__name__}: {exc}); left alone")
            node.type = tp.ops.OPTYPE.ELEMENTWISE
    try:
        im.update_index_mapping(dg)
    except Exception as exc:  # noqa: BLE001
        raise TracerError(f"torch-pruning cannot model {type(model).__name__} ({type(exc).__name__}: {exc})") from None


def near(node: Any) -> str:
    """Where an unnamed graph operation sits: 'before <layer>' / 'after <layer>', by the nearest named module."""
    for direction, word in (("outputs", "before"), ("inputs", "after")):
        seen, frontier = {node}, list(getattr(node, direction))
        while frontier:
            nxt = frontier.pop(0)
            if nxt in seen:
                continue
            seen.add(nxt)
            if isinstance(nxt.module, nn.Module) and nxt.name and not nxt.name.startswith("_"):
                return f"{word} {nxt.name.split(' (')[0]}"
            frontier.extend(getattr(nxt, direction))
    return "(unnamed)"


def blocked_reason(dg: Any, module: nn.Module) -> str:
    """Why the out-channel group of ``module`` must not be searched, or ''.

    Follows the graph's dependencies node by node (linear time, no channel indices): a
    group that reaches an untraced operation or a channel slice is left alone.
    """
    import torch_pruning as tp

    untraced = getattr(dg, UNTRACED, {})
    root = dg.module2node.get(module)
    if root is None:
        return "the layer is not in torch-pruning's trace of the model; left alone"
    start = (root, dg.get_pruner_of_module(module).prune_out_channels)
    stack, seen = [start], {start}
    while stack:
        node, fn = stack.pop()
        if node in untraced:
            return untraced[node]
        if node.type == tp.ops.OPTYPE.SLICE and getattr(node.module, "dim", None) == 1:
            return f"channel slice {near(node)} in the group, which torch-pruning does not model; left alone"
        for dep in node.dependencies:
            if dep.is_triggered_by(fn) and (dep.target, dep.handler) not in seen:
                seen.add((dep.target, dep.handler))
                stack.append((dep.target, dep.handler))
    return ""


def out_group(dg: Any, module: nn.Module, idxs: list[int] | None = None) -> Any:
    """torch-pruning's out-channel group of ``module`` (every channel unless ``idxs``);
    a search that fails is a TracerError naming the layer."""
    pruner = dg.get_pruner_of_module(module)
    chans = list(range(pruner.get_out_channels(module))) if idxs is None else list(idxs)
    try:
        return dg.get_pruning_group(module, pruner.prune_out_channels, chans)
    except Exception as exc:  # noqa: BLE001
        name = dg._module2name.get(module, type(module).__name__)
        raise TracerError(f"torch-pruning cannot build the group of {name} in {type(dg.model).__name__} "
                          f"({type(exc).__name__}: {exc})") from None


def output_layers(model: nn.Module, dg: Any) -> list[str]:
    """Conv and linear layers whose output channels are the model's output channels.

    Walks back from every traced output through operations that keep channels (norms,
    activations, pooling, flatten, upsampling, adds, concats, splits) to the first
    channel-changing layer on each path; a depthwise conv keeps channels, so the walk goes on
    through it as well. Pruning any of these would change the output's shape.
    """
    names = {m: n for n, m in model.named_modules()}
    stack = [node for node in dg.module2node.values() if not node.outputs]
    seen, found = set(), []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        module = node.module
        if isinstance(module, CHANNEL_CHANGING) and module in names:
            found.append(names[module])
            if not (isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels
                    == module.out_channels):
                continue
        stack.extend(node.inputs)
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(set(found), key=lambda n: order[n])
