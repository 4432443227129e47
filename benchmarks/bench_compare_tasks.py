"""One forget setting each for segmentation and detection, method against method, with the
forget target's region probes beside the output metrics.

``digitscenes-deeplabv3`` (forget digit 3; IoU) runs the original, fine-tuning, SSD and the
graph variants, plus the setting that forgets the digit completely with and without a
repair epoch. ``digitscenes-yolov5`` (forget digit 3; recall at the deployment confidence 0.25)
runs the graph variants, the family's calibrated library defaults beside the prune-only row, and a
repair row: fine-tuning and SSD need the detection loss outside ultralytics' trainer, which rebuilds
the network (see DESIGN.md section 6). Both add one ``+ erase(M)`` row per erase method the family
runs (``adapter.erase_methods()``) after the library-defaults request. There is no retrained
reference for either (the DeepLab zoo recipe needs a GPU; YOLO's takes ~10 minutes a run).

Every row also gets the region probes of issue 14 (:func:`tpunlearn.privacy.region_checks`): a linear
and a k-NN probe for "this region is digit 3" against the other digits' regions, refitted on that
row's own features (the adapter's ``probe_layer``: DeepLab's ASPP output ``classifier.0`` pooled over
mask pixels, YOLO's P3 neck output pooled over boxes) of the same seeded training scenes. Repair rows go
through ``adapter.repair`` (adapters/base.py), so they measure whatever repair the family has; a family
that refuses (UsageError) gets a "not available" row.

    python benchmarks/bench_compare_tasks.py [--task segmentation|detection|both] [--quick]
    python benchmarks/bench_compare_tasks.py --from-json benchmarks/results/compare_tasks.json  # re-render the page
    python benchmarks/bench_compare_tasks.py --rows "erase(" --stem compare_tasks_erase  # the Original and some rows

Writes benchmarks/results/compare_tasks.{json,md} (``--quick``: compare_tasks_quick.*); the last line
printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import tpunlearn as tu
from tpunlearn import zoo
from tpunlearn.errors import TpunlearnError, UsageError
from tpunlearn.io import atomic_path
from tpunlearn.models import load_model
from tpunlearn.privacy import region_checks
from tpunlearn.report import count_macs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unlearning_methods import SSD, FineTune, Graph, Original, Outcome, Task  # noqa: E402

FORGET_DIGIT = 3
REPAIR_DATA = "digits:1000"  # repairs stay cheap: one epoch on at most 1,000 training scenes
PROBE_SEED = 0


@dataclass(frozen=True)
class Scale:
    """Scene counts: the full run, or ``--quick`` for a smoke run."""

    score: str  # scoring samples
    evaluate: str  # held-out scenes the output metrics read
    probe: str  # training scenes the region probes read (the same for every row)
    repair: str  # training scenes of fine-tuning, SSD and repair


FULL = {"segmentation": Scale("digits", "digits:200", "digits:300", REPAIR_DATA),
        "detection": Scale("digits", "digits", "digits:300", REPAIR_DATA)}
QUICK = {"segmentation": Scale("digits:48", "digits:40", "digits:80", "digits:64"),
         "detection": Scale("digits:48", "digits:100", "digits:80", "digits:64")}


class GraphRepair:
    """tpunlearn's request, then one repair through the family's own ``adapter.repair`` (the shared
    interface), so the row measures the repair the family ships; a refusal is kept as the reason."""

    def __init__(self, name: str, adapter: Any, info: Any, spec: str, epochs: int = 1, lr: float = 1e-4,
                 **settings: Any) -> None:
        self.name, self.adapter, self.info, self.spec = name, adapter, info, spec
        self.epochs, self.lr, self.settings = epochs, lr, settings

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        assert task.scoring is not None
        t0 = time.perf_counter()
        res = tu.unlearn(task.model, task.scoring(seed), forget, example_inputs=task.example_inputs, progress=False,
                         **{**task.unlearn_kwargs, **self.settings})
        assert res is not None
        info: dict[str, Any] = {"request_s": time.perf_counter() - t0,
                                "removed_channels": res.report["removed_channels"], "plan": res.plan}
        t1 = time.perf_counter()
        try:
            self.stage(res, task, forget, seed, info)
        except UsageError as exc:
            info["not_available"] = str(exc)
        info[f"{self.kind}_s"] = time.perf_counter() - t1
        return Outcome(res.model, time.perf_counter() - t0, info)

    kind = "repair"

    def stage(self, res: Any, task: Task, forget: Sequence[int], seed: int, info: dict[str, Any]) -> None:
        """The stage after the request, on the pruned model in place (its summary under ``info[kind]``)."""
        info["repair"] = self.adapter.repair(res.model, self.info, self.spec, forget, original=task.model,
                                             epochs=self.epochs, lr=self.lr, plan=res.plan, seed=seed, progress=False)


class GraphErase(GraphRepair):
    """tpunlearn's request, then the family's erase stage (``adapter.erase(..., method=...)``, what
    ``prune --erase METHOD`` runs) on ``spec``'s training scenes; a refusal is kept as the reason."""

    def __init__(self, name: str, adapter: Any, info: Any, spec: str, method: str, **settings: Any) -> None:
        super().__init__(name, adapter, info, spec, **settings)
        self.method = method

    kind = "erase"

    def stage(self, res: Any, task: Task, forget: Sequence[int], seed: int, info: dict[str, Any]) -> None:
        info["erase"] = self.adapter.erase(res.model, self.info, self.spec, forget, original=task.model,
                                           method=self.method, plan=res.plan, seed=seed, progress=False)


