"""What a request costs, as ratios measured in one run on the zoo classifier.

* ``graph_over_epoch``: the graph build for all 10 targets (candidate layers with group
  closure, dependency graph, Grad-CAM scores, edge weights, essential and balanced graphs)
  over one training epoch of the zoo recipe (goal <= 0.05);
* ``ssd_over_graph``: SSD's importance passes (squared gradients over the forget scenes and
  all training scenes) over our graph build (goal >= 10);
* ``request_s``: one forget request with the graph cached (balance, plan, prune), and
  ``request_over_graph``: that request over the graph build (a cached request is cheap);
* ``onnx_latency_ratio``: the pruned model's ONNX Runtime latency over the original's
  (interleaved runs, goal <= 1.0);
* ``scaling``: scoring time against the number of targets and the samples per target, with
  a least-squares line through each and the forward passes counted (one per batch).

Prints the result as JSON (the last line of output) and writes benchmarks/results/cost.json
(``--quick``: cost_quick.json; fewer repeats, a shorter epoch, under 3 minutes on 2 cores).

    python benchmarks/bench_cost.py [--quick] [--samples 32] [--sigma 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
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
    """Seconds to score all 10 targets and build their essential and balanced graphs.

    The dataset is made before the clock starts, as the training epoch's is.
    """
    x = torch.rand(1, 3, 64, 64)
    batches = tu.data.loader(tu.data.digitscenes("train"), batch_size=64)
    t0 = time.perf_counter()
    layers = candidate_layers(model, x, sigma, ["fc"])
    dg = build_dependency_graph(model, x)
    layers = close_groups(model, layers, prunable_layers(model, x, ["fc"]), dg)
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


def ssd_importance(model: torch.nn.Module, n_train: int, forget: int = 3) -> float:
    """Seconds for SSD's two importance passes: every training scene (the zoo model's
    ``n_train``, built in 6000-scene chunks as scripts/train_zoo.py builds them), then the
    scenes that hold the forget digit."""
    from torch.utils.data import ConcatDataset, Subset

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from unlearning_methods import importances

    chunks = [tu.data.digitscenes("train", n_scenes=min(6000, n_train - k), seed=k // 6000)
              for k in range(0, n_train, 6000)]
    ds = ConcatDataset(chunks)
    labels = torch.cat([c.multi_hot for c in chunks])
    holds = (labels[:, forget] > 0).nonzero().flatten().tolist()

    def loss(out, batch):
        return F.binary_cross_entropy_with_logits(out, batch[1])

    t0 = time.perf_counter()
    importances(model, tu.data.loader(ds, batch_size=64), loss)
    importances(model, tu.data.loader(Subset(ds, holds), batch_size=64), loss)
    return time.perf_counter() - t0


def request(model: torch.nn.Module, samples: int, sigma: int) -> tuple[float, float]:
    """(seconds of one cached request, ONNX latency pruned / original) for forgetting 3."""
    import tempfile

    from tpunlearn.api import score_targets
    from tpunlearn.export import compare_latency, to_onnx

    x = torch.rand(1, 3, 64, 64)
    scores = score_targets(model, tu.data.loader(tu.data.digitscenes("train"), batch_size=64), example_inputs=x,
                           sigma=sigma, n_per_target=samples, ignored_layers=["fc"], progress=False)
    t0 = time.perf_counter()
    res = tu.unlearn(model, None, [3], example_inputs=x, scores=scores, sigma=sigma, ignored_layers=["fc"],
                     progress=False)
    request_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        to_onnx(model, f"{tmp}/a.onnx", example_inputs=x)
        to_onnx(res.model, f"{tmp}/b.onnx", example_inputs=x)
        before, after = compare_latency([f"{tmp}/a.onnx", f"{tmp}/b.onnx"], x, runs=50)
    return request_s, after / before


def scaling(model: torch.nn.Module, sigma: int, targets: list[int], samples: list[int]) -> dict:
    """Scoring time against targets (at 32 samples) and samples per target (at 10 targets)."""
    forwards = [0]
    hook = model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    try:
        rows_t, rows_s = [], []
        for n in targets:
            forwards[0] = 0
            rows_t.append({"targets": n, "seconds": round(scoring_time(model, n, 32, sigma), 4), "forwards": forwards[0]})
        for k in samples:
            forwards[0] = 0
            rows_s.append({"samples": k, "seconds": round(scoring_time(model, 10, k, sigma), 4), "forwards": forwards[0]})
    finally:
        hook.remove()
    return {"by_targets": rows_t, "by_samples": rows_s,
            "fit_targets": _line([r["targets"] for r in rows_t], [r["seconds"] for r in rows_t]),
            "fit_samples": _line([r["samples"] for r in rows_s], [r["seconds"] for r in rows_s]),
            "batch_size": 64}


def _line(x: list[float], y: list[float]) -> dict:
    """Least-squares ``y = a + b x`` and its R^2 (1 = a straight line)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((v - mx) ** 2 for v in x)
    b = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sxx
    a = my - b * mx
    ss_res = sum((v - a - b * u) ** 2 for u, v in zip(x, y))
    ss_tot = sum((v - my) ** 2 for v in y) or 1e-12
    return {"intercept_s": round(a, 4), "slope_s": round(b, 5), "r2": round(1 - ss_res / ss_tot, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and a 6000-scene epoch (< 3 min on 2 cores)")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--sigma", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, info = tu.zoo.load("digitscenes-resnet")
    n_train = int(info["train"].get("n_train", len(tu.data.digitscenes("train"))))
    repeats = 1 if args.quick else 3
    graph_build(model, args.samples, args.sigma)  # warm-up: data built, kernels and threads started
    graph_s = sorted(graph_build(model, args.samples, args.sigma) for _ in range(repeats))[repeats // 2]
    epoch_scenes = 6000 if args.quick else n_train
    epoch_s = train_epoch(model, epoch_scenes) * (n_train / epoch_scenes)
    ssd_s = ssd_importance(model, n_train)
    request_s, onnx_ratio = request(model, args.samples, args.sigma)
    scale = scaling(model, args.sigma, [1, 5, 10] if args.quick else [1, 2, 5, 10],
                    [8, 32] if args.quick else [8, 16, 32, 64])
    result = {"graph_s": round(graph_s, 3), "epoch_s": round(epoch_s, 3),
              "graph_over_epoch": round(graph_s / epoch_s, 4),
              "ssd_importance_s": round(ssd_s, 3), "ssd_over_graph": round(ssd_s / graph_s, 2),
              "request_s": round(request_s, 4), "request_over_graph": round(request_s / graph_s, 3),
              "onnx_latency_ratio": round(onnx_ratio, 3),
              "scaling": scale, "samples_per_target": args.samples, "sigma": args.sigma, "threads": args.threads,
              "n_train_per_epoch": n_train,
              "epoch": (f"timed on {epoch_scenes} scenes, scaled to {n_train}" if epoch_scenes != n_train
                        else f"{n_train} scenes"),
              "graph": f"median of {repeats} after one warm-up: score 10 targets, dependency graph, links, graphs, balance",
              "quick": args.quick, "seconds": round(time.perf_counter() - t_start, 1)}
    out = Path(__file__).parent / "results" / ("cost_quick.json" if args.quick else "cost.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
