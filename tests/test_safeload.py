"""Safe checkpoint loading: no checkpoint runs code it shouldn't.

Every malicious checkpoint here carries a payload that, if it ever ran, would write a
sentinel file (``touch`` or ``open(..., "w")``: harmless by design). Each is loaded through
every path that reads weights (the safe loader itself, the zoo, the three adapters, the
CLI commands) and must be refused with a clear message while the sentinel never appears.
Real ultralytics checkpoints must still load through the allow-list, unchanged.
"""
from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from tpunlearn import adapters, cli, models, safeload, zoo
from tpunlearn.errors import TrustedCheckpointWarning, UnsafeCheckpointError, WeightsError

from helpers import assert_error, run

ZOO = "digitscenes-resnet"


class Payload:
    """Pickles as a call of ``func(*args)``: what a hostile ``__reduce__`` does."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def payloads(sentinel: Path) -> dict[str, Payload]:
    """Each one writes ``sentinel`` if it runs."""
    from ultralytics.nn.tasks import DetectionModel

    write = f"open({str(sentinel)!r}, 'w').write('ran')"
    # DetectionModel(cfg) evaluates cfg["activation"] (ultralytics parse_model): calling an
    # allow-listed model class is as dangerous as calling exec
    cfg = {"nc": 1, "activation": write, "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": [[[0], 1, "Detect", ["nc"]]]}
    return {
        "os.system": Payload(os.system, f"touch {sentinel}"),
        "builtins.exec": Payload(builtins.exec, write),
        "builtins.eval": Payload(builtins.eval, write),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(sentinel)]),
        "model-constructor": Payload(DetectionModel, cfg),
    }


FRAGMENT = {"os.system": "posix.system", "builtins.exec": "builtins.exec", "builtins.eval": "builtins.eval",
            "subprocess.Popen": "subprocess.Popen", "model-constructor": "DetectionModel, which a checkpoint may not call"}


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """Realistic checkpoints of each family with a payload inside, plus the sentinel path."""
    root = tmp_path_factory.mktemp("evil")
    sentinel = root / "SENTINEL"
    resnet = torch.load(zoo.weights_path(ZOO), weights_only=True)
    deeplab = torch.load(zoo.weights_path("digitscenes-deeplabv3"), weights_only=True)
    yolo = safeload.restricted_load(zoo.weights_path("digitscenes-yolov5"))
    files = {}
    for name, payload in payloads(sentinel).items():
        for family, ckpt in (("timm", resnet), ("deeplabv3", deeplab), ("yolov5", yolo)):
            path = root / f"{family}-{name}.pt"
            torch.save({**ckpt, "extra": payload}, path)
            files[(family, name)] = path
    assert not sentinel.exists()
    return root, sentinel, files


KINDS = list(FRAGMENT)


def _loaders():
    """Every library path that reads a weights file, by family."""
    return {
        "safeload": ("timm", lambda p: safeload.load_checkpoint(p)),
        "zoo-timm": ("timm", lambda p: zoo.load(ZOO, p)),
        "timm": ("timm", lambda p: adapters.get("timm").build("resnet18", weights=p)),
        "zoo-deeplabv3": ("deeplabv3", lambda p: zoo.load("digitscenes-deeplabv3", p)),
        "deeplabv3": ("deeplabv3", lambda p: adapters.get("deeplabv3").build("deeplabv3_resnet_tiny", weights=p)),
        "zoo-yolov5": ("yolov5", lambda p: zoo.load("digitscenes-yolov5", p)),
        "yolov5": ("yolov5", lambda p: adapters.get("yolov5").build("yolov5n", weights=p)),
        "yolov5-path-arch": ("yolov5", lambda p: adapters.get("yolov5").build(str(p))),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loader", list(_loaders()))
def test_payload_never_runs_through_the_library(evil, loader, kind):
    _root, sentinel, files = evil
    family, load = _loaders()[loader]
    path = files[(family, kind)]
    with pytest.raises(UnsafeCheckpointError) as err:
        load(path)
    message = str(err.value)
    assert FRAGMENT[kind] in message and "--trust-checkpoint" in message and "\n" not in message
    assert not sentinel.exists()


@pytest.mark.parametrize("command", ["prune", "eval", "export", "graph"])
@pytest.mark.parametrize("family, arch", [("timm", ZOO), ("deeplabv3", "digitscenes-deeplabv3"),
                                          ("yolov5", "digitscenes-yolov5")])
def test_payload_never_runs_through_the_cli(evil, capsys, command, family, arch):
    root, sentinel, files = evil
    extra = {"prune": ["--forget", "3", "--out", root / "out"], "eval": [], "export": ["--onnx", root / "m.onnx"],
             "graph": ["--out", root / "cache.json"]}[command]
    line = assert_error(run(capsys, command, "--arch", arch, "--weights", files[(family, "builtins.exec")], *extra),
                        1, "refers to builtins.exec")
    assert line.startswith("tpunlearn: error: checkpoint ")
    assert not sentinel.exists()
    assert not any((root / n).exists() for n in ("out", "m.onnx", "cache.json"))


def test_refused_before_anything_is_unpickled(evil, monkeypatch):
    _root, sentinel, files = evil
    path = files[("timm", "os.system")]
    assert "posix.system" in safeload.checkpoint_globals(path)
    unpickled = []
    monkeypatch.setattr(safeload._RestrictedUnpickler, "load", lambda self: unpickled.append(1))
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        safeload.restricted_load(path)
    assert not unpickled and not sentinel.exists()


def test_widened_torch_allow_list_does_not_let_a_constructor_run(evil):
    """ultralytics' own safe loader adds model classes to torch's weights_only allow-list for the
    life of the process, which lets torch *call* them; tpunlearn's loader then decides alone."""
    from ultralytics.nn.tasks import DetectionModel

    _root, sentinel, files = evil
    with torch.serialization.safe_globals([DetectionModel]):
        with pytest.raises(UnsafeCheckpointError, match="may not call"):
            safeload.load_checkpoint(files[("yolov5", "model-constructor")])
        assert len(safeload.load_checkpoint(zoo.weights_path(ZOO))["state_dict"]) > 0  # plain files still load
    assert not sentinel.exists()


