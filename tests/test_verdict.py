"""tpunlearn.verdict.judge: met only when the forget targets fall under the goal, the worst retained
target stays within its drop, and channels were removed; each failure says why."""
from __future__ import annotations

import argparse

import pytest

from tpunlearn import cli
from tpunlearn.evaluate import Evaluation
from tpunlearn.report import metrics_entry
from tpunlearn.settings import GOAL_DROP, GOAL_FORGET
from tpunlearn.verdict import judge, missed_by

PARAMS = {"before": 1_000_000, "after": 900_000}
MACS = {"before": 2_000_000, "after": 1_500_000}


def entry(after_forget: float, after_7: float) -> dict:
    before = Evaluation("multilabel", "recall", {"3": {"recall": 0.98}, "7": {"recall": 0.97}, "1": {"recall": 0.9}})
    after = Evaluation("multilabel", "recall",
                       {"3": {"recall": after_forget}, "7": {"recall": after_7}, "1": {"recall": 0.9}})
    return metrics_entry(before, after, ["3"])


def test_met():
    v = judge(entry(0.0, 0.96), 8, PARAMS, MACS)
    assert v.met and v.status == "met" and v.warnings == []
    d = v.to_dict()
    assert d["forget"] == {"metric": "recall", "targets": {"3": {"before": 0.98, "after": 0.0}}, "worst_after": 0.0,
                           "goal": GOAL_FORGET, "met": True}
    assert d["retained"]["worst"] == "7" and d["retained"]["drop"] == pytest.approx(0.01) and d["retained"]["met"]
    assert d["removed_channels"] == 8 and d["params"] == PARAMS and d["macs"] == MACS
    assert d["line"] == v.line and v.line.startswith("verdict: met: forget 3 recall 0.98 -> 0.00 (goal <= 0.02)")
    assert "worst retained 7 0.97 -> 0.96" in v.line and "8 channels removed" in v.line


def test_not_met_by_the_forget_target():
    v = judge(entry(0.3, 0.97), 8, PARAMS, MACS)
    assert not v.met and not v.forget["met"] and v.retained["met"]
    assert v.line.startswith("verdict: not met:")
    assert any("forget target 3" in w and "not under the goal" in w for w in v.warnings)


def test_not_met_by_a_retained_drop_and_a_collapse_warns():
    v = judge(entry(0.0, 0.2), 8, PARAMS, MACS)
    assert not v.met and v.forget["met"] and not v.retained["met"]
    assert v.retained["worst"] == "7" and v.retained["drop"] == pytest.approx(0.77)
    assert "1 retained target(s) collapsed (recall more than halved): 7 0.97 -> 0.20" in v.warnings
    small = judge(entry(0.0, 0.94), 8, PARAMS, MACS)  # a drop of 0.03: not met, but no collapse
    assert not small.met and small.warnings == []


def test_not_met_when_no_channel_was_removed():
    v = judge(entry(0.0, 0.97), 0, PARAMS, MACS)
    assert not v.met and v.forget["met"] and v.retained["met"]
    assert any("removed no channel" in w for w in v.warnings)


def test_goals_are_the_callers_and_default_to_autos():
    assert judge(entry(0.3, 0.97), 8, PARAMS, MACS, goal_forget=0.5).met
    assert not judge(entry(0.0, 0.96), 8, PARAMS, MACS, goal_drop=0.0).met
    assert missed_by(0.05, 0.04) == pytest.approx(0.05)
    parser = cli._parser()
    prune = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("prune"))
    args = prune.parse_args(["--arch", "x", "--forget", "3"])
    assert isinstance(args, argparse.Namespace)
    assert (args.goal_forget, args.goal_drop) == (GOAL_FORGET, GOAL_DROP)
    assert (args.auto_bound, args.auto_budget) == (GOAL_FORGET, GOAL_DROP)  # --auto searches the same goals
    assert args.conf is None and args.strict is False
