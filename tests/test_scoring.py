"""Channel scoring (Alg. 2, Eq. 3): hand-computed Grad-CAM weights, one forward per batch,
no parameter gradients, truncated backward, instance caps, stability and serialization."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tpunlearn.errors import DataError, UsageError
from tpunlearn.scoring import ChannelScores, TargetScores, score_channels, top_count
from tpunlearn.targets import ClassLogit

from helpers import forwards

LAYERS = ["conv2", "conv3"]


def hand_alpha(model: nn.Module, image: torch.Tensor, target: int, layers: list[str]) -> dict[str, torch.Tensor]:
    """Grad-CAM weight of one image by hand: d logit / d F_l, mean over pixels, per channel."""
    feats: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(l).register_forward_hook(lambda m, i, o, l=l: feats.__setitem__(l, o))
               for l in layers]
    try:
        model.eval()
        with torch.enable_grad():
            x = image.unsqueeze(0).clone().requires_grad_(True)  # so every feature is in the graph
            logit = model(x)[0, target]
            grads = torch.autograd.grad(logit, [feats[l] for l in layers])
    finally:
        for h in handles:
            h.remove()
    return {l: g[0].mean(dim=(1, 2)) for l, g in zip(layers, grads)}


def present(multi_hot: torch.Tensor, t: int) -> torch.Tensor:
    return (multi_hot[:, t] > 0.5).nonzero().flatten()


def test_one_sample_equals_hand_computation(tiny_cnn):
    image = torch.rand(3, 32, 32)
    for t in (0, 4):
        multi_hot = torch.zeros(1, 10)
        multi_hot[0, t] = 1
        scores = score_channels(tiny_cnn, [(image[None], multi_hot)], LAYERS, {t: ClassLogit(t)},
                                n_per_target=1, progress=False)
        expected = hand_alpha(tiny_cnn, image, t, LAYERS)
        assert scores.targets[t].count == 1
        for layer in LAYERS:
            assert scores.alpha(t, layer).shape == (tiny_cnn.get_submodule(layer).out_channels,)
            assert torch.allclose(scores.alpha(t, layer), expected[layer], atol=1e-6, rtol=1e-5)
            # signed, as in the paper: no abs anywhere
            assert (expected[layer] < 0).any() and (expected[layer] > 0).any()


def test_residual_model_one_sample_equals_hand_computation(tiny_resnet):
    layers = ["layer1.conv2", "layer2.shortcut.0", "layer2.conv2"]
    image = torch.rand(3, 32, 32)
    multi_hot = torch.zeros(1, 10)
    multi_hot[0, 3] = 1
    scores = score_channels(tiny_resnet, [(image[None], multi_hot)], layers, {3: ClassLogit(3)},
                            n_per_target=1, progress=False)
    expected = hand_alpha(tiny_resnet, image, 3, layers)
    for layer in layers:
        assert torch.allclose(scores.alpha(3, layer), expected[layer], atol=1e-6, rtol=1e-5)


def test_average_over_samples_is_mean_of_per_sample_alphas(tiny_cnn, samples):
    targets = {0: ClassLogit(0), 1: ClassLogit(1), 5: ClassLogit(5)}
    scores = score_channels(tiny_cnn, samples, LAYERS, targets, n_per_target=100, progress=False)
    for t in targets:
        per_sample = [hand_alpha(tiny_cnn, images[i], t, LAYERS)
                      for images, multi_hot in samples for i in present(multi_hot, t).tolist()]
        assert scores.targets[t].count == len(per_sample) > 1
        for layer in LAYERS:
            stacked = torch.stack([a[layer] for a in per_sample])
            assert torch.allclose(scores.targets[t].instances[layer], stacked, atol=1e-6, rtol=1e-5)
            assert torch.allclose(scores.alpha(t, layer), stacked.mean(0), atol=1e-6, rtol=1e-5)


def test_multiclass_index_labels_are_accepted(tiny_cnn):
    images = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([2, 0, 2, 1])
    scores = score_channels(tiny_cnn, [(images, labels)], LAYERS, {2: ClassLogit(2), 0: ClassLogit(0)},
                            progress=False)
    assert scores.targets[2].count == 2 and scores.targets[0].count == 1
    expected = hand_alpha(tiny_cnn, images[1], 0, LAYERS)
    assert torch.allclose(scores.alpha(0, "conv3"), expected["conv3"], atol=1e-6, rtol=1e-5)


def test_one_forward_per_batch_for_any_number_of_targets(tiny_cnn, samples):
    targets = {t: ClassLogit(t) for t in range(10)}
    _, sizes = forwards(tiny_cnn, lambda: score_channels(tiny_cnn, samples, LAYERS, targets, n_per_target=100,
                                                         progress=False))
    assert sizes == [6, 6]


def test_no_forward_once_every_target_is_full(tiny_cnn, make_samples):
    batches = make_samples(n_batches=4, batch=6)
    _, sizes = forwards(tiny_cnn, lambda: score_channels(tiny_cnn, batches, LAYERS, {0: ClassLogit(0)},
                                                         n_per_target=1, progress=False))
    assert len(sizes) == 1


def test_hooks_are_removed(tiny_resnet, samples):
    score_channels(tiny_resnet, samples, ["layer1.conv2", "layer2.conv2"], {0: ClassLogit(0), 1: ClassLogit(1)},
                   progress=False)
    for name, module in tiny_resnet.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert not module._backward_hooks, name


def test_hooks_are_removed_when_scoring_fails(tiny_cnn, samples):
    def boom(output, select=None):
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        score_channels(tiny_cnn, samples, LAYERS, {0: boom}, progress=False)
    assert all(not m._forward_hooks for m in tiny_cnn.modules())


@pytest.mark.parametrize("training", [True, False])
def test_parameters_untouched_and_flags_restored(tiny_cnn, samples, training):
    tiny_cnn.train(training)
    tiny_cnn.conv1.weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    flags = {n: p.requires_grad for n, p in tiny_cnn.named_parameters()}
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    score_channels(tiny_cnn, samples, LAYERS, {0: ClassLogit(0), 3: ClassLogit(3)}, progress=False)
    assert tiny_cnn.training is training
    assert all(m.training is training for m in tiny_cnn.modules())
    assert {n: p.requires_grad for n, p in tiny_cnn.named_parameters()} == flags
    assert all(p.grad is None for p in tiny_cnn.parameters())
    after = tiny_cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats too (eval mode)


def test_flags_restored_when_scoring_fails(tiny_cnn):
    tiny_cnn.train()
    with pytest.raises(DataError):
        score_channels(tiny_cnn, [(torch.rand(2, 3, 32, 32), torch.zeros(2, 10))], LAYERS, {0: ClassLogit(0)},
                       progress=False)
    assert tiny_cnn.training
    assert all(p.requires_grad for p in tiny_cnn.parameters())


def test_scoring_runs_in_eval_mode(tiny_cnn, samples):
    modes = []
    handle = tiny_cnn.bn2.register_forward_hook(lambda m, i, o: modes.append(m.training))
    try:
        tiny_cnn.train()
        score_channels(tiny_cnn, samples, LAYERS, {0: ClassLogit(0)}, progress=False)
    finally:
        handle.remove()
    assert modes and not any(modes)


def test_backward_stops_at_the_earliest_candidate_layer(tiny_cnn, samples):
    """Nothing before conv2 (the earliest candidate) takes part in the backward pass."""
    fired = []
    upstream_requires_grad = []

    def on_conv1(module, inputs, output):
        upstream_requires_grad.append(output.requires_grad)
        if output.requires_grad:
            output.register_hook(lambda g: fired.append("conv1 output"))

    handles = [
        tiny_cnn.conv1.register_forward_hook(on_conv1),
        tiny_cnn.bn1.register_full_backward_hook(lambda m, gi, go: fired.append("bn1")),
        tiny_cnn.conv1.register_full_backward_hook(lambda m, gi, go: fired.append("conv1")),
    ]
    try:
        score_channels(tiny_cnn, samples, LAYERS, {0: ClassLogit(0), 1: ClassLogit(1)}, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert upstream_requires_grad == [False, False]
    assert fired == []


def test_backward_stops_even_when_inputs_require_grad(tiny_cnn):
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    multi_hot = torch.ones(3, 10)
    fired = []
    handle = tiny_cnn.conv1.register_full_backward_hook(lambda m, gi, go: fired.append("conv1"))
    try:
        scores = score_channels(tiny_cnn, [(images, multi_hot)], LAYERS, {0: ClassLogit(0)}, progress=False)
    finally:
        handle.remove()
    assert fired == []
    assert images.grad is None
    assert scores.targets[0].count == 3


def test_n_per_target_caps_instances(tiny_cnn, make_samples):
    batches = make_samples(n_batches=3, batch=6)
    available = {t: sum(int((mh[:, t] > 0.5).sum()) for _, mh in batches) for t in range(10)}
    scores = score_channels(tiny_cnn, batches, LAYERS, {t: ClassLogit(t) for t in range(10)}, n_per_target=2,
                            progress=False)
    for t in range(10):
        assert scores.targets[t].count == min(2, available[t])
        for layer in LAYERS:
            assert scores.targets[t].instances[layer].shape == (scores.targets[t].count,
                                                                tiny_cnn.get_submodule(layer).out_channels)


def test_n_per_target_uses_the_first_instances(tiny_cnn):
    images = torch.rand(4, 3, 32, 32)
    multi_hot = torch.zeros(4, 10)
    multi_hot[:, 2] = 1
    scores = score_channels(tiny_cnn, [(images, multi_hot)], LAYERS, {2: ClassLogit(2)}, n_per_target=2,
                            progress=False)
    first_two = torch.stack([hand_alpha(tiny_cnn, images[i], 2, LAYERS)["conv3"] for i in range(2)])
    assert scores.targets[2].count == 2
    assert torch.allclose(scores.targets[2].instances["conv3"], first_two, atol=1e-6, rtol=1e-5)


def test_absent_target_raises_data_error(tiny_cnn, samples):
    stripped = [(images, multi_hot.clone()) for images, multi_hot in samples]
    for _, multi_hot in stripped:
        multi_hot[:, 7] = 0
    with pytest.raises(DataError, match=r"\[7\]"):
        score_channels(tiny_cnn, stripped, LAYERS, {0: ClassLogit(0), 7: ClassLogit(7)}, progress=False)


@pytest.mark.parametrize("kwargs", [dict(n_per_target=0), dict(method="nope")])
def test_bad_arguments_raise_usage_error(tiny_cnn, samples, kwargs):
    with pytest.raises(UsageError):
        score_channels(tiny_cnn, samples, LAYERS, {0: ClassLogit(0)}, progress=False, **kwargs)


def test_no_layers_raise_usage_error(tiny_cnn, samples):
    with pytest.raises(UsageError):
        score_channels(tiny_cnn, samples, [], {0: ClassLogit(0)}, progress=False)


def test_stability_in_unit_interval(tiny_cnn, samples):
    scores = score_channels(tiny_cnn, samples, LAYERS, {t: ClassLogit(t) for t in range(4)}, progress=False)
    for delta in (0.1, 0.3, 1.0):
        stab = scores.stability(delta)
        assert set(stab) == {0, 1, 2, 3}
        for value in stab.values():
            assert 0.0 <= value <= 1.0
    # top-100% is every channel for every instance: perfectly stable
    assert all(v == 1.0 for v in scores.stability(1.0).values())


def test_stability_is_one_for_identical_instances(tiny_cnn):
    images = torch.rand(1, 3, 32, 32).expand(5, -1, -1, -1).contiguous()
    multi_hot = torch.zeros(5, 10)
    multi_hot[:, 1] = 1
    scores = score_channels(tiny_cnn, [(images, multi_hot)], LAYERS, {1: ClassLogit(1)}, progress=False)
    assert scores.targets[1].count == 5
    assert scores.stability(0.25)[1] == pytest.approx(1.0)


def test_stability_below_one_for_disagreeing_instances():
    alpha = {"a": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    inst = {"a": torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])}
    ts = TargetScores(alpha=alpha, count=2, instances=inst)
    # delta=0.25 picks one channel: instance 0 agrees (1.0), instance 1 does not (0.0)
    assert ts.stability(0.25) == pytest.approx(0.5)


def test_taylor_and_abs_methods(tiny_cnn, samples):
    grad = score_channels(tiny_cnn, samples, LAYERS, {0: ClassLogit(0)}, progress=False)
    absolute = score_channels(tiny_cnn, samples, LAYERS, {0: ClassLogit(0)}, method="abs", progress=False)
    taylor = score_channels(tiny_cnn, samples, LAYERS, {0: ClassLogit(0)}, method="taylor", progress=False)
    assert absolute.method == "abs" and taylor.method == "taylor"
    for layer in LAYERS:
        assert torch.allclose(absolute.targets[0].instances[layer], grad.targets[0].instances[layer].abs())
        assert (absolute.alpha(0, layer) >= 0).all()
        assert not torch.allclose(taylor.alpha(0, layer), grad.alpha(0, layer))


def test_channel_scores_round_trip(tiny_cnn, samples):
    scores = score_channels(tiny_cnn, samples, LAYERS, {0: ClassLogit(0), 6: ClassLogit(6)}, progress=False)
    assert scores.channels == {"conv2": 12, "conv3": 16}
    for instances in (False, True):
        data = json.loads(json.dumps(scores.to_dict(instances=instances)))
        back = ChannelScores.from_dict(data)
        assert back.layers == scores.layers
        assert back.channels == scores.channels
        assert back.method == scores.method
        assert set(back.targets) == {0, 6}
        for t in (0, 6):
            assert back.targets[t].count == scores.targets[t].count
            for layer in LAYERS:
                assert torch.equal(back.alpha(t, layer), scores.alpha(t, layer))
                if instances:
                    assert torch.equal(back.targets[t].instances[layer], scores.targets[t].instances[layer])
                else:
                    assert back.targets[t].instances == {}
        if instances:
            assert back.stability(0.2) == scores.stability(0.2)


def test_from_dict_rejects_other_formats():
    with pytest.raises(DataError):
        ChannelScores.from_dict({"format": "something-else"})


@pytest.mark.parametrize("channels,delta,expected", [(10, 0.3, 3), (10, 0.05, 1), (7, 0.5, 4), (64, 0.05, 4),
                                                     (3, 1.0, 3), (100, 0.07, 7)])
def test_top_count(channels, delta, expected):
    assert top_count(channels, delta) == expected


@pytest.mark.parametrize("delta", [0.0, -0.1, 1.5])
def test_top_count_rejects_bad_delta(delta):
    with pytest.raises(UsageError):
        top_count(10, delta)


def test_only_images_some_target_uses_are_forwarded(tiny_cnn):
    images = torch.rand(6, 3, 32, 32)
    multi_hot = torch.zeros(6, 10)
    multi_hot[[1, 4], 2] = 1  # images 0, 2, 3, 5 hold no scored target
    multi_hot[[0, 3], 7] = 1  # ... only an unscored one
    scores, sizes = forwards(tiny_cnn, lambda: score_channels(tiny_cnn, [(images, multi_hot)], LAYERS,
                                                              {2: ClassLogit(2)}, progress=False))
    assert sizes == [2]
    expected = torch.stack([hand_alpha(tiny_cnn, images[i], 2, LAYERS)["conv3"] for i in (1, 4)])
    assert torch.allclose(scores.targets[2].instances["conv3"], expected, atol=1e-6, rtol=1e-5)
