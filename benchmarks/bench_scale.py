"""Scoring scale-out: 1 vs 2 data-parallel processes, and time against targets and samples, in one run.

1. ``processes``: the zoo classifier ``digitscenes-resnet`` scores all 10 digits (sigma 4 with
   group closure, ``--samples`` instances each, the CLI's batches of 32) in one process and in
   a torch.distributed group of two (gloo on CPU, nccl on CUDA), one thread each, each
   process in its own session as torchrun starts them. Both stay up for the whole run and
   take turns, order alternating round by round, so that a busy neighbour on the machine
   slows both alike; the ratio is of the medians (goal <= 0.6). The CPU seconds of the
   busiest rank over one process's show the split of the work itself, whatever the load.
2. ``targets`` / ``samples``: one process, scoring time against the number of targets (at
   ``--samples`` each) and against the instances per target (all 10 targets).
3. ``--yolov5s``: the graph build (``score_targets``, sigma 12) for all 80 targets of a
   random-initialised yolov5s at 640x640 on synthetic scenes; meant for ``--device cuda`` (on a
   CPU-only machine the result says "not measured: no GPU").
4. ``by_classes``: graph build and request time against the class count (10, 20, 40, 80 classes),
   same model size: a random yolov5n at 128 and a random timm resnet18 at 32, ``--samples``
   instances per class, the family's default settings (results/scale_classes.json and .md).

    python benchmarks/bench_scale.py [--samples 32] [--rounds 9] [--device cpu|cuda] [--yolov5s]
    python benchmarks/bench_scale.py --classes-only

Prints a JSON line (the last line of output); writes benchmarks/results/scale.json and scale.md.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

ZOO = "digitscenes-resnet"
RESULTS = Path(__file__).parent / "results"


def setup(device: str, sigma: int = 4) -> tuple[Any, Any, list[str], list, Any]:
    """The zoo model on ``device``, its candidate layers (with closure), its batches and Target factory."""
    from tpunlearn import zoo
    from tpunlearn.layers import candidate_layers, names_of, prunable_layers
    from tpunlearn.plan import build_dependency_graph, close_groups

    adapter, model, info = zoo.build_model(ZOO)
    model.to(device)
    x = adapter.example_inputs(info).to(device)
    ignored = names_of(model, adapter.ignored_layers(model, info))
    layers = candidate_layers(model, x, sigma, ignored)
    layers = close_groups(model, layers, prunable_layers(model, x, ignored), build_dependency_graph(model, x))
    batches = list(adapter.samples(model, info, None))  # in memory: the timings are of scoring alone
    return model, info, layers, batches, adapter.target_factory(info)


def score_seconds(model: Any, layers: list[str], batches: list, target: Any, n_targets: int, samples: int,
                  device: str) -> tuple[float, float]:
    """Wall and CPU seconds of scoring ``n_targets`` targets, ``samples`` instances each."""
    from tpunlearn.scoring import score_channels

    t0, c0 = time.perf_counter(), time.process_time()
    score_channels(model, batches, layers, {t: target(t) for t in range(n_targets)}, n_per_target=samples,
                   device=device, progress=False)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def worker(rank: int, size: int, port: int, device: str, samples: int, orders: Any, results: Any) -> None:
    """One rank of a group of ``size``: score all 10 digits each time it is told to, report wall and CPU seconds.

    Each worker starts its own session, as torchrun starts its workers (``start_new_session``):
    under Linux's autogroup scheduling a session shares the CPU as one, so ranks kept in the
    benchmark's session would split one process's share between them.
    """
    if hasattr(os, "setsid"):
        os.setsid()
    torch.set_num_threads(1)
    from torch import distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{rank}"
        torch.cuda.set_device(device)
    if size > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    model, _, layers, batches, target = setup(device)
    score_seconds(model, layers, batches, target, 10, samples, device)  # warm-up
    results.put(("ready", size, rank))
    while orders[rank].get() is not None:
        if size > 1:
            dist.barrier()
        results.put(("time", size, score_seconds(model, layers, batches, target, 10, samples, device)))
    if size > 1:
        dist.destroy_process_group()


def processes(device: str, samples: int, rounds: int) -> dict[str, Any]:
    """Median scoring seconds of 1 and 2 processes, taking turns ``rounds`` times."""
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    groups = {}
    for size in (1, 2):
        orders = [ctx.SimpleQueue() for _ in range(size)]
        port = _free_port()
        procs = [ctx.Process(target=worker, args=(r, size, port, device, samples, orders, results))
                 for r in range(size)]
        for p in procs:
            p.start()
        groups[size] = (orders, procs)
    for _ in range(3):
        assert results.get()[0] == "ready"
    times: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    for i in range(rounds):
        for size in ((1, 2) if i % 2 == 0 else (2, 1)):
            orders, _ = groups[size]
            for q in orders:
                q.put(True)
            wall, used = zip(*(results.get()[2] for _ in range(size)))
            times[size].append(max(wall))  # the group is done when its last rank is
            cpu[size].append(max(used))
    for orders, procs in groups.values():
        for q in orders:
            q.put(None)
        for p in procs:
            p.join()
    one, two = statistics.median(times[1]), statistics.median(times[2])
    cpu_one, cpu_two = statistics.median(cpu[1]), statistics.median(cpu[2])
    return {"one_process_s": round(one, 4), "two_processes_s": round(two, 4), "ratio": round(two / one, 3),
            "per_round_ratios": [round(b / a, 3) for a, b in zip(times[1], times[2])],
            "cpu_one_process_s": round(cpu_one, 4), "cpu_busiest_rank_s": round(cpu_two, 4),
            "cpu_ratio": round(cpu_two / cpu_one, 3), "rounds": rounds, "threads_per_process": 1,
            "load_average_1min": round(os.getloadavg()[0], 2)}


def sweep(device: str, samples: int, repeats: int = 3) -> tuple[list[dict], list[dict]]:
    """One process: seconds against the number of targets and against the instances per target."""
    torch.set_num_threads(1)
    model, _, layers, batches, target = setup(device)
    score_seconds(model, layers, batches, target, 10, samples, device)  # warm-up

    def median(n_targets: int, n: int) -> float:
        return statistics.median(score_seconds(model, layers, batches, target, n_targets, n, device)[0]
                                 for _ in range(repeats))

    by_targets = [{"targets": k, "samples": samples, "seconds": round(median(k, samples), 4)} for k in (1, 2, 5, 10)]
    by_samples = [{"targets": 10, "samples": n, "seconds": round(median(10, n), 4)} for n in (8, 16, 32, 64, 128)]
    for row in by_targets + by_samples:
        row["ms_per_instance"] = round(1000 * row["seconds"] / (row["targets"] * row["samples"]), 3)
    return by_targets, by_samples


def synthetic_batches(n: int, samples: int, size: int, batch: int, per_image: int = 4) -> list[tuple]:
    """Random images whose multi-hot labels name every class in turn, ``per_image`` per image, so that
    each of the ``n`` classes reaches ``samples`` instances (for timing only: the labels mean nothing)."""
    g = torch.Generator().manual_seed(0)
    per_image = min(per_image, n)
    n_images = -(-n * samples // per_image)
    batches = []
    for start in range(0, n_images, batch):
        b = min(batch, n_images - start)
        multi_hot = torch.zeros(b, n)
        for i in range(b):
            multi_hot[i, [((start + i) * per_image + j) % n for j in range(per_image)]] = 1
        batches.append((torch.rand(b, 3, size, size, generator=g), multi_hot))
    return batches


def timed_request(family: str, arch: str, n: int, size: int, samples: int, device: str,
                  batch: int = 16, forget: int = 0, **options: Any) -> dict[str, Any]:
    """Graph build (``score_targets`` over all ``n`` targets) and one forget request from those scores,
    timed, for a random ``arch`` of ``family`` with ``n`` classes, at the family's default settings."""
    from tpunlearn.adapters import get
    from tpunlearn.api import score_targets, unlearn

    adapter = get(family)
    torch.manual_seed(0)
    model, info = adapter.build(arch, **options)
    model.to(device)
    batches = synthetic_batches(n, samples, size, batch)
    common = dict(target=adapter.target_factory(info), example_inputs=torch.rand(1, 3, size, size),
                  ignored_layers=adapter.ignored_layers(model, info), output_transform=adapter.output_transform,
                  num_targets=n, progress=False, device=device)
    settings = dict(adapter.defaults)
    t0 = time.perf_counter()
    scores = score_targets(model, batches, n_per_target=samples, **common,
                           **{k: v for k, v in settings.items() if k == "sigma"})
    t1 = time.perf_counter()
    res = unlearn(model, None, [forget], scores=scores, n_per_target=samples, **common, **settings)
    t2 = time.perf_counter()
    assert res is not None
    params = sum(p.numel() for p in model.parameters())
    return {"family": family, "arch": arch, "classes": n, "input": size, "samples_per_target": samples,
            "images": sum(len(b[0]) for b in batches), "params": params, "layers": len(scores.layers),
            "graph_build_s": round(t1 - t0, 3), "request_s": round(t2 - t1, 3),
            "ms_per_target": round(1000 * (t1 - t0) / n, 1), "removed_channels": res.report["removed_channels"],
            "device": device}


def by_classes(device: str, samples: int, counts: tuple[int, ...] = (10, 20, 40, 80),
               repeats: int = 3) -> list[dict[str, Any]]:
    """Graph build and request time against the class count, same model size: a random yolov5n at
    128x128 and a random timm resnet18 at 32x32, each built with 10, 20, 40 and 80 classes; after one
    warm-up run per family, the median of ``repeats`` runs."""
    torch.set_num_threads(1)
    runs = {"yolov5": lambda n: timed_request("yolov5", "yolov5n.yaml", n, 128, samples, device, imgsz=128, nc=n),
            "timm": lambda n: timed_request("timm", "resnet18", n, 32, samples, device, num_classes=n, imgsz=32)}
    rows = []
    for run in runs.values():
        run(counts[0])  # warm-up: first calls pay for imports and allocator growth
    for n in counts:
        for run in runs.values():
            tries = [run(n) for _ in range(repeats)]
            tries.sort(key=lambda r: r["graph_build_s"])
            row = tries[len(tries) // 2]  # the median graph build
            row["request_s"] = statistics.median(r["request_s"] for r in tries)
            row["repeats"] = repeats
            rows.append(row)
    return rows


def yolov5s(device: str, size: int = 640, samples: int = 32, batch: int = 16) -> dict[str, Any]:
    """Graph build (``score_targets``, sigma 12) for all 80 targets of a random yolov5s, synthetic scenes."""
    from tpunlearn.adapters import get
    from tpunlearn.api import score_targets

    adapter = get("yolov5")
    torch.manual_seed(0)
    model, info = adapter.build("yolov5s.yaml", imgsz=size)
    model.to(device)
    n = len(info.class_names)
    batches = synthetic_batches(n, samples, size, batch)
    t0 = time.perf_counter()
    scores = score_targets(model, batches, target=adapter.target_factory(info), sigma=12, n_per_target=samples,
                           example_inputs=torch.rand(1, 3, size, size), ignored_layers=adapter.ignored_layers(model, info),
                           output_transform=adapter.output_transform, num_targets=n, progress=False, device=device)
    seconds = time.perf_counter() - t0
    return {"input": size, "targets": len(scores.targets), "samples_per_target": samples,
            "images": sum(len(b[0]) for b in batches), "batch": batch, "layers": len(scores.layers),
            "graph_build_s": round(seconds, 2), "device": device}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def markdown(result: dict[str, Any]) -> str:
    p = result["processes"]
    lines = [
        "# Scoring scale-out (`python benchmarks/bench_scale.py`)",
        "",
        f"`{ZOO}`, all 10 digits, {result['samples']} instances each, sigma 4 with group closure, device "
        f"`{result['device']}`, one thread per process; 1 and 2 processes take turns {p['rounds']} times.",
        "",
        "| processes | scoring (median s) | ratio |",
        "|---|---|---|",
        f"| 1 | {p['one_process_s']} | 1 |",
        f"| 2 | {p['two_processes_s']} | {p['ratio']} |",
        "",
        f"CPU seconds of the busiest rank over one process's: {p['cpu_ratio']} (the split of the work itself, "
        f"whatever the machine's load; 1-minute load average at the end: {p['load_average_1min']} on "
        f"{os.cpu_count()} cores).",
        "",
        "One process, time against the number of targets and the instances per target:",
        "",
        "| targets | instances per target | seconds | ms per instance |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['targets']} | {r['samples']} | {r['seconds']} | {r['ms_per_instance']} |"
              for r in result["by_targets"] + result["by_samples"]]
    if result["by_targets"] and result["by_samples"]:
        per = [r["ms_per_instance"] for r in result["by_samples"]]
        t = {r["targets"]: r["seconds"] for r in result["by_targets"]}
        lines += ["", f"Linear in the instances per target ({min(per)} to {max(per)} ms per instance from "
                      f"{result['by_samples'][0]['samples']} to {result['by_samples'][-1]['samples']}); sub-linear in "
                      f"the targets: 10 targets take {t[10] / t[1]:.1f}x the time of one, because one forward per "
                      "batch serves every target and only the gradients are per target."]
    if result.get("yolov5s", {}).get("skipped"):
        lines += ["", f"yolov5s, 80 classes at 640: {result['yolov5s']['skipped']}."]
    elif result.get("yolov5s"):
        y = result["yolov5s"]
        lines += ["", f"yolov5s (random, {y['input']}x{y['input']}), {y['targets']} targets x {y['samples_per_target']} "
                      f"instances, {y['layers']} layers: graph build {y['graph_build_s']} s on `{y['device']}`."]
    return "\n".join(lines) + "\n"


def classes_markdown(rows: list[dict[str, Any]]) -> str:
    """The class-count table (``results/scale_classes.md``)."""
    lines = ["# Time against the class count (`python benchmarks/bench_scale.py --classes-only`)", "",
             f"Same model size per family (random weights, synthetic scenes, {rows[0]['samples_per_target']} "
             f"instances per class, the family's default settings, one thread, device `{rows[0]['device']}`, median of "
             f"{rows[0].get('repeats', 1)} runs after a warm-up; 1-minute load average at the end "
             f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores): the "
             "graph build scores every class; the request forgets class 0 from those scores.", "",
             "| family | model | classes | parameters | graph build (s) | ms per class | request (s) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['arch']} at {r['input']} | {r['classes']} | {r['params']:,} | "
              f"{r['graph_build_s']} | {r['ms_per_target']} | {r['request_s']} |" for r in rows]
    for fam in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == fam]
        lo, hi = mine[0], mine[-1]
        lines += ["", f"{fam}: {hi['classes']} classes take {hi['graph_build_s'] / lo['graph_build_s']:.1f}x the "
                      f"graph build of {lo['classes']} ({hi['classes'] / lo['classes']:.0f}x the classes), and "
                      f"{hi['request_s'] / max(lo['request_s'], 1e-9):.1f}x the request time."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32, help="instances per target (default 32, as the CLI)")
    p.add_argument("--rounds", type=int, default=9, help="turns of 1 and 2 processes (default 9)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (2 processes on cuda need 2 GPUs)")
    p.add_argument("--yolov5s", action="store_true", help="also time the 80-target graph build of a random yolov5s")
    p.add_argument("--no-sweep", action="store_true", help="skip the targets and samples sweep")
    p.add_argument("--no-classes", action="store_true", help="skip the class-count sweep (10, 20, 40, 80 classes)")
    p.add_argument("--classes-only", action="store_true",
                   help="only the class-count sweep (writes results/scale_classes.json and .md)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tpunlearn.distributed import resolve_device

    device = str(resolve_device(args.device))
    RESULTS.mkdir(exist_ok=True)
    if not args.no_classes:
        rows = by_classes(device, args.samples)
        (RESULTS / "scale_classes.json").write_text(json.dumps(rows, indent=1))
        (RESULTS / "scale_classes.md").write_text(classes_markdown(rows))
        print(json.dumps(rows))
    if args.classes_only:
        return
    result: dict[str, Any] = {"arch": ZOO, "samples": args.samples, "device": device}
    if device.startswith("cuda") and torch.cuda.device_count() < 2:
        result["processes"] = {"skipped": "two processes on cuda need two GPUs"}
    else:
        result["processes"] = processes(device, args.samples, args.rounds)
    result["by_targets"], result["by_samples"] = ([], []) if args.no_sweep else sweep(device, args.samples)
    if args.yolov5s:
        result["yolov5s"] = yolov5s(device)
    elif not device.startswith("cuda"):
        result["yolov5s"] = {"skipped": "not measured: no GPU here (the 80-class yolov5s graph build at 640 is "
                                        "for one GPU: python benchmarks/bench_scale.py --device cuda --yolov5s)"}
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=1))
    if "ratio" in result["processes"]:
        (RESULTS / "scale.md").write_text(markdown(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
