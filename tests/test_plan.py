"""PrunePlan: group decisions, coupled policies, mask/physical parity, replay, safety rails."""
from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
from torch import nn

import tpunlearn as tu
from tpunlearn.errors import PlanError, UsageError
from tpunlearn.plan import PrunePlan, make_plan, signature

from helpers import assert_same_state, n_params, norm_after, snapshot

RUN = dict(forget=[0], retain=[1, 2], sigma=8, delta=0.3, retain_delta=0.05, n_per_target=4, progress=False)


# ---- resnet18 (timm), 64x64, random init with non-trivial BN statistics -------------------------


@pytest.fixture(scope="module")
def resnet(make_samples, randomize_bn):
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("resnet18", num_classes=10), seed=1).eval()
    samples = make_samples(n_batches=2, batch=6, size=64, seed=1)
    fresh = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(123))
    before = snapshot(model)
    cache: dict[tuple[str, str, bool], tu.UnlearnResult] = {}

    def run(mode: str = "physical", coupled: str = "protect", closure: bool = False) -> tu.UnlearnResult:
        # closure off by default: the coupled policies only act on groups that reach unscored layers
        if (mode, coupled, closure) not in cache:
            cache[(mode, coupled, closure)] = tu.unlearn(model, samples, mode=mode, coupled=coupled,
                                                         group_closure=closure, ignored_layers=[model.fc], **RUN)
        return cache[(mode, coupled, closure)]

    return dict(model=model, samples=samples, fresh=fresh, before=before, run=run, x=samples[0][0][:1])


def test_mask_and_physical_agree_on_fresh_inputs(resnet):
    physical, mask = resnet["run"]("physical"), resnet["run"]("mask")
    assert physical.plan.removed == mask.plan.removed
    assert physical.plan.removed_channels > 0
    with torch.no_grad():
        a = physical.model(resnet["fresh"])
        b = mask.model(resnet["fresh"])
        original = resnet["model"](resnet["fresh"])
    assert a.shape == b.shape == (4, 10)
    assert float((a - b).abs().max()) <= 1e-4
    assert float((a - original).abs().max()) > 1e-3  # the pruning changed something
    assert n_params(physical.model) < n_params(resnet["model"])
    assert n_params(mask.model) == n_params(resnet["model"])
    assert signature(mask.model) == signature(resnet["model"])
    assert physical.report["params"] == {"before": n_params(resnet["model"]), "after": n_params(physical.model)}


def test_physical_shapes_match_the_plan(resnet):
    result = resnet["run"]("physical")
    original = signature(resnet["model"])
    after = signature(result.model)
    removed = result.plan.removed
    assert removed  # some layer lost channels: the loop below checks a shrunken width
    for layer, (out_ch, _in_ch) in original.items():
        assert after[layer][0] == out_ch - len(removed.get(layer, [])), layer
    assert result.report["removed_channels"] == result.plan.removed_channels == sum(map(len, removed.values()))


def test_mask_mode_zeroes_filters_and_norm_affine(resnet):
    result = resnet["run"]("mask")
    model = result.model
    assert result.plan.zero_ops() == result.plan.removed
    assert result.plan.removed
    for layer, idxs in result.plan.removed.items():
        conv = model.get_submodule(layer)
        assert (conv.weight[idxs] == 0).all(), layer
        bn = norm_after(model, layer)
        assert (bn.weight[idxs] == 0).all() and (bn.bias[idxs] == 0).all(), layer
        kept = sorted(set(range(conv.out_channels)) - set(idxs))
        assert (conv.weight[kept] != 0).any(), layer


@pytest.mark.parametrize("mode,coupled", [("physical", "protect"), ("physical", "zero"), ("mask", "protect")])
def test_saved_plan_replays_bit_identically(resnet, tmp_path, mode, coupled):
    result = resnet["run"](mode, coupled)
    path = tmp_path / "plan.json"
    result.plan.save(path)
    loaded = PrunePlan.load(path)
    assert loaded.to_dict() == json.loads(json.dumps(result.plan.to_dict()))
    if mode == "physical":
        assert loaded.history  # apply() recorded torch-pruning's history
    fresh = copy.deepcopy(resnet["model"])
    out = loaded.replay(fresh, resnet["x"])
    assert out is fresh
    assert_same_state(fresh.state_dict(), result.model.state_dict())


