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
from collections.abc import Sequence
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
        "outcome": outcome_entry(graph, plan, settings),
        "removed": plan.removed,
        "removal": plan.explain(),
        "params": {"before": count_params(original), "after": count_params(pruned)},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "check": check,
        "notes": plan.notes + notes,
        "execution": execution,
    }


def outcome_entry(graph: BalancedGraph, plan: PrunePlan, settings: UnlearnSettings) -> dict[str, Any]:
    """``report["outcome"]``: ``{"status": "pruned"}``, or for a request that removed no channel
    ``{"status": "nothing removed", "why": ..., "try": [...]}``: which step left every channel in
    place (every selected channel shared with retained targets, or every flagged one kept by
    alignment or a protected group) and the settings that change it."""
    if plan.removed_channels:
        return {"status": "pruned"}
    s = settings
    where = f"the {len(graph.layers)} scored layer(s) (--sigma {s.sigma})"
    selected = sum(int((graph.forget_hits[layer] > 0).sum()) for layer in graph.layers)
    if not any(graph.flagged().values()):
        tol = graph.retain_tolerance  # the count, also when --retain-tolerance gave a fraction
        given = "" if float(s.retain_tolerance) == tol else f" = {s.retain_tolerance:g} of {len(graph.retain)}"
        why = (f"all {selected} channel(s) the forget target(s) select in {where} at --delta {s.delta:g} are "
               f"essential to more than {tol} retained target(s) too (--retain-tolerance "
               f"{tol}{given}): no channel is specific to the forget target(s)")
        hint = [f"--retain-tolerance {tol + 1} (a channel that {tol + 1} retained "
                "target(s) also select may go)", "a larger --sigma (more layers scored)", "--auto"]
    else:
        total = plan.explain()["total"]
        why = (f"{total['flagged']} channel(s) were flagged but all kept: {total['align_kept']} held back by width "
               f"alignment (--align {s.align}), {total['protected_kept']} in groups that are protected (--coupled "
               f"{s.coupled}), skipped or would be emptied")
        hint = ["--align 1", "--coupled prune", "--auto"]
    return {"status": "nothing removed", "why": why, "try": hint}


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
    # the command line speaks class names: the settings say so, and their indices say they are indices
    named = {k: v for k, v in settings.items() if k not in ("forget", "retain")}
    report["settings"] = {"forget": report["forget"], "retain": report["retain"], "forget_index": settings["forget"],
                          "retain_index": settings["retain"], **named, "seed": args.seed, "data": args.data}
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
    described = (("--num-classes", getattr(args, "num_classes", None)), ("--imgsz", getattr(args, "imgsz", None)),
                 ("--names", ",".join(getattr(args, "names", None) or [])))
    for flag, value in described:
        if value:
            cmd += [flag, str(value)]
    cmd += ["--forget", *args.forget]
    if args.retain:
        cmd += ["--retain", *args.retain]
    cmd += [*settings.command_line(), "--seed", str(args.seed)]
    if getattr(args, "repair_epochs", 0):
        cmd += ["--repair-epochs", str(args.repair_epochs)]
        cmd += ["--repair-lr", str(args.repair_lr)] if getattr(args, "repair_lr", None) is not None else []
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


# Channel states in the graph picture, in drawing order: (key, colour, legend label).
CHANNEL_STATES = (
    ("removed", "#d62728", "removed (flagged)"),
    ("align", "#7f0000", "removed: added by width alignment"),
    ("coupled", "#9467bd", "removed: coupled to a flagged channel"),
    ("kept", "#ff9f1c", "flagged, kept (protected group or alignment)"),
    ("protected", "#1f77b4", "protected by retained targets"),
    ("other", "#dddddd", "other channels"),
)


