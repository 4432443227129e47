"""Prune timm architectures (random init, small inputs) through the API with no ignored layers.

One row per architecture: finished or refused (with tpunlearn's one-line message), seconds,
channels removed, parameters before and after, the output shape kept, the output layers the
dependency graph protected, the physical model's max difference to the mask-mode model
(where the plan says they must agree), ONNX parity relative to the largest output, and the
groups left alone (grouped convs, channel slices, operations the tracer cannot model).
No ``ignored_layers`` are passed: the classifier is protected because the graph finds it.
Each architecture runs in its own process with a time limit (``--limit``, default 300 s),
on one thread.

    python benchmarks/bench_timm_sweep.py [--limit S] [ARCH ...]

Writes benchmarks/results/timm_sweep.{json,md} (only for the default list); the last line
printed is the JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import tpunlearn as tu
from tpunlearn.adapters import for_arch
from tpunlearn.errors import TpunlearnError

ARCHS = ["resnet18", "resnext26ts", "mobilenetv3_small_100", "efficientnet_b0", "regnetx_002",
         "densenet121", "convnext_atto", "ghostnet_100",
         # issue 12's sweep and beyond: none of these was named by a test before
         "dla34", "rexnet_100", "cs3darknet_focus_s", "hrnet_w18_small", "inception_v3", "res2net50_26w_4s",
         "vgg11", "dpn68", "mobilevitv2_050", "mixnet_s", "cspresnet50", "repvgg_a0", "lcnet_050"]
SIZE = {"inception_v3": 96}  # its stem needs more than 64 pixels; every other arch runs at 64x64
NO_MASK = "n/a (nothing pruned, or zeroing is not removal: LayerNorm, norms outside the layers)"


def sweep_one(arch: str) -> dict:
    """Prune ``arch`` once; a tpunlearn error is a 'refused' row with its message."""
    torch.manual_seed(0)
    size = SIZE.get(arch, 64)
    model, _info = for_arch(arch).build(arch, input_size=(3, size, size))
    x = torch.rand(16, 3, size, size)
    multi_hot = (torch.rand(16, 10) < 0.4).float()
    multi_hot[:, 0] = 1
    row: dict = {"arch": arch, "input": size}
    t0 = time.perf_counter()
    try:
        res = tu.unlearn(model, [(x, multi_hot)], forget=[0], retain=[1, 2], sigma=8, delta=0.3, retain_delta=0.05,
                         n_per_target=4, coupled="prune", progress=False)
    except TpunlearnError as exc:
        return {**row, "status": "refused", "message": str(exc), "seconds": round(time.perf_counter() - t0, 1)}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    with torch.no_grad():
        out, before = res.model(x[:2]), model(x[:2])
    row.update(status="finished", removed_channels=res.plan.removed_channels,
               params_before=res.report["params"]["before"], params_after=res.report["params"]["after"],
               output_kept=tuple(out.shape) == tuple(before.shape),
               protected_outputs=[n[len("output layer(s) "):n.index(" found")] for n in res.report["notes"]
                                  if n.startswith("output layer(s)")],
               mask_rel_diff=res.report["check"].get("mask_rel_diff"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            diff = tu.export.to_onnx(res.model, Path(tmp) / "m.onnx", example_inputs=x[:2])
        row["onnx_rel_diff"] = diff / (float(out.abs().max()) or 1.0)
    except Exception as exc:  # noqa: BLE001 - a row, not a crash: the sweep reports what it saw
        row["onnx_rel_diff"] = f"export failed ({type(exc).__name__})"
    left_alone = [d.reason for d in res.plan.decisions if d.action == "skip" and d.channels]
    row.update(groups_left_alone=len(left_alone),
               why_left_alone=sorted({r.split(" (")[0].split(" before ")[0].split(" after ")[0] for r in left_alone}))
    return row


def run_isolated(arch: str, limit: float) -> dict:
    """``sweep_one`` in a fresh one-thread process, stopped after ``limit`` seconds."""
    cmd = [sys.executable, __file__, "--one", arch]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        return {"arch": arch, "status": "timed out", "message": f"over {limit:.0f} s", "seconds": round(limit, 1)}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"arch": arch, "status": "raw error", "message": tail[:300],
                "seconds": round(time.perf_counter() - t0, 1)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> list[str]:
    lines = ["| arch | input | status | seconds | channels removed | params before -> after | output kept | "
             "output layers found | physical vs mask (rel) | ONNX parity (rel) | groups left alone |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "finished":
            lines.append(f"| {r['arch']} | {r.get('input', '')} | {r['status']}: {r.get('message', '')} | "
                         f"{r['seconds']} | | | | | | | |")
            continue
        mask = NO_MASK if r["mask_rel_diff"] is None else f"{r['mask_rel_diff']:.1e}"
        onnx = r["onnx_rel_diff"] if isinstance(r["onnx_rel_diff"], str) else f"{r['onnx_rel_diff']:.1e}"
        why = "; ".join(r["why_left_alone"])
        lines.append(f"| {r['arch']} | {r['input']} | finished | {r['seconds']} | {r['removed_channels']} | "
                     f"{r['params_before']:,} -> {r['params_after']:,} | {'yes' if r['output_kept'] else 'NO'} | "
                     f"{', '.join(r['protected_outputs']) or '-'} | {mask} | {onnx} | "
                     f"{r['groups_left_alone']}{' (' + why + ')' if why else ''} |")
    return lines


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--one"]:
        torch.set_num_threads(1)
        print(json.dumps(sweep_one(args[1])))
        return
    limit = 300.0
    if args[:1] == ["--limit"]:
        limit, args = float(args[1]), args[2:]
    rows = []
    for arch in args or ARCHS:
        rows.append(run_isolated(arch, limit))
        print(table(rows)[-1], flush=True)
    if not args:
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / "timm_sweep.json").write_text(json.dumps(rows, indent=1))
        (out / "timm_sweep.md").write_text(
            "# timm sweep (random init, 64x64 unless noted, forget 0 / retain 1, 2, no ignored layers, one thread)\n\n"
            + "\n".join(table(rows)) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
