"""Candidate layers: execution order (not definition order), sigma, ignored layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tpunlearn.errors import UsageError
from tpunlearn.layers import candidate_layers, execution_order, is_prunable_conv, module_by_name


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32)


def test_fixture_defines_modules_out_of_call_order(tiny_resnet):
    defined = [n for n, m in tiny_resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(defined) == sorted(tiny_resnet.EXEC_ORDER)
    assert defined != tiny_resnet.EXEC_ORDER


def test_execution_order_follows_calls(tiny_resnet, x):
    assert execution_order(tiny_resnet, x) == tiny_resnet.EXEC_ORDER


def test_execution_order_accepts_tuple_inputs(tiny_resnet, x):
    assert execution_order(tiny_resnet, (x,)) == tiny_resnet.EXEC_ORDER


def test_execution_order_restores_training_flag_and_leaves_no_hooks(tiny_resnet, x):
    tiny_resnet.train()
    execution_order(tiny_resnet, x)
    assert tiny_resnet.training
    assert all(not m._forward_hooks for m in tiny_resnet.modules())


def test_execution_order_lists_a_reused_module_once(x):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Conv2d(4, 4, 1)
            self.a = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.b(self.b(self.a(x)))

    assert execution_order(Twice(), x) == ["a", "b"]


@pytest.mark.parametrize("sigma", [1, 2, 4, 6])
def test_candidate_layers_are_the_last_sigma(tiny_resnet, x, sigma):
    assert candidate_layers(tiny_resnet, x, sigma) == tiny_resnet.EXEC_ORDER[-sigma:]


def test_ignored_names_are_excluded(tiny_resnet, x):
    layers = candidate_layers(tiny_resnet, x, 3, ignored_layers=["layer2.conv2"])
    assert layers == ["layer1.conv2", "layer2.shortcut.0", "layer2.conv1"]


def test_ignored_containers_exclude_their_children(tiny_resnet, x):
    layers = candidate_layers(tiny_resnet, x, 3, ignored_layers=["layer2"])
    assert layers == ["stem", "layer1.conv1", "layer1.conv2"]
    layers = candidate_layers(tiny_resnet, x, 5, ignored_layers=["layer2.shortcut"])
    assert layers == ["stem", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2"]


def test_ignored_prefix_is_not_a_substring_match(tiny_resnet, x):
    # "layer" is no module: it must not swallow layer1.* and layer2.*
    assert candidate_layers(tiny_resnet, x, 6, ignored_layers=["layer"]) == tiny_resnet.EXEC_ORDER


def test_single_output_convs_are_not_candidates(x):
    class OneOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(4, 1, 1)

        def forward(self, x):
            return self.b(self.a(x))

    model = OneOut()
    assert not is_prunable_conv(model.b)
    assert candidate_layers(model, x, 1) == ["a"]


@pytest.mark.parametrize("sigma", [0, -1])
def test_sigma_below_one_raises(tiny_resnet, x, sigma):
    with pytest.raises(UsageError, match="sigma"):
        candidate_layers(tiny_resnet, x, sigma)


def test_sigma_above_conv_count_raises(tiny_resnet, x):
    with pytest.raises(UsageError, match="sigma"):
        candidate_layers(tiny_resnet, x, 7)
    # the ignored layers no longer count
    with pytest.raises(UsageError, match="sigma"):
        candidate_layers(tiny_resnet, x, 4, ignored_layers=["layer2"])


def test_everything_ignored_raises(tiny_cnn, x):
    with pytest.raises(UsageError):
        candidate_layers(tiny_cnn, x, 1, ignored_layers=["conv1", "conv2", "conv3"])


def test_usage_error_is_a_value_error(tiny_resnet, x):
    with pytest.raises(ValueError):
        candidate_layers(tiny_resnet, x, 0)


def test_module_by_name(tiny_resnet):
    assert module_by_name(tiny_resnet, "layer2.shortcut.0") is tiny_resnet.layer2.shortcut[0]
    with pytest.raises(UsageError, match="no layer named"):
        module_by_name(tiny_resnet, "layer3.conv1")
