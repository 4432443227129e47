"""Reports and pictures: ``report.json`` assembled in one place, and the balanced graph drawn
in the spirit of the paper's Fig. 10.

:func:`unlearn_report` is what ``unlearn()`` knows about a request; :func:`prune_report` adds
what the command line knows (inputs, class names, the command that reproduces the run), and
the entries the CLI fills while writing its outputs (:func:`metrics_entry`, :func:`onnx_entry`,
:func:`output_hashes`) are made here too. The keys are documented in README.md.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpunlearn import __version__
from tpunlearn.io import atomic_path, sha256

if TYPE_CHECKING:
    import argparse

    from torch import nn

    from tpunlearn.api import UnlearnResult
    from tpunlearn.evaluate import Evaluation
    from tpunlearn.graph import BalancedGraph
    from tpunlearn.plan import PrunePlan
    from tpunlearn.scoring import ChannelScores
    from tpunlearn.settings import UnlearnSettings

ALGORITHM = "balanced essential graph (Xu et al., Alg. 1-4, Eq. 3-4) with torch-pruning groups"


def settings_entry(settings: UnlearnSettings, forget: list[int], retain: list[int]) -> dict[str, Any]:
    """``report["settings"]``: the request's targets and every setting (``retain_delta`` resolved)."""
    return {"forget": forget, "retain": retain, "sigma": settings.sigma, "group_closure": settings.group_closure,
            "balanced": settings.balanced, "align": settings.align, "delta": settings.delta,
            "retain_delta": settings.resolved_retain_delta, "retain_tolerance": settings.retain_tolerance,
            "n_per_target": settings.n_per_target, "mode": settings.mode, "coupled": settings.coupled,
            "method": settings.method}