def erase_rows(adapter: Any, info: Any, spec: str, **settings: Any) -> list[GraphErase]:
    """One ``base + erase(M)`` row per erase method the family runs."""
    return [GraphErase(f"  + erase({m}) ({spec})", adapter, info, spec, m, **settings)
            for m in adapter.erase_methods()]


def library_calibration(adapter: Any, model: Any, info: Any) -> dict[str, Any]:
    """``{"calibrate": spec}`` when the family calibrates by default (as ``prune`` does), else ``{}``."""
    spec = adapter.calibration(model, info) if adapter.calibrates else None
    return {"calibrate": spec} if spec is not None else {}


def segmentation(scale: Scale) -> tuple[Task, Callable[[Any], dict[str, float]], list[Any], Any, Any]:
    a, model, info = zoo.build_model("digitscenes-deeplabv3")
    from tpunlearn.data.voc import MaskFilter

    def batches(forget: Sequence[int], kind: str, seed: int):
        everything = a.mask_batches(info, scale.repair, "train", 16)
        if kind == "all":
            return everything
        if kind == "retain":  # scenes without the forget digit (the family's repair data now keeps them)
            return MaskFilter(everything, forget)
        return MaskFilter(everything, forget, holding=True)

    task = Task(name="digitscenes-deeplabv3", model=model, example_inputs=a.example_inputs(info),
                loss=a.repair_loss(info), batches=batches, scoring=lambda seed: a.samples(model, info, scale.score),
                unlearn_kwargs={"target": a.target_factory(info), "ignored_layers": a.ignored_layers(model, info),
                                "output_transform": a.output_transform, "num_targets": 11})

    def evaluate(m):
        return a.segmentation_metrics(m, info, scale.evaluate)["iou"]

    forgets: dict[str, Any] = {"sigma": 8, "delta": 0.2, "retain_delta": 0.02}
    defaults = library_calibration(a, model, info)
    methods = [Original(), FineTune(epochs=1, lr=1e-3), SSD(),
               Graph("Last layer only (sigma 1)", sigma=1), Graph("Graph without balance", balanced=False),
               Graph("Graph(beta), mask", mode="mask"),
               Graph("Graph(beta), physical (library defaults)", **defaults),
               GraphRepair(f"  + adapter.repair, the family's recipe (1 epoch, lr 0.001, {scale.repair})", a, info,
                           scale.repair, lr=1e-3, **defaults),
               *erase_rows(a, info, scale.repair, **defaults),
               Graph("Graph(beta), physical, sigma 8, delta 0.2, retain delta 0.02", **forgets),
               GraphRepair(f"  + adapter.repair (1 epoch, lr 0.001, {scale.repair})", a, info, scale.repair, lr=1e-3,
                           **forgets)]
    return task, evaluate, methods, a, info


