"""The membership attack and the feature probe (tpunlearn.privacy), on tiny seeded models."""
from __future__ import annotations

import pytest
import torch
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
