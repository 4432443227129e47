"""The repair fine-tune (tpunlearn.repair): it trains, keeps pruned channels gone, never rebuilds."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import tpunlearn as tu
from tpunlearn.errors import UsageError
from tpunlearn.repair import repair


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
    assert res.plan.removed_channels > 0
    shapes = {k: v.shape for k, v in res.model.state_dict().items()}
    repair(res.model, samples, _bce, epochs=3, lr=1e-2, plan=res.plan, progress=False)
    assert {k: v.shape for k, v in res.model.state_dict().items()} == shapes
    for layer, idxs in res.plan.zero_ops().items():
        weight = dict(res.model.named_modules())[layer].weight
        assert weight[idxs].abs().max() == 0, layer
    if mode == "mask":
        assert res.plan.zero_ops()


def test_zero_epochs_is_a_no_op_and_bad_settings_are_refused(tiny_cnn, samples):
    state = copy.deepcopy(tiny_cnn.state_dict())
    assert repair(tiny_cnn, samples, _bce, epochs=0)["steps"] == 0
    assert all(torch.equal(v, state[k]) for k, v in tiny_cnn.state_dict().items())
    with pytest.raises(UsageError):
        repair(tiny_cnn, samples, _bce, epochs=1, lr=0)
