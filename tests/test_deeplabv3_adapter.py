"""The torchvision DeepLabv3 adapter: build, heads, unlearning, ONNX, save/load, data, IoU.

Models are randomly initialised (no weights offline) at 64x64. A fresh DeepLabv3 gives a
constant output (its activations vanish through eval-mode BatchNorm with default running
statistics), so :func:`make_segmenting` first calibrates the BatchNorm statistics on random
images and then ties the logits of a few classes, so that the model segments those classes
in varying places; the scoring batches mark the classes the model itself predicts.
"""
from __future__ import annotations

import importlib
from dataclasses import replace

import pytest
import torch
from torch import nn

from tpunlearn import adapters
from tpunlearn.adapters.deeplabv3 import DIGIT_CLASSES, IMAGENET, SAVE_FORMAT, VOC_CLASSES, DeepLabV3Adapter
from tpunlearn.errors import DataError, UsageError, WeightsError
from tpunlearn.export import to_onnx
from tpunlearn.plan import build_dependency_graph
from tpunlearn.targets import SegmentationLogit

from helpers import n_params, unlearn_family

MOBILE = "deeplabv3_mobilenet_v3_large"
SIZE = 64
PERSON, BACKGROUND, BUS = 15, 0, 6
KEEP = [BACKGROUND, BUS, PERSON]


@pytest.fixture(scope="module")
def adapter() -> DeepLabV3Adapter:
    return adapters.get("deeplabv3")


def make_segmenting(model: nn.Module, classes=KEEP, seed: int = 0) -> nn.Module:
    """Calibrate BN statistics on random images, then tie ``classes`` and push the rest down."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(8, 3, SIZE, SIZE, generator=gen)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
        model.train()
        model(images)
        model.eval()
        bias = model.classifier[4].bias
        bias -= model(images)["out"].mean(dim=(0, 2, 3))
        others = torch.ones_like(bias, dtype=torch.bool)
        others[list(classes)] = False
        bias[others] -= 10.0
    return model


def predicted_batches(model: nn.Module, n_batches: int = 2, batch: int = 4, seed: int = 1):
    """Random images; multi_hot marks the classes the model predicts somewhere in each image."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        images = torch.rand(batch, 3, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            pred = model(images)["out"].argmax(1).flatten(1)
        multi_hot = torch.nn.functional.one_hot(pred, model.classifier[4].out_channels).amax(1).float()
        out.append((images, multi_hot))
    return out


@pytest.fixture(scope="module")
def mobile(adapter):
    """A calibrated mobilenet DeepLabv3 with an aux head, and one unlearning of ``person``."""
    torch.manual_seed(0)
    model, info = adapter.build(MOBILE, imgsz=SIZE, aux_loss=True)
    make_segmenting(model)
    batches = predicted_batches(model)
    present = torch.stack([b[1] for b in batches]).flatten(0, 1).amax(0)
    assert all(present[c] for c in KEEP)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    res = unlearn_family(adapter, model, info, batches, [PERSON], retain=[BACKGROUND, BUS], example_inputs=x, sigma=6,
                         delta=0.2, n_per_target=2)
    info.extra["history"] = list(res.plan.history)
    return model, info, x, res


# ---- registry and build ------------------------------------------------------------------
def test_registry_and_build(adapter, mobile):
    assert "deeplabv3" in adapters.names()
    for arch in ("deeplabv3_resnet50", "deeplabv3_resnet101", MOBILE):
        assert adapters.for_arch(arch) is adapter
    assert not adapter.handles("resnet50")
    model, info, x, _ = mobile
    assert info.task == "segmentation" and info.family == "deeplabv3" and info.input_size == (3, SIZE, SIZE)
    assert info.class_names == VOC_CLASSES and info.class_names[PERSON] == "person"
    assert info.extra["normalize"] == IMAGENET  # 21 classes: torchvision's VOC normalisation
    assert adapter.metric_name == "iou"
    out = model(x)
    assert set(out) == {"out", "aux"}
    assert adapter.output_transform(out).shape == (1, 21, SIZE, SIZE)
    assert torch.equal(adapter.output_transform(out), out["out"])
    assert isinstance(adapter.target(info, PERSON), SegmentationLogit) and adapter.target(info, PERSON).index == PERSON


