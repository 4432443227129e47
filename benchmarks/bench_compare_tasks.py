"""One forget setting each for segmentation and detection, method against method.

``digitscenes-deeplabv3`` (forget digit 3; IoU) runs the original, fine-tuning, SSD and the
graph variants, plus the setting that forgets the digit completely with and without a
repair epoch. ``digitscenes-yolov5`` (forget digit 3; recall at the deployment confidence 0.25)
runs the graph variants only: fine-tuning and SSD need the detection loss outside
ultralytics' trainer, which rebuilds the network (see DESIGN.md section 6), and there is no
retraining for either (the DeepLab zoo recipe needs a GPU; YOLO's takes ~10 minutes a run).

    python benchmarks/bench_compare_tasks.py [--task segmentation|detection|both]

Writes benchmarks/results/compare_tasks.{json,md}; the last line printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from tpunlearn import zoo
from tpunlearn.models import load_model
from tpunlearn.report import count_macs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unlearning_methods import SSD, FineTune, Graph, Original, Task  # noqa: E402

FORGET_DIGIT = 3


def segmentation() -> tuple[Task, Any, list[Any]]:
    a, model, info = zoo.build_model("digitscenes-deeplabv3")
    from tpunlearn.data.voc import MaskFilter

    def batches(forget: Sequence[int], kind: str, seed: int):
        everything = a.mask_batches(info, "digits:1000", "train", 16)
        if kind == "all":
            return everything
        if kind == "retain":
            return a.repair_data(model, info, "digits:1000", forget)
        return MaskFilter(everything, forget, holding=True)

    task = Task(name="digitscenes-deeplabv3", model=model, example_inputs=a.example_inputs(info), loss=a.repair_loss(info),
                batches=batches, scoring=lambda seed: a.samples(model, info, "digits"),
                unlearn_kwargs={"target": a.target_factory(info), "ignored_layers": a.ignored_layers(model, info),
                                "output_transform": a.output_transform, "num_targets": 11})

    def evaluate(m):
        return a.segmentation_metrics(m, info, "digits:200")["iou"]

    forgets = {"sigma": 8, "delta": 0.2, "retain_delta": 0.02}
    methods = [Original(), FineTune(epochs=1, lr=1e-3), SSD(),
               Graph("Last layer only (sigma 1)", sigma=1), Graph("Graph without balance", balanced=False),
               Graph("Graph(beta), mask", mode="mask"), Graph("Graph(beta), physical (library defaults)"),
               Graph("Graph(beta), physical, sigma 8, delta 0.2, retain delta 0.02", **forgets),
               Graph("  + repair (1 epoch)", repair_epochs=1, repair_lr=1e-3, **forgets)]
    return task, evaluate, methods


def detection() -> tuple[Task, Any, list[Any]]:
    a, model, info = load_model("digitscenes-yolov5")
    task = Task(name="digitscenes-yolov5", model=model, example_inputs=a.example_inputs(info), loss=None,  # type: ignore[arg-type]
                batches=None,  # type: ignore[arg-type]
                scoring=lambda seed: a.samples(model, info, "digits"),
                unlearn_kwargs={"target": a.target_factory(info), "ignored_layers": a.ignored_layers(model, info),
                                "output_transform": a.output_transform, "num_targets": len(info.class_names),
                                **a.defaults})

    def evaluate(m):
        return {k: v["recall"] for k, v in a.evaluate(m, info, "digits", conf=0.25).per_target.items()}

    methods = [Original(), Graph("Last layer only (sigma 1)", sigma=1), Graph("Graph without balance", balanced=False),
               Graph("Graph(beta), mask", mode="mask"), Graph("Graph(beta), physical (yolov5 family defaults)")]
    return task, evaluate, methods


def run(kind: str) -> dict[str, Any]:
    task, evaluate, methods = segmentation() if kind == "segmentation" else detection()
    forget = [FORGET_DIGIT + 1] if kind == "segmentation" else [FORGET_DIGIT]  # DeepLab's class 0 is background
    name = str(FORGET_DIGIT)
    base = evaluate(task.model)
    digits = [str(d) for d in range(10)]
    rows = {}
    for method in methods:
        outcome = method(task, forget, 0)
        m = evaluate(outcome.model)
        others = [d for d in digits if d != name and d in base]
        drops = {d: base[d] - m[d] for d in others}
        worst = max(drops, key=drops.get)
        rows[method.name] = {
            "forget": m[name], "forget_before": base[name],
            "retained_mean": sum(m[d] for d in others) / len(others),
            "retained_mean_before": sum(base[d] for d in others) / len(others),
            "worst_retained_digit": worst, "worst_retained_drop_points": 100 * drops[worst],
            "seconds": outcome.seconds, "params": sum(p.numel() for p in outcome.model.parameters()),
            "macs": count_macs(outcome.model, task.example_inputs),
        }
        r = rows[method.name]
        print(f"{kind}: {method.name:60s} forget {100 * r['forget']:5.1f} % | retained mean {100 * r['retained_mean']:5.1f} | "
              f"worst -{r['worst_retained_drop_points']:.1f} ({worst}) | {r['seconds']:.1f}s", flush=True)
    return {"task": task.name, "metric": "IoU" if kind == "segmentation" else "recall at conf 0.25", "forget": name, "rows": rows}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# Segmentation and detection: one forget setting each (digit 3, no fine-tuning unless said)", ""]
    for res in results:
        metric = res["metric"]
        lines += [f"## {res['task']} ({metric}, DigitScenes test split)", "",
                  f"| method | forget {metric} % | retained mean % | worst retained drop (pts) | seconds | params | MACs |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in res["rows"].items():
            lines.append(f"| {name} | {100 * r['forget']:.1f} | {100 * r['retained_mean']:.1f} | "
                         f"{r['worst_retained_drop_points']:.1f} ({r['worst_retained_digit']}) | {r['seconds']:.1f} | "
                         f"{r['params']:,} | {r['macs']:,} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("segmentation", "detection", "both"), default="both")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    kinds = ["segmentation", "detection"] if args.task == "both" else [args.task]
    results = [run(k) for k in kinds]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare_tasks.json").write_text(json.dumps({"results": results, "seconds": round(time.time() - t0, 1)},
                                                            indent=1))
    (args.out / "compare_tasks.md").write_text(markdown(results))
    print(json.dumps({r["task"]: {n: round(v["forget"], 3) for n, v in r["rows"].items()} for r in results}))


if __name__ == "__main__":
    main()
