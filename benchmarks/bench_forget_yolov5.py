#!/usr/bin/env python
"""Forget one digit from the zoo detector ``digitscenes-yolov5``, no fine-tuning.

For each forget digit and each setting, ``tpunlearn.unlearn`` prunes a copy of the model
(physical mode, the Detect head never loses an output) and ultralytics' validator measures
per-digit AP50 on DigitScenes' test split (1000 scenes at the model's 64 px) before and
after. The goal (from the issue): the forgotten digit's AP50 falls to at most 5 % of its
value before, and the retained mAP50 (mean AP50 over the nine other digits) moves by at
most 3 points.

    python benchmarks/bench_forget_yolov5.py            # the chosen settings, all ten digits (~40 s)
    python benchmarks/bench_forget_yolov5.py --sweep    # plus the settings grid on digits 1, 3, 7 (~6 min)

Two sets of ignored layers are compared: ``adapter`` (``adapter.ignored_layers()``, the
whole Detect head) and ``head-outputs`` (only the head's output convs and its DFL, so the
head's inner 3x3 convs are candidates). The chosen settings use the second; see the
findings in the markdown report.

Channel scores depend on the model, the samples and the candidate layers only (sigma and
group closure), not on the forget digit or delta, so each sigma is scored once (with
``score_targets``, all ten digits) and reused by every request of that sigma through
``unlearn(..., scores=...)``; the chosen settings are then rerun from the samples with
nothing cached, as a user would call ``unlearn``. Results go to
``benchmarks/results/forget_yolov5.{json,md}``; the last line printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402

import tpunlearn as tu  # noqa: E402
from tpunlearn.api import score_targets  # noqa: E402
from tpunlearn.io import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "digitscenes-yolov5"
FORGET_FRACTION = 0.05  # forget AP50 after <= 5 % of before
RETAIN_POINTS = 0.03  # retained mAP50 within 3 points
DEFAULTS = {"ignored": "adapter", "sigma": 4, "delta": 0.05, "retain_delta": None, "retain_tolerance": 0,
            "group_closure": True, "align": None}  # measured before width alignment existed; kept off
# the settings this benchmark recommends (see the markdown report for why)
CHOSEN = {**DEFAULTS, "ignored": "head-outputs", "sigma": 12, "delta": 0.2, "retain_tolerance": 5}


def _grid(**axes) -> list[dict]:
    keys = list(axes)
    rows = [{}]
    for k in keys:
        rows = [{**r, k: v} for r in rows for v in axes[k]]
    return [{**DEFAULTS, **r} for r in rows]


SWEEP = (
    # the adapter's ignored layers (the whole Detect head), the library's balance rule
    _grid(sigma=(4, 6, 8, 12, 18), delta=(0.05, 0.1, 0.15, 0.2))
    # ... letting retained digits share flagged channels (retain_tolerance) or protect fewer (retain_delta)
    + _grid(sigma=(18,), delta=(0.1, 0.2), retain_tolerance=(2, 4), retain_delta=(None, 0.05))
    # the head's inner convs as candidates (only its output convs and DFL ignored)
    + _grid(ignored=("head-outputs",), sigma=(12,), delta=(0.1, 0.15, 0.2, 0.3), retain_tolerance=(0, 2, 4, 5, 6))
    + _grid(ignored=("head-outputs",), sigma=(4, 8, 18), delta=(0.2,), retain_tolerance=(5,))
)
IGNORED = {
    "adapter": "the whole Detect head (what the adapter ignored before this benchmark)",
    "head-outputs": "adapter.ignored_layers(): the Detect head's output convs (cv2[i][-1], cv3[i][-1]) and DFL; "
                    "its inner 3x3 convs are candidates",
}


def ignored_layers(adapter, model, info, kind: str) -> list:
    if kind == "adapter":
        return [model.model[-1]]
    if kind == "head-outputs":
        return adapter.ignored_layers(model, info)
    raise ValueError(kind)


def unlearn_kwargs(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "ignored"}


def quiet():
    """Silence ultralytics' validator output (it prints a table per call)."""
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.WARNING)
    return contextlib.redirect_stdout(io.StringIO())


def evaluate(adapter, model, info, data):
    with quiet():
        return adapter.evaluate(model, info, data)


def retained_map(ap: dict[str, float], names: list[str], forget: str) -> float:
    return sum(ap[n] for n in names if n != forget) / (len(names) - 1)


def row_for(digit: int, settings: dict, before: dict, after: dict, res, names: list[str], seconds: float) -> dict:
    f = names[digit]
    keep_before, keep_after = retained_map(before, names, f), retained_map(after, names, f)
    ratio = after[f] / before[f] if before[f] > 0 else float("nan")
    return {
        "forget": digit,
        "settings": {k: v for k, v in settings.items()},
        "forget_ap50_before": round(before[f], 4),
        "forget_ap50_after": round(after[f], 4),
        "forget_ratio": round(ratio, 4),
        "retained_map50_before": round(keep_before, 4),
        "retained_map50_after": round(keep_after, 4),
        "retained_change_points": round(100 * (keep_after - keep_before), 2),
        "ap50_after": {n: round(after[n], 4) for n in names},
        "channels_removed": int(res.report["removed_channels"]),
        "params_before": int(res.report["params"]["before"]),
        "params_after": int(res.report["params"]["after"]),
        "layers_scored": len(res.report["layers"]),
        "meets_goal": bool(ratio <= FORGET_FRACTION and abs(keep_after - keep_before) <= RETAIN_POINTS),
        "seconds": round(seconds, 2),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    adapter, model, info = tu.models.load_model(NAME)
    names = list(info.class_names)
    samples = adapter.samples(model, info, args.samples_data)
    common = dict(target=adapter.target_factory(info), example_inputs=adapter.example_inputs(info),
                  output_transform=adapter.output_transform, num_targets=len(names), progress=False,
                  n_per_target=args.n_per_target)
    t0 = time.time()
    before = evaluate(adapter, model, info, args.data)
    print(f"before: mAP50 {before['mAP50']:.4f}  " + " ".join(f"{n}:{before[n]:.3f}" for n in names)
          + f"  ({time.time() - t0:.1f}s)", flush=True)

    grid = SWEEP if args.sweep else []
    scores_cache: dict[tuple, object] = {}
    sweep_rows = []
    for settings in grid:
        key = (settings["ignored"], settings["sigma"], settings["group_closure"])
        ignored = ignored_layers(adapter, model, info, settings["ignored"])
        if key not in scores_cache:
            t = time.time()
            scores_cache[key] = score_targets(model, samples, sigma=settings["sigma"], ignored_layers=ignored,
                                              group_closure=settings["group_closure"], **common)
            print(f"scored {key} in {time.time() - t:.1f}s", flush=True)
        for d in args.sweep_digits:
            t = time.time()
            res = tu.unlearn(model, None, forget=[d], scores=scores_cache[key], ignored_layers=ignored,
                             **unlearn_kwargs(settings), **common)
            after = evaluate(adapter, res.model, info, args.data)
            row = row_for(d, settings, before, after, res, names, time.time() - t)
            sweep_rows.append(row)
            print(f"{json.dumps(settings)} forget {d}: AP50 {row['forget_ap50_before']:.3f} -> "
                  f"{row['forget_ap50_after']:.3f} ({100 * row['forget_ratio']:.1f}%), retained "
                  f"{row['retained_map50_before']:.4f} -> {row['retained_map50_after']:.4f} "
                  f"({row['retained_change_points']:+.2f} pts), -{row['channels_removed']} ch"
                  f"{'  OK' if row['meets_goal'] else ''}", flush=True)

    # the chosen settings, rerun as a user calls unlearn: from the samples, nothing cached
    final_rows = []
    for d in args.digits:
        t = time.time()
        res = tu.unlearn(model, samples, forget=[d], ignored_layers=ignored_layers(adapter, model, info, CHOSEN["ignored"]),
                         **unlearn_kwargs(CHOSEN), **common)
        after = evaluate(adapter, res.model, info, args.data)
        final_rows.append(row_for(d, CHOSEN, before, after, res, names, time.time() - t))
        r = final_rows[-1]
        print(f"chosen, forget {d}: {r['forget_ap50_before']:.3f} -> {r['forget_ap50_after']:.3f}, retained "
              f"{r['retained_change_points']:+.2f} pts ({r['seconds']:.1f}s)", flush=True)

    summary = {
        "model": NAME,
        "weights_sha256": tu.zoo.load(NAME)[1]["sha256"],
        "data": args.data,
        "samples": args.samples_data,
        "n_per_target": args.n_per_target,
        "sweep_digits": args.sweep_digits if args.sweep else [],
        "goal": {"forget_ratio_max": FORGET_FRACTION, "retained_change_max_points": 100 * RETAIN_POINTS},
        "ignored_variants": IGNORED,
        "before": {k: round(v, 4) for k, v in before.items()},
        "chosen": CHOSEN,
        "results": final_rows,
        "all_meet_goal": all(r["meets_goal"] for r in final_rows),
        "sweep": sweep_rows,
        "sweep_summary": _sweep_summary(sweep_rows),
        "versions": {"torch": torch.__version__, "tpunlearn": tu.__version__, "ultralytics": _ul_version()},
        "threads": args.threads,
        "seconds": round(time.time() - t0, 1),
    }
    return summary


def _ul_version() -> str:
    from ultralytics import __version__

    return __version__


def _sweep_summary(rows: list[dict]) -> list[dict]:
    out: dict[str, dict] = {}
    for r in rows:
        key = json.dumps(r["settings"], sort_keys=True)
        s = out.setdefault(key, {"settings": r["settings"], "digits": 0, "meet_goal": 0, "max_forget_ratio": 0.0,
                                 "max_retained_drop_points": 0.0, "mean_channels_removed": 0.0})
        s["digits"] += 1
        s["meet_goal"] += int(r["meets_goal"])
        s["max_forget_ratio"] = max(s["max_forget_ratio"], r["forget_ratio"])
        s["max_retained_drop_points"] = max(s["max_retained_drop_points"], -r["retained_change_points"])
        s["mean_channels_removed"] += r["channels_removed"]
    for s in out.values():
        s["mean_channels_removed"] = round(s["mean_channels_removed"] / s["digits"], 1)
    return list(out.values())


def _settings_text(st: dict) -> str:
    return (f"ignored `{st['ignored']}`, sigma {st['sigma']}, delta {st['delta']}, "
            f"retain_delta {st['retain_delta'] or st['delta']}, retain_tolerance {st['retain_tolerance']}, "
            f"group closure {'on' if st['group_closure'] else 'off'}")


def markdown(summary: dict) -> str:
    c = summary["chosen"]
    lines = [
        "# Forgetting one digit from `digitscenes-yolov5` (no fine-tuning)",
        "",
        f"Model: zoo `digitscenes-yolov5` (ultralytics YOLOv5n, 64 px, sha256 `{summary['weights_sha256'][:16]}...`). "
        f"Scoring samples: `{summary['samples']}` (DigitScenes train split, 512 scenes), {summary['n_per_target']} "
        f"instances per digit. Evaluation: ultralytics' validator (conf 0.001, IoU 0.7) on `{summary['data']}` "
        "(DigitScenes test split, 1000 scenes), AP50 per digit.",
        "",
        f"Goal: forget AP50 <= {100 * FORGET_FRACTION:.0f} % of before, retained mAP50 (mean AP50 of the nine "
        f"other digits) within {100 * RETAIN_POINTS:.0f} points.",
        "",
        "Ignored-layer variants: " + "; ".join(f"`{k}` = {v}" for k, v in summary["ignored_variants"].items()) + ".",
        "",
        f"Chosen settings: {_settings_text(c)}; physical mode, coupled `protect`, balanced, gradcam scores.",
        "",
        "| forget | AP50 before | AP50 after | after/before | retained mAP50 before | after | change (pts) "
        "| channels removed | params after | goal |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in summary["results"]:
        lines.append(
            f"| {r['forget']} | {r['forget_ap50_before']:.3f} | {r['forget_ap50_after']:.3f} | "
            f"{100 * r['forget_ratio']:.1f} % | {r['retained_map50_before']:.4f} | {r['retained_map50_after']:.4f} | "
            f"{r['retained_change_points']:+.2f} | {r['channels_removed']} | {r['params_after']:,} | "
            f"{'yes' if r['meets_goal'] else 'no'} |")
    if summary["results"]:
        lines.append(f"\nParams before: {summary['results'][0]['params_before']:,}.")
    lines += ["", "## Findings", "",
              "* With the adapter's ignored layers (the whole Detect head, so only backbone and neck convs are "
              "candidates) no setting tried meets the goal. The library defaults (sigma 4, delta 0.05) and every "
              "sigma up to 12 remove channels (up to 55 per request) whose loss leaves every AP50 unchanged: the neck's "
              "channels serve all digits, the few the balance rule flags carry little of any one digit's score, "
              "and AP50 (validator conf 0.001) only ranks detections, so damping a digit's scores without "
              "reordering them costs it nothing. Letting "
              "retained digits share flagged channels (retain_tolerance 2-4) or protect fewer (retain_delta 0.05) "
              "at sigma 18 lowers the forget AP50 only together with the retained digits' AP50.",
              "* The digit-specific channels sit in the head's class branch (`cv3[i][0]`, `cv3[i][1]`: two 3x3 "
              "convs of 64 channels per scale). With only the head's output convs and DFL ignored, sigma 12 "
              "(exactly the head's 12 inner convs) finds them. With ten digits, delta 0.2 and the strict rule "
              "(retain_tolerance 0) almost every channel in the forget digit's top 20 % is in some retained "
              "digit's top 20 % too, so retain_tolerance 4-6 is needed; 5 meets the goal for all ten digits.",
              "* The pruned head keeps `nc` = 10 and its class outputs; only inner channels of the head go "
              "(0.8-2.4 % of the parameters), and the forgotten digit's AP50 falls to 0.000 without fine-tuning."]
    if summary["sweep_summary"]:
        lines += ["", f"## Sweep (forget digits {summary['sweep_digits']}; scores cached per sigma and ignored set)", "",
                  "| ignored | sigma | delta | retain_delta | retain_tolerance | digits meeting goal "
                  "| worst after/before | worst retained drop (pts) | mean channels removed |",
                  "|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in summary["sweep_summary"]:
            st = r["settings"]
            lines.append(f"| {st['ignored']} | {st['sigma']} | {st['delta']} | {st['retain_delta'] or st['delta']} | "
                         f"{st['retain_tolerance']} | {r['meet_goal']}/{r['digits']} | "
                         f"{100 * r['max_forget_ratio']:.1f} % | {r['max_retained_drop_points']:.2f} | "
                         f"{r['mean_channels_removed']} |")
    lines += ["", f"Versions: {json.dumps(summary['versions'])}; {summary['threads']} CPU threads; "
              f"{summary['seconds']} s in all.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--sweep", action="store_true", help="also run the settings grid (SWEEP)")
    p.add_argument("--sweep-digits", type=int, nargs="+", default=[1, 3, 7])
    p.add_argument("--data", default="digits", help="evaluation data (default: DigitScenes test, 1000 scenes)")
    p.add_argument("--samples-data", default="digits", help="scoring data (default: DigitScenes train, 512 scenes)")
    p.add_argument("--n-per-target", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "forget_yolov5")
    args = p.parse_args(argv)
    summary = run(args)
    write_json(args.out.with_suffix(".json"), summary)
    args.out.with_suffix(".md").write_text(markdown(summary))
    brief = {k: summary[k] for k in ("model", "chosen", "all_meet_goal")}
    brief["results"] = [{k: r[k] for k in ("forget", "forget_ap50_before", "forget_ap50_after",
                                          "retained_change_points", "channels_removed", "meets_goal")}
                        for r in summary["results"]]
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
