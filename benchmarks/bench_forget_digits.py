"""Forget each digit 0-9 from digitscenes-resnet (no fine-tuning) and say which choice matters.

For every configuration, every digit is forgotten in turn; the table gives the forget
digit's test recall and the worst retained digit's drop (points of recall), max and mean
over the ten requests. The first configuration is the library default; the others change
one thing each (the paper's literal recipe, the coupled policy, balance, scorer, samples).

    python benchmarks/bench_forget_digits.py [--quick]

Writes benchmarks/results/forget_digits.{json,md}; the last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tpunlearn as tu
from tpunlearn.evaluate import multilabel_recall, predict_multilabel

CONFIGS: dict[str, dict] = {
    "default (sigma 4 + group closure, delta 0.05, balanced, align 8)": {},
    "paper literal: no group closure (coupled=protect), no alignment": {"group_closure": False, "align": None},
    "no group closure, coupled=prune, no alignment": {"group_closure": False, "coupled": "prune", "align": None},
    "no group closure, sigma 6, no alignment": {"group_closure": False, "sigma": 6, "align": None},
    "default, mask mode (paper's zeroing)": {"mode": "mask"},
    "default without width alignment (align=None)": {"align": None},
    "default, delta 0.1": {"delta": 0.1},
    "without balance, delta 0.05": {"balanced": False},
    "without balance, delta 0.1": {"balanced": False, "delta": 0.1},
    "Taylor scores (grad x act)": {"method": "taylor"},
    "128 instances per target": {"n_per_target": 128},
    "last layer only (sigma 1)": {"sigma": 1},
}


def run_config(model, train, test, base, x, settings: dict, digits: list[int]) -> dict:
    rows = []
    for digit in digits:
        t0 = time.perf_counter()
        res = tu.unlearn(model, train, forget=[digit], example_inputs=x, ignored_layers=[model.fc],
                         progress=False, **settings)
        seconds = time.perf_counter() - t0
        recall = multilabel_recall(*predict_multilabel(res.model, test))
        drops = {r: float(base[r] - recall[r]) for r in range(10) if r != digit}
        worst = max(drops, key=drops.get)
        rows.append({"digit": digit, "forget_recall": round(float(recall[digit]), 4),
                     "worst_retained": worst, "worst_drop_points": round(100 * drops[worst], 2),
                     "removed_channels": res.report["removed_channels"],
                     "params_after": res.report["params"]["after"], "seconds": round(seconds, 2)})
    return {
        "settings": settings,
        "rows": rows,
        "forget_recall_max": max(r["forget_recall"] for r in rows),
        "forget_recall_mean": round(sum(r["forget_recall"] for r in rows) / len(rows), 4),
        "worst_drop_max": max(r["worst_drop_points"] for r in rows),
        "worst_drop_mean": round(sum(r["worst_drop_points"] for r in rows) / len(rows), 2),
        "removed_mean": round(sum(r["removed_channels"] for r in rows) / len(rows), 1),
    }


def markdown(results: dict, base: list[float], params: int) -> str:
    default = next(iter(results.values()))
    lines = ["# Forgetting each digit from digitscenes-resnet (test split, no fine-tuning)", "",
             f"Original: {params:,} params; per-digit test recall " + ", ".join(f"{b:.3f}" for b in base), "",
             "## Library defaults, one request per digit", "",
             "| forget | forget recall | worst retained digit | its drop (points) | channels removed | params after | s |",
             "|---|---|---|---|---|---|---|"]
    for r in default["rows"]:
        lines.append(f"| {r['digit']} | {100 * r['forget_recall']:.1f} % | {r['worst_retained']} | "
                     f"{r['worst_drop_points']:.1f} | {r['removed_channels']} | {r['params_after']:,} | {r['seconds']} |")
    lines += ["", "## Which choice makes the difference", "",
              "| configuration | forget recall max / mean | worst drop max / mean (points) | channels removed |",
              "|---|---|---|---|"]
    for name, res in results.items():
        lines.append(f"| {name} | {100 * res['forget_recall_max']:.1f} % / {100 * res['forget_recall_mean']:.1f} % | "
                     f"{res['worst_drop_max']:.1f} / {res['worst_drop_mean']:.2f} | {res['removed_mean']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits 1, 3, 7 and the first three configurations")
    args = p.parse_args()
    torch.set_num_threads(2)
    model, info = tu.zoo.load("digitscenes-resnet")
    test = list(tu.data.loader(tu.data.digitscenes("test"), batch_size=250))
    train = tu.data.loader(tu.data.digitscenes("train"), batch_size=64)
    x = tu.data.digitscenes("test")[0][0][None]
    base = multilabel_recall(*predict_multilabel(model, test))
    digits = [1, 3, 7] if args.quick else list(range(10))
    configs = dict(list(CONFIGS.items())[:3]) if args.quick else CONFIGS
    results = {}
    for name, settings in configs.items():
        results[name] = run_config(model, train, test, base, x, settings, digits)
        r = results[name]
        print(f"{name:55s} forget max {r['forget_recall_max']:.3f}  worst drop max {r['worst_drop_max']:.1f} pts", flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""
    summary = {"model": "digitscenes-resnet", "split": "test", "digits": digits,
               "base_recall": [round(float(b), 4) for b in base], "configs": results}
    (out / f"forget_digits{suffix}.json").write_text(json.dumps(summary, indent=1))
    (out / f"forget_digits{suffix}.md").write_text(markdown(results, [float(b) for b in base],
                                                            sum(p.numel() for p in model.parameters())))
    print(json.dumps({k: {m: v[m] for m in ("forget_recall_max", "worst_drop_max")} for k, v in results.items()}))


if __name__ == "__main__":
    main()
