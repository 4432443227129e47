"""Table III / Table V on DigitScenes (or GlyphScenes): tpunlearn against retraining, fine-tuning, SSD and SalUn.

For each forget setting (single digits over several seeds, and two digits at once) every
method of ``unlearning_methods.classification_methods()`` unlearns the zoo classifier
``digitscenes-resnet`` (``--model glyphscenes-resnet``: the GlyphScenes classifier, 24 classes,
forget classes by name or index; no instance-level retrain rows there, see MODELS); then, on the
same data:

* forget recall (test split) and the retained digits' mean recall and worst drop;
* the entropy membership attack (``tpunlearn.privacy.mia_score``: members = retained
  training scenes, non-members = test scenes; score = forget training scenes called
  members) and its gap to the retrained model of the same setting;
* a linear probe for "holds the forget digit" on the penultimate features: fitted on the
  original model (``fixed``: read in the original basis; physically pruned features are put
  back at their original indices) and refitted on the unlearned model (``refit``), as ROC AUC;
* wall time, parameters and MACs.

It also times the graph build for all ten digits and one cached request, so that
retraining's cost is a ratio measured in the same run.

The target-level reference (``Retrain, target-level``: the zoo recipe with the forget digit's
label masked out of the loss, every scene kept; scripts/train_reference.py) is what issue 14's
goals are judged against, per setting: forget recall <= 2 %, worst retained drop <= 2 points,
refitted probe AUC <= the reference's + 0.03, MIA within 5 points of the reference's, and total
cost (graph build + request + erase) <= 5 % of one reference training. A reference checkpoint
already under the cache folder (same forget digits, seed and budget) is loaded and its recorded
training seconds are its cost; otherwise it is trained in this run and cached (``--no-train-reference``:
the setting gets no reference row and says so; ``--reference-wait M`` / ``--reference-until HH:MM``: wait
for one that a background job is still training, then the same; ``--resume``: a later run keeps the rows
already in the results file and measures only the missing ones, e.g. a reference row whose checkpoint
landed since).

    python benchmarks/bench_compare.py [--quick] [--digits 1,3,7] [--seeds 0,1,2] [--retrain-seeds 1]
        [--methods SUBSTR,...] [--reference-epochs 10 --reference-scenes 24000] [--stem compare]
    python benchmarks/bench_compare.py --model glyphscenes-resnet --forget star,circle,W [--pairs star+W]
        [--no-train-reference] [--reference-wait 30 | --reference-until 20:05] [--resume] [--members 6000]

Writes benchmarks/results/STEM.{json,md} (after every setting, so a run cut short keeps what it
measured); the last line printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

import tpunlearn as tu
from tpunlearn import data, zoo
from tpunlearn.api import score_targets
from tpunlearn.errors import UsageError
from tpunlearn.evaluate import multilabel_recall
from tpunlearn.plan import PrunePlan
from tpunlearn.privacy import LinearProbe, entropy, expand_features, head_layer, membership_attack, outputs_and_features
from tpunlearn.report import count_macs

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from unlearning_methods import ERASE_ROWS, Graph, Outcome, Task, classification_methods  # noqa: E402

NAME = "digitscenes-resnet"  # the default model


@dataclass(frozen=True)
class ModelSpec:
    """What differs between the zoo classifiers this table runs on."""

    dataset: str  # the page's name of the data
    noun: str  # what a target is called on the page ("digit", "class") ...
    plural: str  # ... and several of them
    forget: str  # default single-target settings
    quick: str  # --quick's one setting
    pairs: str  # default multi-target settings
    splits: Callable[[dict[str, Any], int | None, int | None], tuple[Any, Any]]  # (zoo meta, members, test) ->
    retrain: bool  # an instance-level retrain recipe exists (train_zoo's exclude=)
    val: Callable[[dict[str, Any]], Any]  # zoo meta -> validation scenes (never trained on: the erase guard's)


def digit_splits(meta: dict[str, Any], members: int | None, n_test: int | None) -> tuple[Any, Any]:
    """The first 6000 (``members``) of the zoo model's 24000 DigitScenes training scenes, and the test split."""
    return data.digitscenes("train", n_scenes=members), data.digitscenes("test", n_scenes=n_test)


def digit_val(meta: dict[str, Any]) -> Any:
    """2000 DigitScenes validation scenes: what the features erase's retained guard reads."""
    return data.digitscenes("val", n_scenes=GUARD_SCENES)


def glyph_val(meta: dict[str, Any]) -> Any:
    """2000 GlyphScenes validation scenes (the zoo model's seed): the features erase's guard."""
    from tpunlearn.data.glyphscenes import GlyphScenes

    return GlyphScenes("val", size=64, n_scenes=GUARD_SCENES, seed=int(meta.get("train", {}).get("seed", 0)))