def test_trust_checkpoint_loads_with_a_warning_and_runs_the_payload(evil, tmp_path, capsys):
    """--trust-checkpoint is what lets a payload run: the refusal above is what stopped it."""
    _root, _sentinel, _files = evil
    sentinel = tmp_path / "TRUSTED"
    ckpt = torch.load(zoo.weights_path(ZOO), weights_only=True)
    path = tmp_path / "trusted.pt"
    torch.save({**ckpt, "extra": Payload(builtins.exec, f"open({str(sentinel)!r}, 'a').write('ran')")}, path)
    onnx = tmp_path / "m.onnx"
    code = cli.main(["export", "--arch", ZOO, "--weights", str(path), "--trust-checkpoint", "--onnx", str(onnx)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"tpunlearn: warning: loading {path} with full unpickling (--trust-checkpoint): it names builtins.exec, "
        "which can run any code"]
    assert sentinel.read_text() == "ran" and onnx.is_file()

    sentinel.unlink()
    with pytest.warns(TrustedCheckpointWarning, match="builtins.exec"):
        zoo.build_model(ZOO, weights=path, trust_checkpoint=True)
    assert sentinel.read_text() == "ran"  # loaded once: the zoo path reuses the checkpoint it read


# ---- real checkpoints still load ---------------------------------------------------------------------------


def assert_same(a, b) -> None:
    """Loaded objects equal: tensors by value, modules by state and attributes."""
    if isinstance(a, torch.nn.Module):
        assert type(a) is type(b)
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert {k: type(v) for k, v in vars(a).items()} == {k: type(v) for k, v in vars(b).items()}
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif hasattr(a, "__array__") and not isinstance(a, (str, bytes)):
        import numpy as np

        assert np.array_equal(a, b)
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        assert type(a) is type(b) and vars(a) == vars(b)
    else:
        assert a == b and type(a) is type(b)


def _plain_load(path: Path):
    """Full unpickling of a file this test wrote itself (the reference)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def test_zoo_detector_loads_through_the_allow_list():
    path = zoo.weights_path("digitscenes-yolov5")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # ultralytics checkpoints pickle modules: weights_only refuses them
    assert_same(safeload.restricted_load(path), _plain_load(path))
    _, model, info = models.load_model("digitscenes-yolov5")
    assert info.class_names == [str(d) for d in range(10)]
    assert model(torch.rand(1, 3, 64, 64))[0].shape == (1, 14, 84)


def test_adapter_saved_and_ultralytics_saved_checkpoints_load(tmp_path):
    import argparse
    import datetime
    import types

    import numpy as np
    from ultralytics import YOLO
    from ultralytics.utils import IterableSimpleNamespace

    adapter = adapters.get("yolov5")
    model, info = adapter.build("yolov5n.yaml", nc=3, imgsz=64)
    ours = tmp_path / "ours.pt"
    adapter.save(model, info, ours)
    assert_same(safeload.restricted_load(ours), _plain_load(ours))

    yolo = YOLO("yolov5n.yaml")
    theirs = tmp_path / "theirs.pt"
    yolo.save(theirs)
    assert_same(safeload.restricted_load(theirs), _plain_load(theirs))

    # what an ultralytics training checkpoint holds beside the model
    trainer = tmp_path / "trainer.pt"
    optimizer = torch.optim.SGD(yolo.model.parameters(), lr=0.01)
    torch.save({"model": yolo.model, "ema": None, "optimizer": optimizer.state_dict(),
                "train_args": IterableSimpleNamespace(data="coco.yaml", imgsz=640, save_dir=Path("/runs/x")),
                "train_metrics": {"metrics/mAP50(B)": np.float64(0.5)}, "arr": np.arange(4.0), "dtype": np.dtype("f4"),
                "date": datetime.datetime(2024, 1, 2, 3, 4, 5), "ns": argparse.Namespace(a=1),
                "sn": types.SimpleNamespace(b=2), "set": {1, 2}, "frozen": frozenset([3]), "bytes": b"\x00\x01",
                "od": collections.OrderedDict(a=1), "slice": slice(1, 5)}, trainer)
    assert_same(safeload.restricted_load(trainer), _plain_load(trainer))
    built, _ = adapter.build(str(trainer), imgsz=64)
    assert sum(p.numel() for p in built.parameters()) == sum(p.numel() for p in yolo.model.parameters())


def test_pickled_timm_and_torchvision_modules_load(tmp_path):
    import timm

    model = timm.create_model("resnet18", num_classes=10).eval()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    built, _ = adapters.get("timm").build("resnet18", weights=path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(built(x), model(x))


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(WeightsError, match="TorchScript archive"):
        safeload.load_checkpoint(path)


def test_modules_carrying_hooks_are_refused(tmp_path):
    conv = torch.nn.Conv2d(1, 1, 1)
    conv.register_forward_hook(collections.OrderedDict)  # an allow-listed callable, planted to run at forward
    path = tmp_path / "hooked.pt"
    torch.save({"model": conv}, path)
    with pytest.raises(UnsafeCheckpointError, match="hooks that would run code"):
        safeload.load_checkpoint(path)


# ---- the unpickler's opcode rules, on hand-written pickles -------------------------------------------------------


def _g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _s(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


CONV = _g("torch.nn.modules.conv", "Conv2d")
OPS = {
    # setattr(Conv2d, "forward", set): BUILD on a class would patch every Conv2d in the process
    "build-on-class": b"\x80\x02" + CONV + b"N}" + _s("forward") + _g("builtins", "set") + b"s\x86b.",
    # Conv2d(1, 1, 1): model classes may be created empty (NEWOBJ), never called
    "call-model-class": b"\x80\x02" + CONV + b"(K\x01K\x01K\x01tR.",
    # getattr(Conv2d, "__init__"): only enum members and forward are reachable
    "getattr-dunder": b"\x80\x02" + _g("builtins", "getattr") + CONV + _s("__init__") + b"\x86R.",
    # a class of torch that is no model: DataLoader
    "non-model-class": b"\x80\x02" + _g("torch.utils.data.dataloader", "DataLoader") + b").",
    # copyreg extension codes bypass find_class
    "extension-code": b"\x80\x02\x82\x01.",
    # list.append on something that is not a list (a Conv2d made with NEWOBJ)
    "append-to-module": b"\x80\x02" + CONV + b")\x81K\x01a.",
    # names dressed up as torch: a module path outside the model packages
    "torch-prefix-lookalike": b"\x80\x02" + _g("torch_evil", "Thing") + b".",
    "private-dunder": b"\x80\x02" + _g("torch.nn.modules.conv", "__builtins__") + b".",
}


@pytest.mark.parametrize("name", list(OPS))
def test_unpickler_refuses(name):
    forward = torch.nn.Conv2d.forward
    with pytest.raises(Exception) as err:
        safeload._RestrictedUnpickler(io.BytesIO(OPS[name])).load()
    assert type(err.value).__name__ == "_Refused", err.value
    assert torch.nn.Conv2d.forward is forward


def test_unpickler_allows_what_modules_need():
    # NEWOBJ of a model class, then BUILD with its state: how every nn.Module is pickled
    data = b"\x80\x02" + _g("torch.nn.modules.activation", "ReLU") + b")\x81}" + _s("inplace") + b"\x88sb."
    obj = safeload._RestrictedUnpickler(io.BytesIO(data)).load()
    assert type(obj) is torch.nn.ReLU and obj.inplace is True
    assert safeload.allowed_global("ultralytics.nn.modules.conv.Conv")
    assert safeload.allowed_global("torch._utils._rebuild_tensor_v2")
    assert not safeload.allowed_global("torch.serialization.load")
    assert not safeload.allowed_global("torch.hub.load")
    assert not safeload.allowed_global("ultralytics.models.yolo.model.YOLO.__init__")


def test_trusted_checkpoint_needing_a_missing_module_is_one_line(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "gone_module.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    thing = importlib.import_module("gone_module").Thing()
    path = tmp_path / "needs_module.pt"
    torch.save({"thing": thing}, path)
    monkeypatch.delitem(sys.modules, "gone_module")
    (tmp_path / "gone_module.py").unlink()
    with pytest.raises(UnsafeCheckpointError, match="gone_module.Thing"):
        safeload.load_checkpoint(path)
    with pytest.warns(TrustedCheckpointWarning), pytest.raises(WeightsError, match="needs module 'gone_module'"):
        safeload.load_checkpoint(path, trust=True)