def test_coupled_zero_keeps_shapes_of_coupled_groups(resnet):
    """coupled=zero: groups reaching unscored layers keep their shapes, flagged filters are zeroed."""
    result = resnet["run"]("physical", "zero")
    zeroed = [d for d in result.plan.decisions if d.action == "zero"]
    assert zeroed, result.plan.dry_run()
    original = signature(resnet["model"])
    after = signature(result.model)
    for d in zeroed:
        assert not d.local
        for layer, idxs in d.members.items():
            assert after[layer][0] == original[layer][0], layer  # inputs may shrink with a local group
            conv = result.model.get_submodule(layer)
            assert (conv.weight[idxs] == 0).all()
            bn = norm_after(result.model, layer)
            assert (bn.weight[idxs] == 0).all() and (bn.bias[idxs] == 0).all()
    # the unscored member of the zeroed group is left as it was
    unscored = "layer3.0.conv2"
    assert unscored not in result.plan.removed
    assert torch.equal(result.model.get_submodule(unscored).weight,
                       resnet["model"].get_submodule(unscored).weight)


def test_coupled_protect_skips_groups_reaching_unscored_layers(resnet):
    result = resnet["run"]("physical", "protect")
    skipped = [d for d in result.plan.decisions if d.action == "skip" and "unscored" in d.reason]
    assert skipped
    scored = set(result.report["layers"])
    pruned = [d for d in result.plan.decisions if d.action == "prune"]
    assert pruned  # the groups that stay within the scored layers still go
    for d in pruned:
        assert set(d.members) <= scored
    assert signature(result.model)["layer3.0.conv2"] == signature(resnet["model"])["layer3.0.conv2"]
    assert any("left alone" in n for n in result.plan.notes)


def test_group_closure_scores_every_coupled_layer(resnet):
    """With closure on, the scored set holds every member of each candidate's group, so no
    group is left alone for reaching an unscored layer, and mask and physical still agree."""
    result = resnet["run"]("physical", "protect", closure=True)
    plain = resnet["run"]("physical", "protect", closure=False)
    scored = set(result.report["layers"])
    assert set(plain.report["layers"]) < scored
    assert "layer3.0.conv2" in scored  # coupled to layer3.0.downsample.0 through the residual add
    assert not [d for d in result.plan.decisions if "unscored" in d.reason]
    for d in result.plan.decisions:
        assert set(d.members) <= scored
    mask = resnet["run"]("mask", "protect", closure=True)
    assert (result.model(resnet["fresh"]) - mask.model(resnet["fresh"])).abs().max() <= 1e-4
    assert n_params(result.model) < n_params(mask.model)


def test_coupled_prune_removes_residual_channels(resnet):
    result = resnet["run"]("physical", "prune")
    residual = [d for d in result.plan.decisions if d.action == "prune" and not d.local]
    assert residual
    assert any(set(d.members) - set(result.report["layers"]) for d in residual)  # reaches unscored layers
    original, after = signature(resnet["model"]), signature(result.model)
    # the layer3 residual stream lost channels in every coupled layer, scored or not
    width = after["layer3.0.conv2"][0]
    assert width < original["layer3.0.conv2"][0]
    assert after["layer3.0.downsample.0"][0] == after["layer3.1.conv2"][0] == width
    assert after["layer4.0.conv1"][1] == width
    assert n_params(result.model) < n_params(resnet["run"]("physical", "protect").model)


def test_dry_run_mentions_each_pruned_root(resnet):
    for coupled in ("protect", "prune"):
        plan = resnet["run"]("physical", coupled).plan
        text = plan.dry_run()
        assert str(plan) == text
        assert f"mode=physical  coupled={coupled}" in text
        assert f"channels={plan.removed_channels}" in text
        pruned = [d for d in plan.decisions if d.action == "prune"]
        assert pruned
        for d in pruned:
            assert any(line.split()[:2] == ["prune", d.root] for line in text.splitlines()), d.root
        for note in plan.notes:
            assert note in text


