"""Scoring holds bounded memory as samples grow: it streams batches and keeps no
per-sample activations.

Two checks that do not depend on timing or on the allocator: every batch's activations are
freed before the next batch is read (weak references to them are dead), and what the scores
keep per target is the running mean plus at most ``keep_instances`` rows, whatever
``n_per_target`` is. ``benchmarks/bench_memory.py`` measures the peak RSS on the zoo model.
"""
from __future__ import annotations

import weakref
from typing import Iterator

import torch
from torch import nn

from tpunlearn.scoring import score_channels
from tpunlearn.targets import ClassLogit

LAYERS = ["conv1", "conv2", "conv3"]


def _batches(n: int, batch: int = 8, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.rand(batch, 3, 32, 32, generator=gen), (torch.rand(batch, 10, generator=gen) < 0.5).float()


def test_each_batch_activations_are_freed_before_the_next_batch(tiny_cnn):
    alive: list[list[weakref.ref]] = []

    def watch(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
        alive[-1].append(weakref.ref(output))

    handles = [tiny_cnn.get_submodule(name).register_forward_hook(watch) for name in LAYERS]

    def samples() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k, batch in enumerate(_batches(5)):
            if k:  # the scorer is asking for batch k: batch k-1's activations must be gone
                assert alive[-1], "no activation was recorded"
                assert all(ref() is None for refs in alive for ref in refs), f"activations of batch {k - 1} alive"
            alive.append([])
            yield batch

    try:
        scores = score_channels(tiny_cnn, samples(), LAYERS, {t: ClassLogit(t) for t in range(3)},
                                n_per_target=1000, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert len(alive) == 5  # every batch was scored (1000 instances per target are never reached)
    assert all(s.count > 5 for s in scores.targets.values())


def test_kept_state_does_not_grow_with_samples(tiny_cnn):
    kept = {}
    for n in (4, 16):
        scores = score_channels(tiny_cnn, list(_batches(12)), LAYERS, {t: ClassLogit(t) for t in range(10)},
                                n_per_target=n, progress=False, keep_instances=3)
        for t, s in scores.targets.items():
            assert s.count == n  # the mean uses every instance
            for layer in LAYERS:
                assert s.instances[layer].shape == (3, scores.channels[layer])  # rows capped
                assert s.alpha[layer].shape == (scores.channels[layer],)
        kept[n] = sum(v.numel() for s in scores.targets.values() for d in (s.alpha, s.instances) for v in d.values())
    assert kept[4] == kept[16]


def test_capped_rows_are_the_first_instances(tiny_cnn):
    data = list(_batches(6))
    full = score_channels(tiny_cnn, data, LAYERS, {0: ClassLogit(0)}, n_per_target=16, progress=False)
    capped = score_channels(tiny_cnn, data, LAYERS, {0: ClassLogit(0)}, n_per_target=16, progress=False,
                            keep_instances=5)
    for layer in LAYERS:
        assert torch.equal(capped.alpha(0, layer), full.alpha(0, layer))
        assert torch.equal(capped.targets[0].instances[layer], full.targets[0].instances[layer][:5])