def channel_states(graph: BalancedGraph, plan: PrunePlan | None = None) -> dict[str, dict[str, list[int]]]:
    """Each drawn layer's channels by state (keys of :data:`CHANNEL_STATES`), as the plan decided.

    Without a plan, flagged channels count as removed. Layers the plan removes channels from
    outside the scored set are included, so the removed channels are exactly the plan's.
    """
    flagged = {layer: set(v) for layer, v in (plan.flagged if plan and plan.flagged else graph.flagged()).items()}
    protected = {layer: set(v) for layer, v in graph.protected().items()}
    removed = {layer: set(v) for layer, v in (plan.removed if plan else graph.flagged()).items()}
    added: dict[str, set[int]] = {}
    for d in plan.decisions if plan else []:
        for layer, idxs in d.align_added.items():
            added.setdefault(layer, set()).update(idxs)
    widths = dict(graph.channels)
    for layer in removed:
        widths.setdefault(layer, plan.signature[layer][0] if plan else 0)
    out: dict[str, dict[str, list[int]]] = {}
    for layer in list(graph.layers) + [layer for layer in removed if layer not in graph.layers]:
        f, r, a = flagged.get(layer, set()), removed.get(layer, set()), added.get(layer, set())
        state: dict[str, list[int]] = {key: [] for key, _, _ in CHANNEL_STATES}
        for c in range(widths[layer]):
            key = ("removed" if c in f else "align" if c in a else "coupled") if c in r else \
                "kept" if c in f else "protected" if c in protected.get(layer, set()) else "other"
            state[key].append(c)
        out[layer] = state
    return out


def short_label(name: str, width: int = 24) -> str:
    """A layer name on at most two lines of about ``width`` characters, split at dots, the head elided."""
    if len(name) <= width:
        return name
    parts, line = name.split("."), ""
    lines: list[str] = []
    for part in reversed(parts):
        if line and len(line) + len(part) + 1 > width:
            lines.insert(0, line)
            line = part
        else:
            line = part + ("." + line if line else "")
    lines.insert(0, line)
    if len(lines) > 2:
        lines = ["..." + lines[-2]] + lines[-1:]
    return ".\n".join(lines)[: 2 * width + 6]


def _shown(state: dict[str, list[int]], max_cells: int) -> list[str]:
    """The states of the cells drawn for one layer: every removed and flagged channel, the rest
    sampled in proportion when the layer is wider than ``max_cells``."""
    must = ("removed", "align", "coupled", "kept")
    cells = [key for key in must for _ in state[key]]
    rest = [key for key in ("protected", "other") for _ in state[key]]
    room = max(0, max_cells - len(cells))
    if len(rest) > room:
        step = len(rest) / room if room else float("inf")
        rest = [rest[int(i * step)] for i in range(room)]
    return cells + rest