def detection(scale: Scale) -> tuple[Task, Callable[[Any], dict[str, float]], list[Any], Any, Any]:
    a, model, info = load_model("digitscenes-yolov5")
    task = Task(name="digitscenes-yolov5", model=model, example_inputs=a.example_inputs(info), loss=None,  # type: ignore[arg-type]
                batches=None,  # type: ignore[arg-type]
                scoring=lambda seed: a.samples(model, info, scale.score),
                unlearn_kwargs={"target": a.target_factory(info), "ignored_layers": a.ignored_layers(model, info),
                                "output_transform": a.output_transform, "num_targets": len(info.class_names),
                                **a.defaults})

    def evaluate(m):
        return {k: v["recall"] for k, v in a.evaluate(m, info, scale.evaluate, conf=0.25).per_target.items()}

    calibrated = library_calibration(a, model, info)
    methods = [Original(), Graph("Last layer only (sigma 1)", sigma=1), Graph("Graph without balance", balanced=False),
               Graph("Graph(beta), mask", mode="mask"),
               Graph("Graph(beta), physical, prune only (yolov5 family settings, no calibration)"),
               Graph("Graph(beta), physical, calibrated (library defaults)", **calibrated),
               GraphRepair(f"  + adapter.repair (1 epoch, lr 1e-4, {scale.repair})", a, info, scale.repair, lr=1e-4,
                           **calibrated),
               *erase_rows(a, info, scale.repair, **calibrated)]
    return task, evaluate, methods, a, info


def probe_layers(adapter: Any, model: Any, info: Any) -> dict[str, str]:
    """The feature layers the region probes read: the adapter's ``probe_layer`` (``neck``) and the
    input of the class-logit conv (``head_input``: the module before the first of the family's
    calibration layers in its Sequential), the feature the forgotten class's score is read from."""
    layers = {}
    neck = adapter.probe_layer(model, info)
    if neck is not None:
        layers["neck"] = neck
    spec = adapter.calibration(model, info)
    if spec is not None:
        parent, _, index = spec.layers[0].rpartition(".")
        if index.isdigit() and int(index) > 0 and f"{parent}.{int(index) - 1}" in dict(model.named_modules()):
            layers["head_input"] = f"{parent}.{int(index) - 1}"
    return layers


def probes(layers: dict[str, str], model: Any, regions: Any, forget: Sequence[int]) -> dict[str, Any]:
    """The forget target's region probes on ``model``'s own features at each of ``layers`` (refitted),
    or why they could not run."""
    out: dict[str, Any] = {}
    for key, layer in layers.items():
        try:
            res = region_checks(model, layer, regions, forget, seed=PROBE_SEED)
        except TpunlearnError as exc:
            out[key] = {"layer": layer, "not_run": str(exc)}
            continue
        first = next(iter(res.values()))
        out[key] = {"layer": layer, "linear_auc": res["linear_probe_auc"].value, "knn_auc": res["knn_probe_auc"].value,
                    "n": first.n, "features": first.detail.get("features"), "k": res["knn_probe_auc"].detail.get("k")}
    return out


def row(task: Task, evaluate: Callable[[Any], dict[str, float]], base: dict[str, float], outcome: Outcome,
        name: str) -> dict[str, Any]:
    """The output metrics of one method's model against the original's ``base``."""
    m = evaluate(outcome.model)
    others = [d for d in (str(i) for i in range(10)) if d != name and d in base]
    drops = {d: base[d] - m[d] for d in others}
    worst = max(drops, key=lambda d: drops[d])
    return {"forget": m[name], "forget_before": base[name],
            "retained_mean": sum(m[d] for d in others) / len(others),
            "retained_mean_before": sum(base[d] for d in others) / len(others),
            "worst_retained_digit": worst, "worst_retained_drop_points": 100 * drops[worst],
            "seconds": outcome.seconds, "params": sum(p.numel() for p in outcome.model.parameters()),
            "macs": count_macs(outcome.model, task.example_inputs)}


