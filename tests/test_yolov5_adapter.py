"""The ultralytics YOLOv5 adapter: build, the Detect head kept whole, unlearning, ONNX,
the ultralytics checkpoint round trip (``YOLO(path)`` predicts and validates), per-class
AP50 through ``ap_class_index``, data specs, and the offline weights error.

Everything runs on a randomly initialised yolov5n at 128x128 (no weights exist offline).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import ultralytics
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from tpunlearn import adapters
from tpunlearn.adapters.yolov5 import YOLOv5Adapter
from tpunlearn.data import write_yolo
from tpunlearn.errors import DataError, UsageError, WeightsError
from tpunlearn.export import to_onnx
from tpunlearn.targets import DetectionScore

from helpers import listing_with_times, n_params, unlearn_family

IMGSZ = 128
NC = 10  # DigitScenes' ten digits, so the tiny YOLO dataset validates against the model
ANCHORS = (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2


@pytest.fixture(scope="module")
def adapter() -> YOLOv5Adapter:
    return adapters.get("yolov5")


@pytest.fixture(scope="module")
def built(adapter):
    torch.manual_seed(0)
    return adapter.build("yolov5n.yaml", nc=NC, imgsz=IMGSZ)


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits_yolo")
    return write_yolo(root, size=IMGSZ, n_scenes={"train": 8, "val": 16}, splits=("train", "val"))


def synthetic_batches(n_batches: int = 2, batch: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images; class 0 (forgotten) and classes 1, 2 (retained) in every batch."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        images = torch.rand(batch, 3, IMGSZ, IMGSZ, generator=gen)
        multi_hot = torch.zeros(batch, NC)
        multi_hot[:, 0] = 1.0
        multi_hot[: batch // 2, 1] = 1.0
        multi_hot[batch // 2:, 2] = 1.0
        out.append((images, multi_hot))
    return out


@pytest.fixture(scope="module")
def pruned(adapter, built):
    model, info = built
    torch.manual_seed(0)
    x = adapter.example_inputs(info)
    res = unlearn_family(adapter, model, info, synthetic_batches(), [0], retain=[1, 2], example_inputs=x, sigma=6,
                         delta=0.1, n_per_target=4)
    return res, x


def head_out_channels(model: torch.nn.Module) -> list[int]:
    head = model.model[-1]
    return [seq[-1].out_channels for seq in head.cv3] + [seq[-1].out_channels for seq in head.cv2]


# ---- registry and names ------------------------------------------------------------------
def test_registry_and_handles(adapter, tmp_path):
    assert isinstance(adapter, YOLOv5Adapter) and adapter.metric_name == "recall"
    for arch in ("yolov5n", "yolov5s", "yolov5m", "yolov5nu", "yolov5su", "yolov5mu", "yolov5s.yaml",
                 "yolov5su.pt", "yolov5"):  # "yolov5": the family, the scale read from --weights
        assert adapter.handles(arch), arch
        assert adapters.for_arch(arch) is adapter
    for arch in ("resnet18", "yolov8n", "yolov5z", "deeplabv3_resnet50", str(tmp_path / "missing.pt")):
        assert not adapter.handles(arch), arch
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    assert not adapter.handles(str(other))  # a torch file, but not an ultralytics detection model
    cfg = tmp_path / "my_detector.yaml"
    shutil.copy(Path(ultralytics.__file__).parent / "cfg/models/v5/yolov5.yaml", cfg)
    assert adapter.handles(str(cfg))


# ---- build and output --------------------------------------------------------------------
def test_build_random_and_output_transform(adapter, built):
    model, info = built
    assert isinstance(model, DetectionModel) and not model.training
    assert (info.task, info.family, info.weights) == ("detection", "yolov5", None)
    assert info.class_names == [str(i) for i in range(NC)] and info.input_size == (3, IMGSZ, IMGSZ)
    x = adapter.example_inputs(info, batch=2)
    with torch.no_grad():
        raw = model(x)
    assert isinstance(raw, tuple)  # eval mode: (decoded, raw head outputs)
    y = adapter.output_transform(raw)
    assert y.shape == (2, 4 + NC, ANCHORS)
    assert adapter.output_transform(y) is y  # export mode returns the tensor alone
    with pytest.raises(UsageError, match="eval mode"):
        adapter.output_transform({"boxes": y, "scores": y})
    # ultralytics keeps the DFL integral frozen; every other parameter takes gradients
    for name, p in model.named_parameters():
        assert p.requires_grad == (".dfl." not in name), name
    assert isinstance(adapter.target(info, 3), DetectionScore) and adapter.target(info, 3).index == 3
    head = model.model[-1]
    ignored = adapter.ignored_layers(model, info)
    assert ignored == [*(b[-1] for b in head.cv2), *(b[-1] for b in head.cv3), head.dfl]
    assert all(m is not head for m in ignored)  # the head's inner convs stay candidates


def test_scale_letter_selects_the_width(adapter):
    widths = {}
    for arch, kw in (("yolov5n.yaml", {}), ("yolov5s", {"pretrained": False}), ("yolov5su.yaml", {})):
        model, info = adapter.build(arch, nc=2, imgsz=IMGSZ, names=["cat", "dog"], **kw)
        widths[arch] = model.model[0].conv.out_channels
        assert info.class_names == ["cat", "dog"] and info.extra["nc"] == 2
    assert widths == {"yolov5n.yaml": 16, "yolov5s": 32, "yolov5su.yaml": 32}
    with pytest.raises(UsageError, match="multiple of 32"):
        adapter.build("yolov5n.yaml", imgsz=100)


def test_other_families_option_names_and_unknown_options(adapter):
    model, info = adapter.build("yolov5n.yaml", num_classes=2, class_names=["cat", "dog"], imgsz=64)
    assert model.model[-1].nc == 2 and info.class_names == ["cat", "dog"] and info.extra["nc"] == 2
    _, same = adapter.build("yolov5n.yaml", nc=2, num_classes=2, imgsz=64)
    assert same.class_names == ["0", "1"]
    with pytest.raises(UsageError, match="contradicts"):
        adapter.build("yolov5n.yaml", nc=2, num_classes=3)
    with pytest.raises(UsageError, match="unknown option"):
        adapter.build("yolov5n.yaml", in_chans=1)


def test_zoo_entry_without_weights_is_a_random_model_of_its_yaml(adapter):
    from tpunlearn import zoo

    e = zoo.entry("digitscenes-yolov5")
    model, info = adapter.build(e.arch, zoo=e)
    assert model.model[-1].nc == len(e.class_names) and model.model[0].conv.out_channels == 16  # yolov5n
    assert (info.arch, info.weights, info.input_size) == (e.name, None, e.input_size)
    assert info.class_names == list(e.class_names)
    assert (info.extra["zoo"], info.extra["data"], info.extra["train"]) == (e.name, e.data, {})
    assert sum(p.numel() for p in zoo.build(e.name).parameters()) == sum(p.numel() for p in model.parameters())


def test_no_prunable_group_reaches_the_detect_head(adapter, built):
    """Tracing through the decoded output (DFL, anchor concat) couples no channel of a prunable layer."""
    from tpunlearn.layers import prunable_layers
    from tpunlearn.plan import out_members, unsupported_reason, build_dependency_graph

    model, info = built
    x = adapter.example_inputs(info)
    dg = build_dependency_graph(model, x, adapter.output_transform)
    names = {m: n for n, m in model.named_modules()}
    layers = prunable_layers(model, x, ["model.24"])
    assert len(layers) > 40 and not any(l.startswith("model.24.") for l in layers)
    for name in layers:
        root = model.get_submodule(name)
        pruner = dg.get_pruner_of_module(root)
        group = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(pruner.get_out_channels(root))))
        members = out_members(dg, group, names)
        assert not [m for m in members if m.startswith("model.24.")], name
        assert unsupported_reason(group, tp) == "", name


# ---- unlearning ----------------------------------------------------------------------------
def test_unlearn_removes_channels_and_keeps_the_head(adapter, built, pruned):
    model, info = built
    res, x = pruned
    report = res.report
    assert report["removed_channels"] > 0
    assert report["params"]["after"] < report["params"]["before"] == n_params(model)
    assert report["check"]["mask_rel_diff"] <= 1e-3
    names = {m: n for n, m in model.named_modules()}
    protected = {names[m] for m in adapter.ignored_layers(model, built[1])}
    assert protected and not protected & set(res.plan.removed)  # head outputs and DFL never lose channels
    with torch.no_grad():
        before = adapter.output_transform(model(x))
        after = adapter.output_transform(res.model(x))
    assert after.shape == before.shape == (1, 4 + NC, ANCHORS)
    assert torch.isfinite(after).all()
    assert head_out_channels(res.model) == head_out_channels(model) == [NC] * 3 + [64] * 3
    head = res.model.model[-1]
    assert (head.nc, head.no) == (NC, NC + 4 * head.reg_max)
    assert n_params(model) == report["params"]["before"]  # the input model is untouched


def test_unlearn_from_dataset_yaml_samples(adapter, built, data_yaml):
    model, info = built
    batches = adapter.samples(model, info, str(data_yaml), batch_size=4)
    present = torch.cat([mh for _, mh in batches]).sum(0)
    forget = int(present.argmax())
    res = unlearn_family(adapter, model, info, batches, [forget], sigma=6, delta=0.1, n_per_target=2)
    assert res.report["check"]["output_shape"] == [1, 4 + NC, ANCHORS]
    assert res.report["instances"][str(forget)] == 2


def test_onnx_parity(adapter, pruned, tmp_path):
    res, x = pruned
    diff = to_onnx(res.model, tmp_path / "model.onnx", example_inputs=x, output_transform=adapter.output_transform)
    with torch.no_grad():
        scale = float(adapter.output_transform(res.model(x)).abs().max())
    assert diff / scale <= 1e-4


# ---- ultralytics checkpoint round trip ----------------------------------------------------
def test_save_loads_in_ultralytics_predicts_and_validates(adapter, built, pruned, data_yaml, tmp_path):
    from ultralytics.nn.tasks import torch_safe_load
    from ultralytics.utils import ASSETS

    model, info = built
    res, x = pruned
    path = tmp_path / "out" / "model.pt"
    adapter.save(res.model, info, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # atomic: no temp file left
    # only torch and ultralytics classes inside: ultralytics' restricted loader accepts it
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    assert unsafe and all(g.startswith(("torch.", "ultralytics.")) for g in unsafe), unsafe
    ckpt, _ = torch_safe_load(str(path), safe_only=True)
    assert ckpt["model"].names == {i: str(i) for i in range(NC)}

    yolo = YOLO(str(path))
    assert yolo.task == "detect" and yolo.names == {i: str(i) for i in range(NC)}
    assert yolo.model.model[-1].nc == NC
    assert n_params(yolo.model) == n_params(res.model) < n_params(model)
    results = yolo.predict(ASSETS / "bus.jpg", imgsz=IMGSZ, save=False, verbose=False, project=str(tmp_path / "runs"))
    assert len(results) == 1 and results[0].boxes is not None
    metrics = yolo.val(data=str(data_yaml), imgsz=IMGSZ, batch=8, plots=False, workers=0, verbose=False,
                       project=str(tmp_path / "runs"), name="val")
    assert 0.0 <= float(metrics.box.map50) <= 1.0
    assert len(metrics.box.ap_class_index) > 0

    # and the adapter reads its own checkpoint back: same pruned architecture, same outputs (FP16 storage)
    back, info2 = adapter.build(str(path))
    assert adapters.for_arch(str(path)) is adapter
    assert info2.class_names == info.class_names and info2.input_size == info.input_size
    assert info2.weights == str(path) and n_params(back) == n_params(res.model)
    with torch.no_grad():
        a = adapter.output_transform(res.model(x))
        b = adapter.output_transform(back(x))
    assert torch.allclose(a, b, rtol=0, atol=1e-2 * float(a.abs().max()))


# ---- evaluation ----------------------------------------------------------------------------
def test_evaluate_per_class_at_the_operating_point(adapter, built, data_yaml):
    model, info = built
    params = [p.detach().clone() for p in model.parameters()]
    result = adapter.evaluate(model, info, str(data_yaml))
    counts: dict[int, int] = {}
    for f in (data_yaml.parent / "labels" / "val").glob("*.txt"):
        for line in f.read_text().splitlines():
            if line.strip():
                counts[int(line.split()[0])] = counts.get(int(line.split()[0]), 0) + 1
    assert counts  # the split holds labelled digits to score
    assert result.task == "detection" and result.primary == "recall"
    assert result.operating_point == {"conf": 0.25, "iou": 0.5}
    # classes with labels in the split, by name (absent ones left out), each with its labelled box count
    assert {n: int(m["instances"]) for n, m in result.per_target.items()} == {
        info.class_names[c]: n for c, n in counts.items()}
    for m in result.per_target.values():
        assert set(m) == {"recall", "precision", "ap50", "ap50_95", "instances"}
        assert all(0.0 <= m[k] <= 1.0 for k in ("recall", "precision", "ap50", "ap50_95"))
    assert set(result.summary) == {"mAP50", "mAP50-95"}
    low = adapter.evaluate(model, info, str(data_yaml), conf=0.0)
    assert low.operating_point["conf"] == 0.0
    # a lower threshold keeps every prediction the higher one kept: recall never falls
    assert all(low.per_target[n]["recall"] >= m["recall"] for n, m in result.per_target.items())
    # the validator fuses Conv+BN of what it is given: the adapter hands it a copy
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert len(list(model.parameters())) == len(params)
    with pytest.raises(UsageError, match="--data"):
        adapter.evaluate(model, info, None)  # a random model has no training data to fall back on


def test_validation_leaves_the_users_dataset_as_it_was(built, tmp_path, monkeypatch):
    """ultralytics' validator saves ``labels/<split>.cache`` beside the labels it scans and rewrites a
    truncated JPEG; the adapter's validator keeps that cache under tpunlearn's cache folder and reads the
    JPEG as it is, so the user's folder is not written."""
    from PIL import Image

    from tpunlearn.adapters import ultralytics_io

    model, info = built
    monkeypatch.setenv("TPUNLEARN_CACHE", str(tmp_path / "cache"))
    data = write_yolo(tmp_path / "user", size=IMGSZ, n_scenes={"train": 1, "val": 4}, splits=("train", "val"))
    png = tmp_path / "user" / "images" / "val" / "val_00000.png"
    Image.open(png).save(png.with_suffix(".jpg"), quality=95)  # a JPEG that does not end in its end marker,
    png.unlink()  # which ultralytics' scan rewrites in place ("corrupt JPEG restored and saved")
    jpg = png.with_suffix(".jpg")
    jpg.write_bytes(jpg.read_bytes() + b"\0\0")
    before = listing_with_times(tmp_path / "user")
    for _ in range(2):  # the second run reads the cache the first wrote
        ap = ultralytics_io.validate_ap50(model, str(data), IMGSZ, info.class_names)
        assert 0.0 <= ap["mAP50"] <= 1.0
    assert listing_with_times(tmp_path / "user") == before
    assert len(list((tmp_path / "cache").rglob("*.cache"))) == 1


