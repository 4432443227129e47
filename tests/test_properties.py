"""Property tests (hypothesis) on small random networks.

* Any flagged and protected sets, under any policy: planning and pruning never crash,
  never empty a layer, never remove a protected channel, and the model still runs.
* A plan saved to JSON and replayed on a fresh copy gives bit-identical weights.
* Physical removal and mask-mode zeroing give the same outputs on local groups.
* On a residual pair scored through one conv only, coupled=protect skips the group, zero
  keeps its shapes and zeroes the wanted channels, prune removes them from both convs.
* The balanced graph's sums are Eq. 4 computed by hand, and Alg. 4 flags what it should.

Each property counts what its examples exercised (examples drawn, examples whose plan
removes or zeroes a channel, group decisions by action) and asserts that pruning happened
in a measured share of them: a change that made every plan empty would otherwise pass.

The networks are drawn, not fixed: a chain or a residual net, with random widths, with or
without BatchNorm, seeded weights and non-trivial BN statistics. Examples are derandomized
so that the default suite is deterministic.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tpunlearn.graph import EssentialGraph, balance
from tpunlearn.plan import COUPLED, MODES, PrunePlan, make_plan, signature

from helpers import assert_same_state, n_params, randomize_norms

SETTINGS = settings(max_examples=20, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
SIZE = 16


class RandomNet(nn.Module):
    """conv(-bn)-relu layers of the given widths; ``residual`` adds a skip around one
    same-width pair (a coupled group); global pool and a Linear head."""

    def __init__(self, widths: list[int], residual: bool, bn: bool) -> None:
        super().__init__()
        self.residual = residual
        chans = [3, *widths]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=not bn) for a, b in zip(chans, chans[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(b) if bn else nn.Identity() for b in widths)
        if residual:
            self.skip = nn.Conv2d(widths[0], widths[0], 3, padding=1, bias=not bn)
            self.skip_norm = nn.BatchNorm2d(widths[0]) if bn else nn.Identity()
        self.head = nn.Linear(widths[-1], 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norms[0](self.convs[0](x)))
        if self.residual:  # x + skip(x): convs[0] and skip share their output channels
            x = F.relu(x + self.skip_norm(self.skip(x)))
        for conv, norm in zip(self.convs[1:], self.norms[1:]):
            x = F.relu(norm(conv(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@st.composite
def networks(draw, residual: bool | None = None, min_first_width: int = 1):
    widths = [draw(st.integers(min_first_width, 9)), *draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))]
    residual = draw(st.booleans()) if residual is None else residual
    bn = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = randomize_norms(RandomNet(widths, residual, bn), seed=seed).eval()
    return model


def conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@st.composite
def requests(draw):
    """A random network with random flagged and protected channels per conv, and a policy.

    One conv may be left unscored (out of ``candidates``): a residual group that reaches one
    is where the coupled policies (protect, prune, zero) differ.
    """
    model = draw(networks())
    names = conv_names(model)
    flagged, protected = {}, {}
    for name in names:
        width = model.get_submodule(name).out_channels
        channels = st.lists(st.integers(0, width - 1), unique=True, max_size=width)
        flagged[name] = sorted(draw(channels))
        protected[name] = sorted(draw(channels))
    unscored = draw(st.sets(st.sampled_from(names), max_size=1))
    policy = dict(coupled=draw(st.sampled_from(COUPLED)), mode=draw(st.sampled_from(MODES)),
                  align=draw(st.sampled_from([None, 2, 4])), candidates=[n for n in names if n not in unscored])
    return model, flagged, protected, policy


def example(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def plan_for(model: nn.Module, flagged, protected, candidates=None, **policy) -> PrunePlan:
    return make_plan(model, flagged, protected, example(), candidates=candidates or conv_names(model),
                     ignored_layers=["head"], **policy)


def tally_plan(tally: Counter, plan: PrunePlan) -> None:
    """Count one drawn example: its group decisions by action, and whether it removes anything."""
    tally["examples"] += 1
    tally["examples removing channels"] += plan.removed_channels > 0
    tally.update(f"groups {d.action}" for d in plan.decisions)


def planned(request, tally: Counter) -> tuple[nn.Module, PrunePlan, dict[str, list[int]]]:
    """The model, the plan for a drawn request (counted in ``tally``) and its protected channels."""
    model, flagged, protected, policy = request
    plan = plan_for(model, flagged, protected, **policy)
    tally_plan(tally, plan)
    return model, plan, protected


def assert_exercised(tally: Counter, examples: int, removing: int, **groups: int) -> None:
    """At least ``examples`` examples ran, ``removing`` of them removed channels, and at least
    ``groups[action]`` groups took each action: the floors sit below the counts measured."""
    assert tally["examples"] >= examples, tally
    assert tally["examples removing channels"] >= removing, tally
    for action, floor in groups.items():
        assert tally[f"groups {action}"] >= floor, tally


# Over 200 random draws of ``requests()``, 58 % of the plans remove or zero channels (0.8 groups
# pruned and 0.9 skipped per example), 29 % shrink the model physically, and 49 % of the
# local-only plans of the third property prune. The derandomized 20 examples of each property
# gave 8 to 16 removing plans over the edits of this file (hypothesis seeds them from the test's
# source, so an edit redraws them). A floor of 5 in 20 (4 for the local-only plans) sits 2.5 to 3
# standard deviations below those rates, so it survives a redraw, while a change that empties
# every plan fails.
FLOORS = dict(examples=20, removing=5, prune=5, skip=5)


def test_random_flags_never_empty_a_layer_nor_crash():
    tally: Counter = Counter()

    @SETTINGS
    @given(requests())
    def check(request):
        model, plan, protected = planned(request, tally)
        pruned = plan.apply(copy.deepcopy(model), example())
        for name in conv_names(model):
            assert pruned.get_submodule(name).out_channels >= 1, name
        assert pruned.head.out_features == 5
        for d in plan.decisions:
            if d.action in ("prune", "zero"):
                for layer, idxs in d.members.items():
                    assert not set(idxs) & set(protected.get(layer, [])), (layer, idxs)
        tally["examples slimmer"] += n_params(pruned) < n_params(model)
        with torch.no_grad():
            out = pruned(example(1, batch=2))
        assert out.shape == (2, 5) and torch.isfinite(out).all()

    check()
    assert_exercised(tally, **FLOORS)
    assert tally["examples slimmer"] >= 2, tally  # physical plans really shrink the model


def test_removal_explanation_adds_up_on_random_plans():
    """Per layer, removed = flagged - held back by alignment - kept by protection + added by
    alignment + added by coupling, and the total is the plan's removed_channels."""
    tally: Counter = Counter()

    @SETTINGS
    @given(requests())
    def check(request):
        _model, plan, _protected = planned(request, tally)
        info = plan.explain()
        for layer, row in info["layers"].items():
            assert row["removed"] == (row["flagged"] - row["align_kept"] - row["protected_kept"]
                                      + row["align_added"] + row["coupled_added"]), (layer, row)
            assert row["removed"] == len(plan.removed.get(layer, [])) and min(row.values()) >= 0, (layer, row)
            if layer in request[3]["candidates"]:
                assert row["flagged"] == len(set(request[1].get(layer, []))), (layer, row)
        assert info["total"]["removed"] == plan.removed_channels
        tally.update(f"rows with {k}" for row in info["layers"].values() for k in
                     ("align_added", "protected_kept", "coupled_added") if row[k])

    check()
    assert_exercised(tally, **FLOORS)
    # protection keeping is exercised here (23 and 30 rows over two draws); alignment and coupling adding
    # are rare in these small random nets (0-1 rows), so test_plan checks them by hand
    assert tally["rows with protected_kept"] >= 5, tally


