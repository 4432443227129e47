"""The repair fine-tune (tpunlearn.repair): it trains, keeps pruned channels gone, never rebuilds."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import tpunlearn as tu
from tpunlearn.errors import UsageError
from tpunlearn.plan import signature
from tpunlearn.repair import repair

from helpers import norm_after, snapshot


def _bce(out, batch):
    return F.binary_cross_entropy_with_logits(out, batch[1])


def _loss(model, batches):
    with torch.no_grad():
        return sum(float(_bce(model(x), (x, y))) for x, y in batches) / len(batches)


def test_repair_lowers_the_loss_and_leaves_eval_mode(tiny_resnet, samples):
    before = _loss(tiny_resnet, samples)
    info = repair(tiny_resnet, samples, _bce, epochs=5, lr=1e-2, progress=False)
    assert info["steps"] == 10 and info["epochs"] == 5
    assert _loss(tiny_resnet, samples) < before
    assert not tiny_resnet.training


def test_frozen_norms_keep_their_running_statistics(tiny_resnet, samples):
    mean = tiny_resnet.stem_bn.running_mean.clone()
    repair(tiny_resnet, samples, _bce, epochs=1, progress=False)
    torch.testing.assert_close(tiny_resnet.stem_bn.running_mean, mean)
    repair(tiny_resnet, samples, _bce, epochs=1, freeze_norms=False, progress=False)
    assert not torch.equal(tiny_resnet.stem_bn.running_mean, mean)


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_repair_keeps_the_unlearned_channels_gone(tiny_resnet, samples, mode):
    x = samples[0][0][:1]
    res = tu.unlearn(tiny_resnet, samples, forget=[3], example_inputs=x, mode=mode, delta=0.3, balanced=False,
                     ignored_layers=[tiny_resnet.head], align=None, progress=False)
    removed = res.plan.removed
    assert removed and res.plan.removed_channels > 0
    before = snapshot(res.model)
    info = repair(res.model, samples, _bce, epochs=3, lr=1e-2, plan=res.plan, progress=False)
    assert info["steps"] == 6
    after = res.model.state_dict()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    assert any(not torch.equal(after[k], before[k]) for k in before)  # the repair did train
    widths = signature(res.model)
    if mode == "physical":
        # the pruned channels stay removed: every pruned layer keeps its pruned width, and nothing zeroes
        assert res.plan.zero_ops() == {}
        for layer, channels in removed.items():
            assert widths[layer][0] == res.plan.signature[layer][0] - len(channels), layer
    else:
        # the zeroed channels stay zero, filters and the norm's affine after them; the shapes stay the original's
        assert res.plan.zero_ops() == removed
        assert widths == res.plan.signature
        for layer, channels in removed.items():
            assert (res.model.get_submodule(layer).weight[channels] == 0).all(), layer
            norm = norm_after(res.model, layer)
            assert (norm.weight[channels] == 0).all() and (norm.bias[channels] == 0).all(), layer


def test_zero_epochs_is_a_no_op_and_bad_settings_are_refused(tiny_cnn, samples):
    state = copy.deepcopy(tiny_cnn.state_dict())
    assert repair(tiny_cnn, samples, _bce, epochs=0)["steps"] == 0
    assert all(torch.equal(v, state[k]) for k, v in tiny_cnn.state_dict().items())
    with pytest.raises(UsageError):
        repair(tiny_cnn, samples, _bce, epochs=1, lr=0)