def run(kind: str, scale: Scale, rows: Sequence[str] = ()) -> dict[str, Any]:
    """Every method of one task (``rows``: only those whose name holds one of them, and the Original):
    output metrics, region probes and cost per row."""
    task, evaluate, methods, adapter, info = segmentation(scale) if kind == "segmentation" else detection(scale)
    if rows:
        methods = [m for m in methods if m.name == "Original" or any(r in m.name for r in rows)]
    forget = [FORGET_DIGIT + 1] if kind == "segmentation" else [FORGET_DIGIT]  # DeepLab's class 0 is background
    name = str(FORGET_DIGIT)
    regions = adapter.region_batches(task.model, info, scale.probe)  # the same seeded scenes for every row
    layers = probe_layers(adapter, task.model, info)
    base = evaluate(task.model)
    rows: dict[str, Any] = {}
    for method in methods:
        outcome = method(task, forget, 0)
        if "not_available" in outcome.info:
            rows[method.name] = {"not_available": outcome.info["not_available"], "seconds": outcome.seconds}
            print(f"{kind}: {method.name:60s} not available: {outcome.info['not_available']}", flush=True)
            continue
        r = rows[method.name] = row(task, evaluate, base, outcome, name)
        if "repair" in outcome.info:
            r["repair"] = {k: v for k, v in outcome.info["repair"].items() if isinstance(v, (int, float, str))}
            r["repair_s"] = outcome.info["repair_s"]
        if "erase" in outcome.info:
            r["erase"] = {k: v for k, v in outcome.info["erase"].items() if isinstance(v, (int, float, str))}
            r["erase_s"] = outcome.info["erase_s"]
        if "calibration" in getattr(outcome, "info", {}).get("timings_s", {}):
            r["calibration_s"] = outcome.info["timings_s"]["calibration"]
        plan = outcome.info.get("plan")
        if plan is not None:
            r["changed_layers"] = {k: len(v) for k, v in plan.removed.items()}
        r["probes"] = probes(layers, outcome.model, regions, forget)
        shown = probe_line(r["probes"])
        print(f"{kind}: {method.name:60s} forget {100 * r['forget']:5.1f} % | "
              f"retained mean {100 * r['retained_mean']:5.1f} | "
              f"worst -{r['worst_retained_drop_points']:.1f} ({r['worst_retained_digit']}) | "
              f"{shown} | "
              f"{r['seconds']:.1f}s", flush=True)
        del outcome
    return {"task": task.name, "metric": "IoU" if kind == "segmentation" else "recall at conf 0.25", "forget": name,
            "scale": scale.__dict__, "probe_layers": layers,
            "regions": "mask pixels" if kind == "segmentation" else "boxes", "rows": rows}


PROBE_NAMES = {"neck": "neck", "head_input": "head input"}


def _auc(p: dict[str, Any], key: str) -> str:
    return f"{p[key]:.3f}" if key in p else "n/a"


def table(res: dict[str, Any]) -> list[str]:
    """One task's table: output metrics, then the refitted region probes per layer (linear / k-NN AUC)."""
    metric, layers = res["metric"], res["probe_layers"]
    heads = " | ".join(f"{PROBE_NAMES.get(k, k)} `{v}` linear / k-NN AUC" for k, v in layers.items())
    lines = [f"| method | forget {metric} % | retained mean % | worst retained drop (pts) | {heads} | seconds | "
             "params | MACs |", "|---" * (7 + len(layers)) + "|"]
    for name, r in res["rows"].items():
        if "not_available" in r:
            lines.append(f"| {name} | not available: {r['not_available']} |" + " |" * (5 + len(layers)))
            continue
        aucs = " | ".join(f"{_auc(r['probes'].get(k, {}), 'linear_auc')} / {_auc(r['probes'].get(k, {}), 'knn_auc')}"
                          for k in layers)
        lines.append(f"| {name} | {100 * r['forget']:.1f} | {100 * r['retained_mean']:.1f} | "
                     f"{r['worst_retained_drop_points']:.1f} ({r['worst_retained_digit']}) | {aucs} | "
                     f"{r['seconds']:.1f} | {r['params']:,} | {r['macs']:,} |")
    return lines


def erase_summary(res: dict[str, Any]) -> list[str]:
    """Per erase row: the method, its steps, the weights it touched and its own seconds."""
    out = []
    for name, r in res["rows"].items():
        e = r.get("erase")
        if e:
            out.append(f"{name.strip()}: {e.get('steps', 0)} steps, {e.get('weights_touched', 0):,} of "
                       f"{e.get('weights_total', 0):,} weights touched, {r.get('erase_s', 0.0):.1f} s")
    return out


def _pair(p: dict[str, Any]) -> str:
    return f"{_auc(p, 'linear_auc')}/{_auc(p, 'knn_auc')}"


def probe_line(probes: dict[str, dict[str, Any]]) -> str:
    """The progress line's probes: each layer's linear/k-NN AUC, "n/a" for a probe that did not fit."""
    return " ".join(f"{k} lin/knn {_pair(p)}" for k, p in probes.items())