def test_build_defaults_and_options(adapter):
    model, info = adapter.build(MOBILE, num_classes=11)
    assert info.input_size == (3, 512, 512)
    assert info.class_names == DIGIT_CLASSES and info.extra["normalize"] is None and info.extra["data"] == "digits"
    assert model.aux_classifier is None
    out = model(torch.rand(1, 3, 32, 48))
    assert set(out) == {"out"} and adapter.output_transform(out) is out["out"]
    assert adapter.ignored_layers(model, info) == [model.classifier[1], model.classifier[4]]
    _, info = adapter.build(MOBILE, num_classes=3, class_names=["bg", "cat", "dog"], imgsz=(48, 64),
                            normalize={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert info.class_names == ["bg", "cat", "dog"] and info.input_size == (3, 48, 64)
    assert info.extra["normalize"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(UsageError, match="class names"):
        adapter.build(MOBILE, num_classes=4, class_names=["a"])
    with pytest.raises(UsageError, match="normalize"):
        adapter.build(MOBILE, normalize="nope")
    with pytest.raises(UsageError, match="unknown option"):
        adapter.build(MOBILE, pretrained=True)


def test_ignored_layers_are_the_last_two_head_convs_and_aux(adapter, mobile):
    model, info, x, _ = mobile
    ignored = adapter.ignored_layers(model, info)
    head = model.classifier
    assert ignored[:2] == [head[1], head[4]]
    assert (head[1].kernel_size, head[1].out_channels) == ((3, 3), 256)
    assert (head[4].kernel_size, head[4].out_channels) == ((1, 1), 21)
    assert ignored[2] is model.aux_classifier
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert {"classifier.1", "classifier.4"} <= set(convs)


# ---- unlearning --------------------------------------------------------------------------
def test_unlearn_removes_channels_and_keeps_the_head(adapter, mobile):
    model, info, x, res = mobile
    assert res.report["removed_channels"] > 0
    assert res.report["params"]["after"] < res.report["params"]["before"]
    assert all(l.startswith("classifier.0.") for l in res.report["layers"])  # ASPP: the head's last two are out
    assert not any(l.startswith(("classifier.1", "classifier.4", "aux_classifier")) for l in res.plan.removed)
    pruned = res.model
    assert pruned.classifier[4].out_channels == 21 and pruned.classifier[1].out_channels == 256
    assert pruned.classifier[1].in_channels == pruned.classifier[0].project[0].out_channels
    out = pruned(torch.rand(2, 3, SIZE, SIZE))
    assert out["out"].shape == (2, 21, SIZE, SIZE) and out["aux"].shape == (2, 21, SIZE, SIZE)
    assert n_params(model) == res.report["params"]["before"]  # input untouched


def test_onnx_parity_of_the_pruned_model(adapter, mobile, tmp_path):
    _, _, x, res = mobile
    path = tmp_path / "pruned.onnx"
    diff = to_onnx(res.model, path, example_inputs=x, output_transform=adapter.output_transform)
    with torch.no_grad():
        scale = float(res.model(x)["out"].abs().max())
    assert diff / scale <= 1e-4, (diff, scale)
    import onnx

    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["output0"]  # out only, the aux head is not exported


def test_aux_head_follows_pruning_of_its_backbone_input(adapter):
    """Channels of the stream that feeds the aux head leave the aux head's input too."""
    torch.manual_seed(0)
    model, info = adapter.build(MOBILE, imgsz=SIZE, aux_loss=True)
    x = torch.rand(1, 3, SIZE, SIZE)
    root = model.backbone["4"].block[3][0]  # 40-channel stream at stride 8: the aux tap
    dg = build_dependency_graph(model, x, adapter.output_transform)
    group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, [0, 1, 2])
    assert model.aux_classifier[0] in {item.dep.target.module for item in group.items}
    group.prune()
    assert model.aux_classifier[0].in_channels == 37
    with torch.no_grad():
        assert model(x)["aux"].shape == (1, 21, SIZE, SIZE)
    # the reason for the transform: a trace of ``out`` alone leaves the aux head out of the group
    fresh, _ = adapter.build(MOBILE, imgsz=SIZE, aux_loss=True)
    dg = build_dependency_graph(fresh, x, lambda o: o["out"])
    root = fresh.backbone["4"].block[3][0]
    group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, [0])
    assert fresh.aux_classifier[0] not in {item.dep.target.module for item in group.items}


def test_resnet50_unlearns_into_the_backbone(adapter):
    """One deeplabv3_resnet50 run: sigma reaches layer4's residual stream; the head is kept."""
    torch.manual_seed(0)
    model, info = adapter.build("deeplabv3_resnet50", imgsz=SIZE, aux_loss=True)
    ignored = adapter.ignored_layers(model, info)
    assert ignored == [model.classifier[1], model.classifier[4], model.aux_classifier]
    make_segmenting(model)
    batches = predicted_batches(model, n_batches=1, batch=4)
    x = batches[0][0][:1]
    res = unlearn_family(adapter, model, info, batches, [PERSON], retain=[BACKGROUND, BUS], example_inputs=x, sigma=9,
                         delta=0.2, n_per_target=2)
    assert any(l.startswith("backbone.layer4") for l in res.report["layers"])
    assert res.report["removed_channels"] > 0
    assert res.model.classifier[4].out_channels == 21 and res.model.classifier[1].out_channels == 256
    out = res.model(torch.rand(1, 3, SIZE, SIZE))
    assert out["out"].shape == (1, 21, SIZE, SIZE) and out["aux"].shape == (1, 21, SIZE, SIZE)


# ---- save and load -----------------------------------------------------------------------
def test_save_then_build_reproduces_the_pruned_model(adapter, mobile, tmp_path):
    _, info, x, res = mobile
    assert info.extra["history"]
    path = tmp_path / "model.pt"
    adapter.save(res.model, info, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # atomic: no temp file left
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == SAVE_FORMAT and raw["arch"] == MOBILE and raw["kwargs"] == {"num_classes": 21, "aux_loss": True}
    reloaded, info2 = adapter.build(MOBILE, weights=path)
    assert info2.input_size == info.input_size and info2.class_names == info.class_names
    assert info2.extra["history"] == info.extra["history"] and info2.weights == str(path)
    assert n_params(reloaded) == res.report["params"]["after"]
    with torch.no_grad():
        a, b = res.model.eval()(x), reloaded(x)
    assert torch.equal(a["out"], b["out"]) and torch.equal(a["aux"], b["aux"])
    # saving the reloaded model again keeps the same history
    adapter.save(reloaded, info2, tmp_path / "again.pt")
    assert torch.load(tmp_path / "again.pt", weights_only=True)["history"] == raw["history"]


def test_checkpoint_errors_are_weights_errors(adapter, mobile, tmp_path):
    model, info, _, _ = mobile
    path = tmp_path / "model.pt"
    adapter.save(model, replace(info, extra={**info.extra, "history": []}), path)
    with pytest.raises(WeightsError, match="deeplabv3_mobilenet_v3_large, not a deeplabv3_resnet50"):
        adapter.build("deeplabv3_resnet50", weights=path)
    with pytest.raises(WeightsError, match="contradicts"):
        adapter.build(MOBILE, weights=path, num_classes=11)
    with pytest.raises(WeightsError, match="not found"):
        adapter.build(MOBILE, weights=tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        adapter.build(MOBILE, weights=tmp_path / "bad.pt")
    torch.save({"format": "tpunlearn-timm/1", "timm_name": "resnet18", "state_dict": {}}, tmp_path / "timm.pt")
    with pytest.raises(WeightsError, match="not a DeepLabv3"):
        adapter.build(MOBILE, weights=tmp_path / "timm.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match="does not fit"):
        adapter.build(MOBILE, weights=tmp_path / "plain.pt", num_classes=11)


def test_plain_state_dicts_load(adapter, mobile, tmp_path):
    model, _, x, _ = mobile
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ref.pt")
    with torch.no_grad():
        ref = model(x)
    for name in ("plain.pt", "ref.pt"):
        loaded, info = adapter.build(MOBILE, weights=tmp_path / name)  # 21 classes and aux from the file
        assert loaded.aux_classifier is not None and info.extra["builder_kwargs"]["aux_loss"] is True
        with torch.no_grad():
            assert torch.equal(loaded(x)["out"], ref["out"])
    no_aux, _ = adapter.build(MOBILE, weights=tmp_path / "plain.pt", aux_loss=False)
    assert no_aux.aux_classifier is None
    with torch.no_grad():
        assert torch.equal(no_aux(x)["out"], ref["out"])


def test_saved_settings_survive_reload(adapter, tmp_path):
    model, info = adapter.build(MOBILE, imgsz=(48, 64), normalize="none", class_names=[f"c{i}" for i in range(21)])
    adapter.save(model, info, tmp_path / "m.pt")
    _, again = adapter.build(MOBILE, weights=tmp_path / "m.pt")
    assert again.extra["normalize"] is None  # not the 21-class default (imagenet)
    assert again.input_size == (3, 48, 64) and again.class_names == info.class_names
    assert again.extra["builder_kwargs"] == {"num_classes": 21, "aux_loss": False}


# ---- data and evaluation -----------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_model(adapter):
    torch.manual_seed(0)
    model, info = adapter.build(MOBILE, num_classes=11, imgsz=SIZE)
    return make_segmenting(model, classes=range(11)), info


def test_digit_samples_mark_background_and_digits(adapter, digits_model, monkeypatch):
    model, info = digits_model
    from tpunlearn.data import DigitScenes

    batches = list(adapter.samples(model, info, "digits:10", batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 3, SIZE, SIZE), (4, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    multi_hot = torch.cat([b[1] for b in batches])
    assert multi_hot.shape == (10, 11) and bool((multi_hot[:, 0] == 1).all())
    ds = DigitScenes("train", size=SIZE, n_scenes=10, channels=1)
    assert torch.equal(multi_hot[:, 1:], ds.multi_hot)  # digit d is class d + 1
    assert torch.equal(batches[0][0][:, :1], ds.images[:4])  # plain [0, 1] images (normalize none)
    # normalisation is an adapter setting; larger or non-square inputs get resized scenes
    norm = replace(info, extra={**info.extra, "normalize": IMAGENET})
    images = next(iter(adapter.samples(model, norm, "digits:10", batch_size=4)))[0]
    mean, std = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    assert torch.allclose(images, (ds.images[:4] - mean) / std)
    monkeypatch.setattr(importlib.import_module("tpunlearn.data.digitscenes"), "MASKS_MAX_SIDE", 32)
    wide = replace(info, input_size=(3, 40, 64))
    images, multi_hot = next(iter(adapter.samples(model, wide, "digits:4", batch_size=4)))
    assert images.shape == (4, 3, 40, 64)
    assert torch.equal(multi_hot[:, 1:], DigitScenes("train", size=32, n_scenes=4).multi_hot)
    assert adapter.evaluate(model, wide, "digits:4").extra["names"] == DIGIT_CLASSES
    with pytest.raises(UsageError, match="VOC-style"):
        adapter.samples(model, adapter.build(MOBILE, imgsz=SIZE)[1], "digits")
    with pytest.raises(UsageError, match="digits:N"):
        adapter.samples(model, info, "digits:x")
    with pytest.raises(DataError, match="neither"):
        adapter.samples(model, info, "/no/such/folder")


def test_evaluate_gives_per_class_iou(adapter, digits_model):
    model, info = digits_model
    ev = adapter.evaluate(model, info, "digits:24")
    assert ev.task == "segmentation" and ev.primary == "iou" and ev.operating_point == {"rule": "argmax"}
    iou = ev.primary_values()
    full = adapter.segmentation_metrics(model, info, "digits:24")
    # the classes neither labelled nor predicted (NaN IoU) are left out; the others match
    assert iou == {k: v for k, v in full["iou"].items() if v == v} and set(iou) <= set(DIGIT_CLASSES)
    assert all(0.0 <= v <= 1.0 for v in iou.values()), iou
    assert ev.summary == {"mIoU": pytest.approx(full["mIoU"]), "pixel_accuracy": pytest.approx(full["pixel_accuracy"])}
    assert ev.extra["confusion"] == full["confusion"] and ev.extra["names"] == DIGIT_CLASSES
    truth = {n: sum(row) for n, row in zip(DIGIT_CLASSES, full["confusion"], strict=True)}
    assert {n: m["instances"] for n, m in ev.per_target.items()} == {n: truth[n] for n in ev.per_target}


def test_voc_folder_matches_digits(adapter, digits_model, tmp_path):
    from tpunlearn.data import write_voc

    model, info = digits_model
    root = write_voc(tmp_path / "voc", size=SIZE, splits=("train", "test"), n_scenes=6)
    voc = list(adapter.samples(model, info, str(root), batch_size=4))
    digits = list(adapter.samples(model, info, "digits:6", batch_size=4))
    assert torch.equal(torch.cat([b[1] for b in voc]), torch.cat([b[1] for b in digits]))
    assert (torch.cat([b[0] for b in voc]) - torch.cat([b[0] for b in digits])).abs().max() <= 1 / 255
    # the repair's data: a folder's train list, the forget class's scenes included; batches counted
    repair = adapter.repair_data(model, info, str(root), [4], batch_size=4)
    assert repair.n_images == 6 and len(repair) == 2 == len(list(repair))
    assert adapter.repair_data(model, info, "digits:5", [4], batch_size=4).n_images == 5
    iou = adapter.evaluate(model, info, str(root)).primary_values()  # no val.txt: test.txt
    assert iou and set(iou) <= set(DIGIT_CLASSES)
    assert all(0.0 <= v <= 1.0 for v in iou.values())  # a class absent in both is left out, never NaN
    (root / "ImageSets" / "Segmentation" / "train.txt").unlink()
    with pytest.raises(DataError, match="train.txt"):
        adapter.samples(model, info, str(root))


# ---- a zoo entry handed to the adapter (the adapter knows no zoo) -------------------------------
def _entry(**kw):
    from types import SimpleNamespace

    fields = {"name": "some-zoo-deeplab", "arch": "deeplabv3_resnet_tiny",
              "kwargs": {"num_classes": 11, "aux_loss": True}, "class_names": DIGIT_CLASSES, "input_size": (3, 48, 48), "task": "segmentation", "data": "digits:7"}
    return SimpleNamespace(**{**fields, **kw})


def test_a_zoo_entry_builds_a_random_model_of_its_configuration(adapter, tmp_path):
    assert not adapter.handles("digitscenes-deeplabv3")  # zoo names are the zoo's
    with pytest.raises(UsageError, match="unknown DeepLabv3 arch"):
        adapter.build("digitscenes-deeplabv3")
    entry = _entry()
    model, info = adapter.build(entry.arch, zoo=entry)
    assert info.arch == entry.name and info.extra["builder"] == entry.arch and info.weights is None
    assert model.aux_classifier is not None and model.classifier[4].out_channels == 11
    assert info.input_size == (3, 48, 48) and info.class_names == DIGIT_CLASSES and info.extra["data"] == "digits:7"
    assert info.extra["zoo"] == {"name": entry.name} and "train" not in info.extra
    # saved with a training record, it loads back for the entry with the record in extra["train"]
    info.extra["zoo"] = {"name": entry.name, "train": {"epochs": 1, "test_miou": 0.25}}
    adapter.save(model, info, tmp_path / "zoo.pt", half=True)
    raw = torch.load(tmp_path / "zoo.pt", weights_only=True)
    assert raw["arch"] == entry.arch and raw["zoo"] == info.extra["zoo"]
    _, again = adapter.build(entry.arch, weights=tmp_path / "zoo.pt", zoo=entry)
    assert again.extra["train"] == {"epochs": 1, "test_miou": 0.25} and again.extra["zoo"] == raw["zoo"]
    # a checkpoint of another configuration does not fit the entry
    with pytest.raises(WeightsError, match="not zoo model some-zoo-deeplab"):
        other = _entry(kwargs={"num_classes": 11, "aux_loss": False})
        adapter.build(entry.arch, weights=tmp_path / "zoo.pt", zoo=other)
    with pytest.raises(WeightsError, match=r"not a some-zoo-deeplab \(deeplabv3_mobilenet_v3_large\)"):
        adapter.build(MOBILE, weights=tmp_path / "zoo.pt", zoo=_entry(arch=MOBILE))


# ---- the repair that forgets ---------------------------------------------------------------
def _scene_batch(seed: int = 0, n: int = 2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random images and masks over 11 classes, a few pixels 255."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 11, (n, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    masks[:, 0, :4] = 255
    return torch.rand(n, 3, SIZE, SIZE, generator=gen), list(masks)


@pytest.fixture(scope="module")
def tiny_segmenter() -> nn.Module:
    """A two-conv 11-class pixel classifier: what ForgetLoss needs of a model (dict or tensor logits)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 11, 1)).eval()


def test_redirect_masks_relabel_only_the_forget_pixels():
    from tpunlearn.data.voc import redirect_masks

    masks = torch.tensor([[0, 4, 255], [4, 7, 2]])
    assert redirect_masks(masks, [4]).tolist() == [[0, 0, 255], [0, 7, 2]]
    assert redirect_masks(masks, [4, 7], 255).tolist() == [[0, 255, 255], [255, 255, 2]]
    per_pixel = torch.full_like(masks, 9)
    assert redirect_masks(masks, [4], per_pixel).tolist() == [[0, 9, 255], [9, 7, 2]]


@pytest.mark.parametrize("redirect", ["background", "next", "ignore"])
def test_forget_loss_targets_redirect_forget_pixels_and_keep_the_rest(tiny_segmenter, redirect):
    from tpunlearn.adapters.deeplabv3 import ForgetLoss

    model = tiny_segmenter
    images, masks = _scene_batch()
    loss = ForgetLoss((4,), model, redirect=redirect)
    terms = loss.terms(model(images), (images, masks))
    target, truth = terms["target"], torch.stack(masks).long()
    hit = truth == 4
    assert torch.equal(target[~hit], truth[~hit])  # retained pixels (and 255) keep their labels
    if redirect == "background":
        assert bool((target[hit] == 0).all())
    elif redirect == "ignore":
        assert bool((target[hit] == 255).all())
    else:  # the original's best class other than 4
        with torch.no_grad():
            logits = model(images)
        logits[:, 4] = float("-inf")
        assert torch.equal(target[hit], logits.argmax(1)[hit])
        assert not bool((target[hit] == 4).any())
    assert torch.isfinite(terms["loss"]) and float(terms["ce"].detach()) > 0


def test_forget_loss_distillation_is_zero_when_the_model_is_the_original(tiny_segmenter):
    from tpunlearn.adapters.deeplabv3 import ForgetLoss

    model = tiny_segmenter
    images, masks = _scene_batch(1)
    loss = ForgetLoss((4,), model, distill=1.0, temperature=2.0)
    with torch.no_grad():
        same = loss.terms(model(images), (images, masks))
        other = loss.terms({"out": model(images) + torch.randn(2, 11, SIZE, SIZE)}, (images, masks))
    assert float(same["distill"]) == pytest.approx(0.0, abs=1e-6)
    assert float(other["distill"]) > 0.01
    assert float(same["loss"]) == pytest.approx(float(same["ce"]), abs=1e-6)
    # the CE is a pixel mean in which each forget pixel weighs forget_weight (255 pixels none)
    from tpunlearn.data.voc import redirect_masks

    truth = torch.stack(masks).long()
    target = redirect_masks(truth, [4], 0)
    with torch.no_grad():
        logits = model(images)
        per_pixel = nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")
        for w in (1.0, 10.0):
            weight = (truth != 255).float() * torch.where(truth == 4, w, 1.0)
            ce = ForgetLoss((4,), model, forget_weight=w).terms({"out": logits}, (images, masks))["ce"]
            assert float(ce) == pytest.approx(float((per_pixel * weight).sum() / weight.sum()), rel=1e-5)
    # no original: plain cross-entropy toward the redirected masks, nothing to distil from
    plain = ForgetLoss((4,), None).terms(model(images), (images, masks))
    assert float(plain["distill"]) == 0.0 and ForgetLoss((4,), None).describe()["distillation"] is None
    with pytest.raises(UsageError, match="needs the original"):
        ForgetLoss((4,), None, redirect="next")
    with pytest.raises(UsageError, match="unknown redirect"):
        ForgetLoss((4,), model, redirect="elsewhere")


def test_repair_keeps_mask_mode_zeros_and_reports_its_objective(adapter, digits_model):
    import copy

    model, info = digits_model
    original = copy.deepcopy(model)
    batches = predicted_batches(model, n_batches=1)
    res = unlearn_family(adapter, model, info, batches, [4], mode="mask", sigma=6, delta=0.2, n_per_target=2)
    zeros = res.plan.zero_ops()
    assert zeros
    before = {k: v.clone() for k, v in res.model.state_dict().items()}
    summary = adapter.repair(res.model, info, "digits:8", [4], original=original, epochs=1, lr=1e-2,
                             plan=res.plan, progress=False)
    assert summary["steps"] == 1 and summary["scenes"] == 8 and summary["scene_passes"] == 8
    assert summary["objective"]["forget_pixels"] == "background" and summary["objective"]["distillation"]
    assert summary["objective"] == adapter.repair_loss(info, [4], original).describe()
    assert any(not torch.equal(v, before[k]) for k, v in res.model.state_dict().items())  # it trained
    for layer, channels in zeros.items():
        assert (res.model.get_submodule(layer).weight[channels] == 0).all(), layer
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values(),
                                                 strict=True))  # the original is untouched