def glyph_splits(meta: dict[str, Any], members: int | None, n_test: int | None) -> tuple[Any, Any]:
    """The first 6000 (``members``) of the zoo model's GlyphScenes training scenes (zoo_glyphs trains on
    ``GlyphScenes("train", size=64, n_scenes=24000, seed)``; scene i depends on (seed, split, i) alone, so
    these are scenes it trained on) and the test split it reports on (1000 scenes)."""
    from tpunlearn.data.glyphscenes import GlyphScenes

    seed = int(meta.get("train", {}).get("seed", 0))
    n_train = int(meta.get("train", {}).get("n_train", 24000))
    members = 6000 if members is None else members
    if members > n_train:
        raise UsageError(f"--members {members}: the zoo model trained on only {n_train} scenes")
    return GlyphScenes("train", size=64, n_scenes=members, seed=seed), GlyphScenes("test", size=64, n_scenes=n_test)


MODELS = {
    "digitscenes-resnet": ModelSpec("DigitScenes", "digit", "digits", "1,3,7", "3", "3+8", digit_splits, True,
                                    digit_val),
    # no retrain rows: zoo_glyphs' recipe only masks labels (the reference), it cannot drop the forget scenes
    "glyphscenes-resnet": ModelSpec("GlyphScenes", "class", "classes", "star,circle,W", "star", "", glyph_splits,
                                    False, glyph_val),
}


POLL_S = 30.0  # how often a waiting run looks for a reference checkpoint
GUARD_SCENES = 2000  # validation scenes the features erase's guard reads (tpunlearn.erase.GUARD_SAMPLES: 2048)


class MissingReference(RuntimeError):
    """No cached target-level reference for a setting, and this run does not train one."""


# ---------------------------------------------------------------------------- the task
def reference_model(forget: Sequence[int], seed: int, epochs: int, scenes: int, name: str = NAME,
                    train: bool = True, wait_s: float = 0.0) -> tuple[nn.Module, float]:
    """The target-level reference of ``forget`` (loaded when cached, else trained and cached) and the
    seconds its training took (recorded in the checkpoint). ``wait_s``: how long to wait for a cached one
    (another job training it) before training, or, with ``train=False``, raising MissingReference."""
    from train_reference import default_path, train_reference, write

    path = default_path(name, list(forget), seed, epochs, scenes)
    deadline = time.monotonic() + wait_s
    if not path.is_file() and wait_s > 0:
        print(f"  waiting up to {wait_s / 60:.0f} min for {path}", flush=True)
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    if not path.is_file():
        if not train:
            raise MissingReference(f"no cached reference {path} ({epochs} epochs on {scenes} scenes, seed {seed}); "
                                   "not training one here (--no-train-reference)")
        write(train_reference(name, list(forget), seed, epochs, scenes), path)
    model, meta = zoo.load(name, weights=path)
    return model.eval(), float(meta["train"]["reference"]["seconds"])


def classification_task(retrain_epochs: int, retrain_scenes: int, reference_epochs: int = 10,
                        reference_scenes: int = 24000, name: str = NAME, train_reference: bool = True,
                        reference_wait_s: float = 0.0, members: int | None = None,
                        n_test: int | None = None, reference_until: float | None = None) -> tuple[Task, Any, Any]:
    """The Task of zoo classifier ``name`` with its member (training) scenes and its test scenes.
    ``reference_until`` (a ``time.time()``) replaces ``reference_wait_s`` by a deadline for all settings."""
    model, meta = zoo.load(name)
    model.eval()
    spec = MODELS[name]
    train, test = spec.splits(meta, members, n_test)  # members: scenes the zoo model trained on
    x = test[0][0][None]

    def batches(forget: Sequence[int], kind: str, seed: int):
        holds = train.multi_hot[:, list(forget)].sum(1) > 0
        keep = {"forget": holds, "retain": ~holds, "all": torch.ones_like(holds)}[kind]
        return data.loader(Subset(train, keep.nonzero().flatten().tolist()), batch_size=64, shuffle=True, seed=seed)

    def scoring(seed: int):
        return data.loader(train, batch_size=32, shuffle=True, seed=seed)

    def retrain(forget: Sequence[int], seed: int) -> nn.Module:
        from train_zoo import train_digitscenes_resnet

        ckpt = train_digitscenes_resnet(name, retrain_epochs, seed, retrain_scenes, 3e-3, 128, exclude=tuple(forget))
        fresh = zoo.build(name)
        state = ckpt["state_dict"]
        fresh.load_state_dict({k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()})
        return fresh.eval()

    def loss(out: torch.Tensor, batch: Any) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out, batch[1].float())

    def reference(forget: Sequence[int], seed: int) -> tuple[nn.Module, float]:
        wait = reference_wait_s if reference_until is None else max(0.0, reference_until - time.time())
        return reference_model(forget, 0, reference_epochs, reference_scenes, name, train_reference,
                               wait)  # one reference (seed 0) per setting

    task = Task(name=name, model=model, example_inputs=x, loss=loss, batches=batches,
                unlearn_kwargs={"ignored_layers": [model.fc]}, scoring=scoring,
                retrain=retrain if spec.retrain else None, reference=reference,
                guard=data.loader(spec.val(meta), batch_size=128))
    return task, train, test