def unlearn_report(original: nn.Module, pruned: nn.Module, settings: UnlearnSettings, forget: list[int],
                   retain: list[int], layers: list[str], scores: ChannelScores, graph: BalancedGraph,
                   plan: PrunePlan, timings: dict[str, float], check: dict[str, Any], notes: list[str],
                   execution: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able record of one ``unlearn()`` request: what ran, on what, with what result.

    ``execution`` says where it ran (device, ranks); the result does not depend on it.
    """
    from tpunlearn.torchutils import count_params

    return {
        "tpunlearn": __version__,
        "algorithm": ALGORITHM,
        "settings": settings_entry(settings, forget, retain),
        "layers": layers,
        "n_targets": graph.n_targets,
        "instances": {str(t): scores.targets[t].count for t in forget + retain},
        "stability": {str(t): round(v, 4) for t, v in scores.stability(settings.delta).items()
                      if scores.targets[t].instances},
        "graph": graph.summary(),
        "removed_channels": plan.removed_channels,
        "removed": plan.removed,
        "params": {"before": count_params(original), "after": count_params(pruned)},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "check": check,
        "notes": plan.notes + notes,
        "execution": execution,
    }


def prune_report(result: UnlearnResult, original: nn.Module, example_inputs: Any, args: argparse.Namespace,
                 class_names: list[str], library: str, started: float) -> dict[str, Any]:
    """``tpunlearn prune``'s report: ``unlearn()``'s plus what the CLI knows (its parsed ``args``):
    the inputs, class names, the command that reproduces the run, costs and versions.

    ``library`` is the model family's package (its version is recorded), ``started`` the
    ``time.perf_counter()`` at which the request began.
    """
    import torch

    report = dict(result.report)
    settings = report["settings"]
    report.update(arch=args.arch, forget=[class_names[t] for t in settings["forget"]],
                  retain=[class_names[t] for t in settings["retain"]], seed=args.seed,
                  inputs={"arch": args.arch, "weights": args.weights, "data": args.data, "graph_cache": args.graph,
                          "trust_checkpoint": bool(args.trust_checkpoint)},
                  command=["tpunlearn", *args.argv], reproduce=reproduce_command(args, result.settings),
                  runtime={"device": str(next(result.model.parameters()).device),
                           "torch_threads": torch.get_num_threads()},
                  macs={"before": count_macs(original, example_inputs),
                        "after": count_macs(result.model, example_inputs)},
                  versions=versions(library), total_s=round(time.perf_counter() - started, 3))
    report["settings"] = {**settings, "seed": args.seed, "data": args.data}
    return report


def reproduce_command(args: argparse.Namespace, settings: UnlearnSettings) -> list[str]:
    """A ``tpunlearn prune`` command line with every setting explicit (defaults resolved).

    ``args`` gives the inputs, targets, seed and repair; ``settings`` the algorithm's settings
    that ran (under ``--auto``, the ones the search chose).
    """
    cmd = ["tpunlearn", "prune", "--arch", args.arch]
    for flag, value in (("--weights", args.weights), ("--data", args.data), ("--graph", args.graph)):
        if value:
            cmd += [flag, str(value)]
    cmd += ["--forget", *args.forget]
    if args.retain:
        cmd += ["--retain", *args.retain]
    cmd += [*settings.command_line(), "--seed", str(args.seed)]
    if getattr(args, "repair_epochs", 0):
        cmd += ["--repair-epochs", str(args.repair_epochs), "--repair-lr", str(args.repair_lr)]
    return cmd + (["--trust-checkpoint"] if args.trust_checkpoint else [])


def metrics_entry(before: Evaluation, after: Evaluation, forget_names: list[str]) -> dict[str, Any]:
    """``report["metrics"]``: every per-target metric before and after, by class name, with the
    retained summary (forgotten targets left out; the worst retained target named) and, for
    segmentation, where the forgotten classes' pixels go after."""
    from tpunlearn.evaluate import compare, pixels_to

    entry: dict[str, Any] = {
        "name": before.primary, "task": before.task, "primary": before.primary,
        "operating_point": before.operating_point, "forgotten": list(forget_names),
        "before": before.per_target, "after": after.per_target,
        "summary": {"before": before.summary, "after": after.summary},
        "retained": compare(before, after, forget_names),
    }
    if "confusion" in after.extra:
        names = list(after.extra.get("names") or [])
        entry["pixels_to"] = pixels_to(after.extra["confusion"], names, forget_names)
    return entry


def onnx_entry(path: str | os.PathLike[str], max_abs_diff: float, latency_ms: tuple[float, float]) -> dict[str, Any]:
    """``report["onnx"]``: the exported file, its parity with torch, and the latency before and after."""
    return {"path": str(path), "max_abs_diff": max_abs_diff,
            "latency_ms": {"before": latency_ms[0], "after": latency_ms[1]}}


def output_hashes(input_weights: str | os.PathLike[str] | None, output_weights: str | os.PathLike[str],
                  data: str | None, graph_cache: str | os.PathLike[str] | None) -> dict[str, str | None]:
    """``report["sha256"]``: hashes of the input checkpoint, the written model, the data and the cache."""
    return {"input_weights": sha256(input_weights) if input_weights else None,
            "output_weights": sha256(output_weights), "data": data_sha256(data),
            "graph_cache": sha256(graph_cache) if graph_cache else None}


def data_sha256(spec: str | None) -> str:
    """sha256 of what a data spec reads: a file, every file of a folder, or the bundled scans."""
    if spec and Path(spec).is_file():
        return sha256(spec)
    if spec and Path(spec).is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in Path(spec).rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(spec)} {sha256(f)}\n".encode())
        return digest.hexdigest()
    from sklearn.datasets import load_digits  # DigitScenes and the bundled pictures derive from package data

    return hashlib.sha256(load_digits().data.tobytes()).hexdigest()


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of tpunlearn, torch, torch-pruning and any ``packages``."""
    out = {"python": platform.python_version()}
    for name in ("tpunlearn", "torch", "torch-pruning", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def draw_graph(graph: BalancedGraph, path: str | os.PathLike[str], max_nodes_per_layer: int = 40,
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

    flagged = {layer: set(v) for layer, v in graph.flagged().items()}
    protected = {layer: set(v) for layer, v in graph.protected().items()}
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
