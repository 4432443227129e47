"""Shared fixtures: tiny seeded models and multi-label sample batches.

The models and helpers themselves are plain functions in ``helpers.py``; this file only
wraps them as fixtures. ``YOLO_OFFLINE`` is set before any test module imports ultralytics
(it reads the variable at import), so no test reaches for the network.
"""
from __future__ import annotations

import os

import pytest
import torch

from helpers import TinyCNN, TinyResNet, build_tiny_cnn, build_tiny_resnet, make_batches, randomize_norms

os.environ.setdefault("YOLO_OFFLINE", "1")  # none of the imports above loads ultralytics
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """A temp ``TPUNLEARN_CACHE`` for one test module (datasets written there, not into the user's cache)."""
    saved = os.environ.get("TPUNLEARN_CACHE")
    os.environ["TPUNLEARN_CACHE"] = str(tmp_path_factory.mktemp("tpunlearn-cache"))
    yield
    if saved is None:
        os.environ.pop("TPUNLEARN_CACHE", None)
    else:
        os.environ["TPUNLEARN_CACHE"] = saved


@pytest.fixture(scope="session")
def make_tiny_resnet():
    """Factory for module-scoped fixtures: a fresh seeded ``TinyResNet`` in eval mode."""
    return build_tiny_resnet


@pytest.fixture
def tiny_resnet() -> TinyResNet:
    return build_tiny_resnet()


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    return build_tiny_cnn()


@pytest.fixture(scope="session")
def make_samples():
    """Factory: ``make_samples(n_batches=2, batch=6, size=32, num_classes=10, seed=0)``."""
    return make_batches


@pytest.fixture(scope="session")
def randomize_bn():
    """The :func:`helpers.randomize_norms` helper, for module-scoped fixtures that build their own models."""
    return randomize_norms


@pytest.fixture
def samples() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two 32x32 batches of six images, every one of the 10 targets present in each batch."""
    return make_batches()