def draw_graph(graph: BalancedGraph, path: str | os.PathLike[str], plan: PrunePlan | None = None,
               title: str | None = None, max_cells: int = 256) -> dict[str, Any]:
    """Draw what the plan did to each scored layer: one row per layer, one cell per channel.

    Cells are coloured by :func:`channel_states` (the plan's removal, with alignment and
    coupling apart; flagged-but-kept and protected channels distinct) and sorted by state.
    Layers wider than ``max_cells`` show every removed and flagged channel and a proportional
    sample of the rest; the caption says so. The figure's size is capped whatever the model.
    Returns what was drawn: per layer ``channels``, ``shown`` and counts per state, the total
    ``removed`` (equal to ``plan.removed_channels``), the ``legend`` labels, ``caption`` and
    ``size_px``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    states = channel_states(graph, plan)
    colours = {key: colour for key, colour, _ in CHANNEL_STATES}
    rows = {layer: _shown(state, max_cells) for layer, state in states.items()}
    n = max(1, len(rows))
    row_h = min(0.45, 11.0 / n)
    fig_w, fig_h = 11.0, 1.9 + row_h * n
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    fig.subplots_adjust(left=2.3 / fig_w, right=1 - 2.2 / fig_w, top=1 - 1.05 / fig_h, bottom=0.75 / fig_h)
    font = max(5.5, min(8.5, row_h * 19))
    drawn: dict[str, dict[str, int]] = {}
    for y, (layer, cells) in enumerate(rows.items()):
        _draw_row(ax, y, cells, colours)
        counts = {key: len(v) for key, v in states[layer].items()}
        width = sum(counts.values())
        drawn[layer] = {"channels": width, "shown": len(cells), **counts}
        ax.text(1.01, y, _row_text(counts), transform=ax.get_yaxis_transform(), va="center", fontsize=font,
                linespacing=1.1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{short_label(layer)}  [{drawn[layer]['channels']}]" for layer in rows], fontsize=font)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    present = [(key, label) for key, _, label in CHANNEL_STATES if any(d[key] for d in drawn.values())]
    fig.legend(handles=[Patch(color=colours[k], label=label) for k, label in present], loc="lower center",
               ncol=min(3, max(1, len(present))), fontsize=8, frameon=False)
    removed = sum(d["removed"] + d["align"] + d["coupled"] for d in drawn.values())
    caption = _graph_caption(drawn, removed, max_cells, plan)
    heading = f"{title or f'forget {graph.forget}'}: what the plan did to each scored layer's channels"
    fig.suptitle(heading, fontsize=11, y=1 - 0.2 / fig_h)
    fig.text(0.5, 1 - 0.62 / fig_h, caption, ha="center", va="center", fontsize=8, wrap=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    size = [int(fig_w * 110), int(fig_h * 110)]
    plt.close(fig)
    return {"layers": drawn, "removed": removed, "legend": [label for _, label in present], "caption": caption,
            "size_px": size}


def _row_text(counts: dict[str, int]) -> str:
    """A layer's counts beside its strip: removed (with alignment's and coupling's part), then what was kept."""
    gone = counts["removed"] + counts["align"] + counts["coupled"]
    why = [f"{counts[k]} {k}" for k in ("align", "coupled") if counts[k]]
    kept = ([f"{counts['kept']} flagged kept"] if counts["kept"] else []) + [f"{counts['protected']} protected"]
    return f"{gone} removed" + (f" ({', '.join(why)})" if why else "") + "\n" + ", ".join(kept)


def _draw_row(ax: Any, y: int, cells: list[str], colours: dict[str, str]) -> None:
    """One layer's channel strip: runs of equal state as bars, cell borders when cells are wide enough."""
    k = max(1, len(cells))
    start = 0
    for i in range(1, len(cells) + 1):
        if i == len(cells) or cells[i] != cells[start]:
            ax.barh(y, (i - start) / k, left=start / k, height=0.7, color=colours[cells[start]], linewidth=0)
            start = i
    if len(cells) <= 128:
        ax.vlines([i / k for i in range(1, len(cells))], y - 0.35, y + 0.35, colors="white", linewidth=0.4)


def _graph_caption(drawn: dict[str, dict[str, int]], removed: int, max_cells: int, plan: PrunePlan | None) -> str:
    sampled = [d for d in drawn.values() if d["shown"] < d["channels"]]
    if sampled:
        shown = f"showing up to {max_cells} channels per layer ({len(sampled)} of {len(drawn)} layers sampled); " \
                "every removed and flagged channel shown"
    else:
        shown = "showing every channel of each layer"
    what = f"{removed} channel(s) removed" if plan else f"{removed} flagged (no plan given: flagged = removed)"
    if plan and plan.mode == "mask":
        what += " (mask mode: zeroed, shapes kept)"
    return f"{shown}; {what}; [n] = layer width; cells sorted by state, not by channel index"


def metric_value(entry: Any, primary: str) -> float | None:
    """A target's primary metric from a metrics entry's value: a number, or a dict of metrics."""
    value = entry.get(primary) if isinstance(entry, dict) else entry
    return None if value is None else float(value)


