#!/usr/bin/env python
"""Do the defaults hold beyond DigitScenes? ``tpunlearn prune`` with no flag beyond ``--forget``.

For each zoo model (two classifiers, two detectors, two segmenters; one of each trained on
DigitScenes by tpunlearn's loops, one on GlyphScenes by its library's own recipe) and each of
four forget targets, the benchmark runs, exactly as a user would::

    tpunlearn prune --arch MODEL --forget NAME --eval --out DIR

and reads the ``--eval`` metrics from ``DIR/report.json``. Every setting is the library's or
the model family's default. The DigitScenes models read their own data (``digits``: scoring
on the train split, evaluation on the 1000 test scenes); so does the GlyphScenes segmenter
(``glyphs``: 512 train scenes to score, the 1000 test scenes to evaluate). The GlyphScenes
classifier and detector get their data as a user's files, written once per run:
``--data tags.csv`` (1000 train scenes, and the 1000 test scenes as its ``test`` split) for
the classifier, ``--data data.yaml`` (512 train scenes,
and the 1000 test scenes as its ``val`` folder, which the yolov5 family evaluates) for the
detector. ``--data`` is the data, not a setting. Goals (issue 12, part 4):

* classification: forget recall <= 2 %, worst retained recall drop <= 2 points;
* detection: forget recall at conf 0.25 <= 2 %, every retained class's recall at conf 0.25
  within 3 points. Where pruning alone cannot reach it, the table shows what it reaches
  and what the repair (issue 13) gives there;
* segmentation: no goal in issue 12 ("state what it gives"); the table holds forget IoU before
  and after, the retained classes' mean IoU (background included) before and after and the
  worst retained class, judged against issue 13's goal (forget IoU <= 5 %, within 2 points).

    python benchmarks/bench_defaults.py            # 6 models x 4 targets (~30 min on 1 core)
    python benchmarks/bench_defaults.py --quick    # 2 targets per model (smoke run)
    python benchmarks/bench_defaults.py --models glyphscenes-resnet   # add one model's rows

Writes benchmarks/results/defaults{,_quick}.{json,md}; the last line printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# model -> (task, forget targets, data): targets spread over the classes (glyphs: two shapes, two letters);
# data None: the model's own (digits), else the GlyphScenes files written by glyph_data()
MODELS: dict[str, tuple[str, list[str], str | None]] = {
    "digitscenes-resnet": ("classification", ["3", "8", "1", "6"], None),
    "glyphscenes-resnet": ("classification", ["star", "R", "circle", "W"], "tags"),
    "digitscenes-yolov5": ("detection", ["3", "8", "1", "6"], None),
    "glyphscenes-yolov5": ("detection", ["star", "R", "circle", "W"], "yolo"),
    "digitscenes-deeplabv3": ("segmentation", ["3", "8", "1", "6"], None),
    "glyphscenes-deeplabv3": ("segmentation", ["star", "R", "circle", "W"], None),  # its own data: glyphs
}
METRIC = {"classification": "recall", "detection": "recall", "segmentation": "iou"}
SCENES = {"tags": {"train": 1000, "test": 1000}, "yolo": {"train": 512, "test": 1000}}
GOALS = {"classification": {"forget": 0.02, "drop": 0.02}, "detection": {"forget": 0.02, "drop": 0.03},
         "segmentation": {"forget": 0.05, "drop": 0.02}}  # segmentation: issue 13's goal, stated here
REPAIR = {  # what the repair (prune --repair-epochs, issue 13) measured where the defaults miss
    "detection": "a repair epoch (`--repair-epochs 1`), measured in results/repair_yolov5.md: on GlyphScenes it "
                 "still leaves one weakly learned class 6-17 points down per target, so the goal stays missed there",
    "segmentation": "a repair epoch (`--repair-epochs 1`), measured on digitscenes-deeplabv3 in "
                    "results/forget_deeplabv3_repair.md: forget IoU 0 % for every digit, retained mIoU within "
                    "1.6 points (not yet measured on the glyph segmenter)",
}
FINDINGS = """## Findings

