"""The membership attack and the feature probe (tpunlearn.privacy), on tiny seeded models."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import build_tiny_cnn
from torch import nn

from tpunlearn.errors import DataError
from tpunlearn.privacy import (LinearProbe, entropy, expand_features, head_layer, mia_score, penultimate_features,
                               probe_scores)


def test_entropy_is_zero_for_certain_and_log_c_for_uniform():
    logits = torch.tensor([[100.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    e = entropy(logits)
    assert e[0] == pytest.approx(0.0, abs=1e-6)
    assert e[1] == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-5)


class _Memoriser(nn.Module):
    """Confident (low entropy) on the images it 'trained' on, uncertain elsewhere."""

    def __init__(self, members: torch.Tensor) -> None:
        super().__init__()
        self.members = members
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = (x.flatten(1)[:, None, :] == self.members.flatten(1)[None]).all(-1).any(1)
        out = torch.zeros(len(x), 4) + self.head.bias * 0
        out[seen, 0] = 20.0
        return out


def _batches(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + 8], torch.zeros(len(x[i:i + 8]), 4)) for i in range(0, len(x), 8)]


def test_mia_calls_memorised_samples_members_and_unseen_ones_not():
    gen = torch.Generator().manual_seed(0)
    retain, test, forget = (torch.rand(n, 1, 4, 4, generator=gen) for n in (40, 40, 16))
    remembers = _Memoriser(torch.cat([retain, forget]))
    forgot = _Memoriser(retain)
    full = mia_score(remembers, _batches(retain), _batches(test), _batches(forget))
    assert full.score == 1.0 and full.retain_member_rate == 1.0 and full.test_member_rate == 0.0
    assert (full.n_retain, full.n_test, full.n_forget) == (40, 40, 16)
    assert mia_score(forgot, _batches(retain), _batches(test), _batches(forget)).score == 0.0


def test_mia_refuses_empty_data(tiny_cnn):
    with pytest.raises(DataError, match="no samples"):
        mia_score(tiny_cnn, [], [(torch.rand(2, 3, 8, 8),)], [(torch.rand(2, 3, 8, 8),)])


def test_penultimate_features_are_the_heads_input(tiny_cnn, samples):
    feats, labels = penultimate_features(tiny_cnn, samples)
    assert feats.shape == (12, 16) and labels.shape == (12, 10)
    assert head_layer(tiny_cnn) is tiny_cnn.head
    logits = torch.cat([tiny_cnn(x) for x, _ in samples])
    torch.testing.assert_close(tiny_cnn.head(feats), logits)
    assert not tiny_cnn.training


def test_probe_finds_a_linearly_coded_target_and_loses_it_when_the_feature_goes():
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, 3, generator=gen) < 0.5).float()
    feats = torch.randn(400, 6, generator=gen) * 0.3
    feats[:, 2] += 3 * labels[:, 1]  # target 1 lives in feature 2
    probe = LinearProbe.fit(feats[:200], labels[:200], target=1)
    assert probe.auc(feats[200:], labels[200:]) > 0.95
    wiped = feats.clone()
    wiped[:, 2] = 0
    assert probe.auc(wiped[200:], labels[200:]) < 0.65
    scores = probe_scores((feats[:200], labels[:200]), (wiped[:200], labels[:200]), (wiped[200:], labels[200:]),
                          (feats[200:], labels[200:]), target=1)
    assert scores["original"] > 0.95 and scores["fixed"] < 0.65 and scores["refit"] < 0.65
    with pytest.raises(DataError, match="all or none"):
        LinearProbe.fit(feats, torch.ones(400, 3), target=0)


def test_expand_features_puts_columns_back_at_their_original_indices():
    pruned = torch.tensor([[1.0, 2.0, 3.0]])
    out = expand_features(pruned, 5, removed=[1, 3])
    assert out.tolist() == [[1.0, 0.0, 2.0, 0.0, 3.0]]
    with pytest.raises(DataError):
        expand_features(pruned, 5, removed=[1])


# ---- issue 14: the SVM attack, the k-NN probe, region probes, inversion ---------------------------------------
def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _memorisation_data():
    """Random inputs with random labels: a model can only be confident on them by memorising them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(360, 16, generator=gen)
    y = torch.randint(0, 4, (360,), generator=gen)
    return (x[:200], y[:200]), (x[200:320], y[200:320]), (x[320:], y[320:])  # retain, test, forget