def family_methods(name: str) -> list[Any]:
    """Rows with ``tpunlearn prune``'s own defaults for ``name``'s family (``adapter.defaults`` over the
    library's, and the family's calibration when it calibrates by default): the Graph row, then every
    erase row on top of it. The Graph rows above use the library's defaults (``tu.unlearn`` as called)."""
    adapter, model, info = zoo.build_model(name)
    calibration = adapter.calibration(model, info) if adapter.calibrates else None
    settings = {**adapter.defaults, "calibrate": calibration}
    said = [f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
            for k, v in adapter.defaults.items()] + (["calibrated"] if calibration is not None else [])
    label = f"prune's {adapter.name} defaults"
    return [Graph(f"Graph(beta), physical, {label} ({', '.join(said) or 'the library own'})", **settings),
            *(Graph(f"Graph(beta), {label} + erase({method})", erase=spec, **settings)
              for method, spec in ERASE_ROWS.items())]


# ---------------------------------------------------------------------------- measuring
# More attacks and probes slot in here: each hook gets (train logits, train features, test logits, test
# features, train labels, test labels, forget, seed) and returns {metric: value} for the row: SalUn's
# confidence SVM attack (MIA-efficacy) and the refitted k-NN probe, from tpunlearn.privacy.


def svm_mia_hook(tr_logits: torch.Tensor, tr_feats: torch.Tensor, te_logits: torch.Tensor, te_feats: torch.Tensor,
                 tr_labels: torch.Tensor, te_labels: torch.Tensor, forget: Sequence[int],
                 seed: int) -> dict[str, float]:
    """MIA-efficacy: the share of the forget digit's training scenes the confidence SVM calls non-members."""
    from tpunlearn.privacy import holds_any, svm_mia

    holds = holds_any(tr_labels, forget)
    result = svm_mia((tr_logits[~holds], tr_labels[~holds]), (te_logits, te_labels),
                     (tr_logits[holds], tr_labels[holds]), multilabel=True, seed=seed)
    return {"svm_mia_efficacy": result.value}


def knn_probe_hook(tr_logits: torch.Tensor, tr_feats: torch.Tensor, te_logits: torch.Tensor, te_feats: torch.Tensor,
                   tr_labels: torch.Tensor, te_labels: torch.Tensor, forget: Sequence[int],
                   seed: int) -> dict[str, float]:
    """The k-NN probe for the forget digit, refitted on the row's own penultimate features."""
    from tpunlearn.privacy import KNNProbe, holds_any

    probe = KNNProbe.fit(tr_feats, holds_any(tr_labels, forget))
    return {"knn_probe_auc": probe.auc(te_feats, holds_any(te_labels, forget))}


PRIVACY_HOOKS: list[Callable[..., dict[str, float]]] = [svm_mia_hook, knn_probe_hook]


def logits_and_features(model: nn.Module, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    logits, feats, _labels = outputs_and_features(model, data.loader(dataset, batch_size=250))
    return logits, feats


def original_basis(outcome: Outcome, task: Task, feats: torch.Tensor, test: Any = None) -> torch.Tensor | None:
    """Physically pruned features put back at the original's indices (zeros where removed).

    The kept indices come from the plan's mask-mode twin, which computes the same features
    with zeros in the removed channels (physical == mask is checked by every request). ``test``: the
    scenes to match them on (default DigitScenes' test split).
    """
    width = head_layer(task.model).in_features
    if feats.shape[1] == width:
        return feats
    plan: PrunePlan | None = outcome.info.get("plan")
    if plan is None:
        return None
    twin = PrunePlan.from_dict({**plan.to_dict(), "mode": "mask", "history": []})
    masked = twin.apply(copy.deepcopy(task.model), task.example_inputs)
    test = data.digitscenes("test") if test is None else test
    images = Subset(test, list(range(min(256, len(test)))))  # real scenes: few channels are dead on all
    pruned_model = outcome.info.get("pre_repair_model", outcome.model)
    _, a = logits_and_features(masked, images)
    _, b = logits_and_features(pruned_model, images)
    kept = [int((a - b[:, j:j + 1]).abs().amax(0).argmin()) for j in range(b.shape[1])]
    if len(set(kept)) != len(kept):
        return None  # ambiguous (identical feature columns): no fixed probe rather than a wrong one
    return expand_features(feats, width, removed=set(range(width)) - set(kept))


def measure(outcome: Outcome, task: Task, train: Any, test: Any, forget: list[int], base: dict[str, Any],
            seed: int) -> dict[str, Any]:
    model = outcome.model
    tr_logits, tr_feats = logits_and_features(model, train)
    te_logits, te_feats = logits_and_features(model, test)
    recall = multilabel_recall(te_logits, test.multi_hot)
    others = [d for d in range(test.multi_hot.shape[1]) if d not in forget]  # the model's class count
    drops = {d: float(base["recall"][d] - recall[d]) for d in others}
    worst = max(drops, key=drops.get)
    # membership attack (SSD's): entropy feature, members = retained train, non-members = test
    holds = train.multi_hot[:, forget].sum(1) > 0
    e_train = entropy(tr_logits)
    mia = membership_attack(e_train[~holds], entropy(te_logits), e_train[holds], seed).score
    # probe for the first forget digit
    target = forget[0]
    probe = base["probe"]
    fixed_test = original_basis(outcome, task, te_feats, test)
    probe_fixed = probe.auc(fixed_test, test.multi_hot) if fixed_test is not None else float("nan")
    probe_refit = LinearProbe.fit(tr_feats, train.multi_hot, target, seed=seed).auc(te_feats, test.multi_hot)
    extra: dict[str, float] = {}
    for hook in PRIVACY_HOOKS:
        extra.update(hook(tr_logits, tr_feats, te_logits, te_feats, train.multi_hot, test.multi_hot, forget, seed))
    return {
        **extra,
        "forget_recall": max(float(recall[t]) for t in forget),
        "retained_recall_mean": float(recall[others].mean()),
        "worst_retained_digit": worst,
        "worst_retained_drop_points": 100 * drops[worst],
        "mia": mia,
        "probe_auc_fixed": probe_fixed,
        "probe_auc_refit": probe_refit,
        "seconds": outcome.seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, task.example_inputs),
        **({"removed_channels": outcome.info["removed_channels"]} if "removed_channels" in outcome.info else {}),
        **({"ssd_importance_s": outcome.info["importance_s"]} if "importance_s" in outcome.info else {}),
        **({"request_s": outcome.info["request_s"]} if "request_s" in outcome.info else {}),
        **({"erase_s": outcome.info["erase_s"], "erase": outcome.info["erase"]} if "erase_s" in outcome.info else {}),
    }


