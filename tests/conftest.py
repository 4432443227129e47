"""Shared fixtures: tiny seeded models and multi-label sample batches.

Every model here is small enough to score, trace and prune in well under a second on two
CPU cores. ``TinyResNet`` defines its modules in an order different from the order its
forward calls them, so tests can tell execution order from ``named_modules()`` order.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(2)

NUM_CLASSES = 10


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    With the default init (weight 1, bias 0, mean 0, var 1) a zeroed filter already gives a
    zero BN output, so a test could not tell whether the BN affine was zeroed too.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.5)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


class Block(nn.Module):
    """A basic residual block; the shortcut is defined last but runs first."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class TinyResNet(nn.Module):
    """conv-bn-relu stem, two residual blocks, global pool, Linear head.

    Modules are defined head first and stem last: ``named_modules()`` lists the convs as
    layer2.conv1, layer2.conv2, layer2.shortcut.0, layer1.conv1, layer1.conv2, stem, while
    a forward calls stem, layer1.conv1, layer1.conv2, layer2.shortcut.0, layer2.conv1,
    layer2.conv2.
    """

    EXEC_ORDER = ["stem", "layer1.conv1", "layer1.conv2", "layer2.shortcut.0", "layer2.conv1", "layer2.conv2"]

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 8) -> None:
        super().__init__()
        self.head = nn.Linear(2 * width, num_classes)
        self.layer2 = Block(width, 2 * width, stride=2)
        self.layer1 = Block(width, width)
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyCNN(nn.Module):
    """A plain chain: three conv-bn-relu stages, global pool, Linear head."""

    EXEC_ORDER = ["conv1", "conv2", "conv3"]

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, 2, 1)
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 16, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_batches(n_batches: int = 2, batch: int = 6, size: int = 32, num_classes: int = NUM_CLASSES,
                 seed: int = 0, channels: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random ``(images, multi_hot)`` batches in which every target is present in every batch."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        images = torch.rand(batch, channels, size, size, generator=gen)
        multi_hot = (torch.rand(batch, num_classes, generator=gen) < 0.3).float()
        for c in range(num_classes):
            multi_hot[c % batch, c] = 1.0
        out.append((images, multi_hot))
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def build_tiny_resnet(seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    return randomize_norms(TinyResNet(), seed=seed).eval()


@pytest.fixture(scope="session")
def make_tiny_resnet():
    """Factory for module-scoped fixtures: a fresh seeded ``TinyResNet`` in eval mode."""
    return build_tiny_resnet


@pytest.fixture
def tiny_resnet() -> TinyResNet:
    return build_tiny_resnet()


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return randomize_norms(TinyCNN()).eval()


@pytest.fixture(scope="session")
def make_samples():
    """Factory: ``make_samples(n_batches=2, batch=6, size=32, num_classes=10, seed=0)``."""
    return make_batches


@pytest.fixture(scope="session")
def randomize_bn():
    """The :func:`randomize_norms` helper, for module-scoped fixtures that build their own models."""
    return randomize_norms


@pytest.fixture
def samples() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two 32x32 batches of six images, every one of the 10 targets present in each batch."""
    return make_batches()