def carried(res: dict[str, Any], margin: float = 0.05) -> list[str]:
    """The rows whose output forgets the digit (metric at most 5 %) while a refitted probe still
    finds it within ``margin`` AUC of the original's, with their linear/k-NN AUCs per layer."""
    rows = res["rows"]
    original = rows["Original"]["probes"]
    out = []
    for name, r in rows.items():
        if name == "Original" or "forget" not in r or r["forget"] > 0.05:
            continue
        near = [k for layer, p in r["probes"].items() for k in ("linear_auc", "knn_auc")
                if k in p and k in original.get(layer, {}) and original[layer][k] - p[k] <= margin]
        if near:
            out.append(f"{name.strip()} (" + ", ".join(f"{PROBE_NAMES.get(layer, layer)} {_pair(p)}"
                                                        for layer, p in r["probes"].items()) + ")")
    return out


def unchanged(res: dict[str, Any]) -> list[str]:
    """Rows whose probe AUCs at a layer equal the original's exactly where the original's are below 1
    (unsaturated): that layer's features are the original's, every change lies downstream of it."""
    rows = res["rows"]
    original = rows["Original"]["probes"]
    out = []
    for layer in res["probe_layers"]:
        base = [original.get(layer, {}).get(k) for k in ("linear_auc", "knn_auc")]
        if None in base or min(base) >= 0.999:
            continue
        same = [n.strip() for n, r in rows.items() if n != "Original" and "probes" in r
                and [r["probes"].get(layer, {}).get(k) for k in ("linear_auc", "knn_auc")] == base]
        if same:
            out.append(f"`{res['probe_layers'][layer]}` ({PROBE_NAMES.get(layer, layer)}): " + ", ".join(same))
    return out


def saturated(res: dict[str, Any]) -> list[str]:
    """The layers where every row's probes reach at least 0.99: the probe cannot rank the rows there."""
    rows = [r for r in res["rows"].values() if "probes" in r]
    return [f"`{v}`" for k, v in res["probe_layers"].items()
            if all(r["probes"].get(k, {}).get(a, 0.0) >= 0.99 for r in rows for a in ("linear_auc", "knn_auc"))]


INTRO = [
    "Output metrics on DigitScenes' test split; region probes (issue 14, `tpunlearn.privacy.region_checks`) on "
    "training scenes: a linear (logistic regression) and a k-NN probe for \"this region is digit 3\" against the "
    "other digits' regions, on a feature map pooled over each region, refitted on each row's own features, fitted "
    "on half the images and scored on the other half (seeded: the same scenes and split for every row). Two layers "
    "per model: the adapter's `probe_layer` (neck) and the input of the class-logit 1x1 conv (head input: the "
    "feature the forgotten class's score is read from). AUC 0.5: the features do not tell the digit apart; the "
    "Original row is the level of a model that still knows it.", "",
    "**No retrained reference** exists for either model: the DeepLab zoo recipe needs a GPU and YOLO's takes "
    "~10 minutes a run on this machine, so the probes are compared with the original only, not with the level "
    "a model that never learnt digit 3 would reach (it still sees digit-3 pixels, so that level need not be 0.5).",
    "",
    "The library-defaults rows run what `tpunlearn prune` runs: the yolov5 family calibrates its class outputs by "
    "default (`adapter.calibrates`, `tpunlearn/calibrate.py`), deeplabv3 does not. Repair rows call the family's "
    "`adapter.repair(model, info, spec, forget, original=..., epochs=1, lr=..., plan=...)`, so they measure "
    "whatever repair the family ships when the run is made (a family that refuses gets a \"not available\" row).",
    "",
    "Erase rows (`+ erase(M)`, issue 14) run the library-defaults request, then the family's erase stage "
    "`adapter.erase(model, info, spec, forget, original=..., method=M, plan=...)`, what `tpunlearn prune --erase M` "
    "runs, with the family's own budget: DeepLab's three methods per pixel (`tpunlearn.erase`, task "
    "`segmentation`), yolov5's `project` (class branch, box cells) and `distill` (the family's repair in "
    "ultralytics' trainer with the `negatives+distil` objective, one epoch, then the forget rows silenced). Their "
    "seconds include the request; what each erase changed is listed under the table. Budgets: DeepLab `distill` and "
    "`salun` 100 steps of 16 scenes at lr 1e-3, `project` 1 direction out of the last two convolutions; yolov5 "
    "`project` 2 directions out of the class branch's last two convolutions per scale, `distill` one epoch at lr "
    "1e-4. On yolov5 `erase(distill)` runs the trainer, objective, data and learning rate of the repair row beside "
    "it, so the two rows coincide (the row shows that `--erase` runs it; only its time differs, machine load).",
    ""]


