#!/usr/bin/env python
"""Forget one digit from the zoo detector ``digitscenes-yolov5``, no fine-tuning.

For each forget digit and each setting, ``tpunlearn.unlearn`` prunes a copy of the model
(physical mode, the Detect head never loses an output) and the adapter measures each digit
on DigitScenes' test split (1000 scenes at the model's 64 px) before and after, where a
deployed detector is used: recall and precision at confidence 0.25 (ultralytics' predict
default, box IoU 0.5), with AP50 from ultralytics' validator beside them. The goal: the
forgotten digit's recall at 0.25 falls to at most 2 %, and every retained digit's recall at
0.25 stays within 3 points. (An earlier version judged AP50 at the validator's confidence
0.001, which only ranks detections: a model whose scores were all damped below use passed.)

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
FORGET_RECALL = 0.02  # forget recall at conf 0.25 after <= 2 %
RETAIN_POINTS = 0.03  # every retained digit's recall at conf 0.25 within 3 points
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
FINDINGS = [  # written from the last run's numbers; rewrite them when the numbers change
    "* **Pruning alone does not meet the goal on any digit.** The family's defaults (sigma 12, delta 0.2, "
    "retain_tolerance 5, head-outputs) take every forgotten digit's recall at conf 0.25 to 0, but with it "
    "the recall of most other digits: the worst retained digit is found in almost none of its boxes "
    "(drop 98-100 points) for every forget digit. AP50 at conf 0.001 hides it: the retained mAP50 stays "
    "within about 2.5 points, because damped scores still rank the boxes. An earlier version of this "
    "benchmark judged AP50 and reported all ten digits as meeting the goal; that verdict was wrong.",
    "* The damage comes from the head's class branch: the channels flagged for the forget digit "
    "(`cv3[i][0]`, `cv3[i][1]`, 3x3 convs of 64 channels) are shared by the other digits, so removing "
    "them lowers every class score, and most fall under 0.25. The sweep shows the trade-off: the strict "
    "balance rule (retain_tolerance 0) keeps the other digits (worst drop <= 2 points) but leaves the "
    "forget digit's recall at 0.83-1.00; tolerance 2 at delta 0.2 comes closest (digit 3: 0.077 left, "
    "worst retained drop 2.7 points; digit 1: 0.109 and 7.9 points), tolerance 5 forgets and breaks "
    "the rest. With the whole Detect head ignored (`adapter`) nothing changes at any setting.",
    "* The fix needs more than removal: a short repair or recalibration of the pruned head on data "
    "without the forget digit (the next issue, repair and calibration) is the way named for it.",
]
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
        return adapter.evaluate(model, info, data, conf=CONF)


CONF = 0.25  # ultralytics' predict default: where a deployed detector is judged


def per_target(ev, key: str) -> dict[str, float]:
    """One metric of every class from an Evaluation (0 for a class the split does not hold)."""
    return {n: float(m.get(key, 0.0)) for n, m in ev.per_target.items()}


def retained_worst(before: dict[str, float], after: dict[str, float], forget: str) -> tuple[str, float]:
    """The retained class that lost most, and its drop (before - after)."""
    drops = {n: before[n] - after.get(n, 0.0) for n in before if n != forget}
    worst = max(drops, key=lambda n: drops[n])
    return worst, drops[worst]


def mean_without(values: dict[str, float], forget: str) -> float:
    kept = [v for n, v in values.items() if n != forget]
    return sum(kept) / max(1, len(kept))


def row_for(digit: int, settings: dict, before, after, res, names: list[str], seconds: float) -> dict:
    """One request's numbers: recall and precision at CONF (the operating point) and AP50, per digit."""
    f = names[digit]
    rb, ra = per_target(before, "recall"), per_target(after, "recall")
    ab, aa = per_target(before, "ap50"), per_target(after, "ap50")
    worst, drop = retained_worst(rb, ra, f)
    return {
        "forget": digit,
        "settings": dict(settings),
        "forget_recall_before": round(rb[f], 4),
        "forget_recall_after": round(ra[f], 4),
        "forget_ap50_before": round(ab[f], 4),
        "forget_ap50_after": round(aa[f], 4),
        "retained_recall_before": round(mean_without(rb, f), 4),
        "retained_recall_after": round(mean_without(ra, f), 4),
        "worst_retained": worst,
        "worst_retained_recall_before": round(rb[worst], 4),
        "worst_retained_recall_after": round(ra[worst], 4),
        "worst_retained_drop_points": round(100 * drop, 2),
        "retained_map50_before": round(mean_without(ab, f), 4),
        "retained_map50_after": round(mean_without(aa, f), 4),
        "recall_after": {n: round(ra[n], 4) for n in names if n in ra},
        "precision_after": {n: round(float(after.per_target[n].get("precision", 0.0)), 4)
                            for n in names if n in after.per_target},
        "ap50_after": {n: round(aa[n], 4) for n in names if n in aa},
        "channels_removed": int(res.report["removed_channels"]),
        "params_before": int(res.report["params"]["before"]),
        "params_after": int(res.report["params"]["after"]),
        "layers_scored": len(res.report["layers"]),
        "meets_goal": bool(ra[f] <= FORGET_RECALL and drop <= RETAIN_POINTS),
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
    rb = per_target(before, "recall")
    print(f"before: recall@{CONF} " + " ".join(f"{n}:{rb[n]:.3f}" for n in names)
          + f", mAP50 {before.summary.get('mAP50', float('nan')):.4f}  ({time.time() - t0:.1f}s)", flush=True)

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
            print(f"{json.dumps(settings)} forget {d}: recall {row['forget_recall_before']:.3f} -> "
                  f"{row['forget_recall_after']:.3f}, worst retained {row['worst_retained']} "
                  f"-{row['worst_retained_drop_points']:.1f} pts, -{row['channels_removed']} ch"
                  f"{'  OK' if row['meets_goal'] else ''}", flush=True)

    # the chosen settings, rerun as a user calls unlearn: from the samples, nothing cached
    final_rows = []
    for d in args.digits:
        t = time.time()
        ignored = ignored_layers(adapter, model, info, CHOSEN["ignored"])
        res = tu.unlearn(model, samples, forget=[d], ignored_layers=ignored,
                         **unlearn_kwargs(CHOSEN), **common)
        after = evaluate(adapter, res.model, info, args.data)
        final_rows.append(row_for(d, CHOSEN, before, after, res, names, time.time() - t))
        r = final_rows[-1]
        print(f"chosen, forget {d}: recall {r['forget_recall_before']:.3f} -> {r['forget_recall_after']:.3f}, "
              f"worst retained {r['worst_retained']} {r['worst_retained_recall_before']:.3f} -> "
              f"{r['worst_retained_recall_after']:.3f} ({r['seconds']:.1f}s)", flush=True)

    summary = {
        "model": NAME,
        "weights_sha256": tu.zoo.load(NAME)[1]["sha256"],
        "data": args.data,
        "samples": args.samples_data,
        "n_per_target": args.n_per_target,
        "sweep_digits": args.sweep_digits if args.sweep else [],
        "goal": {"conf": CONF, "forget_recall_max": FORGET_RECALL, "retained_drop_max_points": 100 * RETAIN_POINTS},
        "ignored_variants": IGNORED,
        "before": before.to_dict(),
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
        s = out.setdefault(key, {"settings": r["settings"], "digits": 0, "meet_goal": 0, "max_forget_recall": 0.0,
                                 "max_retained_drop_points": 0.0, "mean_channels_removed": 0.0})
        s["digits"] += 1
        s["meet_goal"] += int(r["meets_goal"])
        s["max_forget_recall"] = max(s["max_forget_recall"], r["forget_recall_after"])
        s["max_retained_drop_points"] = max(s["max_retained_drop_points"], r["worst_retained_drop_points"])
        s["mean_channels_removed"] += r["channels_removed"]
    for s in out.values():
        s["mean_channels_removed"] = round(s["mean_channels_removed"] / s["digits"], 1)
    return list(out.values())


def _settings_text(st: dict) -> str:
    return (f"ignored `{st['ignored']}`, sigma {st['sigma']}, delta {st['delta']}, "
            f"retain_delta {st['retain_delta'] or st['delta']}, retain_tolerance {st['retain_tolerance']}, "
            f"group closure {'on' if st['group_closure'] else 'off'}")


def _result_line(r: dict) -> str:
    return (f"| {r['forget']} | {r['forget_recall_before']:.3f} | {r['forget_recall_after']:.3f} | "
            f"{r['forget_ap50_before']:.3f} | {r['forget_ap50_after']:.3f} | {r['worst_retained']} | "
            f"{r['worst_retained_recall_before']:.3f} | {r['worst_retained_recall_after']:.3f} | "
            f"{r['retained_recall_before']:.3f} | {r['retained_recall_after']:.3f} | "
            f"{r['retained_map50_before']:.3f} | {r['retained_map50_after']:.3f} | {r['channels_removed']} | "
            f"{'yes' if r['meets_goal'] else '**no**'} |")


def markdown(summary: dict) -> str:
    c, g = summary["chosen"], summary["goal"]
    rows = summary["results"]
    met = sum(r["meets_goal"] for r in rows)
    lines = [
        "# Forgetting one digit from `digitscenes-yolov5` (no fine-tuning)",
        "",
        f"Model: zoo `digitscenes-yolov5` (ultralytics YOLOv5n, 64 px, sha256 `{summary['weights_sha256'][:16]}...`). "
        f"Scoring samples: `{summary['samples']}` (DigitScenes train split, 512 scenes), {summary['n_per_target']} "
        f"instances per digit. Evaluation on `{summary['data']}` (DigitScenes test split, 1000 scenes): per digit, "
        f"recall and precision at the deployment confidence {g['conf']} (box IoU 0.5), and AP50 from ultralytics' "
        "validator (conf 0.001, which only ranks detections: it is shown, not judged).",
        "",
        f"Goal: the forgotten digit's recall at conf {g['conf']} <= {100 * g['forget_recall_max']:.0f} %, and "
        f"every retained digit's recall at conf {g['conf']} within {g['retained_drop_max_points']:.0f} points.",
        "",
        f"**{met} of {len(rows)} digits meet the goal** with the chosen settings"
        + (" (the family's defaults)." if met == len(rows) else
           ": pruning alone damps the retained digits' scores below the deployment confidence; "
           "AP50 hides it. Fixing it (repair and calibration) is the next issue's."),
        "",
        "Ignored-layer variants: " + "; ".join(f"`{k}` = {v}" for k, v in summary["ignored_variants"].items()) + ".",
        "",
        f"Chosen settings: {_settings_text(c)}; physical mode, coupled `protect`, balanced, gradcam scores.",
        "",
        "| forget | recall before | recall after | AP50 before | AP50 after | worst retained | its recall before "
        "| after | retained mean recall before | after | retained mAP50 before | after | channels removed | goal |",
        "|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        *(_result_line(r) for r in rows),
    ]
    if rows:
        lines.append(f"\nParams before: {rows[0]['params_before']:,}; after: "
                     + ", ".join(f"{r['params_after']:,}" for r in rows) + ".")
    lines += ["", "## Findings", "", *FINDINGS]
    if summary["sweep_summary"]:
        lines += ["", f"## Sweep (forget digits {summary['sweep_digits']}; scores cached per sigma and ignored set)",
                  "",
                  "| ignored | sigma | delta | retain_delta | retain_tolerance | digits meeting goal "
                  "| worst forget recall after | worst retained recall drop (pts) | mean channels removed |",
                  "|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in summary["sweep_summary"]:
            st = r["settings"]
            lines.append(f"| {st['ignored']} | {st['sigma']} | {st['delta']} | {st['retain_delta'] or st['delta']} | "
                         f"{st['retain_tolerance']} | {r['meet_goal']}/{r['digits']} | "
                         f"{r['max_forget_recall']:.3f} | {r['max_retained_drop_points']:.2f} | "
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
    brief["results"] = [{k: r[k] for k in ("forget", "forget_recall_before", "forget_recall_after", "worst_retained",
                                          "worst_retained_drop_points", "channels_removed", "meets_goal")}
                        for r in summary["results"]]
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
