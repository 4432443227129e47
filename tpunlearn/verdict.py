"""The verdict of an unlearning run: did the forget targets fall under the goal, and did the
retained ones stay put?

:func:`judge` reads ``report["metrics"]`` (:func:`tpunlearn.report.metrics_entry`) and the costs,
and returns one :class:`Verdict`: ``met`` only when every forgotten target's primary metric is at
most ``goal_forget`` after, the worst retained target lost at most ``goal_drop``, and the run
removed at least one channel. :func:`missed_by` is the same test as a distance, for ``--auto``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tpunlearn.settings import GOAL_DROP, GOAL_FORGET

COLLAPSE = 0.5  # a retained target that loses more than this share of its metric has collapsed


@dataclass
class Verdict:
    """``met`` and what it rests on; :meth:`to_dict` is ``report["verdict"]``, :attr:`line` the summary."""

    met: bool
    forget: dict[str, Any]
    retained: dict[str, Any]
    params: dict[str, Any]
    macs: dict[str, Any]
    removed_channels: int
    warnings: list[str] = field(default_factory=list)
    line: str = ""

    @property
    def status(self) -> str:
        return "met" if self.met else "not met"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "met": self.met, "forget": self.forget, "retained": self.retained,
                "params": self.params, "macs": self.macs, "removed_channels": self.removed_channels,
                "warnings": list(self.warnings), "line": self.line}


def missed_by(forget_after: float, worst_drop: float, goal_forget: float = GOAL_FORGET,
              goal_drop: float = GOAL_DROP) -> float:
    """How far a result is from both goals (0 when it meets them): the forget metric over
    ``goal_forget`` plus the worst retained drop over ``goal_drop``."""
    return max(0.0, forget_after - goal_forget) + max(0.0, worst_drop - goal_drop)


def judge(metrics: dict[str, Any], removed_channels: int, params: dict[str, Any], macs: dict[str, Any],
          goal_forget: float = GOAL_FORGET, goal_drop: float = GOAL_DROP,
          outcome: dict[str, Any] | None = None) -> Verdict:
    """The verdict of one run from its metrics entry (before/after per target, forgotten names,
    retained summary), the channels it removed and its parameter and MAC counts before/after;
    ``outcome`` (``report["outcome"]``) says why a run removed no channel."""
    key = metrics["primary"]
    targets = {name: {"before": _value(metrics["before"], name, key), "after": _value(metrics["after"], name, key)}
               for name in metrics["forgotten"]}
    known = [v["after"] for v in targets.values() if v["after"] is not None]
    worst_after = max(known) if known else None
    forget_met = worst_after is not None and worst_after <= goal_forget
    worst = (metrics.get("retained") or {}).get("worst")
    drop = float(worst["drop"]) if worst else 0.0
    retained = {"worst": worst["target"] if worst else None, "before": worst["before"] if worst else None,
                "after": worst["after"] if worst else None, "drop": drop, "goal_drop": goal_drop,
                "met": drop <= goal_drop}
    met = bool(forget_met and retained["met"] and removed_channels > 0)
    forget = {"metric": key, "targets": targets, "worst_after": worst_after, "goal": goal_forget, "met": forget_met}
    verdict = Verdict(met=met, forget=forget, retained=retained, params=dict(params), macs=dict(macs),
                      removed_channels=int(removed_channels))
    verdict.warnings = _warnings(verdict, metrics, outcome)
    verdict.line = _line(verdict)
    return verdict


def _value(per_target: dict[str, dict[str, float]], name: str, key: str) -> float | None:
    row = per_target.get(name)
    return float(row[key]) if row and key in row else None


def nothing_removed_line(outcome: dict[str, Any] | None) -> str:
    """The warning of a run that removed no channel, with the outcome's why and what to try."""
    line = "the run removed no channel: the model is unchanged, nothing was forgotten"
    if outcome and outcome.get("why"):
        options = list(outcome.get("try") or [])
        tries = ", ".join(options[:-1]) + (" or " if len(options) > 1 else "") + (options[-1] if options else "")
        line += f": {outcome['why']}" + (f"; try {tries}" if tries else "")
    return line


def _warnings(v: Verdict, metrics: dict[str, Any], outcome: dict[str, Any] | None = None) -> list[str]:
    """Plain lines: no channel removed, a forget metric not under the goal, a retained target collapsed."""
    out = []
    key = v.forget["metric"]
    if v.removed_channels == 0:
        out.append(nothing_removed_line(outcome))
    for name, t in v.forget["targets"].items():
        if t["after"] is None:
            out.append(f"forget target {name} has no labelled instance in the evaluation data: cannot tell "
                       "whether it was forgotten")
        elif t["after"] > v.forget["goal"]:
            out.append(f"forget target {name}: {key} {_fmt(t['before'])} -> {_fmt(t['after'])}, not under the "
                       f"goal {v.forget['goal']:g}")
    forgotten = set(metrics["forgotten"])
    collapsed = []
    for name, row in metrics["before"].items():
        after = _value(metrics["after"], name, key)
        before = row.get(key)
        if name not in forgotten and before is not None and after is not None and before > 0 \
                and after < before * (1 - COLLAPSE):
            collapsed.append(f"{name} {before:.2f} -> {after:.2f}")
    if collapsed:
        out.append(f"{len(collapsed)} retained target(s) collapsed ({key} more than halved): {', '.join(collapsed)}")
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _count(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value:,}"


def _line(v: Verdict) -> str:
    """``verdict: met: forget 3 recall 0.98 -> 0.00 (goal <= 0.02); worst retained 7 ...; params ...``."""
    key = v.forget["metric"]
    forget = ", ".join(f"{n} {key} {_fmt(t['before'])} -> {_fmt(t['after'])}" for n, t in v.forget["targets"].items())
    r = v.retained
    kept = (f"worst retained {r['worst']} {_fmt(r['before'])} -> {_fmt(r['after'])} (drop {r['drop']:.2f}, "
            f"goal <= {r['goal_drop']:g})" if r["worst"] is not None else "no retained target")
    costs = (f"params {_count(v.params.get('before'))} -> {_count(v.params.get('after'))}, "
             f"MACs {_count(v.macs.get('before'))} -> {_count(v.macs.get('after'))}, "
             f"{v.removed_channels} channels removed")
    return f"verdict: {v.status}: forget {forget} (goal <= {v.forget['goal']:g}); {kept}; {costs}"