def test_replayed_plan_equals_the_applied_plan():
    tally: Counter = Counter()

    @SETTINGS
    @given(requests())
    def check(request):
        model, plan, _protected = planned(request, tally)
        applied = plan.apply(copy.deepcopy(model), example())
        loaded = PrunePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
        replayed = loaded.replay(copy.deepcopy(model), example())
        assert_same_state(applied.state_dict(), replayed.state_dict())
        tally["examples with a history"] += bool(plan.history)

    check()
    assert_exercised(tally, **FLOORS)
    assert tally["examples with a history"] >= 2, tally  # replay went through torch-pruning's history


def test_physical_and_mask_agree_on_local_groups():
    tally: Counter = Counter()

    @SETTINGS
    @given(requests())
    def check(request):
        model, flagged, protected, policy = request
        plan = plan_for(model, flagged, protected, coupled="protect", mode="physical", align=policy["align"])
        local = dataclasses.replace(plan, decisions=[d for d in plan.decisions if d.local and d.action == "prune"])
        tally_plan(tally, local)
        physical = local.apply(copy.deepcopy(model), example())
        masked = dataclasses.replace(local, mode="mask").apply(copy.deepcopy(model), example())
        x = example(2, batch=3)
        with torch.no_grad():
            a, b = physical(x), masked(x)
        scale = float(b.abs().max()) or 1.0
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, scale)
        removed = sum(len(d.channels) for d in local.decisions)
        assert (n_params(physical) < n_params(model)) == (removed > 0)

    check()
    assert_exercised(tally, examples=20, removing=4, prune=4)


@st.composite
def residual_requests(draw):
    """A residual network whose coupled pair (convs.0 + skip) is scored through one conv only,
    with channels flagged in that one and at least one of them unprotected."""
    model = draw(networks(residual=True, min_first_width=2))
    scored, unscored = draw(st.permutations(["convs.0", "skip"]))
    width = model.skip.out_channels
    flagged = draw(st.lists(st.integers(0, width - 1), unique=True, min_size=1, max_size=width))
    protected = set(draw(st.lists(st.integers(0, width - 1), unique=True, max_size=width))) - {flagged[0]}
    candidates = [n for n in conv_names(model) if n != unscored]
    return model, scored, unscored, {scored: sorted(flagged)}, {scored: sorted(protected)}, candidates


