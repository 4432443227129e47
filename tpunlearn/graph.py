"""Essential graphs (paper Alg. 1) and their balanced sum (Alg. 3, Eq. 4).

An EssentialGraph holds, for one target, the top-``delta`` channels of each candidate layer
(nodes, valued by their alpha) and edges between selected nodes of consecutive layers. Where
layer ``l`` feeds layer ``l+1`` directly the edge ``(l,i)->(l+1,j)`` is weighted by
``|W_{l+1}[j, i]|`` summed over the kernel (the paper's code kept no edges).

A BalancedGraph sums the per-target graphs with Eq. 4: ``|Y|`` for a node a forget target
selects, ``-1`` for a node a retained target selects. A node is flagged for removal when its
sum is at least ``|Y| - retain_tolerance`` (Alg. 4 is tolerance 0: with one forget target,
selected for it and for no retained target); with several forget targets, a node is flagged
when any of them selects it and at most ``retain_tolerance`` retained targets do.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tpunlearn.errors import PlanError, UsageError
from tpunlearn.io import JsonFormat
from tpunlearn.scoring import ChannelScores, top_count
from tpunlearn.tracing import blocked_reason, out_group

GRAPH_FORMAT = JsonFormat("tpunlearn-graph/1", "tpunlearn graph file")
Edge = tuple[str, int, str, int, float | None]  # (layer, channel, next layer, channel, weight)


@dataclass
class EssentialGraph:
    """Top-delta channels of one target over the candidate layers, with weighted edges."""

    target: int
    delta: float
    layers: list[str]
    nodes: dict[str, dict[int, float]]  # layer -> {channel: alpha}
    edges: list[Edge] = field(default_factory=list)

    def selected(self, layer: str) -> set[int]:
        return set(self.nodes.get(layer, {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "delta": self.delta,
            "layers": self.layers,
            "nodes": {layer: {str(c): v for c, v in n.items()} for layer, n in self.nodes.items()},
            "edges": [list(e) for e in self.edges],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EssentialGraph:
        return cls(
            target=int(data["target"]),
            delta=float(data["delta"]),
            layers=list(data["layers"]),
            nodes={layer: {int(c): float(v) for c, v in n.items()} for layer, n in data["nodes"].items()},
            edges=[(a, int(b), c, int(d), None if w is None else float(w)) for a, b, c, d, w in data["edges"]],
        )


def layer_links(model: nn.Module, dependency_graph: Any, layers: Sequence[str]) -> dict[tuple[str, str], torch.Tensor]:
    """``|W|`` matrices ``(C_next, C_l)`` for consecutive candidate layers that feed each other.

    ``dependency_graph`` is a built ``torch_pruning.DependencyGraph``: layer ``l`` feeds
    ``l+1`` directly when pruning ``l``'s output channels prunes ``l+1``'s input channels;
    the group's index mapping tells which input channel each output channel becomes.
    """
    links: dict[tuple[str, str], torch.Tensor] = {}
    modules = dict(model.named_modules())
    for name, nxt in zip(layers, layers[1:], strict=False):
        src, dst = modules[name], modules[nxt]
        if getattr(dst, "groups", 1) != 1:
            continue
        if blocked_reason(dependency_graph, src):
            continue
        group = out_group(dependency_graph, src)
        for item in group.items:
            dep = item.dep
            if dep.target.module is dst and dependency_graph.is_in_channel_pruning_fn(dep.handler):
                weight = dst.weight.detach().abs()
                weight = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(-1)  # (C_next, C_in)
                matrix = torch.zeros(dst.out_channels, src.out_channels)
                matrix[:, list(item.root_idxs)] = weight[:, list(item.idxs)].float().cpu()
                links[(name, nxt)] = matrix
                break
    return links


def essential_graph(scores: ChannelScores, target: int, delta: float,
                    links: Mapping[tuple[str, str], torch.Tensor] | None = None) -> EssentialGraph:
    """Alg. 1 for one target: top-``delta`` channels by signed alpha, edges between layers."""
    if target not in scores.targets:
        raise UsageError(f"target {target} was not scored")
    nodes: dict[str, dict[int, float]] = {}
    for layer in scores.layers:
        alpha = scores.alpha(target, layer)
        top = alpha.topk(top_count(alpha.numel(), delta)).indices.tolist()
        nodes[layer] = {int(c): float(alpha[c]) for c in sorted(top)}
    edges: list[Edge] = []
    links = links or {}
    for layer, nxt in zip(scores.layers, scores.layers[1:], strict=False):
        matrix = links.get((layer, nxt))
        for i in nodes[layer]:
            for j in nodes[nxt]:
                weight = None if matrix is None else float(matrix[j, i])
                edges.append((layer, i, nxt, j, weight))
    return EssentialGraph(target=target, delta=float(delta), layers=list(scores.layers), nodes=nodes, edges=edges)


@dataclass
class BalancedGraph:
    """Eq. 4 sums of the per-target graphs, with what each node was selected by."""

    layers: list[str]
    channels: dict[str, int]
    forget: list[int]
    retain: list[int]
    retain_tolerance: int
    value: dict[str, torch.Tensor]        # layer -> (C,) Eq. 4 sums
    forget_hits: dict[str, torch.Tensor]  # layer -> (C,) forget targets selecting the node
    retain_hits: dict[str, torch.Tensor]  # layer -> (C,) retained targets selecting the node
    graphs: dict[int, EssentialGraph] = field(default_factory=dict)

    @property
    def n_targets(self) -> int:
        """``|Y|``: the number of targets the balance was computed over."""
        return len(self.forget) + len(self.retain)

    def flagged(self) -> dict[str, list[int]]:
        """Nodes to remove, per layer: selected by a forget target and by at most
        ``retain_tolerance`` retained targets.

        With one forget target this is exactly Alg. 4 on the Eq. 4 sums (``value >= |Y| -
        retain_tolerance``). With several, the literal sum would also flag a node that every
        forget target and many retained targets select (``2|Y| - r >= |Y|``); we keep the
        tolerance's meaning instead, so retained targets stay protected.
        """
        keep = self.retain_tolerance
        return {layer: ((self.forget_hits[layer] > 0) & (self.retain_hits[layer] <= keep)).nonzero().flatten().tolist()
                for layer in self.layers}

    def protected(self) -> dict[str, list[int]]:
        """Nodes that retained targets need (selected by more than the tolerance), not flagged."""
        flagged = self.flagged()
        out = {}
        for layer in self.layers:
            mask = self.retain_hits[layer] > self.retain_tolerance
            mask[flagged[layer]] = False
            out[layer] = mask.nonzero().flatten().tolist()
        return out

    def summary(self) -> dict[str, Any]:
        flagged = self.flagged()
        return {
            "n_targets": self.n_targets,
            "flagged": sum(len(v) for v in flagged.values()),
            "flagged_per_layer": {layer: len(v) for layer, v in flagged.items()},
            "protected": sum(len(v) for v in self.protected().values()),
        }

    def to_dict(self) -> dict[str, Any]:
        return GRAPH_FORMAT.stamp({
            "layers": self.layers,
            "channels": self.channels,
            "forget": self.forget,
            "retain": self.retain,
            "retain_tolerance": self.retain_tolerance,
            "value": {layer: self.value[layer].tolist() for layer in self.layers},
            "forget_hits": {layer: self.forget_hits[layer].tolist() for layer in self.layers},
            "retain_hits": {layer: self.retain_hits[layer].tolist() for layer in self.layers},
            "flagged": self.flagged(),
            "graphs": {str(t): g.to_dict() for t, g in self.graphs.items()},
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BalancedGraph:
        """A graph from its JSON form; every per-layer vector must have the layer's width."""
        GRAPH_FORMAT.check(data)
        try:
            layers = [str(layer) for layer in data["layers"]]
            def as_t(d: Mapping[str, Any]) -> dict[str, torch.Tensor]:
                return {layer: torch.tensor(d[layer], dtype=torch.long) for layer in layers}

            graph = cls(
                layers=layers,
                channels={str(k): int(v) for k, v in data["channels"].items()},
                forget=[int(t) for t in data["forget"]],
                retain=[int(t) for t in data["retain"]],
                retain_tolerance=int(data["retain_tolerance"]),
                value=as_t(data["value"]),
                forget_hits=as_t(data["forget_hits"]),
                retain_hits=as_t(data["retain_hits"]),
                graphs={int(t): EssentialGraph.from_dict(g) for t, g in data.get("graphs", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise PlanError(f"not a valid tpunlearn graph file ({type(exc).__name__}: {exc})") from None
        for layer in layers:
            width = graph.channels.get(layer)
            shapes = {tuple(v[layer].shape) for v in (graph.value, graph.forget_hits, graph.retain_hits)}
            if width is None or shapes != {(width,)}:
                raise PlanError(f"not a valid tpunlearn graph file: layer {layer} has {width} channels but "
                                f"vectors of shape {sorted(shapes)}")
        return graph

    def save(self, path: str | os.PathLike[str]) -> None:
        GRAPH_FORMAT.write(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None) -> BalancedGraph:
        """Read a graph file; with ``model``, also check that its layers and widths are the model's."""
        def parse(data: Mapping[str, Any]) -> BalancedGraph:
            graph = cls.from_dict(data)
            if model is not None:
                graph.check(model)
            return graph

        return GRAPH_FORMAT.read(path, parse)

    def check(self, model: nn.Module) -> None:
        """Raise PlanError unless every layer of the graph is a layer of ``model`` with the same width."""
        modules = dict(model.named_modules())
        for layer in self.layers:
            module = modules.get(layer)
            width = getattr(module, "out_channels", getattr(module, "out_features", None))
            if module is None:
                raise PlanError(f"the graph was made for another model: it has no layer {layer!r}")
            if width != self.channels[layer]:
                raise PlanError(f"the graph was made for another model: {layer} has {width} channels, "
                                f"the graph {self.channels[layer]}")


def balance(graphs: Mapping[int, EssentialGraph], forget: Iterable[int], retain: Iterable[int],
            channels: Mapping[str, int], retain_tolerance: int = 0) -> BalancedGraph:
    """Alg. 3 with Eq. 4: sum per-target graphs; forget nodes count |Y|, retained nodes -1."""
    forget, retain = sorted(set(forget)), sorted(set(retain))
    if not forget:
        raise UsageError("at least one forget target is needed")
    both = set(forget) & set(retain)
    if both:
        raise UsageError(f"target(s) {sorted(both)} are both forgotten and retained")
    missing = [t for t in forget + retain if t not in graphs]
    if missing:
        raise UsageError(f"no essential graph for target(s) {missing}")
    if retain_tolerance < 0:
        raise UsageError(f"retain_tolerance must be >= 0, got {retain_tolerance}")
    layers = graphs[forget[0]].layers
    n = len(forget) + len(retain)
    value, f_hits, r_hits = {}, {}, {}
    for layer in layers:
        c = channels[layer]
        f_hits[layer] = torch.zeros(c, dtype=torch.long)
        r_hits[layer] = torch.zeros(c, dtype=torch.long)
        for t in forget:
            f_hits[layer][list(graphs[t].selected(layer))] += 1
        for t in retain:
            r_hits[layer][list(graphs[t].selected(layer))] += 1
        value[layer] = f_hits[layer] * n - r_hits[layer]
    return BalancedGraph(layers=list(layers), channels=dict(channels), forget=forget, retain=retain,
                         retain_tolerance=int(retain_tolerance), value=value, forget_hits=f_hits,
                         retain_hits=r_hits, graphs={t: graphs[t] for t in forget + retain})