def operating_point_text(point: Any) -> str:
    """``{"conf": 0.25, "iou": 0.5}`` as ``conf 0.25, IoU 0.5``; ``{"rule": ..}`` as the rule."""
    if not isinstance(point, dict) or not point:
        return ""
    if "rule" in point:
        return f"decision rule {point['rule']}"
    return ", ".join(f"{'IoU' if k == 'iou' else k} {v}" for k, v in point.items())


def metric_rows(metrics: dict[str, Any], forgotten: list[str] | None = None,
                max_targets: int = 40) -> dict[str, Any]:
    """What :func:`draw_metrics` draws: ``primary``, ``values`` (target -> (before, after)),
    ``targets`` shown, ``forgotten``, ``worst`` retained target and ``caption``.

    The worst retained target is the entry's own (``retained.worst.target``) when it names
    one, else the largest drop (ties: the lowest after). With more than ``max_targets``
    targets, the forgotten ones and the retained ones that dropped most are kept.
    """
    primary = str(metrics.get("primary") or metrics.get("name") or "metric")
    before, after = metrics.get("before", {}), metrics.get("after", {})
    forgotten = [str(t) for t in metrics.get("forgotten", forgotten or [])]
    values = {str(t): (metric_value(before[t], primary) or 0.0, metric_value(after.get(t), primary) or 0.0)
              for t in before}
    drops = {t: b - a for t, (b, a) in values.items() if t not in forgotten}
    named = (metrics.get("retained") or {}).get("worst") or {}
    worst = str(named["target"]) if named.get("target") is not None else \
        max(drops, key=lambda t: (drops[t], -values[t][1])) if drops else None
    targets = list(values)
    if len(targets) > max_targets:
        keep = set(forgotten) | set(sorted(drops, key=lambda t: -drops[t])[:max(0, max_targets - len(forgotten))])
        targets = [t for t in targets if t in keep]
    caption = f"{len(targets)} of {len(values)} targets"
    caption += " (forgotten and largest drops)" if len(targets) < len(values) else ""
    if worst in values:
        caption += f"; worst retained: {worst} {values[worst][0]:.3f} -> {values[worst][1]:.3f}"
    return {"primary": primary, "values": values, "targets": targets, "forgotten": forgotten, "worst": worst,
            "caption": caption}


