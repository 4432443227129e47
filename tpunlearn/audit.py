"""The audit of an unlearning request: attacks and probes on the original, the unlearned model and
a retrained reference, side by side (``tpunlearn prune --audit``, ``tpunlearn eval --mia``).

Family-neutral: the adapter is passed in and asked for its data (``mia_data`` for classifiers,
``probe_layer`` and ``region_batches`` for segmentation and detection); this module imports no
model family. What is compared, and the tolerances (issue 14): each membership attack within 5
points of the reference, each probe AUC within 0.03 of it. A model that forgets "too well"
(further from the reference on the other side) is as detectable as one that did not forget,
so the gap counts both ways.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tpunlearn.errors import TpunlearnError
from tpunlearn.privacy import PrivacyResult, classifier_checks, invert_target, region_checks, tolerance
from tpunlearn.torchutils import eval_mode, main_tensor, model_device

CLASSIFIER_TASKS = ("multilabel", "multiclass")
CHECKS = {  # name -> what the number says, in the report's words
    "entropy_mia": "entropy MIA (SSD): forget training samples called members",
    "svm_mia_efficacy": "SVM MIA-efficacy (SalUn): forget training samples called non-members",
    "linear_probe_auc": "linear probe AUC for the forget target (refitted)",
    "knn_probe_auc": "k-NN probe AUC for the forget target (refitted)",
}
MODELS = ("original", "unlearned", "reference")


def privacy_checks(adapter: Any, model: nn.Module, info: Any, spec: str | None, forget: Sequence[int],
                   seed: int = 0) -> tuple[dict[str, PrivacyResult], dict[str, str]]:
    """Every check that applies to ``model``'s family, and why each of the others does not.

    Classifiers: the two membership attacks and the two probes on penultimate features.
    Segmentation and detection: the probes on the adapter's ``probe_layer`` pooled over the
    regions of ``region_batches`` (mask pixels, boxes); the attacks are left out (they read a
    classifier's per-sample confidence).
    """
    if info.task in CLASSIFIER_TASKS:
        retain, test, forgotten = adapter.mia_data(model, info, spec, list(forget))
        not_run: dict[str, str] = {}
        results = classifier_checks(model, retain, test, forgotten, forget, info.task == "multilabel", seed,
                                    not_run=not_run)
        return results, not_run
    attacks = {k: f"membership attacks read a classifier's per-sample confidence; a {info.task} model has none"
               for k in ("entropy_mia", "svm_mia_efficacy")}
    layer = adapter.probe_layer(model, info)
    batches = adapter.region_batches(model, info, spec) if layer is not None else None
    if layer is None or batches is None:
        why = f"the {adapter.name} adapter names no feature layer and regions for the probes"
        return {}, {**attacks, "linear_probe_auc": why, "knn_probe_auc": why}
    return region_checks(model, layer, batches, forget, seed), attacks


def check_lines(results: Mapping[str, PrivacyResult], not_run: Mapping[str, str]) -> list[str]:
    """One printed line per check (a rate as a percentage, an AUC as is), then what did not run."""
    lines = []
    for name, r in results.items():
        value = f"{100 * r.value:.1f} %" if r.kind == "mia" else f"{r.value:.3f}"
        counts = ", ".join(f"{k} {v}" for k, v in r.n.items())
        lines.append(f"{'MIA' if r.kind == 'mia' else 'probe'}: {CHECKS.get(name, name)}: {value} ({counts})")
    lines += [f"not run: {CHECKS.get(name, name)} ({why})" for name, why in not_run.items()]
    return lines


def audit(adapter: Any, models: Mapping[str, nn.Module], info: Any, spec: str | None, forget: Sequence[int],
          seed: int = 0) -> dict[str, Any]:
    """report.json's ``audit``: every check on each of ``models`` (``original``, ``unlearned`` and,
    when given, ``reference``), with the gap of the unlearned model to the reference and whether
    it lies within the tolerance. A model whose checks fail (its data lacks what they need) is
    named in ``failed`` with the reason, and its values are None."""
    t0 = time.perf_counter()
    per_model: dict[str, dict[str, PrivacyResult]] = {}
    not_run: dict[str, str] = {}
    failed: dict[str, str] = {}
    for which, model in models.items():
        try:
            per_model[which], skipped = privacy_checks(adapter, model, info, spec, forget, seed)
        except TpunlearnError as exc:  # e.g. no region of the target in the data: say so, keep the run
            per_model[which], skipped, failed[which] = {}, {name: f"{which}: {exc}" for name in CHECKS}, str(exc)
        not_run.update({k: v for k, v in skipped.items() if k not in not_run})
    checks = {name: compare(name, {w: r.get(name) for w, r in per_model.items()})
              for name in CHECKS if any(name in r for r in per_model.values())}
    within = [n for n, c in checks.items() if c["within"] is True]
    outside = [n for n, c in checks.items() if c["within"] is False]
    return {"forget": [info.class_names[t] for t in forget], "task": info.task, "models": list(models),
            "checks": checks, "not_run": {k: v for k, v in not_run.items() if k not in checks},
            "failed": failed, "within": within, "outside": outside,
            "line": summary_line(checks, "reference" in models),
            "seconds": round(time.perf_counter() - t0, 2)}


def compare(name: str, results: Mapping[str, PrivacyResult | None]) -> dict[str, Any]:
    """One check across the models: the values, the unlearned model's gap to the reference, and
    whether it is within the tolerance of the check's kind (None without a reference).

    An attack's gap counts both ways (a model that forgets further than retraining is as detectable as
    one that did not forget); a probe's tolerance is an upper bound, issue 14's goal (the target no more
    readable than after retraining + 0.03), and a probe further below is named (``below_reference``)."""
    kind = next(r.kind for r in results.values() if r is not None)
    values = {w: (r.value if r is not None else None) for w, r in results.items()}
    unlearned, reference = values.get("unlearned"), values.get("reference")
    gap = unlearned - reference if unlearned is not None and reference is not None else None
    tol = tolerance(kind)
    upper = kind == "probe"
    within = None if gap is None else (gap if upper else abs(gap)) <= tol + 1e-12
    return {"label": CHECKS.get(name, name), "kind": kind, **{w: values.get(w) for w in MODELS},
            "gap_to_reference": gap, "tolerance": tol, "bound": "upper" if upper else "both", "within": within,
            "below_reference": gap is not None and gap < -tol - 1e-12,
            "detail": {w: r.to_dict() for w, r in results.items() if r is not None}}


def verdict(check: Mapping[str, Any]) -> str:
    """A check's verdict in words: within / NOT within / no reference, and a probe below the reference."""
    if check.get("within") is None:
        return "no reference"
    if check.get("below_reference"):
        return f"within (below the reference by {-check['gap_to_reference']:.3f}: less readable than after retraining)"
    return "within" if check["within"] else "NOT within"


