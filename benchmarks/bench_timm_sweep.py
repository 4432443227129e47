"""Prune eight timm families (random init, 64x64) and check forward, shape and ONNX parity.

One row per architecture: channels removed, parameters before and after, the physical
model's max difference to the mask-mode model (where the plan says they must agree), ONNX
parity relative to the largest output, and the groups left alone (grouped convs, splits).

    python benchmarks/bench_timm_sweep.py [ARCH ...]

Writes benchmarks/results/timm_sweep.{json,md}; the last line printed is the JSON.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import tpunlearn as tu
from tpunlearn.adapters import for_arch

ARCHS = ["resnet18", "resnext26ts", "mobilenetv3_small_100", "efficientnet_b0", "regnetx_002",
         "densenet121", "convnext_atto", "ghostnet_100"]


def sweep_one(arch: str) -> dict:
    torch.manual_seed(0)
    adapter = for_arch(arch)
    model, info = adapter.build(arch, input_size=(3, 64, 64))
    x = torch.rand(16, 3, 64, 64)
    multi_hot = (torch.rand(16, 10) < 0.4).float()
    multi_hot[:, 0] = 1
    t0 = time.perf_counter()
    res = tu.unlearn(model, [(x, multi_hot)], forget=[0], retain=[1, 2], sigma=8, delta=0.3, retain_delta=0.05,
                     n_per_target=4, coupled="prune", ignored_layers=adapter.ignored_layers(model, info),
                     progress=False)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        diff = tu.export.to_onnx(res.model, Path(tmp) / "m.onnx", example_inputs=x[:2])
    with torch.no_grad():
        scale = float(res.model(x[:2]).abs().max())
    left_alone = [d.reason for d in res.plan.decisions if d.action == "skip" and d.channels]
    return {"arch": arch, "removed_channels": res.plan.removed_channels,
            "params_before": res.report["params"]["before"], "params_after": res.report["params"]["after"],
            "mask_rel_diff": res.report["check"].get("mask_rel_diff"), "onnx_rel_diff": diff / scale,
            "groups_left_alone": len(left_alone), "why_left_alone": sorted({r.split(" (")[0] for r in left_alone}),
            "seconds": round(seconds, 1)}


def main() -> None:
    torch.set_num_threads(2)
    rows = [sweep_one(arch) for arch in (sys.argv[1:] or ARCHS)]
    lines = ["| arch | channels removed | params before -> after | physical vs mask (rel) | ONNX parity (rel) | groups left alone |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        mask = "n/a (LayerNorm groups)" if r["mask_rel_diff"] is None else f"{r['mask_rel_diff']:.1e}"
        why = "; ".join(r["why_left_alone"])
        lines.append(f"| {r['arch']} | {r['removed_channels']} | {r['params_before']:,} -> {r['params_after']:,} | "
                     f"{mask} | {r['onnx_rel_diff']:.1e} | {r['groups_left_alone']}{' (' + why + ')' if why else ''} |")
        print(lines[-1], flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "timm_sweep.json").write_text(json.dumps(rows, indent=1))
    (out / "timm_sweep.md").write_text("# timm sweep (random init, 64x64, forget 0 / retain 1, 2)\n\n" + "\n".join(lines) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