# ---- data specs ----------------------------------------------------------------------------
def test_samples_from_dataset_yaml_use_the_labels(adapter, built, data_yaml):
    model, info = built
    batches = list(adapter.samples(model, info, str(data_yaml), batch_size=3))
    images = torch.cat([b[0] for b in batches])
    multi_hot = torch.cat([b[1] for b in batches])
    assert images.shape == (8, 3, IMGSZ, IMGSZ) and multi_hot.shape == (8, NC)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    labels = sorted((data_yaml.parent / "labels" / "train").glob("*.txt"))
    assert len(labels) == len(multi_hot)  # one label file per image, read in the same order
    for row, f in zip(multi_hot, labels):
        expected = {int(line.split()[0]) for line in f.read_text().splitlines() if line.strip()}
        assert set(row.nonzero().flatten().tolist()) == expected


def test_samples_from_bundled_images_and_folders(adapter, built, data_yaml, tmp_path):
    import dataclasses

    model, info = built
    info = dataclasses.replace(info, weights=tmp_path / "trained.pt")  # as if trained: its detections label
    ((images, multi_hot),) = list(adapter.samples(model, info, None, batch_size=8))  # bus.jpg, zidane.jpg
    assert images.shape == (2, 3, IMGSZ, IMGSZ) and multi_hot.shape == (2, NC)
    assert set(multi_hot.unique().tolist()) <= {0.0, 1.0}  # the model's own confident classes
    folder = data_yaml.parent / "images" / "val"
    batches = list(adapter.samples(model, info, str(folder), batch_size=10))
    assert [len(b[0]) for b in batches] == [10, 6]
    with pytest.raises(DataError):
        adapter.samples(model, info, str(data_yaml.parent / "nothing_here"))