def summary_line(checks: Mapping[str, Mapping[str, Any]], has_reference: bool) -> str:
    """The audit's verdict in plain words."""
    if not checks:
        return "audit: no attack or probe could run"
    if not has_reference:
        return "audit: no --reference given, so no gap to a retrained model is judged"
    inside = [n for n, c in checks.items() if c["within"]]
    outside = [f"{n} (gap {_gap_text(c['gap_to_reference'], c['kind'])}, "
               f"tolerance {_gap_text(c['tolerance'], c['kind']).lstrip('+')})"
               for n, c in checks.items() if c["within"] is False]
    return (f"audit: within the reference's tolerance: {', '.join(inside) or 'none'}; "
            f"not within: {', '.join(outside) or 'none'}")


def _gap_text(value: float, kind: str) -> str:
    """A gap in the check's own unit: points for a rate, AUC units for a probe."""
    return f"{100 * value:+.1f} pts" if kind == "mia" else f"{value:+.3f}"


def inversions(models: Mapping[str, nn.Module], target: int, input_size: Sequence[int],
               bounds: tuple[float, float] | None, seed: int = 0) -> dict[str, Any]:
    """The model-inversion picture's tensors: :func:`tpunlearn.privacy.invert_target` for each model,
    from the same seeded start."""
    return {which: invert_target(m, target, input_size, seed=seed, bounds=bounds) for which, m in models.items()}


@torch.no_grad()
def constant_logits(models: Mapping[str, nn.Module], target: int, pictures: Mapping[str, torch.Tensor]) -> list[str]:
    """The models whose ``target`` logit is the same on their inversion picture and on its negative and
    its double (a blanked output row): their panel shows the prior alone, since no input raises that logit."""
    flat = []
    for which, model in models.items():
        x = pictures[which][None].to(model_device(model))
        with eval_mode(model):
            logits = main_tensor(model(torch.cat([x, -x, 2 * x])))[:, int(target)].float()
        if float(logits.max() - logits.min()) <= 1e-6 * max(1.0, float(logits.abs().max())):
            flat.append(which)
    return flat
