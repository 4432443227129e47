"""Graph build for all 10 targets over one training epoch of the zoo model, in one run.

The graph build is what `unlearn` does before planning: candidate layers with group
closure, the dependency graph, Grad-CAM scores of all 10 targets (32 instances each by
default), the edge weights, every target's essential graph and the balanced graph.

Prints a JSON line (the last line of output) with both times and their ratio
``graph_over_epoch`` (goal <= 0.05). Writes it to benchmarks/results/graph_cost.json too.

    python benchmarks/bench_graph_cost.py [--samples 32] [--sigma 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tpunlearn as tu
from tpunlearn.graph import balance, essential_graph, layer_links
from tpunlearn.layers import candidate_layers, prunable_layers
from tpunlearn.plan import build_dependency_graph, close_groups
from tpunlearn.scoring import score_channels


def graph_build(model: torch.nn.Module, samples: int, sigma: int) -> float:
    """Seconds to score all 10 targets and build their essential and balanced graphs."""
    x = torch.rand(1, 3, 64, 64)
    t0 = time.perf_counter()
    layers = candidate_layers(model, x, sigma, ["fc"])
    dg = build_dependency_graph(model, x)
    layers = close_groups(model, layers, prunable_layers(model, x, ["fc"]), dg)
    batches = tu.data.loader(tu.data.digitscenes("train"), batch_size=64)
    scores = score_channels(model, batches, layers, {t: tu.targets.ClassLogit(t) for t in range(10)},
                            n_per_target=samples, progress=False)
    links = layer_links(model, dg, layers)
    graphs = {t: essential_graph(scores, t, 0.05, links) for t in range(10)}
    balance(graphs, [3], [t for t in range(10) if t != 3], scores.channels)
    return time.perf_counter() - t0


def scoring_time(model: torch.nn.Module, n_targets: int, samples: int, sigma: int) -> float:
    """Seconds to score ``n_targets`` targets (one forward per batch, one backward per target)."""
    x = torch.rand(1, 3, 64, 64)
    layers = candidate_layers(model, x, sigma, ["fc"])
    batches = tu.data.loader(tu.data.digitscenes("train"), batch_size=64)
    t0 = time.perf_counter()
    score_channels(model, batches, layers, {t: tu.targets.ClassLogit(t) for t in range(n_targets)},
                   n_per_target=samples, progress=False)
    return time.perf_counter() - t0


def train_epoch(model: torch.nn.Module, n_train: int, batch_size: int = 128) -> float:
    """Seconds for one epoch of the zoo's recipe (AdamW, BCE, batch 128) over ``n_train`` scenes.

    The zoo trained on ``n_train`` scenes per epoch (its checkpoint says how many) with
    augmentation; this epoch skips the augmentation, so it is the cheaper side of the ratio.
    """
    model = copy.deepcopy(model).train()
    ds = tu.data.digitscenes("train")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = -(-n_train // batch_size)
    t0 = time.perf_counter()
    batches = iter(())
    for _ in range(steps):
        try:
            images, multi_hot = next(batches)
        except StopIteration:
            batches = iter(tu.data.loader(ds, batch_size=batch_size, shuffle=True))
            images, multi_hot = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(images), multi_hot)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--sigma", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, info = tu.zoo.load("digitscenes-resnet")
    n_train = int(info["train"].get("n_train", len(tu.data.digitscenes("train"))))
    graph_build(model, args.samples, args.sigma)  # warm-up: data built, kernels and threads started
    graph_s = sorted(graph_build(model, args.samples, args.sigma) for _ in range(3))[1]
    epoch_s = train_epoch(model, n_train)
    one = sorted(scoring_time(model, 1, args.samples, args.sigma) for _ in range(3))[1]
    ten = sorted(scoring_time(model, 10, args.samples, args.sigma) for _ in range(3))[1]
    result = {"graph_s": round(graph_s, 3), "epoch_s": round(epoch_s, 3),
              "graph_over_epoch": round(graph_s / epoch_s, 4), "samples_per_target": args.samples,
              "sigma": args.sigma, "threads": args.threads, "n_train_per_epoch": n_train,
              "graph": "median of 3 after one warm-up: score 10 targets, dependency graph, links, graphs, balance",
              "scoring_1_target_s": round(one, 3), "scoring_10_targets_s": round(ten, 3),
              "scoring_10_over_1": round(ten / one, 2)}
    out = Path(__file__).parent / "results" / "graph_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