def markdown(results: list[dict[str, Any]], command: str, seconds: float) -> str:
    """The results page: per task the table, which layers the probes read, and what they found."""
    lines = ["# Segmentation and detection: one forget setting each (digit 3, no fine-tuning unless said)", "",
             f"Made by `{command}` in {seconds / 60:.1f} min on CPU (OMP_NUM_THREADS=1, a shared 2-core machine).",
             "", *INTRO]
    for res in results:
        s = res["scale"]
        layers = ", ".join(f"{PROBE_NAMES.get(k, k)} `{v}`" for k, v in res["probe_layers"].items())
        lines += [f"## {res['task']} ({res['metric']}, DigitScenes test split)", "",
                  f"Probes read {layers}, pooled over {res['regions']} ({s['probe']} training scenes); scoring "
                  f"`{s['score']}`, evaluation `{s['evaluate']}`, fine-tuning / SSD / repair `{s['repair']}` "
                  "(kept cheap: one epoch).", ""]
        lines += table(res) + [""]
        erased = erase_summary(res)
        if erased:
            lines += ["Erase stages: " + "; ".join(erased) + ".", ""]
        still = carried(res)
        original = res["rows"]["Original"]["probes"]
        if still:
            lines.append("**The features still carry the forgotten digit** where the output no longer shows it "
                         "(forget metric <= 5 % and a probe AUC within 0.05 of the original's, which reads "
                         + ", ".join(f"{PROBE_NAMES.get(k, k)} {_pair(p)}" for k, p in original.items())
                         + " linear/k-NN): " + "; ".join(still) + ".")
        else:
            lines.append("No row that forgets the digit at the output (forget metric <= 5 %) keeps a probe AUC "
                         "within 0.05 of the original's.")
        flat = saturated(res)
        if flat:
            lines += ["", f"At {', '.join(flat)} every row's probes reach 0.99 or more: the forgotten digit's regions "
                      "stay separable from the other digits' there whatever the method, so these probes cannot rank "
                      "the methods; only a retrained reference would say whether that is more than a model that "
                      "never learnt the digit keeps."]
        same = unchanged(res)
        if same:
            lines += ["", "Probe AUCs identical to the original's to the last digit (below 1, so not saturation: "
                      "those rows left that layer's features as they were, every change lies downstream of it): "
                      + "; ".join(same) + "."]
        missing = [f"{n.strip()}: {r['not_available']}" for n, r in res["rows"].items() if "not_available" in r]
        if missing:
            lines += ["", "Not available on this code: " + "; ".join(missing) + "."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--task", choices=("segmentation", "detection", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="fewer scenes everywhere: a smoke run, not a result")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default="", help="comma-separated name parts: run only those rows (and the Original)")
    p.add_argument("--stem", default=None, help="results file stem (default: compare_tasks, or compare_tasks_quick)")
    p.add_argument("--from-json", type=Path, help="re-render the markdown of an earlier run's JSON (no model runs)")
    args = p.parse_args()
    if args.from_json is not None:
        done = json.loads(args.from_json.read_text())
        with atomic_path(args.from_json.with_suffix(".md")) as tmp:
            tmp.write_text(markdown(done["results"], done["command"], done["seconds"]))
        return
    torch.set_num_threads(args.threads)
    t0 = time.time()
    kinds = ["segmentation", "detection"] if args.task == "both" else [args.task]
    scales = QUICK if args.quick else FULL
    rows = [r for r in args.rows.split(",") if r]
    results = [run(k, scales[k], rows) for k in kinds]
    seconds = time.time() - t0
    stem = args.stem or ("compare_tasks_quick" if args.quick else "compare_tasks")
    command = "python benchmarks/bench_compare_tasks.py" + "".join(f" {a}" for a in sys.argv[1:])
    for path, text in ((args.out / f"{stem}.json", json.dumps({"command": command, "results": results,
                                                                "seconds": round(seconds, 1)}, indent=1, default=str)),
                       (args.out / f"{stem}.md", markdown(results, command, seconds))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    print(json.dumps({r["task"]: {n: {"forget": round(v["forget"], 3),
                                      **{k: p.get("linear_auc") for k, p in v["probes"].items()}}
                                  if "forget" in v else "not available" for n, v in r["rows"].items()}
                      for r in results}))


if __name__ == "__main__":
    main()