def baseline(task: Task, train: Any, test: Any, forget: list[int], seed: int) -> dict[str, Any]:
    _, tr_feats = logits_and_features(task.model, train)
    te_logits, _ = logits_and_features(task.model, test)
    return {"recall": multilabel_recall(te_logits, test.multi_hot),
            "probe": LinearProbe.fit(tr_feats, train.multi_hot, forget[0], seed=seed)}


# ---------------------------------------------------------------------------- the run
def run_setting(task: Task, train: Any, test: Any, methods: list[Any], forget: list[int], seed: int,
                retrain: bool, notes: list[str] | None = None,
                done: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every method's row for one setting. Retrain rows run only with ``retrain`` and a task recipe; a
    missing reference (MissingReference) leaves its row out with a line in ``notes``; the rows in ``done``
    (an earlier run's, ``--resume``) are kept as they are, not measured again."""
    done = dict(done or {})
    base: dict[str, Any] | None = None
    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        if method.name in done:
            rows[method.name] = done.pop(method.name)
            continue
        if method.name.startswith(("Retrain without", "Train from")) and not (retrain and task.retrain):
            continue
        base = base or baseline(task, train, test, forget, seed)
        try:
            outcome = method(task, forget, seed)
        except MissingReference as e:
            print(f"  forget {forget} seed {seed} | {method.name}: SKIPPED: {e}", flush=True)
            if notes is not None:
                notes.append(f"{method.name}: skipped, {e}")
            continue
        rows[method.name] = measure(outcome, task, train, test, forget, base, seed)
        r = rows[method.name]
        print(f"  forget {forget} seed {seed} | {method.name:45s} forget {100 * r['forget_recall']:5.1f} % | "
              f"retained mean {100 * r['retained_recall_mean']:5.1f} worst -{r['worst_retained_drop_points']:.1f} "
              f"({r['worst_retained_digit']}) | MIA {100 * r['mia']:5.1f} | probe fixed {r['probe_auc_fixed']:.3f} "
              f"refit {r['probe_auc_refit']:.3f} | {r['seconds']:.1f}s", flush=True)
    rows.update(done)  # an earlier run's rows of methods not asked for this time
    retrained = next((r for n, r in rows.items() if n.startswith("Retrain without")), None)
    reference = next((r for n, r in rows.items() if n.startswith("Retrain, target-level")), None)
    for r in rows.values():
        r["mia_gap_to_retrain_points"] = (100 * abs(r["mia"] - retrained["mia"])) if retrained else None
        r["mia_gap_to_reference_points"] = (100 * abs(r["mia"] - reference["mia"])) if reference else None
    return rows


GOALS = {"forget_recall": 0.02, "worst_drop_points": 2.0, "probe_over_reference": 0.03, "mia_gap_points": 5.0,
         "cost_fraction": 0.05}  # issue 14's goals per setting


def judge(rows: dict[str, dict[str, Any]], graph_build_s: float) -> None:
    """Issue 14's goals per row against the setting's target-level reference (in place: ``goals`` and
    ``cost_fraction_of_reference``, the graph build + request + erase over one reference training)."""
    reference = next((r for n, r in rows.items() if n.startswith("Retrain, target-level")), None)
    if reference is None:
        return
    for name, r in rows.items():
        if "request_s" in r:
            r["cost_fraction_of_reference"] = (graph_build_s + r["seconds"]) / reference["seconds"]
        elif name != "Original" and not name.startswith(("Retrain", "Train from")):
            r["cost_fraction_of_reference"] = r["seconds"] / reference["seconds"]
        frac = r.get("cost_fraction_of_reference")
        r["goals"] = {
            "forget": r["forget_recall"] <= GOALS["forget_recall"],
            "retained": r["worst_retained_drop_points"] <= GOALS["worst_drop_points"],
            "probe": r["probe_auc_refit"] <= reference["probe_auc_refit"] + GOALS["probe_over_reference"],
            "mia": r["mia_gap_to_reference_points"] <= GOALS["mia_gap_points"],
            "svm_mia": _svm_within(r, reference),
            "cost": None if frac is None else frac <= GOALS["cost_fraction"],
        }


def _svm_within(row: dict[str, Any], reference: dict[str, Any]) -> bool | None:
    """SalUn's MIA-efficacy within the MIA goal's points of the reference's (None: not measured)."""
    a, b = row.get("svm_mia_efficacy"), reference.get("svm_mia_efficacy")
    if a is None or b is None:
        return None
    return 100 * abs(a - b) <= GOALS["mia_gap_points"]


def cost(task: Task) -> dict[str, float]:
    """The graph build for all targets (ten digits, 24 glyph classes) and one cached request, timed in this run."""
    t0 = time.perf_counter()
    scores = score_targets(task.model, task.scoring(0), example_inputs=task.example_inputs,
                           ignored_layers=[task.model.fc], progress=False)
    graph_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tu.unlearn(task.model, None, [3], example_inputs=task.example_inputs, scores=scores, progress=False,
               ignored_layers=[task.model.fc])
    return {"graph_build_s": graph_s, "request_s": time.perf_counter() - t0}


def summarise(settings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and std over settings, per method and metric."""
    names = list(dict.fromkeys(n for s in settings for n in s["rows"]))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = [s["rows"][name] for s in settings if name in s["rows"]]
        keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out[name] = {"n": len(rows)}
        for k in keys:
            vals = [float(r[k]) for r in rows if r.get(k) is not None and not math.isnan(float(r[k]))]
            if vals:
                out[name][k] = {"mean": statistics.fmean(vals),
                                "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}
    return out


def _pm(stat: dict[str, float] | None, scale: float = 1.0, digits: int = 1) -> str:
    if not stat:
        return "n/a"
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def _opt(row: dict[str, Any], key: str, scale: float, digits: int) -> str:
    """A row's optional metric (an older run's rows lack the SVM attack and the k-NN probe)."""
    value = row.get(key)
    return "n/a" if value is None else f"{scale * float(value):.{digits}f}"


def _measured(value: Any) -> float | None:
    """A cost in seconds, or None where it was not measured (None, or NaN in an older run's JSON)."""
    return None if value is None or math.isnan(float(value)) else float(value)


def cost_sentence(result: dict[str, Any]) -> str:
    """The page's cost line: what this run measured, each retraining row as seconds and as a ratio to
    the graph build plus one request, and "not run" for a retraining row the run left out."""
    c, spec = result["cost"], _spec(result)
    n = len(result.get("class_names", range(10)))
    ours = c["graph_build_s"] + c["request_s"]
    parts = []
    for label, key, note in (("retraining without the forget scenes", "retrain_s", ""),
                             ("one target-level reference", "reference_s", result.get("reference_note", ""))):
        seconds = _measured(c.get(key))
        text = f"{label}: not run" if seconds is None else \
            f"{label} {seconds:.0f} s on average = **{seconds / ours:.0f}x** the graph build plus request"
        parts.append(text + (f" ({note})" if note and seconds is not None else ""))
    return (f"Cost, measured in this run: graph build for all {n} {spec.plural} {c['graph_build_s']:.2f} s, one cached "
            f"request {c['request_s']:.3f} s; " + "; ".join(parts) + ".")


def _spec(result: dict[str, Any]) -> ModelSpec:
    return MODELS[result.get("model", NAME)]


def _summary_lines(result: dict[str, Any]) -> list[str]:
    """The page's title, the mean ± std table, the cost line and the command."""
    name, spec = result.get("model", NAME), _spec(result)
    noun = spec.noun
    lines = [f"# Unlearning methods on {name} ({spec.dataset} test split)", "",
             f"Settings: {', '.join(result['setting_labels'])}. Mean ± std over settings (retraining: "
             f"{result['retrain_note']}). No fine-tuning unless the row says so. MIA = % of the forget {noun}'s "
             "training scenes the entropy attack calls members (SSD's attack); gap = |MIA - retrained MIA|. "
             f"Probe = ROC AUC of a linear probe for the (first) forget {noun} on penultimate features: "
             "*fixed* = fitted on the original model, *refit* = fitted on the unlearned one (0.5 = chance).", "",
             "| method | forget recall % | retained mean % | worst retained drop (pts) | MIA % | MIA gap (pts) | "
             "probe fixed | probe refit | seconds | params | MACs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, s in result["summary"].items():
        lines.append(f"| {method} | {_pm(s.get('forget_recall'), 100)} | {_pm(s.get('retained_recall_mean'), 100)} | "
                     f"{_pm(s.get('worst_retained_drop_points'))} | {_pm(s.get('mia'), 100)} | "
                     f"{_pm(s.get('mia_gap_to_retrain_points'))} | {_pm(s.get('probe_auc_fixed'), 1, 3)} | "
                     f"{_pm(s.get('probe_auc_refit'), 1, 3)} | {_pm(s.get('seconds'), 1, 2)} | "
                     f"{s['params']['mean']:,.0f} | {s['macs']['mean']:,.0f} |")
    lines += ["", cost_sentence(result), "", *_commands(result), ""]
    return lines


def _commands(result: dict[str, Any]) -> list[str]:
    runs = result.get("runs")
    if not runs:
        return [f"Command: `python benchmarks/bench_compare.py {' '.join(result.get('argv', []))}`"]
    return ["Commands (each later `--resume` run kept the rows already measured and measured only the missing "
            "ones, with the same data and seeds; the cost line's graph build and request are the first run's): "
            + "; ".join(f"`python benchmarks/bench_compare.py {shlex.join(a)}`" for a in runs)]


def _setting_lines(result: dict[str, Any]) -> list[str]:
    """The per-setting table with each row's goals against the setting's reference, and any skipped rows."""
    plural = _spec(result).plural
    names = result.get("class_names") or [str(d) for d in range(10)]
    lines = ["## Per setting", "", "Goals (issue 14) against the setting's target-level reference: forget <= 2 %, "
             "worst drop <= 2 points, probe refit <= reference + 0.03, MIA and SVM MIA (svm_mia) each within 5 points "
             "of the reference's, cost "
             f"(graph build for all {plural} + request + erase, or the method's own time) <= 5 % of one reference "
             "training. Missed goals are named; a dash means no reference in that setting.", "",
             "SVM MIA = SalUn's MIA-efficacy (% of the forget scenes the confidence SVM calls non-members); "
             "k-NN = the refitted k-NN probe's AUC on the same features.", "",
             "| setting | method | forget % | worst drop (pts) | MIA % | MIA gap to ref (pts) | SVM MIA % | "
             "probe fixed | probe refit | k-NN | seconds | cost / reference | goals missed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["settings"]:
        for method, r in s["rows"].items():
            gap = r.get("mia_gap_to_reference_points")
            frac = r.get("cost_fraction_of_reference")
            goals = r.get("goals")
            missed = "-" if goals is None else (", ".join(k for k, v in goals.items() if v is False) or "none")
            lines.append(f"| {s['label']} | {method} | {100 * r['forget_recall']:.1f} | "
                         f"{r['worst_retained_drop_points']:.1f} ({names[int(r['worst_retained_digit'])]}) | "
                         f"{100 * r['mia']:.1f} | "
                         f"{'n/a' if gap is None else f'{gap:.1f}'} | {_opt(r, 'svm_mia_efficacy', 100, 1)} | "
                         f"{r['probe_auc_fixed']:.3f} | {r['probe_auc_refit']:.3f} | "
                         f"{_opt(r, 'knn_probe_auc', 1, 3)} | "
                         f"{r['seconds']:.1f} | "
                         f"{'n/a' if frac is None else f'{100 * frac:.2f} %'} | {missed} |")
    skipped = [f"- {s['label']}: {note}" for s in result["settings"] for note in s.get("notes", [])]
    if skipped:
        lines += ["", "Not measured:", "", *skipped]
    return lines


def markdown(result: dict[str, Any]) -> str:
    return "\n".join(_summary_lines(result) + _setting_lines(result)) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default=NAME, help=f"zoo classifier (default {NAME})")
    p.add_argument("--quick", action="store_true",
                   help="digit 3 (glyphs: star), seed 0, a 1-epoch retrain on 6000 scenes, a 1-epoch reference on 3000")
    p.add_argument("--forget", "--digits", dest="forget", default=None,
                   help="forget settings: class names or indices, settings joined by commas, a multi-target setting "
                   "by + (default: digits 1,3,7; glyphs star,circle,W)")
    p.add_argument("--seeds", default="0,1,2", help="seeds per single-target setting (default 0,1,2)")
    p.add_argument("--pairs", default=None, help="more multi-target settings, e.g. 3+8 (default: digits 3+8, glyphs "
                   "none; '' for none); these and --forget's A+B run at the first seed only")
    p.add_argument("--retrain-seeds", type=int, default=1,
                   help="retrain only for the first N seeds of each setting (default 1: retraining costs minutes)")
    p.add_argument("--repair-epochs", type=int, default=1)
    p.add_argument("--retrain-epochs", type=int, default=5,
                   help="retraining budget (default 5 epochs; the zoo model had 10)")
    p.add_argument("--retrain-scenes", type=int, default=12000,
                   help="training scenes before the forget ones are dropped (default 12000; the zoo model had 24000)")
    p.add_argument("--reference-epochs", type=int, default=None, help="target-level reference budget (default: the "
                   "zoo's, 10 epochs for digits, 12 for glyphs)")
    p.add_argument("--reference-scenes", type=int, default=None, help="its training scenes (default: the zoo's 24000)")
    p.add_argument("--no-train-reference", action="store_true",
                   help="never train a reference here: a setting without a cached one gets no reference row")
    p.add_argument("--reference-wait", type=float, default=0.0, metavar="MINUTES",
                   help="wait up to this long for a cached reference still being trained elsewhere (implies "
                   "--no-train-reference)")
    p.add_argument("--reference-until", default=None, metavar="HH:MM",
                   help="wait for a missing cached reference until this UTC clock time instead (implies "
                   "--no-train-reference)")
    p.add_argument("--members", type=int, default=None, help="member (training) scenes measured (default 6000)")
    p.add_argument("--test-scenes", type=int, default=None, help="test scenes measured (default 1000)")
    p.add_argument("--family-rows", action="store_true",
                   help="also the rows with `tpunlearn prune`'s defaults for the model's family (timm: retain "
                   "tolerance 0.1 and calibration), alone and under every erase method")
    p.add_argument("--methods", default="", help="only the rows whose name contains one of these comma-separated "
                   "strings (default: every row)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in the results file (same settings' labels) and measure only the "
                   "missing ones, e.g. a reference row whose checkpoint landed later; the cost line stays the first "
                   "run's")
    p.add_argument("--remeasure", default="", help="with --resume: measure again the kept rows whose name contains "
                   "one of these comma-separated strings (e.g. an erase method that changed since)")
    p.add_argument("--stem", default=None, help="results file stem (default compare, or compare_quick)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--threads", type=int, default=2)
    return settle_args(p, p.parse_args(argv), argv)


def settle_args(p: argparse.ArgumentParser, args: argparse.Namespace,
                argv: Sequence[str] | None) -> argparse.Namespace:
    """The model's defaults where options were left out, the reference policy and the settings plan."""
    spec = MODELS[args.model]
    from train_reference import FULL

    args.reference_epochs = args.reference_epochs or FULL[args.model]["epochs"]
    args.reference_scenes = args.reference_scenes or FULL[args.model]["n_train"]
    if args.quick:
        args.forget, args.seeds, args.pairs = spec.quick, "0", ""
        args.reference_epochs, args.reference_scenes = 1, 3000
    args.forget = spec.forget if args.forget is None else args.forget
    args.pairs = spec.pairs if args.pairs is None else args.pairs
    if args.reference_until:
        try:
            args.reference_until = time.time() + 60 * minutes_until(args.reference_until)  # a wall-clock deadline
        except ValueError:
            p.error(f"--reference-until {args.reference_until!r}: use HH:MM (UTC)")
    args.no_train_reference = args.no_train_reference or args.reference_wait > 0 or bool(args.reference_until)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.plan = setting_plan(args.forget, args.pairs, [int(x) for x in args.seeds.split(",")],
                                 list(zoo.entry(args.model).class_names))
    except (UsageError, ValueError) as e:
        p.error(str(e))
    return args


def minutes_until(clock: str, now: datetime.datetime | None = None) -> float:
    """Minutes from ``now`` (UTC) to the next ``HH:MM`` UTC (0 when it is that minute)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    hh, mm = (int(x) for x in clock.split(":"))
    then = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if then < now - datetime.timedelta(minutes=1):
        then += datetime.timedelta(days=1)
    return max(0.0, (then - now).total_seconds() / 60)


def parse_targets(text: str, names: list[str]) -> list[int]:
    """``"3"``, ``"star"``, ``"star+W"`` or ``"6+22"`` as class indices (names exactly as the zoo spells them)."""
    out = []
    for t in text.split("+"):
        t = t.strip()
        if t.isdigit() and int(t) < len(names):
            out.append(int(t))
        elif t in names:
            out.append(names.index(t))
        else:
            raise UsageError(f"unknown forget class {t!r}: use an index 0..{len(names) - 1} or one of "
                             f"{', '.join(names)}")
    return out


def setting_plan(forget: str, pairs: str, seeds: list[int], names: list[str]) -> list[tuple[list[int], int]]:
    """(forget targets, seed) per setting: single targets at every seed, multi-target ones at the first."""
    singles = [parse_targets(t, names) for t in forget.split(",") if t]
    multis = [parse_targets(t, names) for t in pairs.split(",") if t]
    plan = [(f, s) for f in singles if len(f) == 1 for s in seeds]
    return plan + [(f, seeds[0]) for f in [*(f for f in singles if len(f) > 1), *multis]]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    retrain_epochs, retrain_scenes = (1, 6000) if args.quick else (args.retrain_epochs, args.retrain_scenes)
    t_start = time.time()
    try:
        task, train, test = classification_task(retrain_epochs, retrain_scenes, args.reference_epochs,
                                                args.reference_scenes, args.model, not args.no_train_reference,
                                                60 * args.reference_wait, args.members, args.test_scenes,
                                                args.reference_until or None)
    except UsageError as e:
        raise SystemExit(f"error: {e}") from None
    names = list(zoo.entry(args.model).class_names)
    wanted = [w for w in args.methods.split(",") if w]
    methods = classification_methods(args.repair_epochs)
    if args.family_rows:
        methods[-1:-1] = family_methods(args.model)  # before the reference, which stays last
    methods = [m for m in methods if not wanted or any(w in m.name for w in wanted)]
    seeds = [int(s) for s in args.seeds.split(",")]
    stem = args.stem or ("compare_quick" if args.quick else "compare")
    prior = resumed(args, args.out / f"{stem}.json")
    c = dict(prior["cost"]) if prior else cost(task)  # first: every setting's goals need the graph build time
    earlier = {s["label"]: s for s in prior["settings"]} if prior else {}
    settings: list[dict[str, Any]] = []
    for forget, seed in args.plan:
        label = f"forget {'+'.join(names[t] for t in forget)}, seed {seed}"
        print(label, flush=True)
        notes: list[str] = []
        rows = run_setting(task, train, test, methods, forget, seed, retrain=seeds.index(seed) < args.retrain_seeds,
                           notes=notes, done=earlier.pop(label, {}).get("rows"))
        judge(rows, c["graph_build_s"])
        settings.append({"label": label, "forget": forget, "seed": seed, "rows": rows,
                         **({"notes": notes} if notes else {})})
        result = collect([*earlier.values(), *settings], c, args, retrain_epochs, retrain_scenes, t_start)
        if prior:
            result["runs"] = [*prior.get("runs", [prior["argv"]]), result["argv"]]
        write_results(result, args.out, stem)
    graph = result["summary"].get("Graph(beta), physical (ours)", {})
    print(json.dumps({"graph_physical": {k: graph.get(k) for k in ("forget_recall", "worst_retained_drop_points")},
                      "retrain_over_graph_plus_request": c["retrain_over_graph_plus_request"]}))


def resumed(args: argparse.Namespace, path: Path) -> dict[str, Any] | None:
    """With ``--resume``, the earlier results at ``path`` (same model and reference budget) whose rows this
    run keeps; None without it or when there are none."""
    if not args.resume or not path.is_file():
        return None
    prior = json.loads(path.read_text())
    again = [w for w in args.remeasure.split(",") if w]
    for setting in prior["settings"]:
        setting["rows"] = {n: r for n, r in setting["rows"].items() if not any(w in n for w in again)}
    if prior.get("model", NAME) != args.model or f"{args.reference_epochs} epochs on {args.reference_scenes} " \
            "scenes" not in prior.get("reference_note", ""):
        raise SystemExit(f"--resume: {path} is another model's or another reference budget's results")
    print(f"resuming {path}: its rows are kept, only missing ones are measured", flush=True)
    return prior


def collect(settings: list[dict[str, Any]], c: dict[str, Any], args: argparse.Namespace, retrain_epochs: int,
            retrain_scenes: int, t_start: float) -> dict[str, Any]:
    """The results so far: settings, summary, cost and what the run was."""
    from train_reference import FULL

    model = getattr(args, "model", NAME)
    rows = [r for s in settings for n, r in s["rows"].items() if n.startswith("Retrain without")]
    refs = [r for s in settings for n, r in s["rows"].items() if n.startswith("Retrain, target-level")]
    ours = c["graph_build_s"] + c["request_s"]
    c["retrain_s"] = statistics.fmean([r["seconds"] for r in rows]) if rows else None  # None: no such row ran
    c["reference_s"] = statistics.fmean([r["seconds"] for r in refs]) if refs else None
    c["retrain_over_graph_plus_request"] = None if c["retrain_s"] is None else c["retrain_s"] / ours
    c["reference_over_graph_plus_request"] = None if c["reference_s"] is None else c["reference_s"] / ours
    full = FULL[model]
    is_full = (args.reference_epochs, args.reference_scenes) == (full["epochs"], full["n_train"])
    extra = {} if model == NAME else {"class_names": list(zoo.entry(model).class_names)}
    return {
        "model": model, **extra, "settings": settings, "setting_labels": [s["label"] for s in settings],
        "summary": summarise(settings), "cost": c,
        "retrain_note": retrain_note(model, args, retrain_epochs, retrain_scenes),
        "reference_note": (f"target-level reference: the zoo recipe with the forget labels masked out of the BCE, "
                           f"every scene kept, {args.reference_epochs} epochs on {args.reference_scenes} scenes "
                           f"(the zoo: {full['epochs']} on {full['n_train']}"
                           f"{': the full zoo budget' if is_full and model != NAME else ''}), seed 0, one per "
                           "setting (scripts/train_reference.py)"),
        "goals": GOALS, "ssd": {"alpha": 10, "lambda": 1, "importance": "batch-mean squared gradients of the BCE "
                                "loss, batch 64"},
        "seconds": round(time.time() - t_start, 1), "torch": str(torch.__version__), "quick": args.quick,
        "argv": getattr(args, "argv", sys.argv[1:]),
    }


def retrain_note(model: str, args: argparse.Namespace, retrain_epochs: int, retrain_scenes: int) -> str:
    if not MODELS[model].retrain:
        return (f"none for {model}: its zoo recipe (scripts/zoo_glyphs.py) can mask labels, the reference below, "
                "but has no drop-the-forget-scenes option, so the instance-level retrain and control rows are skipped")
    return (f"the zoo recipe at a reduced budget, {retrain_epochs} epochs on {retrain_scenes} scenes minus "
            f"the forget scenes (the zoo model: 10 epochs on 24000), first {args.retrain_seeds} seed(s) of "
            "each setting; the control row trains the same budget on all scenes")


def write_results(result: dict[str, Any], out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"{stem}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
