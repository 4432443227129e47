"""Full-size random-initialised yolov5s (640x640) and deeplabv3_resnet50 (512x512), in one run.

For each: prune (forget one class, a few synthetic samples), check the pruned forward and
output shape, ONNX parity relative to the largest output, and onnxruntime latency of the
pruned model over the original (same run, same thread count). For yolov5s also: the saved
checkpoint reloads in ``ultralytics.YOLO`` and predicts, and a request served from cached
scores (``unlearn(scores=...)``) is timed for planning and pruning.

    python benchmarks/bench_large_models.py [--yolo-size 640] [--seg-size 512]

Writes benchmarks/results/large_models.json; the last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import tpunlearn as tu
from tpunlearn.adapters import get
from tpunlearn.api import score_targets
from tpunlearn.export import compare_latency, to_onnx


def synthetic(n_classes: int, present: list[int], size: int, batches: int = 2, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batches):
        multi_hot = torch.zeros(batch, n_classes)
        multi_hot[:, present] = 1
        out.append((torch.rand(batch, 3, size, size, generator=g), multi_hot))
    return out


def measure(adapter, model, info, forget: int, retain: list[int], size: int, tmp: Path, **kw) -> tuple[dict, object]:
    x = torch.rand(1, 3, size, size)
    samples = synthetic(len(info.class_names), [forget, *retain], size)
    common = {**adapter.unlearn_kwargs(model, info, x), "progress": False}
    t0 = time.perf_counter()
    res = tu.unlearn(model, samples, forget=[forget], retain=retain, n_per_target=2, **common, **kw)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        out = adapter.output_transform(res.model(x))
        ref = adapter.output_transform(model(x))
    diff = to_onnx(res.model, tmp / "pruned.onnx", example_inputs=x, output_transform=adapter.output_transform)
    to_onnx(model, tmp / "original.onnx", example_inputs=x, output_transform=adapter.output_transform)
    before, after = compare_latency([tmp / "original.onnx", tmp / "pruned.onnx"], x, runs=15)
    row = {"input": size, "unlearn_s": round(seconds, 2), "removed_channels": res.report["removed_channels"],
           "params": res.report["params"], "output_shape_kept": list(out.shape) == list(ref.shape),
           "onnx_max_abs_diff": diff, "onnx_rel_diff": diff / float(out.abs().max()),
           "onnx_latency_ms": {"before": round(before, 1), "after": round(after, 1)},
           "onnx_latency_ratio": round(after / before, 3), "timings_s": res.report["timings_s"]}
    return row, res, common, samples


def yolo(size: int, tmp: Path, align: int | None = None) -> dict:
    adapter = get("yolov5")
    torch.manual_seed(0)
    model, info = adapter.build("yolov5s.yaml", imgsz=size)
    row, res, common, samples = measure(adapter, model, info, 0, [5, 2], size, tmp, sigma=12, delta=0.1, align=align)
    info.extra["history"] = res.plan.history
    adapter.save(res.model, info, tmp / "pruned.pt")
    from ultralytics import YOLO

    import ultralytics

    yolo_model = YOLO(str(tmp / "pruned.pt"))
    bus = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    yolo_model.predict(str(bus), imgsz=size, verbose=False, project=str(tmp), save=False)
    row["ultralytics_reload_and_predict"] = True
    row["nc_names_kept"] = yolo_model.model.model[-1].nc == len(info.class_names) == len(yolo_model.names)
    scores = score_targets(model, samples, targets=[0, 5, 2], sigma=12, n_per_target=2, **common)
    cached = tu.unlearn(model, None, forget=[0], retain=[5, 2], scores=scores, sigma=12, delta=0.1, align=align,
                        **common)
    t = cached.report["timings_s"]
    row["cached_request_s"] = {"planning_plus_pruning": round(t["planning"] + t["pruning"], 3), **t}
    return row


def deeplab(size: int, tmp: Path, align: int | None = None) -> dict:
    adapter = get("deeplabv3")
    torch.manual_seed(0)
    model, info = adapter.build("deeplabv3_resnet50", imgsz=size)
    row, *_ = measure(adapter, model, info, 15, [0, 6], size, tmp, sigma=9, delta=0.1, align=align)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--yolo-size", type=int, default=640)
    p.add_argument("--seg-size", type=int, default=512)
    p.add_argument("--align", type=int, default=None, help="keep pruned widths at multiples of this (e.g. 8)")
    args = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"align": args.align, "yolov5s": yolo(args.yolo_size, Path(tmp), args.align),
                  "deeplabv3_resnet50": deeplab(args.seg_size, Path(tmp), args.align)}
    out = Path(__file__).parent / "results" / f"large_models{'_align' + str(args.align) if args.align else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
