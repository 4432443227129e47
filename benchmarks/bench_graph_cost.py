"""Graph build for all 10 targets over one training epoch of the zoo model, in one run.

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
from tpunlearn.layers import candidate_layers
from tpunlearn.plan import build_dependency_graph
from tpunlearn.scoring import score_channels


def graph_build(model: torch.nn.Module, samples: int, sigma: int) -> float:
    """Seconds to score all 10 targets and build their essential and balanced graphs."""
    x = torch.rand(1, 3, 64, 64)
    t0 = time.perf_counter()
    layers = candidate_layers(model, x, sigma, ["fc"])
    batches = tu.data.loader(tu.data.digitscenes("train"), batch_size=64)
    scores = score_channels(model, batches, layers, {t: tu.targets.ClassLogit(t) for t in range(10)},
                            n_per_target=samples, progress=False)
    links = layer_links(model, build_dependency_graph(model, x), layers)
    graphs = {t: essential_graph(scores, t, 0.05, links) for t in range(10)}
    balance(graphs, [3], [t for t in range(10) if t != 3], scores.channels)
    return time.perf_counter() - t0


def train_epoch(model: torch.nn.Module, batch_size: int = 128) -> float:
    """Seconds for one epoch of the zoo's training recipe (AdamW, BCE) on the train split."""
    model = copy.deepcopy(model).train()
    ds = tu.data.digitscenes("train")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    t0 = time.perf_counter()
    for images, multi_hot in tu.data.loader(ds, batch_size=batch_size, shuffle=True):
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
    tu.data.digitscenes("train")[0]  # build the data once, outside both timings
    graph_s = graph_build(model, args.samples, args.sigma)
    epoch_s = train_epoch(model)
    result = {"graph_s": round(graph_s, 3), "epoch_s": round(epoch_s, 3),
              "graph_over_epoch": round(graph_s / epoch_s, 4), "samples_per_target": args.samples,
              "sigma": args.sigma, "threads": args.threads, "n_train": len(tu.data.digitscenes("train"))}
    out = Path(__file__).parent / "results" / "graph_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
