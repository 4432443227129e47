"""Output layers found in torch-pruning's graph, groups it cannot search, and tracer failures.

The layers whose output channels are the model's outputs are protected without being named
(timm's 1x1-conv classifiers); they agree with the heads each family's adapter ignores. A
group through a channel slice (RexNet) is left alone without torch-pruning's search, and an
operation the tracer cannot model (CS3-Darknet's concatenations) is named and left alone.
"""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import tpunlearn as tu
from tpunlearn import adapters
from tpunlearn.errors import TracerError
from tpunlearn.layers import names_of
from tpunlearn.tracing import UNTRACED, blocked_reason, build_dependency_graph, output_layers

from helpers import build_tiny_cnn, build_tiny_resnet


def two_targets(n: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.zeros(n, 2)
    y[: n // 2, 0] = 1
    y[n // 2:, 1] = 1
    return [(x, y)]


def graph_outputs(model: nn.Module, x: torch.Tensor, transform=None) -> list[str]:
    return output_layers(model, build_dependency_graph(model, x, transform))


def covered(found: list[str], ignored: list[str]) -> list[str]:
    return [n for n in found if any(n == i or n.startswith(i + ".") for i in ignored)]


@pytest.mark.parametrize("build,expected", [(build_tiny_cnn, ["head"]), (build_tiny_resnet, ["head"])])
def test_tiny_models_output_is_their_head(build, expected):
    assert graph_outputs(build(), torch.rand(1, 3, 32, 32)) == expected


@pytest.mark.parametrize("arch,expected", [("resnet18", ["fc"]), ("dla34", ["fc"])])
def test_timm_output_layers_are_the_classifier(arch, expected):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=3).eval()
    found = graph_outputs(model, torch.rand(1, 3, 32, 32))
    assert found == expected
    assert names_of(model, [model.get_classifier()]) == expected


def test_output_layers_agree_with_yolov5_and_deeplab_adapters():
    """Every output layer the graph finds is a layer the family's adapter already ignores."""
    torch.manual_seed(0)
    yolo = adapters.get("yolov5")
    model, info = yolo.build("yolov5n.yaml", nc=3, imgsz=64)
    found = graph_outputs(model, yolo.example_inputs(info), yolo.output_transform)
    ignored = names_of(model, yolo.ignored_layers(model, info))
    assert found and covered(found, ignored) == found, (found, ignored)
    assert sum(n.endswith("dfl.conv") for n in found) == 1  # the DFL decodes boxes: its outputs are outputs
    assert sum(".cv3." in n for n in found) == 3  # the class convs of the three levels

    seg = adapters.get("deeplabv3")
    model, info = seg.build("deeplabv3_mobilenet_v3_large", num_classes=3, imgsz=64, aux_loss=True)
    found = graph_outputs(model, seg.example_inputs(info), seg.output_transform)
    ignored = names_of(model, seg.ignored_layers(model, info))
    assert covered(found, ignored) == found and "classifier.4" in found
    assert any(n.startswith("aux_classifier") for n in found)


def test_dla34_without_ignored_layers_keeps_its_outputs():
    """dla34's classifier is a 1x1 conv: it used to lose a class output (PlanError, (2, 2) -> (2, 1))."""
    torch.manual_seed(0)
    model = timm.create_model("dla34", num_classes=2).eval()
    samples = two_targets(8, 32)
    with torch.no_grad():
        before = model(samples[0][0][:2])
    result = tu.unlearn(model, samples, forget=[0], sigma=3, progress=False)
    assert result.plan.removed_channels > 0
    assert "fc" not in result.plan.removed and "fc" not in result.report["layers"]
    assert result.model.fc.out_channels == 2
    with torch.no_grad():
        assert result.model(samples[0][0][:2]).shape == before.shape
    assert any("output layer(s) fc" in n for n in result.report["notes"]), result.report["notes"]


class ConvHead(nn.Module):
    """A conv classifier read through a flatten, with no module named like a head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.logits = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(nn.functional.adaptive_avg_pool2d(self.body(x), 1)).flatten(1)


def test_a_group_reaching_the_output_is_skipped_by_the_plan():
    """Even when the caller asks for the output conv to be scored, the plan never prunes it."""
    from tpunlearn.plan import make_plan

    torch.manual_seed(0)
    model = ConvHead().eval()
    x = torch.rand(1, 3, 16, 16)
    plan = make_plan(model, {"logits": [0, 1]}, {}, x, candidates=["logits"], coupled="prune")
    assert [d.action for d in plan.decisions] == ["skip"]
    assert "output channels" in plan.decisions[0].reason


class SlicedResidual(nn.Module):
    """RexNet's partial residual: ``out[:, :c] += x``, a channel slice torch-pruning cannot prune."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 12, 3, padding=1)
        self.tail = nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.expand(x)
        y = torch.cat([y[:, :8] + x, y[:, 8:]], dim=1)
        return self.fc(self.tail(y).mean((2, 3)))


def test_channel_slice_groups_are_left_alone_without_a_search():
    torch.manual_seed(0)
    model = SlicedResidual().eval()
    x = torch.rand(1, 3, 16, 16)
    dg = build_dependency_graph(model, x)
    assert "channel slice" in blocked_reason(dg, model.expand)
    assert blocked_reason(dg, model.tail) == ""
    result = tu.unlearn(model, two_targets(6, 16), forget=[0], sigma=2, delta=0.5, coupled="prune", progress=False)
    skipped = [d for d in result.plan.decisions if d.root == "expand"]
    assert skipped and skipped[0].action == "skip" and "channel slice" in skipped[0].reason
    assert "expand" not in result.plan.removed


def test_cs3darknet_untraceable_concat_is_named_and_left_alone():
    """torch-pruning's own TypeError (update_concat_index_mapping) used to escape from unlearn."""
    torch.manual_seed(0)
    model = timm.create_model("cs3darknet_focus_s", num_classes=2).eval()
    dg = build_dependency_graph(model, torch.rand(1, 3, 32, 32))
    why = list(getattr(dg, UNTRACED).values())
    assert why and all("CspNet" in w and "concat before stages." in w for w in why), why
    result = tu.unlearn(model, two_targets(8, 32), forget=[0], sigma=6, delta=0.5, coupled="prune", progress=False)
    with torch.no_grad():
        assert result.model(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    assert result.plan.removed_channels > 0
    left = [d for d in result.plan.decisions if "cannot model the concat" in d.reason]
    assert left and all(d.action == "skip" for d in left)


def test_a_failed_trace_is_a_tracer_error_naming_the_model():
    def broken(out):
        return out.missing_attribute

    with pytest.raises(TracerError, match=r"cannot trace TinyCNN \("):
        build_dependency_graph(build_tiny_cnn(), torch.rand(1, 3, 32, 32), output_transform=broken)
    with pytest.raises(TracerError, match="TinyCNN"):
        tu.unlearn(build_tiny_cnn(), two_targets(4, 32), forget=[0], output_transform=broken,
                   num_targets=10, progress=False)


@pytest.mark.slow
def test_rexnet_finishes_in_bounded_time():
    """rexnet_100 at 64x64, 2 targets, 64 samples, sigma 3 ran over 10 minutes before the slice guard."""
    torch.manual_seed(0)
    model = timm.create_model("rexnet_100", num_classes=2).eval()
    result = tu.unlearn(model, two_targets(64, 64), forget=[0], sigma=3, progress=False)
    assert result.report["check"]["output_shape"][1] == 2
    assert any("channel slice" in n for n in result.plan.notes), result.plan.notes


def test_inplace_activation_after_the_first_scored_layer():
    """VGG: the first conv is scored and a ReLU(inplace) follows it (a raw RuntimeError from autograd before)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    result = tu.unlearn(model, two_targets(6, 16), forget=[0], sigma=2, delta=0.5, coupled="prune", progress=False)
    assert result.report["layers"] == ["0", "2"]
    assert result.report["check"]["output_shape"] == [1, 2]


class MixedResidual(nn.Module):
    """MixNet's mixed conv: two convs concatenated into a residual stream, so each one's group
    holds part of the stem's channels (two partial groups of one layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 4, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], dim=1) + x
        return self.fc(x.mean((2, 3)))


def test_partial_groups_of_one_layer_are_pruned_once():
    import copy
    from dataclasses import replace

    from tpunlearn.plan import make_plan

    torch.manual_seed(0)
    model = MixedResidual().eval()
    x = torch.rand(2, 3, 16, 16)
    plan = make_plan(model, {"a": [0], "b": [1]}, {}, x[:1], candidates=["a", "b"], coupled="prune")
    pruned = [d for d in plan.decisions if d.action == "prune"]
    assert len(pruned) == 1 and "stem" in pruned[0].members
    assert any("overlaps the group already pruned at stem" in d.reason for d in plan.decisions)
    physical, masked = copy.deepcopy(model), copy.deepcopy(model)
    plan.apply(physical, x[:1])
    replace(plan, mode="mask").apply(masked, x[:1])
    with torch.no_grad():
        assert torch.allclose(physical(x), masked(x), atol=1e-5)
