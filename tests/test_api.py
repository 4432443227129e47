"""tpunlearn.api: the input model is never modified, whatever mode it was handed over in."""
from __future__ import annotations

import torch
from torch import nn

import tpunlearn as tu
from tpunlearn.api import score_targets, verify


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """Every tensor of the state dict (BatchNorm buffers included) and every module's training flag."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {name: m.training for name, m in model.named_modules()})


def assert_unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], dict[str, bool]]) -> None:
    state, flags = before
    now = model.state_dict()
    assert list(now) == list(state)
    changed = [k for k in state if not torch.equal(state[k], now[k])]
    assert not changed, f"changed: {changed}"
    assert {name: m.training for name, m in model.named_modules()} == flags


def test_a_train_mode_model_is_unchanged_by_unlearn_score_targets_and_verify(tiny_resnet, samples):
    model = tiny_resnet.train()
    model.layer1.bn2.eval()  # a mixed model: each module's own flag must survive
    before = snapshot(model)
    kwargs = dict(example_inputs=samples[0][0][:2], sigma=3, delta=0.3, retain_tolerance=3, align=None, progress=False)
    res = tu.unlearn(model, samples, forget=[3], **kwargs)
    assert res.report["removed_channels"] > 0  # something was pruned, so the test can tell
    assert_unchanged(model, before)
    assert res.model.training and not res.model.layer1.bn2.training  # the copy keeps the flags it was given

    scores = score_targets(model, samples, example_inputs=samples[0][0][:2], sigma=3, progress=False)
    assert set(scores.targets) == set(range(10))
    assert_unchanged(model, before)

    # class-index labels: unlearn runs the input model to count the targets
    labels = [(images, multi_hot.argmax(1)) for images, multi_hot in samples]
    tu.unlearn(model, labels, forget=[3], **kwargs)
    assert_unchanged(model, before)

    pruned_before = snapshot(res.model)
    verify(res.model, model, res.plan, samples[0][0][:2])
    assert_unchanged(model, before)
    assert_unchanged(res.model, pruned_before)

