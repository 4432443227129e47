"""Reports and pictures: the balanced graph drawn in the spirit of the paper's Fig. 10."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any

from tpunlearn.io import atomic_path

if TYPE_CHECKING:
    from tpunlearn.graph import BalancedGraph


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of tpunlearn, torch, torch-pruning and any ``packages``."""
    out = {"python": platform.python_version()}
    for name in ("tpunlearn", "torch", "torch-pruning", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def draw_graph(graph: "BalancedGraph", path: str | os.PathLike[str], max_nodes_per_layer: int = 40,
               title: str | None = None, max_edges: int = 400) -> None:
    """Draw the balanced graph: one column per layer, nodes coloured by their Eq. 4 role.

    Red nodes are flagged (removed), blue ones protected by retained targets, grey ones
    selected by nothing decisive. Edges of the forget targets' essential graphs are drawn
    with their ``|W|`` weight as opacity. Only the most decisive nodes of wide layers are
    shown (``max_nodes_per_layer``), sorted by their sum.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flagged = {l: set(v) for l, v in graph.flagged().items()}
    protected = {l: set(v) for l, v in graph.protected().items()}
    positions: dict[tuple[str, int], tuple[float, float]] = {}
    fig, ax = plt.subplots(figsize=(2.2 * len(graph.layers) + 2, 7))
    for x, layer in enumerate(graph.layers):
        value = graph.value[layer].float()
        half = max_nodes_per_layer // 2
        red = sorted(flagged[layer])[:half]
        blue = sorted(protected[layer], key=lambda c: float(value[c]))[:max_nodes_per_layer - len(red)]
        shown = sorted(red + blue, key=lambda c: -float(value[c]))
        for rank, c in enumerate(shown):
            y = 1.0 - rank / max(1, len(shown) - 1) if len(shown) > 1 else 0.5
            positions[(layer, c)] = (x, y)
            colour = "#d62728" if c in flagged[layer] else "#1f77b4" if c in protected[layer] else "#aaaaaa"
            ax.scatter([x], [y], s=28, color=colour, zorder=3)
        ax.text(x, -0.08, f"{layer}\n{len(flagged[layer])} flagged / {graph.channels[layer]}",
                ha="center", va="top", fontsize=7)
    edges = [e for t in graph.forget if t in graph.graphs for e in graph.graphs[t].edges
             if (e[0], e[1]) in positions and (e[2], e[3]) in positions]
    edges.sort(key=lambda e: -(e[4] or 0.0))
    edges = edges[:max_edges]
    top = max((e[4] or 0.0 for e in edges), default=0.0) or 1.0
    for a, i, b, j, w in edges:
        (x0, y0), (x1, y1) = positions[(a, i)], positions[(b, j)]
        ax.plot([x0, x1], [y0, y1], color="#d62728", alpha=0.08 + 0.5 * (w or 0.0) / top, lw=0.7, zorder=1)
    ax.scatter([], [], color="#d62728", label="flagged (removed)")
    ax.scatter([], [], color="#1f77b4", label="protected (retained targets)")
    ax.scatter([], [], color="#aaaaaa", label="other selected")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    ax.set_xlim(-0.7, len(graph.layers) - 0.3)
    ax.set_ylim(-0.4, 1.05)
    ax.axis("off")
    ax.set_title(title or f"balanced essential graph: forget {graph.forget}, |Y| = {graph.n_targets}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def count_macs(model: Any, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward in eval mode, counted by torch-pruning (the model is left as it was)."""
    import torch
    import torch_pruning as tp

    from tpunlearn.torchutils import eval_mode, model_device, to_device

    with eval_mode(model), torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, to_device(example_inputs, model_device(model)))
    return int(macs)