def test_plan_onto_another_model_raises(resnet, tiny_resnet):
    plan = resnet["run"]("physical").plan
    with pytest.raises(PlanError):
        plan.replay(tiny_resnet, torch.rand(1, 3, 32, 32))
    other = timm.create_model("resnet18", num_classes=5).eval()
    with pytest.raises(PlanError, match="fc"):
        plan.replay(other, resnet["x"])
    pruned = copy.deepcopy(resnet["run"]("physical").model)  # already pruned: shapes differ
    with pytest.raises(PlanError):
        PrunePlan.from_dict(plan.to_dict()).apply(pruned, resnet["x"])


def test_input_model_is_unchanged(resnet):
    for mode, coupled in [("physical", "protect"), ("mask", "protect"), ("physical", "zero"), ("physical", "prune")]:
        result = resnet["run"](mode, coupled)
        assert result.model is not resnet["model"]
    assert_same_state(resnet["model"].state_dict(), resnet["before"])
    assert not resnet["model"].training
    assert all(p.requires_grad for p in resnet["model"].parameters())
    assert all(not m._forward_hooks for m in resnet["model"].modules())


# ---- tiny models: the safety rails ---------------------------------------------------------------


X32 = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def test_flagging_every_channel_keeps_one(tiny_resnet):
    plan = make_plan(tiny_resnet, {"layer1.conv1": list(range(8))}, {}, X32, candidates=["layer1.conv1"])
    (decision,) = plan.decisions
    assert decision.action == "prune"
    assert len(decision.channels) == 7
    assert "kept one channel" in decision.reason
    assert any("kept one channel" in note and "layer1.conv1" in note for note in plan.notes)
    model = plan.apply(copy.deepcopy(tiny_resnet), X32)
    assert model.layer1.conv1.out_channels == 1
    assert model.layer1.conv2.in_channels == 1
    assert model(X32).shape == (1, 10)


def test_flagging_every_channel_of_a_residual_group_keeps_one(tiny_resnet):
    flagged = {"layer2.conv2": list(range(16)), "layer2.shortcut.0": list(range(16))}
    plan = make_plan(tiny_resnet, flagged, {}, X32, candidates=["layer2.shortcut.0", "layer2.conv2"],
                     coupled="prune")
    (decision,) = plan.decisions
    assert decision.action == "prune" and len(decision.channels) == 15
    assert any("kept one channel" in n for n in plan.notes)
    model = plan.apply(copy.deepcopy(tiny_resnet), X32)
    assert model.layer2.conv2.out_channels == model.layer2.shortcut[0].out_channels == 1
    assert model.head.in_features == 1


def test_kept_channel_is_the_lowest_priority(tiny_resnet):
    priority = {"layer1.conv1": torch.tensor([5.0, 4.0, -3.0, 2.0, 1.0, 0.0, 7.0, 8.0])}
    plan = make_plan(tiny_resnet, {"layer1.conv1": list(range(8))}, {}, X32, candidates=["layer1.conv1"],
                     priority=priority)
    assert plan.decisions[0].channels == [0, 1, 3, 4, 5, 6, 7]


def test_protected_channels_are_not_removed(tiny_resnet):
    plan = make_plan(tiny_resnet, {"layer1.conv1": [0, 1, 2, 3]}, {"layer1.conv1": [1, 3]}, X32,
                     candidates=["layer1.conv1"])
    assert plan.decisions[0].action == "prune"
    assert plan.decisions[0].channels == [0, 2]
    assert plan.removed == {"layer1.conv1": [0, 2]}
    everything_protected = make_plan(tiny_resnet, {"layer1.conv1": [0]}, {"layer1.conv1": [0]}, X32,
                                     candidates=["layer1.conv1"])
    assert everything_protected.decisions[0].action == "skip"
    assert everything_protected.removed_channels == 0


