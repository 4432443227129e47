"""The timm adapter: registry lookup, heads and targets, and the save/load round trip.

A pruned model saves as its timm architecture, its torch-pruning history and its state
dict; ``build(arch, weights=path)`` rebuilds it from the checkpoint alone (replaying the
pruning) and loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import tpunlearn as tu
from tpunlearn import adapters
from tpunlearn.adapters import ModelInfo, register
from tpunlearn.adapters.timm import SAVE_FORMAT, TimmAdapter
from tpunlearn.errors import UsageError, WeightsError
from tpunlearn.targets import ClassLogit

from helpers import n_params, unlearn_family

SIZE = (3, 64, 64)
# the round trip uses a slim resnet18 (timm kwargs), which also checks that the checkpoint's
# own timm_kwargs rebuild the architecture: ``build("resnet18", weights=path)`` passes none
SLIM = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]}


@pytest.fixture(scope="module")
def adapter() -> TimmAdapter:
    return adapters.get("timm")


# ---- registry ----------------------------------------------------------------------------
def test_for_arch_finds_the_timm_adapter(adapter):
    assert isinstance(adapter, TimmAdapter)
    assert "timm" in adapters.names()
    assert adapters.for_arch("resnet18") is adapter
    assert adapters.for_arch("timm/resnet18") is adapter
    # zoo names are the zoo's: it hands its entry to the family's adapter (adapters know no zoo)
    assert tu.models.adapter_for("digitscenes-resnet") is adapter
    assert tu.models.adapter_for("resnet18") is adapter
    with pytest.raises(UsageError, match="unknown arch"):
        adapters.for_arch("digitscenes-resnet")


def test_unknown_arch_and_adapter_raise_usage_error():
    with pytest.raises(UsageError, match="nope"):
        adapters.for_arch("nope")
    with pytest.raises(UsageError, match="timm"):  # the message lists the known adapters
        adapters.get("nope")


def test_duplicate_registration_is_refused(adapter):
    before = adapters.names()

    class Duplicate(TimmAdapter):
        name = "timm"

    with pytest.raises(ValueError, match="already registered"):
        register(Duplicate)

    class Nameless(TimmAdapter):
        name = ""

    with pytest.raises(ValueError):
        register(Nameless)
    assert adapters.names() == before
    assert adapters.get("timm") is adapter


# ---- build, heads, targets ---------------------------------------------------------------
def test_build_random_resnet18(adapter):
    model, info = adapter.build("resnet18", input_size=SIZE)
    assert isinstance(info, ModelInfo)
    assert not model.training
    assert info.family == "timm" and info.task == "multilabel" and info.weights is None
    assert info.input_size == SIZE
    assert info.class_names == [str(i) for i in range(10)]
    assert info.extra["timm_name"] == "resnet18" and info.extra["history"] == []

    ignored = adapter.ignored_layers(model, info)
    assert len(ignored) == 1 and ignored[0] is model.fc and isinstance(model.fc, nn.Linear)

    target = adapter.target(info, 3)
    assert isinstance(target, ClassLogit) and target.index == 3 and target.multilabel
    assert adapter.target_factory(info)(5).index == 5

    x = adapter.example_inputs(info)
    assert x.shape == (1, *SIZE)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 10)
    assert torch.equal(target.per_sample(out), out[:, 3])


def test_build_multiclass_head(adapter):
    model, info = adapter.build("resnet18", num_classes=4, task="multiclass", input_size=SIZE,
                                class_names=["a", "b", "c", "d"])
    assert model.fc.out_features == 4 and info.class_names == ["a", "b", "c", "d"]
    assert adapter.target(info, 1).multilabel is False


# ---- save / load round trip ---------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(adapter, make_samples, tmp_path_factory):
    """A random (slim) resnet18 pruned by ``tpunlearn.unlearn`` and saved by the adapter."""
    torch.manual_seed(0)
    model, info = adapter.build("resnet18", input_size=SIZE, **SLIM)
    res = unlearn_family(adapter, model, info, make_samples(n_batches=1, batch=6, size=SIZE[-1]), [3], retain=[4],
                         sigma=2, delta=0.2, n_per_target=2)
    assert res.plan.removed_channels > 0 and res.plan.history
    info.extra["history"] = res.plan.history
    folder = tmp_path_factory.mktemp("timm-save")
    path = folder / "model.pt"
    adapter.save(res.model, info, path)
    return res, info, path


def test_checkpoint_loads_with_weights_only(saved):
    res, info, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # atomic write: no temp left
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == SAVE_FORMAT
    assert ckpt["timm_name"] == "resnet18"
    assert ckpt["timm_kwargs"] == {"num_classes": 10, "in_chans": 3, **SLIM}
    assert ckpt["input_size"] == list(SIZE)
    assert ckpt["class_names"] == info.class_names and ckpt["task"] == "multilabel"
    assert ckpt["history"] == res.plan.history
    assert ckpt["state_dict"].keys() == res.model.state_dict().keys()


@pytest.mark.parametrize("input_size", [SIZE, None], ids=["explicit-size", "size-from-checkpoint"])
def test_round_trip_gives_the_pruned_model(adapter, saved, input_size):
    res, _, path = saved
    model, info = adapter.build("resnet18", weights=path, input_size=input_size)
    assert info.input_size == SIZE
    assert info.weights == str(path)
    assert info.extra["history"] == res.plan.history
    assert info.extra["timm_kwargs"] == {"num_classes": 10, "in_chans": 3, **SLIM}

    expected = res.model.state_dict()
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].shape == value.shape, key
        assert torch.equal(state[key], value), key
    assert n_params(model) == res.report["params"]["after"]
    assert res.report["params"]["after"] < res.report["params"]["before"]

    x = torch.rand(4, *SIZE, generator=torch.Generator().manual_seed(1))
    res.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), res.model(x))


def test_resave_of_a_reloaded_model_round_trips(adapter, saved, tmp_path):
    _, _, path = saved
    model, info = adapter.build("resnet18", weights=path)
    again = tmp_path / "again.pt"
    adapter.save(model, info, again)
    model2, _ = adapter.build("resnet18", weights=again)
    x = torch.rand(2, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model2(x), model(x))


def test_checkpoint_of_another_architecture_raises(adapter, saved):
    _, _, path = saved
    with pytest.raises(WeightsError, match="resnet18"):
        adapter.build("resnet34", weights=path)
    with pytest.raises(WeightsError, match="digitscenes-resnet"):
        tu.zoo.load("digitscenes-resnet", weights=path)  # same timm name, other kwargs
    with pytest.raises(WeightsError, match="num_classes"):
        adapter.build("resnet18", weights=path, num_classes=5)
    with pytest.raises(WeightsError, match="channels"):
        adapter.build("resnet18", weights=path, channels=[32, 64, 128, 256])


@pytest.mark.parametrize("kind", ["missing", "truncated", "random", "not-a-state-dict"])
def test_unreadable_weights_raise_weights_error(adapter, saved, tmp_path, kind):
    _, _, good = saved
    path = tmp_path / "bad.pt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:2000])
    elif kind == "random":
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3),
                                             dtype=torch.uint8).tolist()))
    elif kind == "not-a-state-dict":
        torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError) as info:
        adapter.build("resnet18", weights=path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