def test_coupled_policies_on_a_partly_scored_residual_group():
    """protect leaves the group alone, zero keeps its shapes and zeroes the scored conv's wanted
    channels, prune removes them from both convs of the pair."""
    tally: Counter = Counter()

    @settings(max_examples=10, deadline=None, database=None, derandomize=True)
    @given(residual_requests())
    def check(request):
        model, scored, unscored, flagged, protected, candidates = request
        wanted = sorted(set(flagged[scored]) - set(protected[scored]))
        tally["examples"] += 1
        for coupled in COUPLED:
            plan = plan_for(model, flagged, protected, candidates=candidates, coupled=coupled, mode="physical",
                            align=None)
            (decision,) = plan.decisions
            tally[f"groups {decision.action}"] += 1
            pruned = plan.apply(copy.deepcopy(model), example())
            if coupled == "protect":
                assert decision.action == "skip" and "unscored" in decision.reason, decision
                assert_same_state(pruned.state_dict(), model.state_dict())
            elif coupled == "zero":
                assert decision.action == "zero" and decision.members == {scored: wanted}, decision
                assert signature(pruned) == signature(model)
                assert (pruned.get_submodule(scored).weight[wanted] == 0).all()
                assert torch.equal(pruned.get_submodule(unscored).weight, model.get_submodule(unscored).weight)
            else:
                width = model.skip.out_channels
                assert decision.action == "prune" and not decision.local, decision
                assert set(decision.members) == {scored, unscored}
                kept = width - len(decision.channels)
                assert 1 <= kept < width
                assert pruned.convs[0].out_channels == pruned.skip.out_channels == kept
            with torch.no_grad():
                assert pruned(example(1, batch=2)).shape == (2, 5)

    check()
    # every example takes each policy's path: one group skipped, one zeroed, one pruned
    assert tally == Counter({"examples": 10, "groups skip": 10, "groups zero": 10, "groups prune": 10}), tally


@st.composite
def essential_graphs(draw):
    """Per-target essential graphs over random layers, a forget/retain split and a tolerance."""
    widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    layers = [f"l{i}" for i in range(len(widths))]
    n_targets = draw(st.integers(2, 6))
    graphs = {}
    for t in range(n_targets):
        nodes = {}
        for layer, width in zip(layers, widths):
            chosen = draw(st.lists(st.integers(0, width - 1), unique=True, min_size=1, max_size=width))
            nodes[layer] = {c: 1.0 for c in chosen}
        graphs[t] = EssentialGraph(target=t, delta=0.5, layers=layers, nodes=nodes)
    n_forget = draw(st.integers(1, n_targets - 1))
    targets = draw(st.permutations(range(n_targets)))
    forget, retain = sorted(targets[:n_forget]), sorted(targets[n_forget:])
    tolerance = draw(st.integers(0, n_targets - 1))
    return graphs, forget, retain, dict(zip(layers, widths)), tolerance


def test_balanced_sums_are_eq4_by_hand():
    tally: Counter = Counter()

    @settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(essential_graphs())
    def check(case):
        graphs, forget, retain, channels, tolerance = case
        bg = balance(graphs, forget, retain, channels, retain_tolerance=tolerance)
        size = len(forget) + len(retain)  # |Y|
        assert bg.n_targets == size
        flagged = bg.flagged()
        for layer, width in channels.items():
            for k in range(width):
                # Eq. 4: O = |Y| for a node a forget target selects, -1 for a retained target's, 0 otherwise
                total = 0
                for t in forget:
                    total += size if k in graphs[t].nodes[layer] else 0
                for t in retain:
                    total += -1 if k in graphs[t].nodes[layer] else 0
                assert int(bg.value[layer][k]) == total, (layer, k)
                forget_hits = sum(k in graphs[t].nodes[layer] for t in forget)
                retain_hits = sum(k in graphs[t].nodes[layer] for t in retain)
                assert (k in flagged[layer]) == (forget_hits > 0 and retain_hits <= tolerance)
                if len(forget) == 1:  # Alg. 4 with a tolerance: flag where the sum reaches |Y| - tolerance
                    assert (k in flagged[layer]) == (total >= size - tolerance)
                    tally["single-forget nodes"] += 1
        tally["examples"] += 1
        tally["examples flagging"] += any(flagged.values())
        tally["examples not flagging everything"] += sum(map(len, flagged.values())) < sum(channels.values())

    check()
    # measured on these 60 derandomized examples: 34 flag some node, 50 leave some node
    # unflagged, 321 node checks ran the single-forget rule; the floors ask for about half
    assert tally["examples"] >= 60, tally
    assert tally["examples flagging"] >= 15, tally
    assert tally["examples not flagging everything"] >= 25, tally
    assert tally["single-forget nodes"] >= 100, tally