def test_channel_protected_in_a_coupled_layer_protects_the_group(tiny_resnet):
    plan = make_plan(tiny_resnet, {"layer2.conv2": [0, 1, 2]}, {"layer2.shortcut.0": [1]}, X32,
                     candidates=["layer2.conv2", "layer2.shortcut.0"], coupled="prune")
    assert plan.decisions[0].action == "prune"
    assert plan.removed == {"layer2.conv2": [0, 2], "layer2.shortcut.0": [0, 2]}


def test_group_removing_ignored_outputs_is_skipped(tiny_resnet):
    plan = make_plan(tiny_resnet, {"layer2.conv2": [0, 1, 2]}, {}, X32, candidates=["layer2.conv2"],
                     ignored_layers=["layer2.shortcut"], coupled="prune")
    (decision,) = plan.decisions
    assert decision.action == "skip"
    assert "protected layer layer2.shortcut.0" in decision.reason
    assert plan.removed_channels == 0
    assert any("layer2.conv2" in n and "left alone" in n for n in plan.notes)
    model = plan.apply(copy.deepcopy(tiny_resnet), X32)
    assert signature(model) == signature(tiny_resnet)


def test_flagged_channels_of_an_ignored_layer_are_skipped(tiny_resnet):
    plan = make_plan(tiny_resnet, {"layer1.conv1": [0, 1]}, {}, X32, candidates=["layer1.conv1"],
                     ignored_layers=["layer1.conv1"])
    assert plan.decisions[0].action == "skip"
    assert plan.removed_channels == 0


def test_unlearn_never_removes_ignored_outputs(tiny_resnet, samples):
    result = tu.unlearn(tiny_resnet, samples, forget=[0], retain=[1, 2], sigma=5, delta=0.5, retain_delta=0.05,
                        coupled="prune", group_closure=False, ignored_layers=["head", "layer2.shortcut"], progress=False)
    assert "layer2.shortcut.0" not in result.report["layers"]
    assert result.model.layer2.shortcut[0].out_channels == 16
    assert result.model.layer2.conv2.out_channels == 16
    assert result.model.head.out_features == 10
    assert "layer2.shortcut.0" not in result.plan.removed
    assert result.plan.removed_channels > 0  # the local groups still go


class GroupedCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.gconv = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.gconv(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean((2, 3)))


def test_grouped_convolutions_are_left_alone(samples, randomize_bn):
    model = randomize_bn(GroupedCNN()).eval()
    result = tu.unlearn(model, samples, forget=[0], retain=[1, 2], sigma=3, delta=0.3, retain_delta=0.05,
                        ignored_layers=["head"], progress=False)
    skips = [d for d in result.plan.decisions if d.action == "skip"]
    assert any("grouped" in d.reason for d in skips)
    assert {d.root for d in skips if "grouped" in d.reason} == {"conv1", "gconv"}
    assert result.model.gconv.out_channels == result.model.gconv.in_channels == 16
    assert any("grouped" in n for n in result.plan.notes)
    assert result.model(X32).shape == (1, 10)


def test_coupled_zero_mask_keeps_every_shape(tiny_resnet, samples):
    # sigma=2 scores layer2.conv1 and layer2.conv2, not the shortcut conv coupled to layer2.conv2
    result = tu.unlearn(tiny_resnet, samples, forget=[0], retain=[1, 2], sigma=2, delta=0.5, retain_delta=0.05,
                        mode="mask", coupled="zero", group_closure=False, ignored_layers=["head"], progress=False)
    assert signature(result.model) == signature(tiny_resnet)
    assert any(d.action == "zero" for d in result.plan.decisions)
    zeroed = result.plan.zero_ops()
    assert zeroed
    assert "layer2.shortcut.0" not in zeroed  # unscored: coupled=zero leaves it as it was
    assert torch.equal(result.model.layer2.shortcut[0].weight, tiny_resnet.layer2.shortcut[0].weight)
    for layer, idxs in zeroed.items():
        assert (result.model.get_submodule(layer).weight[idxs] == 0).all()