* **Classification, DigitScenes: met** on all 4 targets with the timm family's defaults (sigma 4, delta 0.05,
  retain tolerance 0.1 of the retained targets, calibration on): forget recall 0, worst retained drop <= 0.9
  points.
* **Classification, GlyphScenes (glyphscenes-resnet): 3 of 4.** Forget recall 0 for all four; circle costs
  hexagon 8.3 points (2 classes beyond the goal). The library's tolerance 0, which met every DigitScenes
  target, forgot no GlyphScenes target (recall 0.41-0.94 after): its 23 retained classes share the last
  layers' channels. Swept with one graph build (sigma 4, delta 0.05; forget recall / worst retained drop):
  tolerance 0: 0.41-0.94 / <= 1.1; 0.1 without calibration: 0 / 2.8-93.5; 0.1 with calibration: 0 / 1.1-6.0
  (six targets: star, R, W, A within 1.2 points, hexagon 4.0, circle 6.0); 0.2 with calibration: 0 / 2.4-19.
  On DigitScenes 0.1 with calibration keeps the worst drop <= 0.9 points.
* **Detection, DigitScenes: met** on all 4 targets: the yolov5 family's defaults (sigma 12, delta 0.2, retain
  tolerance 0.3 of the retained classes) with its calibration (tpunlearn.calibrate, on by default: the retained
  classes' rows of the class branch's last conv refitted toward the original) keep every retained digit within
  1.6 points at conf 0.25. Pruning alone left 2-7 of 9 digits beyond the goal (results/calibrate.md has all ten
  digits both ways).
* **Detection, GlyphScenes: 1 of 4** (R). Every target is forgotten (recall 0 at conf 0.25), but one to six
  retained classes per target fall 3.5-17.8 points, mostly the classes this model finds weakly (pentagon,
  hexagon: precision 0.25-0.4 before). A tolerance sweep with calibration (0.1, 0.2, 0.3 of the retained
  classes) shows the trade-off: at 0.1 the worst retained drop is 1.2-4.1 points but the targets stay found
  (recall 0.76-0.87); at 0.2 three of four stay found (0.23-0.30); 0.3 is the smallest that forgets all four.
  The way past it is issue 13's repair (training the pruned model through ultralytics' trainer).
* **Segmentation, DigitScenes: what the defaults give** (issue 13 owns the goal): nothing is forgotten. The
  forgotten digit's IoU stays at 0.86-0.94 (0.88-0.93 before) while the other digits keep theirs (worst drop
  <= 1 point): with sigma 4 the digits share the last layers' channels, so little that is digit-specific is
  removed (16-24 channels).
