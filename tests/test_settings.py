"""tpunlearn.settings: UnlearnSettings as data, validated once, and how keywords and ``settings=`` combine."""
from __future__ import annotations

import dataclasses

import pytest

import tpunlearn as tu
from tpunlearn import plan, scoring
from tpunlearn.api import score_targets
from tpunlearn.errors import UsageError
from tpunlearn.settings import COUPLED, DEFAULTS, METHODS, MODES, UNSET, UnlearnSettings, check_device


def test_defaults_and_choices_come_from_one_place():
    s = UnlearnSettings()
    assert (s.sigma, s.delta, s.retain_delta, s.retain_tolerance, s.n_per_target) == (4, 0.05, None, 0, 32)
    assert (s.mode, s.coupled, s.method, s.group_closure, s.balanced, s.align) == (
        "physical", "protect", "gradcam", True, True, 8)
    assert s == DEFAULTS and s.resolved_retain_delta == 0.05
    assert MODES == ("physical", "mask") and COUPLED == ("protect", "prune", "zero")
    assert METHODS == ("gradcam", "abs", "taylor")
    assert plan.MODES is MODES and plan.COUPLED is COUPLED and scoring.METHODS is METHODS
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.sigma = 2  # type: ignore[misc]  # frozen: assigning must fail


@pytest.mark.parametrize("kwargs, message", [
    (dict(delta=0), "delta must lie in (0, 1], got 0"),
    (dict(retain_delta=1.5), "retain_delta must lie in (0, 1], got 1.5"),
    (dict(sigma=0), "sigma must be >= 1, got 0"),
    (dict(mode="cut"), "unknown mode 'cut'; choose one of physical, mask"),
    (dict(coupled="maybe"), "unknown coupled policy 'maybe'; choose one of protect, prune, zero"),
    (dict(retain_tolerance=-1), "retain_tolerance must be a count >= 0 or a fraction in (0, 1) of the retained "
                                "targets, got -1"),
    (dict(retain_tolerance=2.5), "retain_tolerance must be a count >= 0 or a fraction in (0, 1) of the retained "
                                 "targets, got 2.5"),
    (dict(n_per_target=0), "n_per_target must be >= 1, got 0"),
    (dict(method="nope"), "unknown scoring method 'nope'; choose one of gradcam, abs, taylor"),
    (dict(align=0), "align must be >= 1 (1 or None turns it off), got 0"),
])
def test_bad_settings_are_refused_once_in_one_line(kwargs, message):
    with pytest.raises(UsageError) as err:
        UnlearnSettings(**kwargs)
    assert str(err.value) == message
    with pytest.raises(UsageError, match="must|unknown"):
        DEFAULTS.override(**kwargs)  # a copy is validated too


def test_override_ignores_unset_and_refuses_unknown_names():
    s = UnlearnSettings(sigma=2, retain_delta=0.2)
    assert s.override(sigma=UNSET, delta=0.3) == UnlearnSettings(sigma=2, delta=0.3, retain_delta=0.2)
    assert s.override(retain_delta=None).resolved_retain_delta == 0.05  # an explicit None is a value
    with pytest.raises(UsageError, match="unknown setting 'sigmaa'"):
        s.override(sigmaa=3)
    assert repr(UNSET) == "<from settings>"


def test_command_line_lists_every_flag_the_cli_has():
    assert UnlearnSettings(sigma=12, delta=0.2, retain_tolerance=5, align=1).command_line() == [
        "--sigma", "12", "--delta", "0.2", "--retain-delta", "0.2", "--retain-tolerance", "5", "--samples", "32",
        "--mode", "physical", "--coupled", "protect", "--align", "1"]
    assert "--align" not in UnlearnSettings(align=None).command_line()


def test_check_device():
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(UsageError, match="unknown device 'gpu'; use cpu, cuda or cuda:N"):
        check_device("gpu")


# ---- unlearn(): keywords given override settings=, keywords left out keep the settings' values ---------------


KW = dict(forget=[3], retain_tolerance=3, align=None, progress=False)


def test_retain_tolerance_is_a_count_or_a_fraction_of_the_retained_targets():
    assert UnlearnSettings(retain_tolerance=3).resolved_retain_tolerance(23) == 3
    assert UnlearnSettings(retain_tolerance=0.3).resolved_retain_tolerance(9) == 3
    assert UnlearnSettings(retain_tolerance=0.3).resolved_retain_tolerance(23) == 7
    assert UnlearnSettings(retain_tolerance=0.3).resolved_retain_tolerance(79) == 24
    assert UnlearnSettings(retain_tolerance=0).resolved_retain_tolerance(79) == 0