def _labelled(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    hot = nn.functional.one_hot(y, 4).float()
    return [(x[i:i + 50], hot[i:i + 50]) for i in range(0, len(x), 50)]


def test_svm_attack_calls_memorised_forget_samples_members_more_than_unseen_ones():
    from tpunlearn.privacy import classifier_checks, svm_mia

    (xr, yr), (xt, yt), (xf, yf) = _memorisation_data()
    overfit = _fit(_mlp(0), torch.cat([xr, xf]), torch.cat([yr, yf]))
    never = _fit(_mlp(0), xr, yr)

    def efficacy(model: nn.Module) -> float:
        with torch.no_grad():
            groups = [(model(x), nn.functional.one_hot(y, 4).float()) for x, y in ((xr, yr), (xt, yt), (xf, yf))]
        result = svm_mia(*groups, multilabel=False)
        assert result.kind == "mia" and set(result.detail) == {"confidence", "entropy", "m_entropy"}
        assert result.detail["confidence"]["retain_member_rate"] > result.detail["confidence"]["test_member_rate"]
        return result.value

    remembered, unseen = efficacy(overfit), efficacy(never)
    assert remembered < 0.3 < 0.7 < unseen  # efficacy = forget samples called non-members
    checks = classifier_checks(never, _labelled(xr, yr), _labelled(xt, yt), _labelled(xf, yf), [0], multilabel=False)
    assert set(checks) == {"entropy_mia", "svm_mia_efficacy", "linear_probe_auc", "knn_probe_auc"}
    assert checks["svm_mia_efficacy"].value == pytest.approx(unseen)
    assert json.loads(json.dumps({k: r.to_dict() for k, r in checks.items()}))["knn_probe_auc"]["kind"] == "probe"


def test_multilabel_confidence_features_fall_where_a_true_label_is_doubted():
    from tpunlearn.privacy import confidence_features

    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    logits = torch.tensor([[8.0, -8.0], [-8.0, -8.0]])  # sure of both labels / doubts the first
    f = confidence_features(logits, labels, multilabel=True)
    assert f["confidence"][0] > 0.99 and f["confidence"][1] < 0.05
    assert f["m_entropy"][0] < f["m_entropy"][1]


def test_knn_probe_finds_a_nonlinearly_coded_target_and_not_a_shuffled_one():
    from tpunlearn.privacy import KNNProbe, knn_k, probe_aucs

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(800, 4, generator=gen)
    holds = (feats[:, 0] * feats[:, 1]) > 0  # XOR of two signs: no linear probe reads it
    probe = KNNProbe.fit(feats[:400], holds[:400])
    assert probe.k == knn_k(400) == 21
    assert probe.auc(feats[400:], holds[400:]) > 0.9
    shuffled = holds[torch.randperm(800, generator=gen)]
    assert abs(KNNProbe.fit(feats[:400], shuffled[:400]).auc(feats[400:], shuffled[400:]) - 0.5) < 0.1
    both = probe_aucs((feats[:400], holds[:400]), (feats[400:], holds[400:]))
    assert both["knn_probe_auc"].value > 0.9 and both["linear_probe_auc"].value < 0.7


def test_probes_refuse_too_few_samples_and_a_target_in_none():
    from tpunlearn.privacy import KNNProbe, probe_aucs

    feats = torch.randn(40, 3)
    with pytest.raises(DataError, match="too few samples.*with a forget target"):
        probe_aucs((feats, torch.arange(40) < 2), (feats, torch.arange(40) < 20))
    with pytest.raises(DataError, match="all or none"):
        KNNProbe.fit(feats, torch.zeros(40, dtype=torch.bool))


def _colour_scenes(n: int, seed: int = 0) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """64x64 scenes with two squares each; class 1 squares red, classes 2 and 3 green or blue; mask per image."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n // 8):
        images, masks = torch.zeros(8, 3, 64, 64), []
        for b in range(8):
            mask = torch.zeros(64, 64, dtype=torch.uint8)
            for k, cls in enumerate(torch.randint(1, 4, (2,), generator=gen).tolist()):
                y = int(torch.randint(0, 40, (1,), generator=gen))
                x = 32 * k + int(torch.randint(0, 8, (1,), generator=gen))
                images[b, [0, 1, 2][cls - 1], y:y + 20, x:x + 20] = 0.9
                mask[y:y + 20, x:x + 20] = cls
            masks.append(mask)
        batches.append((images, masks))
    return batches


def test_region_probes_on_a_tiny_deeplab_read_a_colour_coded_target():
    from tpunlearn.adapters import get
    from tpunlearn.data.regions import MaskRegions
    from tpunlearn.privacy import region_checks, region_features

    adapter = get("deeplabv3")
    model, info = adapter.build("deeplabv3_resnet_tiny", num_classes=4, imgsz=64)
    layer = adapter.probe_layer(model, info)
    scenes = _colour_scenes(48)
    regions = MaskRegions(scenes, skip=[0])
    feats, classes, ids = region_features(model, layer, MaskRegions(scenes[:2], skip=[0]))
    expected = sum(len(m.unique()) - 1 for _images, masks in scenes[:2] for m in masks)  # one per class
    assert layer == "classifier.0" and feats.shape == (expected, 128) and set(classes.tolist()) == {1, 2, 3}
    assert ids.max() == 15
    expected = sum(len(m.unique()) - 1 for _images, masks in scenes for m in masks)
    checks = region_checks(model, layer, regions, [1])
    assert set(checks) == {"linear_probe_auc", "knn_probe_auc"}
    assert checks["linear_probe_auc"].value > 0.9 and checks["knn_probe_auc"].value > 0.9
    assert checks["knn_probe_auc"].detail["layer"] == "classifier.0"
    assert checks["linear_probe_auc"].n["train"] + checks["linear_probe_auc"].n["test"] == expected
    with pytest.raises(DataError, match="no region"):
        region_checks(model, layer, regions, [0])  # the background is never a region


def test_box_regions_pool_the_cells_a_box_covers():
    from tpunlearn.data.regions import letterboxed_boxes
    from tpunlearn.privacy import _region_weights

    w = _region_weights(torch.tensor([0.0, 0.0, 0.5, 0.25]), (4, 4))
    assert w.sum() == pytest.approx(0.125) and (w[:1, :2] > 0).all() and w[1:].sum() == 0
    # a 200x100 image letterboxed into 64x64: scaled by 0.32, 16 rows of padding above
    box = letterboxed_boxes(torch.tensor([[0, 0.5, 0.5, 1.0, 1.0]]), 200, 100, 64)[0]
    torch.testing.assert_close(box, torch.tensor([0.0, 16 / 64, 1.0, 48 / 64]))


def test_inversion_raises_the_target_logit_from_the_same_seed_and_leaves_the_model():
    from tpunlearn.privacy import invert_target

    model = build_tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = invert_target(model, 2, (3, 16, 16), steps=30, tv=0.1, l2=0.01, bounds=(0.0, 1.0))
    again = invert_target(model, 2, (3, 16, 16), steps=30, tv=0.1, l2=0.01, bounds=(0.0, 1.0))
    assert x.shape == (3, 16, 16) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.testing.assert_close(x, again)
    start = (0.5 + 0.1 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        assert model(x[None])[0, 2] > model(start)[0, 2]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_checks_the_data_cannot_support_are_recorded_or_raised():
    from tpunlearn.privacy import classifier_checks

    (xr, yr), (xt, yt), (xf, yf) = _memorisation_data()
    model = _mlp(0).eval()
    few = _labelled(xf[:3], yf[:3])  # three forget samples: too few for the SVM (label 0 is everywhere: probes run)
    not_run: dict = {}
    checks = classifier_checks(model, _labelled(xr, yr), _labelled(xt, yt), few, [0], multilabel=False,
                               not_run=not_run)
    assert set(checks) == {"entropy_mia", "linear_probe_auc", "knn_probe_auc"}
    assert checks["entropy_mia"].n["forget"] == 3
    assert set(not_run) == {"svm_mia_efficacy"}
    assert "too few samples" in not_run["svm_mia_efficacy"]
    with pytest.raises(DataError, match="too few samples .*: 3 forget training samples"):
        classifier_checks(model, _labelled(xr, yr), _labelled(xt, yt), few, [0], multilabel=False)