* **Segmentation, GlyphScenes (glyphscenes-deeplabv3): nothing is forgotten, and the model is too weak to
  judge much by.** It is undertrained (torchvision's reference recipe for 27 minutes on one shared CPU core:
  test mIoU over the glyphs 0.19, background 0.97; R's IoU is 0.008 before, so "R forgotten" means nothing).
  With the defaults (sigma 4, delta 0.05, retain tolerance 0) star goes 0.212 -> 0.184 and W 0.167 -> 0.156
  (16 and 8 channels removed), each pushing two retained classes past 2 points (ring 2.6-2.8, the other of
  star and W by 2-2.8);
  circle (0.172) has no channel that only it selects, so nothing is removed (0 channels) and it is unchanged.
  The retained mean IoU (background included) moves by at most 0.6 points. A better-trained glyph segmenter
  (a GPU run of the digits model's budget) is needed before these rows say much about the defaults.
* **The yolov5 tolerance default is a fraction: 0.3 of the retained targets** (3 of DigitScenes' 9, 7 of
  GlyphScenes' 23), replacing the count 5 tuned on 10 classes. Measured without calibration at sigma 12,
  delta 0.2 (recall at conf 0.25; retained mean = mean recall of the other classes):

  | model | forget | count 5: forget | retained mean | beyond 3 pts | fraction 0.3: forget | retained mean | beyond |
  |---|---|---:|---:|---:|---:|---:|---:|
  | digitscenes-yolov5 | 3 | 0.000 | 0.189 | 9 of 9 | 0.000 | 0.924 | 2 of 9 |
  | digitscenes-yolov5 | 8 | 0.000 | 0.144 | 9 of 9 | 0.008 | 0.884 | 6 of 9 |
  | digitscenes-yolov5 | 1 | 0.000 | 0.406 | 8 of 9 | 0.000 | 0.867 | 7 of 9 |
  | digitscenes-yolov5 | 6 | 0.000 | 0.240 | 9 of 9 | 0.000 | 0.714 | 7 of 9 |
  | glyphscenes-yolov5 | star | 0.295 | 0.827 | 8 of 23 | 0.000 | 0.588 | 17 of 23 |
  | glyphscenes-yolov5 | R | 0.240 | 0.827 | 10 of 23 | 0.000 | 0.603 | 15 of 23 |
  | glyphscenes-yolov5 | circle | 0.000 | 0.760 | 12 of 23 | 0.000 | 0.460 | 19 of 23 |
  | glyphscenes-yolov5 | W | 0.235 | 0.883 | 9 of 23 | 0.000 | 0.593 | 21 of 23 |

  On GlyphScenes the count 5 is too strict for 23 retained classes (3 of 4 targets stay detected); the fraction
  forgets all 4, and calibration brings most of what it costs the retained classes back.
"""


def glyph_data(kind: str, root: Path) -> Path:
    """GlyphScenes (seed 0, 64 px) as a user's files: a tags CSV (the classifier is multi-label) or an
    ultralytics dataset YAML."""
    from tpunlearn.data.glyphscenes import GlyphScenes
    from tpunlearn.data.writers import write_tags_csv, write_yolo_dataset

    n = SCENES[kind]
    if kind == "tags":
        return write_tags_csv(root / "tags", {s: GlyphScenes(s, n_scenes=k) for s, k in n.items()})
    # the yolov5 family evaluates a YAML's val split: it holds GlyphScenes' test scenes
    return write_yolo_dataset(root / "yolo", {"train": GlyphScenes("train", n_scenes=n["train"]),
                                              "val": GlyphScenes("test", n_scenes=n["test"])})


def prune(model: str, target: str, workdir: Path, data: Path | None) -> dict[str, Any]:
    """One ``tpunlearn prune --arch model --forget target --eval [--data data]`` run; its report.json."""
    out = workdir / f"{model}-{target}"
    cmd = [str(Path(sys.executable).with_name("tpunlearn")), "prune", "--arch", model, "--forget", target,
           *(["--data", str(data)] if data else []), "--eval", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1"}
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    report["_wall_s"] = round(time.time() - t0, 1)
    return report


def row(model: str, task: str, target: str, report: dict[str, Any]) -> dict[str, Any]:
    """The per-target table row: forget recall, every retained class's drop, goal met or not."""
    m = METRIC[task]
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    drops = {c: round(before[c][m] - after[c][m], 4) for c in before if c != target}
    worst = max(drops, key=lambda c: drops[c])
    goal = GOALS[task]
    beyond = sorted(c for c, d in drops.items() if d > goal["drop"])
    forget_met = after[target][m] <= goal["forget"]
    return {
        "model": model, "task": task, "forget": target, "metric": m,
        "forget_recall_before": round(before[target][m], 4),
        "forget_recall_after": round(after[target][m], 4),
        "worst_retained": worst, "worst_before": round(before[worst][m], 4),
        "worst_after": round(after[worst][m], 4), "worst_drop": drops[worst],
        "retained_mean_before": round(sum(before[c][m] for c in drops) / len(drops), 4),
        "retained_mean_after": round(sum(after[c][m] for c in drops) / len(drops), 4),
        "n_retained": len(drops), "retained_beyond_goal": beyond,
        "forget_met": forget_met, "retained_met": not beyond, "met": forget_met and not beyond,
        "removed_channels": report["removed_channels"], "params_before": report["params"]["before"],
        "params_after": report["params"]["after"], "settings": {k: report["settings"][k] for k in (
            "sigma", "delta", "retain_delta", "retain_tolerance", "n_per_target", "align")},
        "operating_point": report["metrics"].get("operating_point"), "wall_s": report["_wall_s"],
    }


def markdown(rows: list[dict[str, Any]], quick: bool) -> str:
    """The per-target tables and a plain met / not met statement per model."""
    lines = ["# Defaults beyond DigitScenes: `tpunlearn prune --arch MODEL --forget NAME --eval`", "",
             "No flag beyond `--forget`: every setting is the library's or the model family's default. Metrics from "
             "`--eval` on the test scenes: the DigitScenes models read their own data (`digits`), and so does the "
             "GlyphScenes segmenter (`glyphs`); the GlyphScenes classifier and detector get GlyphScenes as a user's "
             "files (`--data tags.csv`, `--data data.yaml`); 1000 test scenes each. "
             "Goals: classification forget recall <= 2 %, worst retained drop <= 2 points; detection forget recall "
             "at conf 0.25 <= 2 %, every retained class's recall at conf 0.25 within 3 points; segmentation (issue "
             "13's goal, stated here) forget IoU <= 5 %, every retained IoU within 2 points."
             + (" Quick run (2 targets per model)." if quick else ""), ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        task, s = mine[0]["task"], mine[0]["settings"]
        met = sum(r["met"] for r in mine)
        unlearnt = [r["forget"] for r in mine if not learnt(r)]
        lines += [f"## `{model}` ({task}, {mine[0]['n_retained'] + 1} classes)", "",
                  f"Defaults used: sigma {s['sigma']}, delta {s['delta']}, retain_delta {s['retain_delta']}, "
                  f"retain_tolerance {s['retain_tolerance']}, samples {s['n_per_target']}, align {s['align']}.", "",
                  f"**Goal {'met' if met == len(mine) and not unlearnt else 'NOT met'}: {met} of {len(mine)} "
                  "targets" + (f" ({', '.join(unlearnt)} only because the model never learnt "
                               f"{'it' if len(unlearnt) == 1 else 'them'}: nothing to forget)" if unlearnt else "")
                  + ".**", "",
                  f"| forget | {mine[0].get('metric', 'recall')} before | after | worst retained | before | after "
                  "| drop | retained mean before "
                  "| after | retained beyond goal | channels removed | met |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|:---:|"]
        for r in mine:
            beyond = ", ".join(r["retained_beyond_goal"]) or "none"
            lines.append(f"| {r['forget']} | {r['forget_recall_before']:.3f} | {r['forget_recall_after']:.3f} | "
                         f"{r['worst_retained']} | {r['worst_before']:.3f} | {r['worst_after']:.3f} | "
                         f"{r['worst_drop']:.3f} | {r['retained_mean_before']:.3f} | {r['retained_mean_after']:.3f} "
                         f"| {len(r['retained_beyond_goal'])} of {r['n_retained']} ({beyond}) | "
                         f"{r['removed_channels']} | {verdict(r)} |")
        if task == "segmentation":
            lines += ["", segmentation_summary(mine)]
        if task in ("detection", "segmentation") and met < len(mine):
            lines += ["", f"Pruning alone does not reach the {task} goal here; the next step is {REPAIR[task]}."]
        lines.append("")
    return "\n".join(lines)


def learnt(r: dict[str, Any]) -> bool:
    """Whether the model knew the target before (its metric above the forget goal): else "forgotten" says
    nothing."""
    return r["forget_recall_before"] > GOALS[r["task"]]["forget"]


def verdict(r: dict[str, Any]) -> str:
    """The table's met column: yes, no, or yes qualified when the target was never learnt."""
    if not r["met"]:
        return "**no**"
    return "yes" if learnt(r) else "yes (never learnt)"


def segmentation_summary(rows: list[dict[str, Any]]) -> str:
    """What the defaults do to a segmenter, in one plain sentence per target."""
    said = [f"forget {r['forget']}: its IoU {r['forget_recall_before']:.3f} -> {r['forget_recall_after']:.3f}, "
            f"retained mean IoU {r['retained_mean_before']:.3f} -> {r['retained_mean_after']:.3f} "
            f"(drop {round(100 * (r['retained_mean_before'] - r['retained_mean_after']), 1) + 0.0:.1f} points), worst "
            f"retained "
            f"{r['worst_retained']} {r['worst_before']:.3f} -> {r['worst_after']:.3f}" for r in rows]
    forgotten = sum(r["forget_met"] and learnt(r) for r in rows)
    return (f"What the defaults give: {forgotten} of {sum(map(learnt, rows))} learnt targets forgotten "
            f"(IoU <= 5 %); "
            + "; ".join(said) + ".")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 forget targets per model (smoke run)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="only these models; the other models' rows of an earlier results file are kept")
    p.add_argument("--render", action="store_true", help="rewrite the markdown from the results JSON (no runs)")
    args = p.parse_args(argv)
    stem = "defaults_quick" if args.quick else "defaults"
    if args.render:
        rows = json.loads((RESULTS / f"{stem}.json").read_text())["rows"]
        (RESULTS / f"{stem}.md").write_text(markdown(rows, args.quick) + ("" if args.quick else "\n" + FINDINGS))
        return 0
    rows = []
    from tpunlearn import zoo

    untrained = [m for m in args.models if not zoo.weights_path(m).is_file()]
    for model in untrained:
        print(f"{model}: no checkpoint ({zoo.weights_path(model)}); left out", flush=True)
    with tempfile.TemporaryDirectory(prefix="tpunlearn-bench-defaults-") as tmp:
        files: dict[str, Path] = {}
        for model in [m for m in args.models if m not in untrained]:
            task, targets, kind = MODELS[model]
            if kind and kind not in files:
                files[kind] = glyph_data(kind, Path(tmp))
            for target in targets[:2] if args.quick else targets:
                r = row(model, task, target, prune(model, target, Path(tmp), files.get(kind) if kind else None))
                r["data"] = f"GlyphScenes as {files[kind].name} {SCENES[kind]}" if kind else "the model's own (digits)"
                print(f"{model:22s} forget {target:7s} {r['metric']} {r['forget_recall_before']:.3f} -> "
                      f"{r['forget_recall_after']:.3f}; worst retained {r['worst_retained']} drop "
                      f"{r['worst_drop']:.3f}; {len(r['retained_beyond_goal'])} beyond goal; "
                      f"{'met' if r['met'] else 'not met'} ({r['wall_s']:.0f}s)", flush=True)
                rows.append(r)
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / f"{stem}.json"
    if set(args.models) != set(MODELS) and previous.is_file():  # a partial run updates its models' rows only
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["model"] not in args.models]
        rows = sorted(kept + rows, key=lambda r: (list(MODELS).index(r["model"]),
                                                  MODELS[r["model"]][1].index(r["forget"])))
    summary = {"goals": GOALS, "models": {m: {"met": sum(r["met"] for r in rows if r["model"] == m),
                                              "targets": sum(r["model"] == m for r in rows)}
                                          for m in dict.fromkeys(r["model"] for r in rows)}}
    (RESULTS / f"{stem}.json").write_text(json.dumps({**summary, "rows": rows}, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(rows, args.quick) + ("" if args.quick else "\n" + FINDINGS))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