def test_a_fractional_tolerance_balances_as_its_count(tiny_resnet, samples):
    """0.34 of the 9 retained targets is 3: the same plan as retain_tolerance=3, and more than with 0."""
    by_fraction = tu.unlearn(tiny_resnet, samples, sigma=3, delta=0.3, **{**KW, "retain_tolerance": 0.34})
    by_count = tu.unlearn(tiny_resnet, samples, sigma=3, delta=0.3, **{**KW, "retain_tolerance": 3})
    strict = tu.unlearn(tiny_resnet, samples, sigma=3, delta=0.3, **{**KW, "retain_tolerance": 0})
    assert by_fraction.plan.removed == by_count.plan.removed
    assert by_fraction.plan.removed_channels > strict.plan.removed_channels


def test_settings_and_the_same_keywords_give_the_same_request(tiny_resnet, samples):
    chosen = UnlearnSettings(sigma=3, delta=0.3, retain_tolerance=3, align=None, mode="mask")
    by_settings = tu.unlearn(tiny_resnet, samples, forget=[3], progress=False, settings=chosen)
    by_keywords = tu.unlearn(tiny_resnet, samples, sigma=3, delta=0.3, mode="mask", **KW)
    assert by_settings.plan.removed == by_keywords.plan.removed and by_settings.plan.removed_channels > 0
    assert by_settings.report["settings"] == by_keywords.report["settings"]
    assert by_settings.settings == by_keywords.settings == chosen
    assert by_settings.report["settings"]["mode"] == "mask" and by_settings.report["settings"]["sigma"] == 3


def test_keywords_override_settings(tiny_resnet, samples):
    chosen = UnlearnSettings(sigma=2, delta=0.1, retain_tolerance=3, align=None)
    res = tu.unlearn(tiny_resnet, samples, forget=[3], delta=0.3, mode="mask", progress=False, settings=chosen)
    got = res.report["settings"]
    assert (got["sigma"], got["delta"], got["retain_delta"], got["mode"], got["retain_tolerance"]) == (
        2, 0.3, 0.3, "mask", 3)
    assert res.settings == chosen.override(delta=0.3, mode="mask")
    with pytest.raises(UsageError, match="delta must lie in"):
        tu.unlearn(tiny_resnet, samples, forget=[3], delta=2.0, settings=chosen)  # the merge is validated


def test_report_settings_keep_their_keys(tiny_resnet, samples):
    res = tu.unlearn(tiny_resnet, samples, sigma=3, delta=0.3, **KW)
    assert list(res.report["settings"]) == ["forget", "retain", "sigma", "group_closure", "balanced", "align", "delta",
                                            "retain_delta", "retain_tolerance", "n_per_target", "mode", "coupled",
                                            "method"]
    assert res.report["settings"]["retain"] == [t for t in range(10) if t != 3]


def test_score_targets_reads_settings_too(tiny_resnet, samples):
    x = samples[0][0][:1]
    by_settings = score_targets(tiny_resnet, samples, example_inputs=x, progress=False,
                                settings=UnlearnSettings(sigma=2, n_per_target=2, group_closure=False))
    by_keywords = score_targets(tiny_resnet, samples, example_inputs=x, progress=False, sigma=2, n_per_target=2,
                                group_closure=False)
    assert by_settings.layers == by_keywords.layers == tiny_resnet.EXEC_ORDER[-2:]
    assert {t: s.count for t, s in by_settings.targets.items()} == {t: 2 for t in range(10)}
    overridden = score_targets(tiny_resnet, samples, example_inputs=x, progress=False, sigma=1,
                               settings=UnlearnSettings(sigma=2, group_closure=False))
    assert overridden.layers == tiny_resnet.EXEC_ORDER[-1:]


def test_auto_unlearn_takes_settings(tiny_resnet, samples):
    from tpunlearn.auto import auto_unlearn

    found = auto_unlearn(tiny_resnet, samples, [3], lambda m: {t: 1.0 for t in range(10)}, sigmas=[2], deltas=[0.3],
                         settings=UnlearnSettings(retain_tolerance=3, align=None, mode="mask"), progress=False)
    assert found.result.settings == UnlearnSettings(sigma=2, delta=0.3, retain_tolerance=3, align=None, mode="mask")


def test_cli_takes_a_tolerance_count_or_fraction(capsys):
    from tpunlearn.cli import main

    code = main(["prune", "--arch", "resnet18", "--forget", "0", "--retain-tolerance", "2.5", "--dry-run"])
    assert code != 0 and "count >= 0 or a fraction in (0, 1), got 2.5" in capsys.readouterr().err
    from tpunlearn.cli import _tolerance

    assert (_tolerance("3"), _tolerance("0.3"), _tolerance("0"), _tolerance("4.0")) == (3, 0.3, 0, 4)
    assert isinstance(_tolerance("3"), int)
