"""``--auto``: find the cheapest way, and the smallest ``sigma`` and ``delta``, that forget within a bound.

The search walks ``sigma`` upward and, for each, ``delta`` upward, and stops at the first
setting whose forget targets all score at most ``forget_bound`` while no retained target
loses more than ``retain_budget`` against the original, on a validation split the caller
evaluates. Channel scores are computed once per ``sigma`` and reused for every ``delta``
(they do not depend on it), so a search costs about one scoring pass per sigma tried.

The stages go cheapest first: pruning alone, then pruning plus the forward-only calibration
(:mod:`tpunlearn.calibrate`), then, when a repair budget is given, the family's repair of the
closest settings; the first request that meets the goal wins, and every row says its stage
and what it cost.
"""
from __future__ import annotations

import time
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
    """The chosen request (``result``), whether it met the goal, the stage that reached it
    (``prune``, ``calibrate`` or ``repair``, cheapest first), and every setting tried."""

    sigma: int
    delta: float
    met: bool
    result: UnlearnResult
    tried: list[dict[str, Any]] = field(default_factory=list)
    stage: str = "prune"
    repair: dict[str, Any] | None = None  # the repair summary when the chosen request was repaired

    def to_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "delta": self.delta, "met": self.met, "stage": self.stage,
                "tried": self.tried, "stages": sorted({r["stage"] for r in self.tried}, key=STAGES.index)}


STAGES = ("prune", "calibrate", "repair")  # cheapest first
Repair = Callable[[UnlearnResult], dict[str, Any]]  # repairs result.model in place, returns its summary


def auto_unlearn(model: nn.Module, samples: Iterable[Any] | None, forget: Sequence[int] | int, evaluate: Evaluate,
                 forget_bound: float = GOAL_FORGET, retain_budget: float = GOAL_DROP, sigmas: Sequence[int] = SIGMAS,
                 deltas: Sequence[float] = DELTAS, baseline: Mapping[int, float] | None = None,
                 repair: Repair | None = None, repair_tries: int = 1, **unlearn_kwargs: Any) -> AutoResult:
    """Search ``sigmas`` x ``deltas`` (both ascending) with :func:`tpunlearn.unlearn`, cheapest stage first.

    Stage ``prune`` tries every setting without calibration; stage ``calibrate`` (when
    ``unlearn_kwargs`` has a ``calibrate`` spec) the same with it; stage ``repair`` (when
    ``repair`` is given) repairs the ``repair_tries`` closest settings of the stage before.
    The first request that meets both goals wins, so the cheapest way that works is chosen;
    if none does, the closest is returned with ``met=False``. Each row of ``tried`` records its
    stage and seconds (request, plus repair). ``evaluate`` must use held-out data (a
    validation split), not the test split the result is reported on. ``baseline`` is the
    original's metrics (evaluated here when None). ``unlearn_kwargs`` go to every request
    (not sigma/delta/scores).
    """
    clash = {"sigma", "delta", "scores"} & set(unlearn_kwargs)
    if clash:
        raise UsageError(f"auto_unlearn chooses {', '.join(sorted(clash))} itself; do not pass them")
    if not sigmas or not deltas:
        raise UsageError("auto_unlearn needs at least one sigma and one delta to try")
    if world()[1] > 1:
        raise UsageError("auto_unlearn evaluates every setting it tries on one process; call it outside torchrun")
    forget = [int(forget)] if isinstance(forget, int) else [int(t) for t in forget]
    calibrate = unlearn_kwargs.pop("calibrate", None)
    search = _Search(model, samples, forget, evaluate, forget_bound, retain_budget, unlearn_kwargs)
    search.base = dict(baseline) if baseline is not None else dict(evaluate(model))
    grid = [(s, d) for s in sorted(set(int(s) for s in sigmas)) for d in sorted(set(float(d) for d in deltas))]
    for stage, spec in (("prune", None), ("calibrate", calibrate)):
        if stage == "calibrate" and spec is None:
            continue
        for sigma, delta in grid:
            found = search.request(stage, sigma, delta, spec)
            if found is not None:
                return found
    if repair is not None:
        last = search.stage_rows("calibrate" if calibrate is not None else "prune")
        for row in sorted((r for r in last if r["removed_channels"]), key=lambda r: r["miss"])[:max(0, repair_tries)]:
            found = search.request("repair", row["sigma"], row["delta"], calibrate, repair)
            if found is not None:
                return found
    assert search.best is not None
    return search.best[1]


@dataclass
class _Search:
    """One ``--auto`` search's state: channel scores per sigma, the rows tried, the closest so far."""

    model: nn.Module
    samples: Iterable[Any] | None
    forget: list[int]
    evaluate: Evaluate
    bound: float
    budget: float
    kwargs: dict[str, Any]
    base: dict[int, float] = field(default_factory=dict)
    scores: dict[int, Any] = field(default_factory=dict)
    tried: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, AutoResult] | None = None

    def request(self, stage: str, sigma: int, delta: float, calibrate: Any,
                repair: Repair | None = None) -> AutoResult | None:
        """Run one setting at one stage; the result when it meets the goal, else None (kept if closest)."""
        t0 = time.perf_counter()
        res = unlearn(self.model, self.samples, self.forget, sigma=sigma, delta=delta,  # samples: calibration
                      scores=self.scores.get(sigma), calibrate=calibrate, **self.kwargs)
        assert res is not None  # one process: unlearn always returns its result
        self.scores.setdefault(sigma, res.scores)
        summary = repair(res) if repair is not None else None
        row = judge_setting(self.base, self.evaluate(res.model), self.forget, self.bound, self.budget)
        row.update(stage=stage, sigma=sigma, delta=delta, removed_channels=res.report["removed_channels"],
                   seconds=round(time.perf_counter() - t0, 3))
        if not row["removed_channels"]:
            row["met"] = False  # as in the verdict: a request that removed nothing forgot nothing
        self.tried.append(row)
        candidate = AutoResult(sigma=sigma, delta=delta, met=row["met"], result=res, tried=self.tried,
                               stage=stage, repair=summary)
        if row["met"]:
            return candidate
        if self.best is None or row["miss"] < self.best[0]:
            self.best = (row["miss"], candidate)
        return None

    def stage_rows(self, stage: str) -> list[dict[str, Any]]:
        return [r for r in self.tried if r["stage"] == stage]


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
