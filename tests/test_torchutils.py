"""tpunlearn.torchutils: eval mode that restores every module's own flag, and forwards that change nothing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tpunlearn.torchutils import (call, count_params, eval_mode, forward, main_tensor, norm_width, out_width,
                                  requires_grad)


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def test_eval_mode_restores_each_modules_own_flag(tiny_resnet):
    model = tiny_resnet.train()
    model.layer1.eval()  # one submodule set apart (as frozen norms are during repair)
    model.layer2.bn1.eval()
    before = flags(model)
    assert not before["layer1"] and not before["layer1.bn1"] and before["layer2"] and not before["layer2.bn1"]
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(flags(model).values())
    assert flags(model) == before


def test_eval_mode_restores_the_flags_after_an_error(tiny_resnet):
    model = tiny_resnet.train()
    model.stem_bn.eval()
    before = flags(model)
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert flags(model) == before


def test_forward_in_train_mode_changes_no_buffer_and_no_flag(tiny_resnet):
    model = tiny_resnet.train()
    model.layer1.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = flags(model)
    x = torch.rand(4, 3, 32, 32)
    out = forward(model, x)
    assert not out.requires_grad
    assert flags(model) == before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with eval_mode(model), torch.no_grad():
        assert torch.equal(out, model(x))  # the eval-mode output
    call(model, x)  # a raw call in train mode does update BatchNorm: the test above can fail
    assert not torch.equal(state["stem_bn.running_mean"], model.state_dict()["stem_bn.running_mean"])


def test_call_takes_tensors_tuples_and_dicts():
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a - b

    a, b = torch.ones(2), torch.zeros(2)
    assert torch.equal(call(Two(), (a, b)), a)
    assert torch.equal(call(Two(), {"a": b, "b": a}), -a)
    assert torch.equal(call(nn.Identity(), a), a)


def test_main_tensor_and_widths():
    t = torch.zeros(2, 3)
    assert main_tensor(t) is t and main_tensor({"out": t, "aux": None}) is t and main_tensor((t, 1)) is t
    with pytest.raises(TypeError):
        main_tensor("text")
    assert norm_width(nn.BatchNorm2d(5)) == 5 and norm_width(nn.GroupNorm(2, 6)) == 6
    assert norm_width(nn.LayerNorm(7)) == 7 and norm_width(nn.ReLU()) is None
    assert out_width(nn.Conv2d(3, 4, 1)) == 4 and out_width(nn.Linear(3, 9)) == 9 and out_width(nn.ReLU()) is None
    assert count_params(nn.Linear(3, 2)) == 8


def test_requires_grad_sets_the_flags_inside_and_restores_each_ones_own():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].bias.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError), requires_grad(model.parameters(), False):
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("restored even so")
    assert [p.requires_grad for p in model.parameters()] == before == [True, True, True, False]
    with requires_grad(list(model[0].parameters()), True):
        assert [p.requires_grad for p in model.parameters()] == before
