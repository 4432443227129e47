"""Peak memory of scoring with 32 vs 512 instances per target, on the zoo classifier.

Each count runs in a fresh Python process (peak RSS is a per-process high-water mark): it
loads ``digitscenes-resnet`` and the DigitScenes training split, runs one warm-up scoring
pass (so that allocator pools and lazy imports are paid for), reads the peak RSS, then
scores all 10 targets with ``--samples`` instances each (sigma 4 with group closure, as
``tpunlearn graph`` does) and reads the peak RSS again. The difference is what scoring
itself holds at its peak. For scale the script also prints what keeping every scored
image's activations of the candidate layers would take.

Prints one JSON line and writes it to benchmarks/results/memory.json.

    python benchmarks/bench_memory.py [--counts 32 512] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(samples: int, threads: int) -> dict:
    """Run in the child process: peak RSS before and after scoring ``samples`` per target."""
    import time

    import torch

    from tpunlearn import zoo
    from tpunlearn.api import score_targets

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    adapter, model, info = zoo.build_model("digitscenes-resnet")
    batches = adapter.samples(model, info, "digits")
    kwargs = dict(target=adapter.target_factory(info), example_inputs=adapter.example_inputs(info), sigma=4,
                  ignored_layers=adapter.ignored_layers(model, info), num_targets=10, progress=False)
    score_targets(model, batches, n_per_target=2, **kwargs)  # warm-up
    before = peak_mib()
    t0 = time.perf_counter()
    scores = score_targets(model, batches, n_per_target=samples, **kwargs)
    seconds = time.perf_counter() - t0
    after = peak_mib()
    images = _images_read(batches, samples)
    per_image = _activation_bytes(model, scores.layers, adapter.example_inputs(info))
    return {
        "samples_per_target": samples,
        "instances": {str(t): s.count for t, s in scores.targets.items()},
        "images_scored": images,
        "peak_rss_mib_before_scoring": round(before, 1),
        "peak_rss_mib_after_scoring": round(after, 1),
        "scoring_peak_growth_mib": round(after - before, 1),
        "kept_instance_rows_mib": round(sum(v.numel() * 4 for s in scores.targets.values()
                                            for v in s.instances.values()) / 2**20, 3),
        "all_activations_would_be_mib": round(per_image * images / 2**20, 1),
        "layers": len(scores.layers),
        "seconds": round(seconds, 2),
    }


def _images_read(batches, samples: int) -> int:
    """How many images the scorer reads before every target has ``samples`` instances."""
    counts = [0] * 10
    seen = 0
    for _images, multi_hot in batches:
        for row in multi_hot:
            if all(c >= samples for c in counts):
                return seen
            seen += 1
            for t in row.nonzero().flatten().tolist():
                counts[t] += 1
    return seen


def _activation_bytes(model, layers, example) -> int:
    """Bytes of one image's outputs of ``layers`` (float32)."""
    import torch

    sizes = []
    handles = [model.get_submodule(l).register_forward_hook(lambda m, i, o: sizes.append(o[0].numel() * 4))
               for l in layers]
    with torch.no_grad():
        model(example)
    for h in handles:
        h.remove()
    return sum(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.threads)))
        return
    runs = []
    for n in args.counts:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr)
    result = {"model": "digitscenes-resnet", "sigma": 4, "batch_size": 32, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