def draw_metrics(metrics: dict[str, Any], path: str | os.PathLike[str], forgotten: list[str] | None = None,
                 max_targets: int = 40) -> dict[str, Any]:
    """Per-target before/after bars of the primary metric of ``report["metrics"]``.

    Forgotten targets are drawn red on a shaded row and labelled, the worst retained target
    is named (bold, and in the caption), the operating point is in the title; see
    :func:`metric_rows` for what is shown. ``forgotten`` names the forgotten targets where
    the entry does not. Returns ``targets`` (top to bottom), ``forgotten``, ``worst``,
    ``caption`` and ``title``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = metric_rows(metrics, forgotten, max_targets)
    targets, values, worst, gone = rows["targets"], rows["values"], rows["worst"], rows["forgotten"]
    n = max(1, len(targets))
    bar = min(0.32, 12.0 / n)
    fig, ax = plt.subplots(figsize=(8.5, 1.9 + bar * n))
    _metric_bars(ax, [values[t] for t in targets], [t in gone for t in targets], max(6.0, min(9.0, bar * 28)))
    ax.set_yticks(range(len(targets)))
    ax.set_yticklabels([f"{t}  (forgotten)" if t in gone else f"{t}  (worst retained)" if t == worst else t
                        for t in targets], fontsize=max(6.0, min(9.0, bar * 28)))
    for tick, t in zip(ax.get_yticklabels(), targets, strict=False):
        tick.set_color("#d62728" if t in gone else "black")
        tick.set_fontweight("bold" if t == worst else "normal")
    ax.set_xlabel(rows["primary"])
    handles = [Patch(color="#bbbbbb", label="before"), Patch(color="#2ca02c", label="after (retained)")]
    handles += [Patch(color="#fde0e0", label="forgotten target (after bar red)")] if gone else []
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.04))
    point = operating_point_text(metrics.get("operating_point"))
    title = f"{rows['primary']} per target, before and after" + (f" ({point})" if point else "")
    ax.set_title(title, fontsize=10)
    fig.text(0.5, 0.01, rows["caption"], ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.7 / (1.9 + bar * n), 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return {"targets": targets, "forgotten": gone, "worst": worst, "caption": rows["caption"], "title": title}


def _metric_bars(ax: Any, values: list[tuple[float, float]], forgotten: list[bool], font: float) -> None:
    """Before (grey) and after (green, red when forgotten, on a shaded row) bars, values written beside."""
    y = list(range(len(values)))
    ax.barh([v - 0.2 for v in y], [b for b, _ in values], height=0.38, color="#bbbbbb")
    ax.barh([v + 0.2 for v in y], [a for _, a in values], height=0.38,
            color=["#d62728" if f else "#2ca02c" for f in forgotten])
    top = max([1.0, *(x for pair in values for x in pair)])
    for v, ((b, a), f) in enumerate(zip(values, forgotten, strict=False)):
        if f:
            ax.axhspan(v - 0.48, v + 0.48, color="#fde0e0", zorder=0)
        ax.text(top * 1.03, v, f"{b:.3f} -> {a:.3f}", va="center", fontsize=font * 0.9)
    ax.set_ylim(len(values) - 0.5, -0.6)
    ax.set_xlim(0, top * 1.3)
    ax.set_xticks([t / 5 * top for t in range(6)])
    ax.spines["right"].set_visible(False)


def draw_inversion(pictures: dict[str, Any], path: str | os.PathLike[str], target: str,
                   bounds: tuple[float, float] | None = None, constant: Sequence[str] = ()) -> dict[str, Any]:
    """The model-inversion picture (the paper's Fig. 7): one panel per model (original, unlearned,
    reference), each the input that maximises ``target``'s logit from the same seeded start, shown
    on the data's value range ``bounds`` (each panel's own range when None). ``constant``: the models
    whose target logit no input moves; their panels say so. Returns the caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pictures), figsize=(2.6 * len(pictures), 2.9), squeeze=False)
    for ax, (which, x) in zip(axes[0], pictures.items(), strict=True):
        lo, hi = bounds if bounds is not None else (float(x.min()), float(x.max()))
        img = ((x.float() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
        ax.imshow(img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy(), cmap="gray")
        ax.set_title(f"{which}\n(logit constant)" if which in constant else which, fontsize=9)
        ax.axis("off")
    caption = (f"input that maximises the logit of {target!r}, by gradient ascent from the same seeded noise "
               "(total-variation and L2 prior), per model")
    if constant:
        caption += (f"; {' and '.join(constant)}: the prior alone, since the logit of {target!r} there is the "
                    "same for every input (its output row is blanked) and nothing raises it")
    fig.suptitle(f"model inversion of {target}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return {"caption": caption, "models": list(pictures), "target": target, "constant": list(constant)}


def _html_audit(audit: Any, folder: Path) -> str:
    """The audit section: one row per attack and probe (original / unlearned / reference, the gap to
    the reference, within the tolerance or not), what did not run, and the inversion picture."""
    import html

    from tpunlearn.audit import verdict

    if not isinstance(audit, dict):
        return ""
    esc = html.escape
    rows, classes = [], []
    for name, c in (audit.get("checks") or {}).items():
        mia = c.get("kind") == "mia"

        def shown(v: Any, mia: bool = mia) -> str:
            return "" if v is None else f"{100 * v:.1f} %" if mia else f"{v:.3f}"

        gap = c.get("gap_to_reference")
        gap_text = "" if gap is None else f"{100 * gap:+.1f} pts" if mia else f"{gap:+.3f}"
        tol = f"{100 * c['tolerance']:.0f} pts" if mia else f"at most +{c['tolerance']:g}"
        rows.append([c.get("label", name), shown(c.get("original")), shown(c.get("unlearned")),
                     shown(c.get("reference")), gap_text, tol, verdict(c)])
        classes.append({True: "met", False: "notmet", None: ""}[c.get("within")])
    parts = ["<h2>Audit: attacks and probes</h2>",
             f"<p id=\"audit-line\"><b>{esc(str(audit.get('line', '')))}</b></p>",
             _html_table(["check", "original", "unlearned", "reference", "gap to reference", "tolerance", "verdict"],
                         rows, classes)]
    not_run = audit.get("not_run") or {}
    failed = audit.get("failed") or {}
    if not_run or failed:
        parts.append("<ul>" + "".join(f"<li>{esc(k)}: not run ({esc(str(v))})</li>" for k, v in not_run.items())
                     + "".join(f"<li class=\"notmet\">{esc(k)} model: its checks failed ({esc(str(v))})</li>"
                               for k, v in failed.items()) + "</ul>")
    if audit.get("inversion"):
        parts += [_html_image(folder / "inversion.png", "model inversion of the forget target"),
                  f"<p>{esc(str(audit['inversion'].get('caption', '')))}</p>"]
    return "\n".join(parts)


def write_html(report: dict[str, Any], folder: str | os.PathLike[str], name: str = "report.html") -> Path:
    """``report.html`` in ``folder``: one self-contained page (no network; the folder's
    graph.png and metrics.png inlined as data URIs) with the verdict, the metrics, the
    pictures, the removal table, the settings, the hashes, the reproduce command and versions.
    """
    import html
    import json

    folder = Path(folder)
    esc = html.escape
    metrics = report.get("metrics")
    parts = [f"<h1>tpunlearn: {esc(str(report.get('arch', 'model')))}, forget "
             f"{esc(', '.join(str(t) for t in report.get('forget', [])))}</h1>",
             _html_verdict(report.get("verdict"), bool(metrics))]
    outcome = report.get("outcome") or {}
    if outcome.get("status") == "nothing removed":
        tries = "; try " + ", ".join(str(t) for t in outcome.get("try", [])) if outcome.get("try") else ""
        parts.append(f"<p id=\"outcome\" class=\"notmet\"><b>nothing removed: the model is unchanged</b>: "
                     f"{esc(str(outcome.get('why', '')) + tries)}</p>")
    if metrics:
        forgotten = [str(t) for t in metrics.get("forgotten", report.get("forget", []))]
        parts += ["<h2>Metrics</h2>", _html_image(folder / "metrics.png", "metrics per target"),
                  _html_metrics(metrics, forgotten)]
    if report.get("audit"):
        parts.append(_html_audit(report["audit"], folder))
    parts += ["<h2>What was removed</h2>", _html_image(folder / "graph.png", "channels per layer"),
              _html_removal(report.get("removal"))]
    if report.get("notes"):
        parts += ["<h2>Notes</h2><ul>" + "".join(f"<li>{esc(str(n))}</li>" for n in report["notes"]) + "</ul>"]
    for title, key in (("Settings", "settings"), ("sha256", "sha256"), ("Versions", "versions")):
        if isinstance(report.get(key), dict):
            rows = [[k, v] for k, v in report[key].items()]
            parts += [f"<h2>{title}</h2>", _html_table(["key", "value"], rows).replace("<table>", '<table class="kv">')]
    parts += ["<h2>Reproduce</h2>", f"<pre>{esc(' '.join(str(a) for a in report.get('reproduce', [])))}</pre>",
              "<details><summary>report.json</summary><pre>"
              f"{esc(json.dumps(report, indent=1, default=str))}</pre></details>"]
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tpunlearn report</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    path = folder / name
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path


_CSS = ("body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "td:first-child,th:first-child,.kv td{text-align:left}img{max-width:100%}"
        ".met{color:#1a7f37}.notmet{color:#c62828}.forgotten{color:#c62828;font-weight:bold}pre{white-space:pre-wrap}")


def _html_table(head: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    import html

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    body = "".join(f"<tr{f' class={chr(34)}{classes[i]}{chr(34)}' if classes and classes[i] else ''}>"
                   + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>" for i, row in enumerate(rows))
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>")


def _html_verdict(verdict: Any, evaluated: bool) -> str:
    import html

    if not isinstance(verdict, dict):
        what = "no verdict recorded" if evaluated else "not evaluated (run with --eval)"
        return f"<p id=\"verdict\"><b>verdict: {what}</b></p>"
    status = str(verdict.get("status", "met" if verdict.get("met") else "not met"))
    warnings = "".join(f"<li>{html.escape(str(w))}</li>" for w in verdict.get("warnings", []))
    return (f"<p id=\"verdict\" class=\"{'met' if verdict.get('met') else 'notmet'}\"><b>verdict: "
            f"{html.escape(status)}</b></p><pre>{html.escape(str(verdict.get('line', '')))}</pre>"
            + (f"<ul>{warnings}</ul>" if warnings else ""))


def _html_metrics(metrics: dict[str, Any], forgotten_targets: list[str]) -> str:
    """The per-target table (every metric the entry has, before and after), then the summary."""
    import html

    before, after = metrics.get("before", {}), metrics.get("after", {})
    forgotten = set(forgotten_targets)
    keys = sorted({k for v in before.values() if isinstance(v, dict) for k in v}) or [str(metrics.get("name", ""))]
    rows, classes = [], []
    for t in before:
        b, a = before[t], after.get(t, {})
        rows.append([f"{t} (forgotten)" if str(t) in forgotten else t,
                     *[x for k in keys for x in (_pick(b, k), _pick(a, k))]])
        classes.append("forgotten" if str(t) in forgotten else "")
    head = ["target", *[f"{k} {when}" for k in keys for when in ("before", "after")]]
    point = operating_point_text(metrics.get("operating_point"))
    summary = metrics.get("summary") or {}
    names = sorted({k for side in summary.values() if isinstance(side, dict) for k in side})
    table = _html_table(["summary", "before", "after"], [[k, _pick(summary.get("before"), k),
                                                          _pick(summary.get("after"), k)] for k in names])
    return (f"<p>verdicts judge {html.escape(str(metrics.get('primary', metrics.get('name', ''))))}"
            + (f" at {html.escape(point)}" if point else "") + "</p>" + _html_table(head, rows, classes)
            + (table if names else ""))


def _pick(value: Any, key: str) -> Any:
    return value.get(key, "") if isinstance(value, dict) else "" if value is None else value


def _html_image(path: Path, alt: str) -> str:
    import base64
    import html

    if not path.is_file():
        return f"<p>({html.escape(path.name)} was not written)</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<p><img alt=\"{html.escape(alt)}\" src=\"data:image/png;base64,{data}\"></p>"


def _html_removal(removal: Any) -> str:
    if not isinstance(removal, dict) or "layers" not in removal:
        return "<p>(no removal explanation recorded)</p>"
    keys = ("channels", "flagged", "align_added", "align_kept", "protected_kept", "coupled_added", "removed")
    head = ["layer", "channels", "flagged", "+align", "-align", "kept by protection", "+coupled", "removed"]
    rows = [[layer, *(r.get(k, "") for k in keys)] for layer, r in removal["layers"].items()]
    rows.append(["total", *(removal.get("total", {}).get(k, "") for k in keys)])
    return _html_table(head, rows)


def count_macs(model: Any, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward in eval mode, counted by torch-pruning (the model is left as it was)."""
    import torch
    import torch_pruning as tp

    from tpunlearn.torchutils import eval_mode, model_device, to_device

    with eval_mode(model), torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, to_device(example_inputs, model_device(model)))
    return int(macs)
