"""ONNX export: one file, onnxruntime parity for pruned models, training flag restored."""
from __future__ import annotations

import copy

import onnx
import pytest
import torch
from torch import nn

import tpunlearn as tu
from tpunlearn.export import parity


@pytest.fixture(scope="module")
def _pruned(make_tiny_resnet, make_samples):
    original = make_tiny_resnet()
    result = tu.unlearn(original, make_samples(), forget=[0], retain=[1, 2], sigma=5, delta=0.5, retain_delta=0.05,
                        coupled="prune", ignored_layers=["head"], progress=False)
    assert result.plan.removed_channels > 0
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in original.parameters())
    return result.model


@pytest.fixture
def pruned_resnet(_pruned):
    return copy.deepcopy(_pruned)


def test_pruned_model_exports_with_parity(pruned_resnet, tmp_path):
    x = torch.rand(3, 3, 32, 32)
    path = tmp_path / "model.onnx"
    diff = tu.export.to_onnx(pruned_resnet, path, example_inputs=x)
    assert 0.0 <= diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no .data file, no temp file
    assert path.stat().st_size > 1000


def test_export_is_one_self_contained_file(pruned_resnet, tmp_path):
    path = tmp_path / "model.onnx"
    tu.export.to_onnx(pruned_resnet, path, example_inputs=torch.rand(1, 3, 32, 32))
    proto = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["output0"]
    conv_weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    assert any(dims[:1] == [pruned_resnet.layer2.conv2.out_channels] and len(dims) == 4 for dims in conv_weights.values())


def test_dynamic_batch(pruned_resnet, tmp_path):
    path = tmp_path / "model.onnx"
    tu.export.to_onnx(pruned_resnet, path, example_inputs=torch.rand(1, 3, 32, 32))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        reference = pruned_resnet(x)
    assert parity(path, x, reference) <= 1e-4


@pytest.mark.parametrize("training", [True, False])
def test_training_flag_restored(pruned_resnet, tmp_path, training):
    pruned_resnet.train(training)
    tu.export.to_onnx(pruned_resnet, tmp_path / "m.onnx", example_inputs=torch.rand(2, 3, 32, 32))
    assert pruned_resnet.training is training
    assert all(m.training is training for m in pruned_resnet.modules())


def test_export_uses_eval_mode(tiny_resnet, tmp_path):
    # BN in train mode would normalise with batch statistics: parity holds only against eval outputs
    tiny_resnet.train()
    x = torch.rand(2, 3, 32, 32)
    diff = tu.export.to_onnx(tiny_resnet, tmp_path / "m.onnx", example_inputs=x)
    assert diff <= 1e-4
    tiny_resnet.eval()
    with torch.no_grad():
        assert parity(tmp_path / "m.onnx", x, tiny_resnet(x)) <= 1e-4


def test_dict_output_with_transform(tmp_path):
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return {"out": y, "aux": y * 2}

    model = DictOut().eval()
    x = torch.rand(1, 3, 16, 16)
    assert tu.export.to_onnx(model, tmp_path / "d.onnx", example_inputs=x) <= 1e-5
    assert tu.export.to_onnx(model, tmp_path / "a.onnx", example_inputs=x,
                             output_transform=lambda o: o["aux"]) <= 1e-5
    with torch.no_grad():
        assert parity(tmp_path / "a.onnx", x, model(x)["aux"]) <= 1e-5
        assert parity(tmp_path / "a.onnx", x, model(x)["out"]) > 1e-3


def test_failed_export_leaves_no_file(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace me")

    path = tmp_path / "broken.onnx"
    with pytest.raises(RuntimeError):
        tu.export.to_onnx(Broken(), path, example_inputs=torch.rand(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []
