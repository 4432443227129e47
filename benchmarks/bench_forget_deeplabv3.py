"""Forget each digit from digitscenes-deeplabv3 (segmentation, no fine-tuning): IoU before and after.

Per forget digit: that digit's test IoU before/after, the retained mIoU (mean IoU over the
other nine digits; background NOT included, it is reported on its own) before/after,
channels removed and parameters after. The goal (the issue's): forget IoU <= 5 % and the
retained mIoU moves by at most 2 points.

Stage 1 runs the library defaults (sigma 4, delta 0.05, retain_delta = delta, balanced,
group closure, physical pruning). When they miss the goal for some digit, stage 2 searches
sigma x delta x retain_delta on a few digits (``--search-digits``), stage 2b tries the
library's other knobs (retain_tolerance, Taylor scores, no balance) and two things the library
does not offer (ignoring only the final 1x1 conv; a margin target, defined here), and stage 3
reruns the best settings found (library settings first) on every digit. Channel scores are computed once per sigma and
reused (``tu.unlearn(scores=...)``): they depend on the scored layers only, not on delta or
on which digit is forgotten.

    python benchmarks/bench_forget_deeplabv3.py [--quick] [--no-search] [--weights PATH]

Writes benchmarks/results/forget_deeplabv3.{json,md} (``--out DIR`` elsewhere); the last
line printed is the JSON summary.

``--repair`` measures pruning (library defaults) plus the family's repair instead (issue 13 part 4):
per digit the forget IoU and retained mIoU before / after pruning / after repair, the worst retained
digit, channels removed, seconds and the scene-passes the repair used as a fraction of one epoch of
the zoo model's training (24000 scenes). The recipe is the adapter's own (``adapter.repair``, what
``tpunlearn prune --repair-epochs 1`` runs); ``--repair-variants`` adds the other objectives
(:data:`VARIANTS`, through :class:`~tpunlearn.adapters.deeplabv3.ForgetLoss`) as rows:

    python benchmarks/bench_forget_deeplabv3.py --repair [--digits 3] [--repair-scenes N] [--repair-lr LR]
        [--repair-variants background,next+distill,...] [--tag NAME]

Writes benchmarks/results/forget_deeplabv3_repair[_TAG].{json,md}.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch

import tpunlearn as tu
from tpunlearn import zoo
from tpunlearn.io import sha256
from tpunlearn.targets import SegmentationLogit

NAME = "digitscenes-deeplabv3"
GOAL_FORGET_IOU = 0.05
GOAL_RETAINED_DROP = 0.02
SEARCH = {"sigma": (4, 8, 16), "delta": (0.02, 0.05, 0.1, 0.2), "retain_delta": (None, 0.02, 0.1)}
QUICK_SEARCH = {"sigma": (4, 8), "delta": (0.05, 0.2), "retain_delta": (None, 0.02)}
# beyond the grid (sigma 4, delta 0.05 unless said): the library's other knobs, and two things the
# library does not offer, marked "bench:" (settings this script handles itself, not tu.unlearn's):
#   bench:ignore=head  - ignore only the final 1x1 conv (classifier.4), not the paper's last two
#   bench:target=margin - Y_t = sum over t's pixels of (logit_t - max other logit), a Target defined here
EXTRAS = [
    {"retain_tolerance": 1},
    {"retain_tolerance": 2},
    {"method": "taylor"},
    {"balanced": False},
    {"bench:ignore": "head"},
    {"bench:ignore": "head", "retain_tolerance": 1},
    {"bench:target": "margin"},
    {"bench:target": "margin", "sigma": 8},
    {"bench:target": "margin", "bench:ignore": "head", "retain_tolerance": 1},
    # past the cliff: forgetting reaches 0 here, at the cost of the digits that share 3's strokes
    {"bench:ignore": "head", "delta": 0.1, "retain_delta": 0.04, "align": 1},
    {"bench:ignore": "head", "delta": 0.1, "retain_delta": 0.02, "align": 1},
]


DEFAULT_REPAIR_LR = 1e-3  # the adapter's REPAIR_LR (pass --repair-lr 1e-3 to the CLI, whose default is 1e-4)
ZOO_EPOCH_SCENES = 24000  # one epoch of the zoo model's training (scripts/train_zoo.py, zoo.train.n_train)
# repair objectives measured against the family's default (ForgetLoss: forget pixels -> background, forget
# pixels weigh 10, KL distillation at T=2 with weight 1); each changes one thing of it
VARIANTS = {
    "background, no distillation": {"distill": 0.0},
    "background+distill, forget pixels weigh 1": {"forget_weight": 1.0},
    "background+distill x5": {"distill": 5.0},
    "next-best+distill": {"redirect": "next"},
    "next-best, no distillation": {"redirect": "next", "distill": 0.0},
    "ignored+distill": {"redirect": "ignore"},  # forget pixels masked out (issue 13 part 2's retained-only)
}


class MarginTarget(SegmentationLogit):
    """``sum over the pixels the model assigns to t of (logit_t - max_{c != t} logit_c)``: what
    separates t from its nearest rival, rather than what makes any digit's pixels (ink) score."""

    def per_sample(self, output):
        logits = output["out"] if isinstance(output, dict) else output
        region = logits.detach().argmax(1) == self.index
        rivals = logits.clone()
        rivals[:, self.index] = float("-inf")
        margin = logits[:, self.index] - rivals.amax(1)
        return (margin * region).flatten(1).sum(1)


def _digit_ious(iou: dict[str, float]) -> list[float]:
    return [float(iou[str(d)]) for d in range(10)]


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


class Bench:
    def __init__(self, weights: Path | None, n_test: int, scoring: str) -> None:
        self.adapter, self.model, self.info = zoo.build_model(NAME, weights)
        self.test_spec, self.scoring = f"digits:{n_test}", scoring
        self.base = self.adapter.segmentation_metrics(self.model, self.info, self.test_spec)["iou"]
        # ChannelScores per (sigma, method, ignored layers, target): reused across digits and deltas
        self.scores: dict[tuple, object] = {}

    def prune(self, digit: int, settings: dict) -> tuple[object, float]:
        """One ``tu.unlearn`` request forgetting ``digit`` with ``settings``; (result, seconds)."""
        a, info, model = self.adapter, self.info, self.model
        kwargs = {k: v for k, v in settings.items() if not k.startswith("bench:")}
        ignore = settings.get("bench:ignore", "paper")
        ignored = a.ignored_layers(model, info) if ignore == "paper" else [model.classifier[-1]]
        target_name = settings.get("bench:target", "logit")
        target = a.target_factory(info) if target_name == "logit" else MarginTarget
        key = (kwargs.get("sigma", 4), kwargs.get("method", "gradcam"), ignore, target_name)
        t0 = time.perf_counter()
        res = tu.unlearn(model, a.samples(model, info, self.scoring), forget=[digit + 1],
                         target=target, example_inputs=a.example_inputs(info),
                         ignored_layers=ignored, output_transform=a.output_transform,
                         num_targets=len(info.class_names), progress=False, scores=self.scores.get(key),
                         **kwargs)
        seconds = time.perf_counter() - t0
        self.scores.setdefault(key, res.scores)
        return res, seconds

    def iou(self, model: torch.nn.Module) -> dict[str, float]:
        return self.adapter.segmentation_metrics(model, self.info, self.test_spec)["iou"]

    def request(self, digit: int, settings: dict) -> dict:
        res, seconds = self.prune(digit, settings)
        return self.row(digit, self.iou(res.model), res, seconds)

    def row(self, digit: int, iou: dict[str, float], res: object, seconds: float) -> dict:
        """The table row of one request: ``digit``'s IoU and the retained mIoU before and after."""
        before, after = _digit_ious(self.base), _digit_ious(iou)
        others = [d for d in range(10) if d != digit]
        ret_before = _mean([before[d] for d in others])
        ret_after = _mean([after[d] for d in others])
        drops = {d: before[d] - after[d] for d in others}
        worst = max(drops, key=drops.get)
        row = {
            "digit": digit,
            "forget_iou_before": round(before[digit], 4),
            "forget_iou_after": round(after[digit], 4),
            "retained_miou_before": round(ret_before, 4),
            "retained_miou_after": round(ret_after, 4),
            "retained_drop_points": round(100 * (ret_before - ret_after), 2),
            "worst_retained_digit": worst,
            "worst_retained_drop_points": round(100 * drops[worst], 2),
            "background_iou_before": round(float(self.base["background"]), 4),
            "background_iou_after": round(float(iou["background"]), 4),
            "removed_channels": res.report["removed_channels"],
            "params_before": res.report["params"]["before"],
            "params_after": res.report["params"]["after"],
            "seconds": round(seconds, 2),
        }
        row["meets_goal"] = bool(row["forget_iou_after"] <= GOAL_FORGET_IOU
                                 and abs(ret_before - ret_after) <= GOAL_RETAINED_DROP)
        return row

    def repaired(self, digit: int, variant: str | None, scenes: int, lr: float, epochs: int) -> dict:
        """Library-default pruning, then the repair: the adapter's own (``variant`` None, what the CLI
        runs) or the ForgetLoss of :data:`VARIANTS`; the row adds the pruned-only numbers and the cost."""
        from tpunlearn.adapters.deeplabv3 import ForgetLoss
        from tpunlearn.repair import repair

        a, info, forget = self.adapter, self.info, [digit + 1]
        res, prune_s = self.prune(digit, {})
        pruned = self.row(digit, self.iou(res.model), res, prune_s)
        spec = f"digits:{scenes}"
        t0 = time.perf_counter()
        if variant is None:
            summary = a.repair(res.model, info, spec, forget, original=self.model, epochs=epochs, lr=lr,
                               plan=res.plan, progress=False)
        else:
            loss = ForgetLoss(tuple(forget), self.model, **VARIANTS[variant])
            data = a.repair_data(res.model, info, spec, forget)
            summary = repair(res.model, data, loss, epochs=epochs, lr=lr, plan=res.plan, progress=False)
            summary.update(objective=loss.describe(), scenes=data.n_images, scene_passes=epochs * data.n_images)
        repair_s = time.perf_counter() - t0
        row = self.row(digit, self.iou(res.model), res, prune_s + repair_s)
        row.update(variant=variant or "adapter default", forget_iou_pruned=pruned["forget_iou_after"],
                   retained_miou_pruned=pruned["retained_miou_after"], prune_seconds=round(prune_s, 2),
                   repair_seconds=round(repair_s, 2), lr=lr, epochs=epochs, scene_passes=summary["scene_passes"],
                   zoo_epoch_fraction=round(summary["scene_passes"] / ZOO_EPOCH_SCENES, 4),
                   objective=summary["objective"], loss_first=round(summary["loss_first"], 4),
                   loss_last=round(summary["loss_last"], 4))
        row["meets_goal"] = bool(row["meets_goal"] and row["scene_passes"] <= ZOO_EPOCH_SCENES)
        print(f"  repair ({row['variant']}): forget {digit}: IoU {row['forget_iou_before']:.3f} -> pruned "
              f"{row['forget_iou_pruned']:.3f} -> {row['forget_iou_after']:.3f}, retained mIoU "
              f"{row['retained_miou_before']:.3f} -> {row['retained_miou_after']:.3f} "
              f"(worst {row['worst_retained_digit']} -{row['worst_retained_drop_points']:.1f}), "
              f"{row['scene_passes']} scene-passes, {row['seconds']:.0f}s", flush=True)
        return row

    def config(self, settings: dict, digits: list[int], label: str) -> dict:
        rows = []
        for d in digits:
            rows.append(self.request(d, settings))
            r = rows[-1]
            print(f"  {label}: forget {d}: IoU {r['forget_iou_before']:.3f} -> {r['forget_iou_after']:.3f}, "
                  f"retained mIoU {r['retained_miou_before']:.3f} -> {r['retained_miou_after']:.3f}, "
                  f"-{r['removed_channels']} ch, {r['seconds']}s", flush=True)
        return summarise(settings, rows)


def summarise(settings: dict, rows: list[dict]) -> dict:
    return {
        "settings": {k: v for k, v in settings.items()},
        "rows": rows,
        "forget_iou_after_max": max(r["forget_iou_after"] for r in rows),
        "retained_drop_points_max": max(abs(r["retained_drop_points"]) for r in rows),
        "retained_drop_points_mean": round(sum(r["retained_drop_points"] for r in rows) / len(rows), 2),
        "removed_mean": round(sum(r["removed_channels"] for r in rows) / len(rows), 1),
        "meets_goal": all(r["meets_goal"] for r in rows),
    }


def _label(settings: dict) -> str:
    if not settings:
        return "defaults (sigma 4, delta 0.05, retain_delta = delta)"
    rd = settings.get("retain_delta")
    text = (f"sigma {settings.get('sigma', 4)}, delta {settings.get('delta', 0.05)}, "
            f"retain_delta {'= delta' if rd is None else rd}")
    rest = {k: v for k, v in settings.items() if k not in ("sigma", "delta", "retain_delta")}
    return text + "".join(f", {k}={v}" for k, v in rest.items())


def markdown(result: dict) -> str:
    base = result["base_iou"]
    lines = [f"# Forgetting digits from {NAME} (test split, {result['n_test']} scenes, no fine-tuning)", "",
             f"Weights: `{result['weights']}` (sha256 {result['sha256'][:12]}), {result['params']:,} params. "
             f"Test IoU before: " + ", ".join(f"{n} {v:.3f}" for n, v in base.items()) + ".", "",
             "Retained mIoU = mean IoU over the other nine digits (background not included; its IoU is the "
             "last columns). Goal: forget IoU <= 5 %, retained mIoU moves <= 2 points.", ""]
    for stage in result["stages"]:
        lines += [f"## {stage['title']}", ""]
        if stage.get("rows"):
            lines += ["| forget | IoU before | IoU after | retained mIoU before | after | drop (pts) | worst digit "
                      "(pts) | background before / after | channels removed | params after | s |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in stage["rows"]:
                lines.append(
                    f"| {r['digit']} | {100 * r['forget_iou_before']:.1f} % | {100 * r['forget_iou_after']:.1f} % | "
                    f"{100 * r['retained_miou_before']:.1f} | {100 * r['retained_miou_after']:.1f} | "
                    f"{r['retained_drop_points']:.2f} | {r['worst_retained_digit']} ({r['worst_retained_drop_points']:.1f}) | "
                    f"{100 * r['background_iou_before']:.1f} / {100 * r['background_iou_after']:.1f} | "
                    f"{r['removed_channels']} | {r['params_after']:,} | {r['seconds']} |")
            lines.append("")
        if stage.get("configs"):
            lines += ["| settings | digits | forget IoU max | retained drop max / mean (pts) | channels removed | "
                      "meets goal |", "|---|---|---|---|---|---|"]
            for c in stage["configs"]:
                lines.append(f"| {_label(c['settings'])} | {','.join(str(r['digit']) for r in c['rows'])} | "
                             f"{100 * c['forget_iou_after_max']:.1f} % | {c['retained_drop_points_max']:.2f} / "
                             f"{c['retained_drop_points_mean']:.2f} | {c['removed_mean']} | "
                             f"{'yes' if c['meets_goal'] else 'no'} |")
            lines.append("")
    lines += ["## Verdict", "", result["verdict"], ""]
    return "\n".join(lines)


def repair_markdown(result: dict) -> str:
    """The repair stage's tables: one per objective, one row per digit."""
    base = result["base_iou"]
    lines = [f"# Forgetting digits from {NAME}: pruning (library defaults) + repair (test split, "
             f"{result['n_test']} scenes)", "",
             f"Weights: `{result['weights']}` (sha256 {result['sha256'][:12]}), {result['params']:,} params. "
             "Test IoU before: " + ", ".join(f"{n} {v:.3f}" for n, v in base.items()) + ".", "",
             f"Repair: {result['epochs']} epoch(s) over `digits:{result['scenes']}` training scenes (the scenes "
             f"holding the forget digit included), lr {result['lr']}, batch 16, AdamW + cosine, norms frozen; "
             f"one zoo training epoch = {ZOO_EPOCH_SCENES} scene-passes. Retained mIoU = mean IoU over the other "
             "nine digits. Goal: forget IoU <= 5 %, retained mIoU within 2 points, <= 1 zoo epoch.", "",
             f"Command: `{result['command']}`", ""]
    for stage in result["stages"]:
        lines += [f"## {stage['title']}", "", "| forget | IoU before | pruned | repaired | retained mIoU before | "
                  "pruned | repaired | drop (pts) | worst digit (pts) | channels removed | scene-passes (zoo epochs) "
                  "| s (prune + repair) | meets goal |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in stage["rows"]:
            lines.append(
                f"| {r['digit']} | {100 * r['forget_iou_before']:.1f} % | {100 * r['forget_iou_pruned']:.1f} % | "
                f"{100 * r['forget_iou_after']:.1f} % | {100 * r['retained_miou_before']:.1f} | "
                f"{100 * r['retained_miou_pruned']:.1f} | {100 * r['retained_miou_after']:.1f} | "
                f"{r['retained_drop_points']:.2f} | {r['worst_retained_digit']} "
                f"({r['worst_retained_drop_points']:.1f}) | {r['removed_channels']} | "
                f"{r['scene_passes']} ({r['zoo_epoch_fraction']:.3f}) | "
                f"{r['prune_seconds']:.0f} + {r['repair_seconds']:.0f} | {'yes' if r['meets_goal'] else '**no**'} |")
        c = stage["summary"]
        lines += ["", f"Objective: `{json.dumps(stage['rows'][0]['objective'])}`. Forget IoU max "
                  f"{100 * c['forget_iou_after_max']:.1f} %, retained drop max {c['retained_drop_points_max']:.2f} "
                  f"pts (mean {c['retained_drop_points_mean']:.2f}); meets the goal for every digit listed: "
                  f"{'yes' if c['meets_goal'] else 'no'}.", ""]
    lines += ["## Verdict", "", result["verdict"], ""]
    return "\n".join(lines)


def repair_main(args: argparse.Namespace, bench: Bench, digits: list[int]) -> None:
    """``--repair``: the adapter's repair recipe (and ``--repair-variants``) on ``digits``."""
    import sys

    from tpunlearn.adapters.deeplabv3 import REPAIR_SCENES

    t0 = time.time()
    scenes = args.repair_scenes or REPAIR_SCENES
    variants = [] if args.variants_only else [None]
    variants += [v.strip() for v in args.repair_variants.split(";")] if args.repair_variants else []
    unknown = [v for v in variants if v is not None and v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {'; '.join(VARIANTS)}")
    stages = []
    for variant in variants:
        print(f"repair stage: {variant or 'adapter default'} on digits {digits}", flush=True)
        rows = [bench.repaired(d, variant, scenes, args.repair_lr, args.repair_epochs) for d in digits]
        stages.append({"title": f"Repair objective: {variant or 'the adapter default'}", "variant": variant,
                       "rows": rows, "summary": summarise({"variant": variant}, rows)})
    default = stages[0]["summary"]
    misses = [r["digit"] for r in stages[0]["rows"] if not r["meets_goal"]]
    what = "Pruning + the adapter's repair" + (f" ({stages[0]['variant']})" if stages[0]["variant"] else "")
    verdict = (f"{what} meets the goal for digits {digits}." if not misses else
               f"{what} misses the goal for digit(s) {misses} (of {digits}).")
    verdict += (f" Forget IoU max {100 * default['forget_iou_after_max']:.1f} %, retained drop max "
                f"{default['retained_drop_points_max']:.2f} pts, {stages[0]['rows'][0]['scene_passes']} scene-passes "
                f"per digit ({stages[0]['rows'][0]['zoo_epoch_fraction']:.3f} zoo epochs).")
    weights = Path(bench.info.weights)
    result = {
        "model": NAME, "weights": str(weights), "sha256": sha256(weights),
        "params": sum(p.numel() for p in bench.model.parameters()), "split": "test", "n_test": args.n_test,
        "digits": digits, "scenes": scenes, "lr": args.repair_lr, "epochs": args.repair_epochs,
        "zoo_epoch_scenes": ZOO_EPOCH_SCENES, "command": "python " + " ".join(sys.argv),
        "goal": {"forget_iou_max": GOAL_FORGET_IOU, "retained_miou_move_max_points": 100 * GOAL_RETAINED_DROP,
                 "scene_passes_max": ZOO_EPOCH_SCENES},
        "base_iou": {n: round(float(v), 4) for n, v in bench.base.items()},
        "stages": stages, "verdict": verdict, "seconds": round(time.time() - t0, 1), "torch": str(torch.__version__),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "forget_deeplabv3_repair" + (f"_{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(repair_markdown(result))
    print(verdict, flush=True)
    print(json.dumps({"verdict": verdict, "meets_goal": default["meets_goal"],
                      "forget_iou_after_max": default["forget_iou_after_max"],
                      "retained_drop_points_max": default["retained_drop_points_max"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the zoo's)")
    p.add_argument("--quick", action="store_true", help="digits 1, 3, 7 only, and a smaller search")
    p.add_argument("--digits", default=None, help="comma-separated forget digits (default all ten)")
    p.add_argument("--no-search", action="store_true", help="library defaults only")
    p.add_argument("--no-extras", action="store_true", help="search sigma/delta/retain_delta only")
    p.add_argument("--search-digits", default="1,3,7", help="digits the search runs on (default 1,3,7)")
    p.add_argument("--n-test", type=int, default=200, help="test scenes (default 200, the adapter's default)")
    p.add_argument("--scoring", default="digits", help="scoring data spec (default digits: 256 train scenes)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repair", action="store_true", help="pruning (defaults) + the family's repair, per digit")
    p.add_argument("--repair-scenes", type=int, default=None, help="repair training scenes (default: the "
                   "adapter's REPAIR_SCENES)")
    p.add_argument("--repair-lr", type=float, default=DEFAULT_REPAIR_LR, help=f"default {DEFAULT_REPAIR_LR}")
    p.add_argument("--repair-epochs", type=int, default=1)
    p.add_argument("--repair-variants", default=None, help="';'-separated names of VARIANTS to add as rows")
    p.add_argument("--variants-only", action="store_true", help="with --repair-variants: leave out the default")
    p.add_argument("--tag", default=None, help="suffix of the repair results' file names")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    bench = Bench(args.weights, args.n_test, args.scoring)
    weights = Path(bench.info.weights)
    digits = ([int(d) for d in args.digits.split(",")] if args.digits else
              [1, 3, 7] if args.quick else list(range(10)))
    search_digits = [int(d) for d in args.search_digits.split(",")]
    if args.repair:
        repair_main(args, bench, digits)
        return
    stages = []

    print("stage 1: library defaults", flush=True)
    default = bench.config({}, digits, "defaults")
    stages.append({"title": "Library defaults (sigma 4, delta 0.05, retain_delta = delta), one request per digit",
                   "rows": default["rows"], "configs": [default]})
    best = default if default["meets_goal"] else None
    if not default["meets_goal"] and not args.no_search:
        grid = QUICK_SEARCH if args.quick else SEARCH
        configs = []
        print(f"stage 2: search {grid} on digits {search_digits}", flush=True)
        for sigma, delta, rd in itertools.product(grid["sigma"], grid["delta"], grid["retain_delta"]):
            if rd is not None and rd == delta:
                continue
            settings = {"sigma": sigma, "delta": delta}
            if rd is not None:
                settings["retain_delta"] = rd
            configs.append(bench.config(settings, search_digits, _label(settings)))
        stages.append({"title": f"Search: sigma x delta x retain_delta on digits {search_digits}",
                       "configs": configs})
        extras = []
        if not args.no_extras:
            print(f"stage 2b: other knobs on digits {search_digits}", flush=True)
            for settings in EXTRAS:
                extras.append(bench.config(settings, search_digits, _label(settings)))
            stages.append({"title": f"Beyond the grid (other knobs; bench:* = not library settings) on digits "
                                    f"{search_digits}", "configs": extras})
        configs = configs + extras
        passing = sorted((c for c in configs if c["meets_goal"]),
                         key=lambda c: (any(k.startswith("bench:") for k in c["settings"]),
                                        c["retained_drop_points_max"], c["forget_iou_after_max"]))
        if not passing:  # none meets it: confirm the one closest to the goal
            passing = sorted(configs, key=lambda c: (max(0.0, c["forget_iou_after_max"] - GOAL_FORGET_IOU) * 100
                                                     + max(0.0, c["retained_drop_points_max"] - 100 * GOAL_RETAINED_DROP)))[:1]
        confirmed = []
        print(f"stage 3: the best {min(2, len(passing))} settings on digits {digits}", flush=True)
        for c in passing[:2]:
            confirmed.append(bench.config(c["settings"], digits, _label(c["settings"])))
        stages.append({"title": f"Best search settings on digits {digits}", "configs": confirmed,
                       "rows": confirmed[0]["rows"] if confirmed else []})
        ok = [c for c in confirmed if c["meets_goal"]]
        best = ok[0] if ok else None

    if default["meets_goal"]:
        verdict = f"The library defaults meet the goal for digits {digits}."
    elif best is not None:
        verdict = (f"The defaults miss the goal (forget IoU max {100 * default['forget_iou_after_max']:.1f} %, "
                   f"retained drop max {default['retained_drop_points_max']:.2f} pts); {_label(best['settings'])} "
                   f"meets it for digits {digits}.")
    else:
        verdict = (f"The defaults miss the goal (forget IoU max {100 * default['forget_iou_after_max']:.1f} %, "
                   f"retained drop max {default['retained_drop_points_max']:.2f} pts)"
                   + ("; no searched setting meets it for every digit." if not args.no_search else "; no search run."))
    result = {
        "model": NAME, "weights": str(weights), "sha256": sha256(weights),
        "params": sum(p.numel() for p in bench.model.parameters()), "split": "test", "n_test": args.n_test,
        "scoring": args.scoring, "digits": digits,
        "retained_miou": "mean IoU over the other nine digits, background excluded",
        "goal": {"forget_iou_max": GOAL_FORGET_IOU, "retained_miou_move_max_points": 100 * GOAL_RETAINED_DROP},
        "base_iou": {n: round(float(v), 4) for n, v in bench.base.items()},
        "stages": stages, "verdict": verdict, "seconds": round(time.time() - t0, 1),
        "torch": str(torch.__version__),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"forget_deeplabv3{suffix}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"forget_deeplabv3{suffix}.md").write_text(markdown(result))
    print(verdict, flush=True)
    summary = {"defaults": {k: default[k] for k in ("forget_iou_after_max", "retained_drop_points_max", "meets_goal")},
               "best": None if best is None else {"settings": best["settings"],
                                                  **{k: best[k] for k in ("forget_iou_after_max",
                                                                           "retained_drop_points_max", "meets_goal")}},
               "verdict": verdict}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
