"""Essential graphs (Alg. 1) and the balanced graph (Alg. 3, Eq. 4), checked by hand."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tpunlearn.errors import PlanError, UsageError
from tpunlearn.graph import BalancedGraph, EssentialGraph, balance, essential_graph, layer_links
from tpunlearn.plan import build_dependency_graph
from tpunlearn.report import draw_graph
from tpunlearn.scoring import ChannelScores, TargetScores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Hand-made alphas. delta=0.5 selects 3 of layer a's 6 channels and 2 of layer b's 4.
ALPHA = {
    0: {"a": [5.0, 4.0, 3.0, -10.0, 0.0, 0.5], "b": [1.0, 2.0, -3.0, 0.0]},  # a: {0,1,2}  b: {0,1}
    1: {"a": [0.0, 5.0, 4.0, 3.0, -1.0, -1.0], "b": [3.0, 2.0, 1.0, 0.0]},   # a: {1,2,3}  b: {0,1}
    2: {"a": [0.0, 0.1, 5.0, -2.0, 4.0, 3.0], "b": [0.0, 1.0, 2.0, 3.0]},    # a: {2,4,5}  b: {2,3}
}
SELECTED = {0: {"a": {0, 1, 2}, "b": {0, 1}}, 1: {"a": {1, 2, 3}, "b": {0, 1}}, 2: {"a": {2, 4, 5}, "b": {2, 3}}}


@pytest.fixture
def scores() -> ChannelScores:
    targets = {t: TargetScores(alpha={l: torch.tensor(v) for l, v in per.items()}, count=1)
               for t, per in ALPHA.items()}
    return ChannelScores(layers=["a", "b"], channels={"a": 6, "b": 4}, targets=targets)


@pytest.fixture
def graphs(scores) -> dict[int, EssentialGraph]:
    return {t: essential_graph(scores, t, 0.5) for t in ALPHA}


def test_essential_graph_selects_top_delta_by_signed_alpha(graphs):
    for t, g in graphs.items():
        assert g.target == t and g.layers == ["a", "b"]
        for layer in ("a", "b"):
            assert g.selected(layer) == SELECTED[t][layer]
            assert g.nodes[layer] == {c: ALPHA[t][layer][c] for c in SELECTED[t][layer]}
    # channel a:3 has the largest |alpha| of target 0 but a negative sign: not selected
    assert 3 not in graphs[0].selected("a")


@pytest.mark.parametrize("delta", [0.01, 0.05, 0.1, 0.25, 0.3, 0.5, 0.77, 1.0])
def test_essential_graph_picks_ceil_delta_channels(delta):
    alpha = torch.randn(37, generator=torch.Generator().manual_seed(3))
    scores = ChannelScores(layers=["l"], channels={"l": 37},
                           targets={0: TargetScores(alpha={"l": alpha}, count=1)})
    g = essential_graph(scores, 0, delta)
    k = max(1, math.ceil(delta * 37))
    assert len(g.selected("l")) == k
    assert g.selected("l") == set(torch.argsort(alpha, descending=True)[:k].tolist())


def test_essential_graph_edges_join_consecutive_selected_nodes(graphs):
    g = graphs[0]
    assert {(a, i, b, j) for a, i, b, j, _ in g.edges} == {("a", i, "b", j) for i in (0, 1, 2) for j in (0, 1)}
    assert all(w is None for *_, w in g.edges)  # no links given: unweighted


def test_essential_graph_unknown_target_raises(scores):
    with pytest.raises(UsageError):
        essential_graph(scores, 9, 0.5)


def test_eq4_values_by_hand(graphs):
    bg = balance(graphs, forget=[0], retain=[1, 2], channels={"a": 6, "b": 4})
    assert bg.n_targets == 3
    # |Y| * forget_hits - retain_hits, worked out by hand from SELECTED
    assert bg.forget_hits["a"].tolist() == [1, 1, 1, 0, 0, 0]
    assert bg.retain_hits["a"].tolist() == [0, 1, 2, 1, 1, 1]
    assert bg.value["a"].tolist() == [3, 2, 1, -1, -1, -1]
    assert bg.forget_hits["b"].tolist() == [1, 1, 0, 0]
    assert bg.retain_hits["b"].tolist() == [1, 1, 1, 1]
    assert bg.value["b"].tolist() == [2, 2, -1, -1]
    for layer in ("a", "b"):
        assert torch.equal(bg.value[layer], 3 * bg.forget_hits[layer] - bg.retain_hits[layer])


def test_eq4_general_formula_with_more_targets():
    gen = torch.Generator().manual_seed(5)
    n_targets, channels = 6, {"x": 20, "y": 9}
    targets = {t: TargetScores(alpha={l: torch.randn(c, generator=gen) for l, c in channels.items()}, count=1)
               for t in range(n_targets)}
    scores = ChannelScores(layers=list(channels), channels=channels, targets=targets)
    graphs = {t: essential_graph(scores, t, 0.3) for t in range(n_targets)}
    bg = balance(graphs, forget=[4], retain=[0, 1, 2, 3, 5], channels=channels)
    for layer, c in channels.items():
        f = torch.tensor([int(i in graphs[4].selected(layer)) for i in range(c)])
        r = torch.tensor([sum(i in graphs[t].selected(layer) for t in (0, 1, 2, 3, 5)) for i in range(c)])
        assert torch.equal(bg.value[layer], n_targets * f - r)
        expected = [i for i in range(c) if f[i] == 1 and r[i] == 0]
        assert bg.flagged()[layer] == expected


def test_flagged_with_zero_tolerance_is_forget_only(graphs):
    bg = balance(graphs, forget=[0], retain=[1, 2], channels={"a": 6, "b": 4})
    assert bg.flagged() == {"a": [0], "b": []}
    for layer in ("a", "b"):
        forget_only = SELECTED[0][layer] - SELECTED[1][layer] - SELECTED[2][layer]
        assert set(bg.flagged()[layer]) == forget_only
    assert bg.protected() == {"a": [1, 2, 3, 4, 5], "b": [0, 1, 2, 3]}
    assert bg.summary() == {"n_targets": 3, "flagged": 1, "flagged_per_layer": {"a": 1, "b": 0}, "protected": 9}


def test_retain_tolerance_one_admits_exactly_one_retained_selector(graphs):
    bg = balance(graphs, forget=[0], retain=[1, 2], channels={"a": 6, "b": 4}, retain_tolerance=1)
    # a:1 is also selected by target 1, b:0 and b:1 by target 1; a:2 by both retained: still kept
    assert bg.flagged() == {"a": [0, 1], "b": [0, 1]}
    assert bg.protected() == {"a": [2], "b": []}
    bg2 = balance(graphs, forget=[0], retain=[1, 2], channels={"a": 6, "b": 4}, retain_tolerance=2)
    assert bg2.flagged() == {"a": [0, 1, 2], "b": [0, 1]}


def test_flagged_and_protected_are_disjoint(graphs):
    for tol in (0, 1, 2):
        bg = balance(graphs, forget=[0], retain=[1, 2], channels={"a": 6, "b": 4}, retain_tolerance=tol)
        for layer in ("a", "b"):
            assert not set(bg.flagged()[layer]) & set(bg.protected()[layer])


def test_two_forget_targets(graphs):
    bg = balance(graphs, forget=[1, 0], retain=[2], channels={"a": 6, "b": 4})
    assert bg.forget == [0, 1] and bg.retain == [2] and bg.n_targets == 3
    assert bg.forget_hits["a"].tolist() == [1, 2, 2, 1, 0, 0]
    assert bg.retain_hits["a"].tolist() == [0, 0, 1, 0, 1, 1]
    assert bg.value["a"].tolist() == [3, 6, 5, 3, -1, -1]
    assert bg.value["b"].tolist() == [6, 6, -1, -1]
    flagged = bg.flagged()
    # selected by either forget target and by no retained one: flagged
    for c in (0, 1, 3):
        assert c in flagged["a"]
    assert flagged["b"] == [0, 1]
    # selected by no forget target: never flagged
    assert not {4, 5} & set(flagged["a"])


def test_two_forget_targets_respect_retain_tolerance(graphs):
    # a:2 is selected by both forget targets AND by retained target 2. With tolerance 0 no
    # retained target may select a flagged node (DESIGN.md 1.5), so it must not be flagged and
    # must be protected. Eq. 4 gives it 2*3 - 1 = 5 >= 3, and it is flagged.
    bg = balance(graphs, forget=[0, 1], retain=[2], channels={"a": 6, "b": 4}, retain_tolerance=0)
    assert 2 not in bg.flagged()["a"]
    assert 2 in bg.protected()["a"]


def test_target_both_forgotten_and_retained_raises(graphs):
    with pytest.raises(UsageError, match="both forgotten and retained"):
        balance(graphs, forget=[0], retain=[0, 1], channels={"a": 6, "b": 4})


@pytest.mark.parametrize("kwargs", [dict(forget=[], retain=[1]), dict(forget=[0], retain=[7]),
                                    dict(forget=[0], retain=[1], retain_tolerance=-1)])
def test_balance_rejects_bad_requests(graphs, kwargs):
    with pytest.raises(UsageError):
        balance(graphs, channels={"a": 6, "b": 4}, **kwargs)


def test_layer_links_weight_equals_abs_kernel_sum(tiny_cnn):
    x = torch.rand(1, 3, 32, 32)
    dg = build_dependency_graph(tiny_cnn, x)
    links = layer_links(tiny_cnn, dg, ["conv1", "conv2", "conv3"])
    assert set(links) == {("conv1", "conv2"), ("conv2", "conv3")}
    w3 = tiny_cnn.conv3.weight.detach()
    expected = w3.abs().sum(dim=(2, 3))
    assert links[("conv2", "conv3")].shape == (16, 12)
    assert torch.allclose(links[("conv2", "conv3")], expected)
    for j, i in [(0, 0), (5, 11), (15, 3)]:
        assert float(links[("conv2", "conv3")][j, i]) == pytest.approx(float(w3[j, i].abs().sum()), rel=1e-6)
    assert torch.allclose(links[("conv1", "conv2")], tiny_cnn.conv2.weight.detach().abs().sum(dim=(2, 3)))


def test_layer_links_skip_layers_that_do_not_feed_each_other(tiny_cnn):
    x = torch.rand(1, 3, 32, 32)
    dg = build_dependency_graph(tiny_cnn, x)
    assert layer_links(tiny_cnn, dg, ["conv1", "conv3"]) == {}


def test_layer_links_follow_concat_index_mapping():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 5, 3, padding=1)
            self.c = nn.Conv2d(9, 6, 3, padding=1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1))

    model = Cat().eval()
    x = torch.rand(1, 3, 16, 16)
    links = layer_links(model, build_dependency_graph(model, x), ["b", "c"])
    w = model.c.weight.detach().abs().sum(dim=(2, 3))
    # b's output channel i is c's input channel 4 + i
    assert torch.allclose(links[("b", "c")], w[:, 4:])


def test_essential_graph_edge_weights_come_from_links(tiny_cnn):
    x = torch.rand(1, 3, 32, 32)
    links = layer_links(tiny_cnn, build_dependency_graph(tiny_cnn, x), ["conv2", "conv3"])
    gen = torch.Generator().manual_seed(2)
    scores = ChannelScores(layers=["conv2", "conv3"], channels={"conv2": 12, "conv3": 16},
                           targets={0: TargetScores(alpha={"conv2": torch.randn(12, generator=gen),
                                                           "conv3": torch.randn(16, generator=gen)}, count=1)})
    g = essential_graph(scores, 0, 0.25, links)
    assert len(g.selected("conv2")) == 3 and len(g.selected("conv3")) == 4
    assert len(g.edges) == 12
    w3 = tiny_cnn.conv3.weight.detach()
    for a, i, b, j, weight in g.edges:
        assert (a, b) == ("conv2", "conv3")
        assert i in g.selected("conv2") and j in g.selected("conv3")
        assert weight == pytest.approx(float(w3[j, i].abs().sum()), rel=1e-6)


def test_essential_graph_round_trip(graphs):
    g = graphs[2]
    g.edges.append(("a", 2, "b", 3, 0.25))
    back = EssentialGraph.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g


def test_balanced_graph_round_trip_and_save_load(graphs, tmp_path):
    bg = balance(graphs, forget=[0], retain=[1, 2], channels={"a": 6, "b": 4}, retain_tolerance=1)
    data = json.loads(json.dumps(bg.to_dict()))
    assert data["flagged"] == {"a": [0, 1], "b": [0, 1]}
    for back in (BalancedGraph.from_dict(data), _save_load(bg, tmp_path / "sub" / "graph.json")):
        assert back.layers == bg.layers and back.channels == bg.channels
        assert back.forget == bg.forget and back.retain == bg.retain
        assert back.retain_tolerance == 1
        for layer in bg.layers:
            assert torch.equal(back.value[layer], bg.value[layer])
            assert torch.equal(back.forget_hits[layer], bg.forget_hits[layer])
            assert torch.equal(back.retain_hits[layer], bg.retain_hits[layer])
        assert back.flagged() == bg.flagged()
        assert back.protected() == bg.protected()
        assert back.graphs == bg.graphs


def _save_load(bg: BalancedGraph, path) -> BalancedGraph:
    bg.save(path)
    assert path.is_file()
    assert list(path.parent.iterdir()) == [path]  # atomic write leaves no temp file
    return BalancedGraph.load(path)


def test_balanced_graph_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "tpunlearn-plan/1"}))
    with pytest.raises(PlanError):
        BalancedGraph.load(path)
    path.write_text("{not json")
    with pytest.raises(PlanError):
        BalancedGraph.load(path)


def test_draw_writes_png(graphs, tmp_path):
    bg = balance(graphs, forget=[0], retain=[1, 2], channels={"a": 6, "b": 4})
    path = tmp_path / "graph.png"
    draw_graph(bg, path, title="test")
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC
