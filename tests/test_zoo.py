"""The model zoo: the committed digitscenes-resnet checkpoint loads and is well trained."""
from __future__ import annotations

import pytest
import torch

from tpunlearn import zoo
from tpunlearn.data import DigitScenes
from tpunlearn.errors import UsageError, WeightsError

NAME = "digitscenes-resnet"


@pytest.fixture(scope="module")
def loaded():
    return zoo.load(NAME)


def test_registry():
    assert NAME in zoo.names()
    e = zoo.entry(NAME)
    assert e.family == "timm" and e.task == "multilabel"
    assert zoo.weights_path(NAME).name == e.weights
    assert zoo.weights_path(NAME).is_absolute()


def test_unknown_name_raises_usage_error():
    with pytest.raises(UsageError, match=NAME):
        zoo.load("no-such-model")
    with pytest.raises(UsageError):
        zoo.entry("no-such-model")


def test_missing_weights_raise_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="train_zoo.py"):
        zoo.load(NAME, weights=tmp_path / "absent.pt")


def test_info_and_checkpoint(loaded):
    model, info = loaded
    assert not model.training
    assert info["name"] == NAME and info["arch"] == zoo.entry(NAME).arch
    assert info["class_names"] == [str(d) for d in range(10)]
    assert info["input_size"] == [3, 64, 64]
    assert len(info["sha256"]) == 64
    assert len(info["test_recall"]) == 10
    assert sum(p.numel() for p in model.parameters()) <= 1_500_000
    ckpt = torch.load(info["weights"], weights_only=True)
    assert ckpt["format"] == zoo.FORMAT
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if torch.is_floating_point(v))


def test_output_shape_and_determinism(loaded):
    model, _ = loaded
    x, _ = DigitScenes("test", n_scenes=8).tensors()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (8, 10) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_recall_on_test_scenes(loaded):
    model, _ = loaded
    x, y = DigitScenes("test", n_scenes=300).tensors()
    with torch.no_grad():
        pred = (model(x).sigmoid() > 0.5).float()
    recall = (pred * y).sum(0) / y.sum(0)
    precision = (pred * y).sum(0) / pred.sum(0).clamp_min(1)
    assert bool((recall >= 0.9).all()), recall
    assert bool((precision >= 0.85).all()), precision
