"""Fig. 12 on DigitScenes: forget recall and worst retained drop against delta and sigma,
with and without balance, on the zoo classifier (no fine-tuning, test split).

Scores are computed once per (sigma, balance) and reused for every delta and digit (they
do not depend on either). Each point is the mean over the forget digits (``--digits``).

    python benchmarks/bench_sweep.py [--quick] [--digits 1,3,7]

Writes benchmarks/results/sweep.{json,md,png}; the last line printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tpunlearn as tu
from tpunlearn.evaluate import multilabel_recall, predict_multilabel

SIGMAS = (1, 2, 4, 6, 8)
DELTAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
QUICK = {"sigmas": (1, 4), "deltas": (0.02, 0.05, 0.2)}


def point(model, train, test, base, x, digit: int, sigma: int, delta: float, balanced: bool, scores):
    res = tu.unlearn(model, train if scores is None else None, [digit], example_inputs=x, sigma=sigma, delta=delta,
                     balanced=balanced, scores=scores, ignored_layers=[model.fc], progress=False)
    recall = multilabel_recall(*predict_multilabel(res.model, test))
    drops = [float(base[d] - recall[d]) for d in range(10) if d != digit]
    return res.scores, {"forget_recall": float(recall[digit]), "worst_drop_points": 100 * max(drops),
                        "removed_channels": res.report["removed_channels"]}


def sweep(digits: list[int], sigmas, deltas) -> list[dict]:
    model, _ = tu.zoo.load("digitscenes-resnet")
    train = tu.data.loader(tu.data.digitscenes("train"), batch_size=64)
    test = tu.data.loader(tu.data.digitscenes("test"), batch_size=250)
    x = tu.data.digitscenes("test")[0][0][None]
    base = multilabel_recall(*predict_multilabel(model, test))
    rows = []
    for balanced in (True, False):
        for sigma in sigmas:
            scores = None
            for delta in deltas:
                per_digit = []
                for digit in digits:
                    scores, r = point(model, train, test, base, x, digit, sigma, delta, balanced, scores)
                    per_digit.append(r)
                row = {"balanced": balanced, "sigma": sigma, "delta": delta,
                       **{k: sum(r[k] for r in per_digit) / len(per_digit) for k in per_digit[0]},
                       "per_digit": per_digit}
                rows.append(row)
                print(f"balanced={balanced!s:5s} sigma {sigma} delta {delta:.2f}: forget {100 * row['forget_recall']:5.1f} % "
                      f"worst drop {row['worst_drop_points']:5.2f} pts, {row['removed_channels']:.0f} channels", flush=True)
    return rows


def plot(rows: list[dict], path: Path, sigma_at: int, delta_at: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
    for balanced, style in ((True, "-o"), (False, "--s")):
        label = "balanced (Graph(beta))" if balanced else "without balance"
        by_delta = sorted((r for r in rows if r["balanced"] == balanced and r["sigma"] == sigma_at), key=lambda r: r["delta"])
        by_sigma = sorted((r for r in rows if r["balanced"] == balanced and r["delta"] == delta_at), key=lambda r: r["sigma"])
        for col, (series, key) in enumerate(((by_delta, "delta"), (by_sigma, "sigma"))):
            xs = [r[key] for r in series]
            axes[0, col].plot(xs, [100 * r["forget_recall"] for r in series], style, label=label)
            axes[1, col].plot(xs, [r["worst_drop_points"] for r in series], style, label=label)
    for col, (name, fixed) in enumerate((("delta", f"sigma = {sigma_at}"), ("sigma", f"delta = {delta_at}"))):
        axes[0, col].set_title(f"against {name} ({fixed})")
        axes[1, col].set_xlabel(name)
        ticks = sorted({r[name] for r in rows})
        for ax in axes[:, col]:
            if name == "delta":
                ax.set_xscale("log")
                ax.minorticks_off()
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
    axes[0, 0].set_ylabel("forget recall (%)")
    axes[1, 0].set_ylabel("worst retained drop (points)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("digitscenes-resnet: forgetting one digit, no fine-tuning (mean over forget digits)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict], digits: list[int]) -> str:
    lines = [f"# Sweep of delta and sigma, with and without balance (digitscenes-resnet, forget {digits}, test split)",
             "", "Mean over the forget digits. ![sweep](sweep.png)", "",
             "| balanced | sigma | delta | forget recall % | worst retained drop (pts) | channels removed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {'yes' if r['balanced'] else 'no'} | {r['sigma']} | {r['delta']} | {100 * r['forget_recall']:.1f} | "
                     f"{r['worst_drop_points']:.2f} | {r['removed_channels']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="sigma 1 and 4, three deltas")
    p.add_argument("--digits", default="1,3,7")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    digits = [int(d) for d in args.digits.split(",")]
    sigmas, deltas = (QUICK["sigmas"], QUICK["deltas"]) if args.quick else (SIGMAS, DELTAS)
    rows = sweep(digits, sigmas, deltas)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sweep_quick" if args.quick else "sweep"
    plot(rows, args.out / f"{stem}.png", sigma_at=4, delta_at=0.05)
    (args.out / f"{stem}.md").write_text(markdown(rows, digits).replace("sweep.png", f"{stem}.png"))
    (args.out / f"{stem}.json").write_text(json.dumps({"digits": digits, "rows": rows, "seconds": round(time.time() - t0, 1)},
                                                      indent=1))
    best = min((r for r in rows if r["balanced"]), key=lambda r: (r["forget_recall"] > 0.02, r["worst_drop_points"]))
    print(json.dumps({"best_balanced": {k: best[k] for k in ("sigma", "delta", "forget_recall", "worst_drop_points")}}))


if __name__ == "__main__":
    main()
