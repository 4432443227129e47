"""``--auto``: find the smallest ``sigma`` and ``delta`` that forget within a bound.

The search walks ``sigma`` upward and, for each, ``delta`` upward, and stops at the first
setting whose forget targets all score at most ``forget_bound`` while no retained target
loses more than ``retain_budget`` against the original, on a validation split the caller
evaluates. Channel scores are computed once per ``sigma`` and reused for every ``delta``
(they do not depend on it), so a search costs about one scoring pass per sigma tried.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tpunlearn.api import UnlearnResult, unlearn
from tpunlearn.distributed import world
from tpunlearn.errors import UsageError
from tpunlearn.evaluate import retained_summary
from tpunlearn.settings import GOAL_DROP, GOAL_FORGET
from tpunlearn.verdict import missed_by

SIGMAS = (1, 2, 4, 8)
DELTAS = (0.02, 0.05, 0.1, 0.2, 0.3)

# model -> {target index: primary metric, higher is better}; the CLI passes
# ``adapter.validate(model, ...).primary_values()`` keyed by index
Evaluate = Callable[[nn.Module], Mapping[int, float]]


@dataclass
class AutoResult:
    """The chosen request (``result``), whether it met the goal, and every setting tried."""

    sigma: int
    delta: float
    met: bool
    result: UnlearnResult
    tried: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "delta": self.delta, "met": self.met, "tried": self.tried}


def auto_unlearn(model: nn.Module, samples: Iterable[Any] | None, forget: Sequence[int] | int, evaluate: Evaluate,
                 forget_bound: float = GOAL_FORGET, retain_budget: float = GOAL_DROP, sigmas: Sequence[int] = SIGMAS,
                 deltas: Sequence[float] = DELTAS, baseline: Mapping[int, float] | None = None,
                 **unlearn_kwargs: Any) -> AutoResult:
    """Search ``sigmas`` x ``deltas`` (both ascending) with :func:`tpunlearn.unlearn`.

    ``evaluate`` must use held-out data (a validation split), not the test split the result
    is reported on. ``baseline`` is the original's metrics (evaluated here when None). The
    first setting that meets both goals wins; if none does, the one closest to them is
    returned with ``met=False``. ``unlearn_kwargs`` go to every request (not sigma/delta/scores).
    """
    clash = {"sigma", "delta", "scores"} & set(unlearn_kwargs)
    if clash:
        raise UsageError(f"auto_unlearn chooses {', '.join(sorted(clash))} itself; do not pass them")
    if not sigmas or not deltas:
        raise UsageError("auto_unlearn needs at least one sigma and one delta to try")
    if world()[1] > 1:
        raise UsageError("auto_unlearn evaluates every setting it tries on one process; call it outside torchrun")
    forget = [int(forget)] if isinstance(forget, int) else [int(t) for t in forget]
    base = dict(baseline) if baseline is not None else dict(evaluate(model))
    tried: list[dict[str, Any]] = []
    best: tuple[float, AutoResult] | None = None
    for sigma in sorted(set(int(s) for s in sigmas)):
        scores = None
        for delta in sorted(set(float(d) for d in deltas)):
            res = unlearn(model, samples, forget, sigma=sigma, delta=delta, scores=scores,  # samples: calibration
                          **unlearn_kwargs)
            assert res is not None  # one process: unlearn always returns its result
            scores = res.scores
            row = judge_setting(base, evaluate(res.model), forget, forget_bound, retain_budget)
            row.update(sigma=sigma, delta=delta, removed_channels=res.report["removed_channels"])
            if not row["removed_channels"]:
                row["met"] = False  # as in the verdict: a request that removed nothing forgot nothing
            tried.append(row)
            candidate = AutoResult(sigma=sigma, delta=delta, met=row["met"], result=res, tried=tried)
            if row["met"]:
                return candidate
            if best is None or row["miss"] < best[0]:
                best = (row["miss"], candidate)
    assert best is not None
    return best[1]


def judge_setting(base: Mapping[int, float], after: Mapping[int, float], forget: list[int], bound: float,
                  budget: float) -> dict[str, Any]:
    """One tried setting against the goals (the verdict's test, :func:`tpunlearn.verdict.missed_by`):
    the worst forget metric, the worst retained target and its drop, ``met`` and ``miss``."""
    forget_value = max(float(after[t]) for t in forget)
    kept = retained_summary(base, after, forget)
    worst = kept["worst"]
    worst_drop = float(worst["drop"]) if worst else 0.0
    miss = missed_by(forget_value, worst_drop, bound, budget)
    return {"forget_metric": round(forget_value, 4), "worst_retained": worst["target"] if worst else None,
            "worst_retained_drop": round(worst_drop, 4), "met": miss == 0.0, "miss": round(miss, 4)}
