"""The --auto search (tpunlearn.auto): smallest sigma, then delta, that meets both goals."""
from __future__ import annotations

import pytest

from tpunlearn.auto import auto_unlearn, judge_setting
from tpunlearn.errors import UsageError


def test_judge_checks_the_forget_bound_and_the_retained_budget():
    base = {0: 0.9, 1: 0.8, 2: 0.7}
    ok = judge_setting(base, {0: 0.01, 1: 0.79, 2: 0.7}, [0], bound=0.02, budget=0.02)
    assert ok["met"] and ok["worst_retained"] == 1 and ok["miss"] == 0
    too_much = judge_setting(base, {0: 0.01, 1: 0.7, 2: 0.7}, [0], bound=0.02, budget=0.02)
    assert not too_much["met"] and too_much["miss"] == pytest.approx(0.08)
    not_forgotten = judge_setting(base, {0: 0.5, 1: 0.8, 2: 0.7}, [0], bound=0.02, budget=0.02)
    assert not not_forgotten["met"] and not_forgotten["forget_metric"] == 0.5




def test_auto_returns_the_first_setting_that_meets_the_goal(tiny_resnet, samples):
    params = sum(p.numel() for p in tiny_resnet.parameters())

    def evaluate(model):
        smaller = sum(p.numel() for p in model.parameters()) < params
        return {t: (0.0 if (t == 3 and smaller) else 1.0) for t in range(10)}

    found = auto_unlearn(tiny_resnet, samples, [3], evaluate, sigmas=(1, 2), deltas=(0.1, 0.3), align=None,
                         ignored_layers=[tiny_resnet.head], progress=False)
    first = next(r for r in found.tried if r["removed_channels"] > 0)
    assert found.met and (found.sigma, found.delta) == (first["sigma"], first["delta"])
    assert found.tried[-1] is first  # the search stops at the first success
    assert found.result.report["settings"]["sigma"] == found.sigma
    assert found.result.report["settings"]["delta"] == found.delta


def test_auto_without_success_returns_the_closest_and_says_so(tiny_resnet, samples):
    x = samples[0][0][:1]

    def evaluate(model):
        return {t: 1.0 for t in range(10)}  # nothing ever forgets

    found = auto_unlearn(tiny_resnet, samples, [3], evaluate, sigmas=(1,), deltas=(0.1, 0.2),
                         example_inputs=x, ignored_layers=[tiny_resnet.head], progress=False)
    assert not found.met and len(found.tried) == 2
    assert found.to_dict()["met"] is False


def test_auto_refuses_the_settings_it_chooses(tiny_resnet, samples):
    with pytest.raises(UsageError, match="sigma"):
        auto_unlearn(tiny_resnet, samples, [3], lambda m: {}, sigma=2)
    with pytest.raises(UsageError, match="at least one"):
        auto_unlearn(tiny_resnet, samples, [3], lambda m: {}, sigmas=())


def test_auto_goes_cheapest_stage_first_and_repairs_only_the_closest(tiny_resnet, samples):
    """Pruning alone, then with calibration, then the repair of the closest settings: each row says its stage."""
    from tpunlearn.calibrate import Calibration

    repaired: list[float] = []

    def repair(res):
        res.model.repaired = True  # what the evaluation below can see
        repaired.append(res.settings.delta)
        return {"epochs": 1}

    def evaluate(model):
        done = getattr(model, "repaired", False)
        return {t: (0.0 if (t == 3 and done) else 1.0) for t in range(10)}

    found = auto_unlearn(tiny_resnet, samples, [3], evaluate, sigmas=(1, 2), deltas=(0.1, 0.3), align=None,
                         ignored_layers=[tiny_resnet.head], progress=False, calibrate=Calibration(layers=("head",)),
                         repair=repair, repair_tries=2)
    stages = [r["stage"] for r in found.tried]
    assert stages[:4] == ["prune"] * 4 and stages[4:8] == ["calibrate"] * 4
    assert stages[8:] == ["repair"] and len(repaired) == 1  # the first repair met the goal: the search stops
    assert found.met and found.stage == "repair" and found.repair == {"epochs": 1}
    assert found.to_dict()["stages"] == ["prune", "calibrate", "repair"]
    assert all(r["seconds"] >= 0 for r in found.tried)
    assert "calibration" in found.result.report  # the repaired request is the calibrated one


def test_auto_stops_at_pruning_when_pruning_alone_meets_the_goal(tiny_resnet, samples):
    from tpunlearn.calibrate import Calibration

    params = sum(p.numel() for p in tiny_resnet.parameters())

    def evaluate(model):
        smaller = sum(p.numel() for p in model.parameters()) < params
        return {t: (0.0 if (t == 3 and smaller) else 1.0) for t in range(10)}

    def repair(res):
        raise AssertionError("no repair when pruning already meets the goal")

    found = auto_unlearn(tiny_resnet, samples, [3], evaluate, sigmas=(1, 2), deltas=(0.1, 0.3), align=None,
                         ignored_layers=[tiny_resnet.head], progress=False, calibrate=Calibration(layers=("head",)),
                         repair=repair)
    assert found.met and found.stage == "prune" and {r["stage"] for r in found.tried} == {"prune"}
    assert "calibration" not in found.result.report