def test_tiny_resnet_mask_equals_physical_with_coupled_prune(tiny_resnet, samples):
    kwargs = dict(forget=[0], retain=[1, 2], sigma=5, delta=0.5, retain_delta=0.05, coupled="prune", group_closure=False,
                  ignored_layers=["head"], progress=False)
    physical = tu.unlearn(tiny_resnet, samples, mode="physical", **kwargs)
    mask = tu.unlearn(tiny_resnet, samples, mode="mask", **kwargs)
    assert any(not d.local for d in physical.plan.decisions if d.action == "prune")
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert float((physical.model(x) - mask.model(x)).abs().max()) <= 1e-4
    assert n_params(physical.model) < n_params(mask.model) == n_params(tiny_resnet)


def test_plan_from_dict_rejects_other_formats(tmp_path):
    with pytest.raises(PlanError):
        PrunePlan.from_dict({"format": "tpunlearn-graph/1"})
    path = tmp_path / "plan.json"
    path.write_text("[")
    with pytest.raises(PlanError):
        PrunePlan.load(path)


@pytest.mark.parametrize("kwargs", [dict(mode="cut"), dict(coupled="maybe")])
def test_make_plan_rejects_unknown_policies(tiny_resnet, kwargs):
    with pytest.raises(UsageError):
        make_plan(tiny_resnet, {"layer1.conv1": [0]}, {}, X32, **kwargs)


def test_replaying_an_unapplied_plan_applies_it(tiny_resnet, tmp_path):
    plan = make_plan(tiny_resnet, {"layer1.conv1": [0, 1, 2]}, {}, X32, candidates=["layer1.conv1"])
    path = tmp_path / "plan.json"
    plan.save(path)  # before apply(): the saved plan has no pruning history
    expected = plan.apply(copy.deepcopy(tiny_resnet), X32)
    loaded = PrunePlan.load(path)
    assert not loaded.history
    fresh = copy.deepcopy(tiny_resnet)
    assert loaded.replay(fresh, X32) is fresh
    assert fresh.layer1.conv1.out_channels == expected.layer1.conv1.out_channels == 5
    assert_same_state(fresh.state_dict(), expected.state_dict())
    assert loaded.history == plan.history  # replay recorded the history it made