# ---- weights errors ------------------------------------------------------------------------
def test_offline_hub_name_without_weights_is_a_one_line_error(adapter, tmp_path, monkeypatch):
    import ultralytics.utils.downloads as downloads

    def no_download(*args, **kwargs):
        raise AssertionError("the adapter tried to download weights")

    monkeypatch.chdir(tmp_path)  # no yolov5su.pt here, nor in ./weights
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setattr(downloads, "attempt_download_asset", no_download)
    with pytest.raises(WeightsError, match="--weights") as err:
        adapter.build("yolov5s")
    assert "\n" not in str(err.value) and "yolov5su.pt" in str(err.value)


def test_online_download_failure_becomes_weights_error(adapter, tmp_path, monkeypatch):
    import ultralytics.utils as ul_utils
    import ultralytics.utils.downloads as downloads

    def failing(*args, **kwargs):
        raise ConnectionError("Download failure for https://github.com/ultralytics/assets/releases/yolov5su.pt")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    monkeypatch.setattr(ul_utils, "ONLINE", True)
    monkeypatch.setattr(downloads, "attempt_download_asset", failing)
    with pytest.raises(WeightsError, match="--weights"):
        adapter.build("yolov5n")


def test_bad_weights_files_are_weights_errors(adapter, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        adapter.build("yolov5n", weights=tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as err:
        adapter.build("yolov5n", weights=corrupt)
    assert "\n" not in str(err.value)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    with pytest.raises(WeightsError, match="no ultralytics model"):
        adapter.build("yolov5n", weights=plain)


def test_yaml_models_get_coco_names_and_random_ones_refuse_unlabelled_data_at_once(adapter, tmp_path):
    """An 80-class YAML model is named like COCO (`--forget person` resolves); its random detections
    cannot label images, so samples() refuses before any forward; a labelled dataset YAML is accepted."""
    model, info = adapter.build("yolov5n.yaml")
    assert info.class_names[:3] == ["person", "bicycle", "car"] and len(info.class_names) == 80
    _, small = adapter.build("yolov5n.yaml", nc=3)
    assert small.class_names == ["0", "1", "2"]
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    folder = tmp_path / "images"
    folder.mkdir()
    for spec in (None, str(folder)):
        with pytest.raises(UsageError, match="random weights.*--data with labels"):
            adapter.samples(model, info, spec)
    assert calls == []