def test_unlearn_accepts_class_index_labels(tiny_resnet):
    images = torch.rand(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    result = tu.unlearn(tiny_resnet, [(images, labels)], forget=[0], sigma=2, delta=0.3, progress=False)
    assert result.report["instances"]["0"] == 2


def test_coupled_zero_respects_protection_across_the_group(resnet):
    # layer3's residual stream couples layer3.0.conv2 (unscored here), layer3.0.downsample.0 and
    # layer3.1.conv2. Channel 1 is flagged in both scored layers but protected in layer3.1.conv2.
    flagged = {"layer3.0.downsample.0": [0, 1, 2], "layer3.1.conv2": [0, 1, 2]}
    protected = {"layer3.1.conv2": [1]}
    plan = make_plan(resnet["model"], flagged, protected, resnet["x"],
                     candidates=["layer3.0.downsample.0", "layer3.1.conv2"], coupled="zero")
    (decision,) = plan.decisions
    assert decision.action == "zero"
    assert decision.channels == [0, 2]
    assert decision.members == {"layer3.0.downsample.0": [0, 2], "layer3.1.conv2": [0, 2]}


def test_align_tops_up_with_the_best_unprotected_channels(tiny_resnet):
    priority = {"layer2.conv1": torch.arange(16, dtype=torch.float32)}  # channel 15 scores highest
    plan = make_plan(tiny_resnet, {"layer2.conv1": [0, 1, 2]}, {"layer2.conv1": [14]}, X32,
                     candidates=["layer2.conv1"], priority=priority, align=8)
    (decision,) = plan.decisions
    assert decision.action == "prune"
    assert decision.channels == [0, 1, 2, 10, 11, 12, 13, 15]  # flagged + best unprotected, never 14
    model = plan.apply(copy.deepcopy(tiny_resnet), X32)
    assert model.layer2.conv1.out_channels == 8
    assert model(X32).shape == (1, 10)


def test_align_cuts_back_when_protection_leaves_too_few(tiny_resnet):
    protected = {"layer2.conv1": list(range(3, 16))}
    plan = make_plan(tiny_resnet, {"layer2.conv1": [0, 1, 2]}, protected, X32, candidates=["layer2.conv1"], align=8)
    (decision,) = plan.decisions
    assert decision.action == "skip" and "block of 8" in decision.reason
    unaligned = make_plan(tiny_resnet, {"layer2.conv1": [0, 1, 2]}, protected, X32, candidates=["layer2.conv1"])
    assert unaligned.decisions[0].channels == [0, 1, 2]


# ---- explain(): what was removed and why -------------------------------------------------------------


def assert_explanation_adds_up(plan: PrunePlan) -> dict:
    info = plan.explain()
    for layer, row in info["layers"].items():
        assert row["removed"] == (row["flagged"] - row["align_kept"] - row["protected_kept"] + row["align_added"]
                                  + row["coupled_added"]), layer
        assert row["removed"] == len(plan.removed.get(layer, []))
        assert min(row.values()) >= 0, (layer, row)
    assert info["total"]["removed"] == plan.removed_channels
    return info


def test_explain_counts_channels_alignment_adds(tiny_resnet):
    priority = {"layer2.conv1": torch.arange(16, dtype=torch.float32)}
    plan = make_plan(tiny_resnet, {"layer2.conv1": [0, 1, 2]}, {"layer2.conv1": [14]}, X32,
                     candidates=["layer2.conv1"], priority=priority, align=8)
    row = assert_explanation_adds_up(plan)["layers"]["layer2.conv1"]
    assert row == {"channels": 16, "flagged": 3, "align_added": 5, "align_kept": 0, "protected_kept": 0,
                   "coupled_added": 0, "removed": 8}
    assert plan.removed_channels == 8
    table = plan.dry_run()
    assert "+align" in table and "layer2.conv1" in table.splitlines()[-2]
    assert table.splitlines()[-1].split() == ["total", "16", "3", "5", "0", "0", "0", "8"]


def test_explain_counts_channels_alignment_holds_back(tiny_resnet):
    protected = {"layer2.conv1": list(range(3, 16))}
    plan = make_plan(tiny_resnet, {"layer2.conv1": [0, 1, 2]}, protected, X32, candidates=["layer2.conv1"], align=8)
    row = assert_explanation_adds_up(plan)["layers"]["layer2.conv1"]
    assert (row["flagged"], row["align_kept"], row["protected_kept"], row["removed"]) == (3, 3, 0, 0)


def test_explain_counts_channels_a_protected_group_keeps(tiny_resnet):
    plan = make_plan(tiny_resnet, {"layer2.conv2": [0, 1, 2]}, {"layer2.shortcut.0": [1]}, X32,
                     candidates=["layer2.conv2", "layer2.shortcut.0"], coupled="prune")
    info = assert_explanation_adds_up(plan)
    assert info["layers"]["layer2.conv2"] == {"channels": 16, "flagged": 3, "align_added": 0, "align_kept": 0,
                                              "protected_kept": 1, "coupled_added": 0, "removed": 2}
    # the shortcut loses the same channels without having been flagged: removed with its coupled conv
    assert info["layers"]["layer2.shortcut.0"]["coupled_added"] == 2
    assert info["total"]["removed"] == 4 == plan.removed_channels
    skipped = make_plan(tiny_resnet, {"layer2.conv2": [0, 1, 2]}, {}, X32, candidates=["layer2.conv2"],
                        ignored_layers=["layer2.shortcut"], coupled="prune")
    row = assert_explanation_adds_up(skipped)["layers"]["layer2.conv2"]
    assert (row["flagged"], row["protected_kept"], row["removed"]) == (3, 3, 0)


def test_explain_on_a_real_request_adds_up(resnet):
    for closure in (False, True):
        result = resnet["run"]("physical", "protect", closure)
        info = assert_explanation_adds_up(result.plan)
        assert result.report["removal"] == info
        assert info["total"]["flagged"] == result.report["graph"]["flagged"]
